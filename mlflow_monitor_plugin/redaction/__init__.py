"""Personal data kept out of what leaves the store: the monitor's redaction policy (``policy``),
the recognizers of its built-in kinds (``recognizers``, Presidio, the ``pii`` extra), and the
masker that applies it (``masker``) to the export (``export/masking.py``) and alert messages."""

from mlflow_monitor_plugin.redaction.masker import SECRET_ENV, Masker, check_key, masker_for
from mlflow_monitor_plugin.redaction.policy import RedactionPolicy, policy_from

__all__ = ["SECRET_ENV", "Masker", "RedactionPolicy", "check_key", "masker_for", "policy_from"]
