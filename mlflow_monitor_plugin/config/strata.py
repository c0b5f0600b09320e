"""Strata: where a judge samples at another rate than its own, pure.

A stratum is a rule with its own sample rate. Its rule is an MLflow trace search filter
(``filter_string``: ``trace.status = 'ERROR'``, ``trace.execution_time_ms > 5000``, tags,
metadata), a human feedback the trace carries (``human_feedback``: a feedback name and,
optionally, its value), or both (then both must hold). A judge's strata are its own ``strata``,
else the monitor's (``assessments_config.strata``); ``strata: []`` on a judge opts it out of the
monitor's. A trace is in the first stratum it matches, else in ``default``, sampled at the
judge's ``sample_rate``. Sampling stays the same hash: a trace of a stratum with rate ``r`` is
judged iff ``hash(trace, monitor) < r``; each verdict records its stratum and that rate (its
inclusion probability), and the windows weight the verdicts by it (observe/estimate.py).

Strata apply to trace judges; a session judge samples whole sessions at its own rate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlflow_monitor_plugin.config.checks import check_filter, check_rate
from mlflow_monitor_plugin.exceptions import MonitorConfigError

DEFAULT_STRATUM = "default"  # the traces no stratum matches (discovery/strata.py's too)
MAX_STRATA = 10
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
_FEEDBACK_NAME = re.compile(r"^[^\s].{0,249}$")
_KEYS = ("name", "filter_string", "human_feedback", "sample_rate")


@dataclass(frozen=True)
class HumanFeedback:
    """Traces carrying a valid feedback named ``name`` from a person (source type HUMAN), of
    value ``value`` (None: any value). Values compare as text, trimmed and lower-cased, with
    booleans as ``true``/``false`` and ``1.0`` as ``1`` (discovery/strata.py)."""

    name: str
    value: str | bool | int | float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **({"value": self.value} if self.value is not None else {})}

    def describe(self) -> str:
        return f"human {self.name}" + (f" = {self.value}" if self.value is not None else "")


@dataclass(frozen=True)
class Stratum:
    """One stratum: its name (in verdict metadata and reports), its rule, its sample rate."""

    name: str
    sample_rate: float
    filter_string: str | None = None
    human_feedback: HumanFeedback | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.filter_string is not None:
            out["filter_string"] = self.filter_string
        if self.human_feedback is not None:
            out["human_feedback"] = self.human_feedback.to_dict()
        out["sample_rate"] = self.sample_rate
        return out

    def describe(self) -> str:
        rules = [f"where {self.filter_string}"] if self.filter_string else []
        rules += [self.human_feedback.describe()] if self.human_feedback else []
        return f"{self.name} @ {self.sample_rate:g} ({' and '.join(rules)})"


def _human_feedback(field_name: str, value: Any) -> HumanFeedback | None:
    if value is None or isinstance(value, HumanFeedback):
        return value
    if isinstance(value, str):  # the short form: "user_rating=thumbs_down" or "user_rating"
        name, sep, wanted = value.partition("=")
        value = {"name": name.strip(), **({"value": wanted} if sep else {})}
    allowed = "expected {name: FEEDBACK_NAME, value: VALUE} (value optional) or 'NAME=VALUE'"
    if not isinstance(value, Mapping) or set(value) - {"name", "value"}:
        raise MonitorConfigError(field_name, value, allowed)
    name = value.get("name")
    if not isinstance(name, str) or not _FEEDBACK_NAME.match(name.strip()):
        raise MonitorConfigError(f"{field_name}.name", name, "expected a feedback name")
    wanted = value.get("value")
    if wanted is not None and not isinstance(wanted, (str, bool, int, float)):
        raise MonitorConfigError(f"{field_name}.value", wanted, "expected text, a number or a bool")
    if isinstance(wanted, str) and not wanted.strip():
        raise MonitorConfigError(f"{field_name}.value", wanted, "expected a non-empty value")
    if isinstance(wanted, float) and wanted != wanted:
        raise MonitorConfigError(f"{field_name}.value", wanted, "expected a number, not NaN")
    return HumanFeedback(name.strip(), wanted.strip() if isinstance(wanted, str) else wanted)


def stratum_from(value: Any, field_name: str, index: int) -> Stratum:
    """One stratum from its object or dict form."""
    if isinstance(value, Stratum):
        value = value.to_dict()
    if not isinstance(value, Mapping):
        raise MonitorConfigError(
            field_name, value, "expected {name, filter_string and/or human_feedback, sample_rate}"
        )
    extra = sorted(set(value) - set(_KEYS))
    if extra:
        raise MonitorConfigError(
            field_name, dict(value), f"expected only {', '.join(_KEYS)} (unknown: {extra})"
        )
    name = value.get("name", f"stratum_{index + 1}")
    if not isinstance(name, str) or not _NAME.match(name) or name == DEFAULT_STRATUM:
        raise MonitorConfigError(
            f"{field_name}.name",
            name,
            "expected 1-64 letters, digits, '_', '-' or '.', not 'default' (the traces no "
            "stratum matches)",
        )
    where = f"{field_name}({name!r})"
    rate = check_rate(f"{where}.sample_rate", value.get("sample_rate"), optional=False)
    filter_string = check_filter(f"{where}.filter_string", value.get("filter_string"))
    feedback = _human_feedback(f"{where}.human_feedback", value.get("human_feedback"))
    if filter_string is None and feedback is None:
        raise MonitorConfigError(
            where, dict(value), "expected a filter_string, a human_feedback, or both"
        )
    return Stratum(name, float(rate or 0.0), filter_string, feedback)


def strata_from(field_name: str, value: Any) -> tuple[Stratum, ...] | None:
    """A list of strata (None: not given, so inherited; an empty list: none)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise MonitorConfigError(field_name, value, "expected a list of strata")
    if len(value) > MAX_STRATA:
        raise MonitorConfigError(field_name, len(value), f"expected at most {MAX_STRATA} strata")
    strata = tuple(stratum_from(s, f"{field_name}[{i}]", i) for i, s in enumerate(value))
    names = [s.name for s in strata]
    if len(set(names)) != len(names):
        raise MonitorConfigError(field_name, names, "expected each stratum name at most once")
    return strata


def strata_of(suite: Any, feedback_name: str) -> tuple[Stratum, ...]:
    """The strata of the config judge logging ``feedback_name``: its own, else the monitor's;
    none for a judge the config does not hold (a judge registered in MLflow)."""
    for judge in getattr(suite, "assessments", None) or []:
        if feedback_name in judge.feedback_names:
            own = getattr(judge, "strata", None)
            return own if own is not None else tuple(getattr(suite, "strata", None) or ())
    return ()


def refuse_on_session(where: str, strata: tuple[Stratum, ...] | None, session: bool) -> None:
    if strata and session:
        raise MonitorConfigError(
            f"{where}.strata",
            [s.name for s in strata],
            "expected no strata on a session judge: it samples whole sessions at its rate",
        )


def describe(strata: tuple[Stratum, ...], default_rate: float | None, indent: str) -> list[str]:
    """What ``get`` prints of a judge's strata (``default_rate`` None: the monitor's, whose
    default is each judge's own rate)."""
    if not strata:
        return []
    rate = "each judge's rate" if default_rate is None else f"{default_rate:g}"
    lines = [f"{indent}strata (first match):"]
    lines += [f"{indent}  - {s.describe()}" for s in strata]
    lines.append(f"{indent}  - {DEFAULT_STRATUM} @ {rate} (every other trace)")
    return lines
