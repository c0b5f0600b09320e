"""Field checks shared by the config objects: rates, model URIs, identifiers, filter strings.

Pure: each check returns the value or raises ``MonitorConfigError`` naming the field, the value
and what is allowed.
"""

from __future__ import annotations

import math
import re
from typing import Any

from mlflow_monitor_plugin.exceptions import MonitorConfigError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_MODEL_URI = re.compile(r"^[A-Za-z0-9_\-]+:/.+$")
MAX_FILTER_LENGTH = 4000


def check_rate(field_name: str, value: Any, *, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise MonitorConfigError(field_name, value, "expected a number between 0.0 and 1.0")
    if not 0.0 <= value <= 1.0:
        raise MonitorConfigError(field_name, value, "expected a number between 0.0 and 1.0")
    return float(value)


def check_model(field_name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _MODEL_URI.match(value):
        raise MonitorConfigError(
            field_name, value, "expected an MLflow model URI such as 'openai:/gpt-4o-mini'"
        )
    return value


def check_identifier(field_name: str, value: Any) -> str:
    """Catalog and schema names: letters, digits and underscores, not starting with a digit."""
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise MonitorConfigError(
            field_name,
            value,
            "expected 1-255 letters, digits and underscores, not starting with a digit",
        )
    return value


def check_filter(field_name: str, value: Any) -> str | None:
    """A judge's ``filter_string``: its syntax is MLflow's, checked against the store when the
    monitor is created or updated (see api.py); here only its type and size."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_FILTER_LENGTH:
        raise MonitorConfigError(
            field_name,
            value,
            f"expected an MLflow trace search filter of at most {MAX_FILTER_LENGTH} characters, "
            "e.g. \"tags.env = 'prod'\"",
        )
    return value.strip()
