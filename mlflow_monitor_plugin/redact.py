"""Keep secrets out of what the plugin writes: tags, feedback, exports and logs.

The secrets are the values of the process's credential variables (``OPENAI_API_KEY``,
``*_API_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*_PASSWORD``). They are read from the environment on
each call, never stored.
"""

from __future__ import annotations

import logging
import os
import re

from mlflow_monitor_plugin.exceptions import MonitorConfigError

_SECRET_NAME = re.compile(r"(API_KEY|TOKEN|SECRET|PASSWORD|AUTH|HEADERS)$|^OPENAI_API_KEY$", re.I)
_MIN_SECRET_LENGTH = 8
MASK = "***"


def secret_values() -> list[str]:
    """The credential values in the environment, longest first (a prefix never masks alone)."""
    values = {
        value
        for name, value in os.environ.items()
        if _SECRET_NAME.search(name) and len(value) >= _MIN_SECRET_LENGTH
    }
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    for value in secret_values():
        if value in text:
            text = text.replace(value, MASK)
    return text


def assert_no_secret(text: str, what: str) -> None:
    """Refuse to write ``text`` when it contains a credential from the environment."""
    for value in secret_values():
        if value in text:
            raise MonitorConfigError(
                what,
                "<text containing the value of a credential environment variable>",
                "secrets never go into MLflow tags; the daemon reads keys from its environment",
            )


class RedactingFilter(logging.Filter):
    """A logging filter that masks credential values in every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = secret_values()
        if not secrets:
            return True
        message = record.getMessage()
        cleaned = message
        for value in secrets:
            cleaned = cleaned.replace(value, MASK)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
