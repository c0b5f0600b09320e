"""mlflow-monitor: production monitoring for open-source MLflow.

The monitor API follows ``databricks.agents.monitoring``::

    from mlflow_monitor_plugin import create_external_monitor, AssessmentsSuiteConfig, BuiltinJudge
"""

from mlflow_monitor_plugin.config.alerts import AlertRule, WebhookTarget
from mlflow_monitor_plugin.config.api import (
    create_external_monitor,
    delete_external_monitor,
    get_external_monitor,
    list_external_monitors,
    promote_shadow,
    update_external_monitor,
)
from mlflow_monitor_plugin.config.custom import CodeJudge, CustomJudge
from mlflow_monitor_plugin.config.model import (
    AssessmentsSuiteConfig,
    BuiltinJudge,
    ExternalMonitor,
    GuidelinesJudge,
)
from mlflow_monitor_plugin.engine.shadow import compare_shadow
from mlflow_monitor_plugin.exceptions import (
    ExportError,
    MonitorConfigError,
    MonitorError,
    MonitorExistsError,
    MonitorNotFoundError,
    MonitorStorageError,
)
from mlflow_monitor_plugin.redaction import RedactionPolicy

__version__ = "0.1.0"

__all__ = [
    "AlertRule",
    "AssessmentsSuiteConfig",
    "BuiltinJudge",
    "CodeJudge",
    "CustomJudge",
    "ExportError",
    "ExternalMonitor",
    "GuidelinesJudge",
    "MonitorConfigError",
    "MonitorError",
    "MonitorExistsError",
    "MonitorNotFoundError",
    "MonitorStorageError",
    "RedactionPolicy",
    "WebhookTarget",
    "__version__",
    "compare_shadow",
    "create_external_monitor",
    "delete_external_monitor",
    "get_external_monitor",
    "list_external_monitors",
    "promote_shadow",
    "update_external_monitor",
]
