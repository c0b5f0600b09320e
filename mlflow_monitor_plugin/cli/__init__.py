"""The ``mlflow monitor`` command group: thin click commands over the library."""

from mlflow_monitor_plugin.cli.main import main, monitor

__all__ = ["main", "monitor"]
