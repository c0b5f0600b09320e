"""The team's own judges: ``CustomJudge`` (an LLM prompt, built with MLflow's ``make_judge``)
and ``CodeJudge`` (a Python scorer installed in the daemon's environment, named here).

Both are pure data, safe to keep in tags: a custom judge is a prompt template and a value type;
a code judge is only a name, resolved by the daemon through the installed entry points of group
``mlflow_monitor.scorers`` (scoring/judges.py), never as a module path.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow_monitor_plugin.config.checks import check_filter, check_model, check_rate
from mlflow_monitor_plugin.config.strata import Stratum, refuse_on_session, strata_from
from mlflow_monitor_plugin.exceptions import MonitorConfigError

ENTRY_POINT_GROUP = "mlflow_monitor.scorers"
JUDGE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}$")
_VARIABLE = re.compile(r"\{\{\s*(\w+)\s*\}\}")
TRACE_VARIABLES = ("inputs", "outputs", "trace")
SESSION_VARIABLE = "conversation"
VALUE_TYPES = {"str": str, "bool": bool, "int": int, "float": float}
_NAME_RULE = "expected 1-100 letters, digits, '_', '-' or '.', not starting with '-' or '.'"


def template_variables(instructions: str) -> set[str]:
    """The ``{{ name }}`` variables a prompt template uses."""
    return set(_VARIABLE.findall(instructions))


def _check_name(field_name: str, value: Any) -> str:
    if not isinstance(value, str) or not JUDGE_NAME.match(value):
        raise MonitorConfigError(field_name, value, _NAME_RULE)
    return value


def value_type_to_data(field_name: str, value: Any) -> str | list[str] | None:
    """``feedback_value_type`` as JSON data: 'str' | 'bool' | 'int' | 'float' or the list of a
    Literal's choices. Accepts the Python forms (``bool``, ``Literal["good", "bad"]``) too."""
    if value is None:
        return None
    for name, kind in VALUE_TYPES.items():
        if value is kind or value == name:
            return name
    if typing.get_origin(value) is typing.Literal:
        value = list(typing.get_args(value))
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, str) and v for v in value)
        and len(set(value)) == len(value)
    ):
        return list(value)
    raise MonitorConfigError(
        field_name,
        value,
        "expected 'str', 'bool', 'int', 'float' (or the type itself) or a list of distinct "
        "string choices (or Literal[...])",
    )


@dataclass
class CustomJudge:
    """An LLM judge from the team's own prompt, built with MLflow's ``make_judge``.

    ``instructions`` uses MLflow's template variables: ``{{ inputs }}``, ``{{ outputs }}``,
    ``{{ trace }}`` for a trace judge, or ``{{ conversation }}`` alone for a session judge.
    """

    name: str
    instructions: str
    feedback_value_type: Any = None
    model: str | None = None
    sample_rate: float | None = None
    filter_string: str | None = None
    strata: tuple[Stratum, ...] | None = None  # config/strata.py; None: the monitor's

    def validate(self) -> CustomJudge:
        name = _check_name("CustomJudge.name", self.name)
        where = f"CustomJudge({name!r})"
        instructions = self.instructions
        if not isinstance(instructions, str) or not instructions.strip():
            raise MonitorConfigError(
                f"{where}.instructions", instructions, "expected a non-empty prompt template"
            )
        variables = template_variables(instructions)
        allowed = {*TRACE_VARIABLES, SESSION_VARIABLE}
        if not variables & allowed or variables - allowed:
            found = ", ".join(f"{{{{ {v} }}}}" for v in sorted(variables)) or "none"
            raise MonitorConfigError(
                f"{where}.instructions",
                instructions if len(instructions) <= 80 else instructions[:77] + "...",
                f"its template variables ({found}) must be among {{{{ inputs }}}}, "
                "{{ outputs }}, {{ trace }} or {{ conversation }} ({{ expectations }} needs "
                "ground truth that production traces do not carry)",
            )
        if SESSION_VARIABLE in variables and variables - {SESSION_VARIABLE}:
            raise MonitorConfigError(
                f"{where}.instructions",
                sorted(variables),
                "expected {{ conversation }} alone (a session judge) or no {{ conversation }}",
            )
        strata = strata_from(f"{where}.strata", self.strata)
        refuse_on_session(where, strata, SESSION_VARIABLE in variables)
        return CustomJudge(
            name,
            instructions,
            value_type_to_data(f"{where}.feedback_value_type", self.feedback_value_type),
            check_model(f"{where}.model", self.model),
            check_rate(f"{where}.sample_rate", self.sample_rate, optional=True),
            check_filter(f"{where}.filter_string", self.filter_string),
            strata,
        )

    @property
    def session(self) -> bool:
        return SESSION_VARIABLE in template_variables(self.instructions)

    @property
    def feedback_names(self) -> tuple[str, ...]:
        return (self.name,)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "custom", "name": self.name}
        out["instructions"] = self.instructions
        for key in ("feedback_value_type", "model", "sample_rate", "filter_string"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.strata is not None:
            out["strata"] = [s.to_dict() for s in self.strata]
        return out


@dataclass
class CodeJudge:
    """A Python scorer installed in the daemon's environment under an entry point of group
    ``mlflow_monitor.scorers``; ``name`` is the entry point's name (and the feedback's)."""

    name: str
    sample_rate: float | None = None
    filter_string: str | None = None
    strata: tuple[Stratum, ...] | None = None  # ignored if the scorer judges sessions

    def validate(self) -> CodeJudge:
        name = _check_name("CodeJudge.name", self.name)
        where = f"CodeJudge({name!r})"
        return CodeJudge(
            name,
            check_rate(f"{where}.sample_rate", self.sample_rate, optional=True),
            check_filter(f"{where}.filter_string", self.filter_string),
            strata_from(f"{where}.strata", self.strata),
        )

    @property
    def feedback_names(self) -> tuple[str, ...]:
        return (self.name,)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "code", "name": self.name}
        for key in ("sample_rate", "filter_string"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.strata is not None:
            out["strata"] = [s.to_dict() for s in self.strata]
        return out


_FIELDS = {
    "custom": ("name", "instructions", "feedback_value_type", "model", "sample_rate",
               "filter_string", "strata"),
    "code": ("name", "sample_rate", "filter_string", "strata"),
}  # fmt: skip


def custom_judge_from_dict(value: Mapping[str, Any], field_name: str) -> CustomJudge | CodeJudge:
    """A custom judge (``kind: custom``, or any dict with ``instructions``) or a code judge
    (``kind: code``) from its dict form."""
    kind = value.get("kind", "custom")
    if kind not in _FIELDS:
        raise MonitorConfigError(f"{field_name}.kind", kind, "expected 'custom' or 'code'")
    fields = _FIELDS[kind]
    extra = sorted(set(value) - {"kind", *fields})
    if extra:
        raise MonitorConfigError(
            field_name, dict(value), f"expected only kind, {', '.join(fields)} (unknown: {extra})"
        )
    args = {k: value.get(k) for k in fields}
    if kind == "code":
        return CodeJudge(**args).validate()
    return CustomJudge(**args).validate()
