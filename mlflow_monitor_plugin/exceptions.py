"""The few exceptions the plugin raises. Every one is a ``MonitorError``."""

from __future__ import annotations


class MonitorError(Exception):
    """Base class of every error raised by mlflow-monitor."""


class MonitorConfigError(MonitorError, ValueError):
    """A config is invalid: the message names the field, the value and what is allowed."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"Invalid {field}: got {value!r}; {allowed}.")


class MonitorNotFoundError(MonitorError, LookupError):
    """The experiment carries no monitor, or the experiment does not exist."""


class MonitorExistsError(MonitorError):
    """``create_external_monitor`` was called on an experiment that already has a monitor."""


class MonitorStorageError(MonitorError):
    """A monitor's tags cannot be read back (invalid JSON, unknown schema, missing part)."""


class ExportError(MonitorError):
    """The export destination cannot be written."""
