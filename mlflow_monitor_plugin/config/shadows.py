"""Shadow judges: a candidate judge run beside the judge it would replace, and its promotion.

Pure. A suite's ``shadows`` maps a judge's feedback name to its candidate, in any judge form
(``BuiltinJudge``, ``GuidelinesJudge``, ``CustomJudge``, ``CodeJudge`` or their dicts). The
candidate must log the same feedback name as the judge it shadows: a ``BuiltinJudge("safety")``
with another model or options, ``{"guidelines": {"polite": [...]}}`` for the guideline
``polite``, a custom or code judge of that name. So once promoted it goes on under the judge's
name and the judge's windows continue. Until then its verdicts are written under
``shadow/<name>`` (``shadow_name``), a name no judge can have, which the windows, alerts and
curation of the judge never read. A shadow runs on exactly the traces its judge sampled; the
candidate's own ``sample_rate`` and ``filter_string`` apply once it is promoted (none given: the
judge's carry over). Session judges are not shadowed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mlflow_monitor_plugin.config.catalog import CATALOG
from mlflow_monitor_plugin.exceptions import MonitorConfigError

SHADOW_PREFIX = "shadow/"
SHADOW_FORMS = (
    "a judge logging the same feedback name: BuiltinJudge(NAME) with another model or args, "
    "{'guidelines': {NAME: [...]}}, or a custom or code judge named NAME"
)


def shadow_name(name: str) -> str:
    """The feedback name a shadow of judge ``name`` writes its verdicts under."""
    return SHADOW_PREFIX + name


def live_name(name: str) -> str | None:
    """The judge a shadow's feedback name stands beside, None for any other name."""
    return name[len(SHADOW_PREFIX) :] if name.startswith(SHADOW_PREFIX) else None


def is_session(judge: Any) -> bool:
    """Whether a config judge scores whole sessions (as far as the config tells: a code
    judge's scope is known once it is loaded)."""
    if getattr(judge, "session", False) is True:
        return True
    name = getattr(judge, "name", None)
    kind = type(judge).__name__
    return kind == "BuiltinJudge" and name in CATALOG and CATALOG[name].session


def check_shadows(
    value: Any, judges: list[Any], read_judge: Callable[[Any, int], Any]
) -> dict[str, Any]:
    """The validated ``shadows`` of a suite whose judges are ``judges``; ``read_judge`` reads a
    judge from its object or dict form (config/model.py ``judge_from_dict``)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MonitorConfigError(
            "AssessmentsSuiteConfig.shadows", value, "expected a dict of {judge name: candidate}"
        )
    owner = {n: j for j in judges for n in j.feedback_names}
    trace_judges = sorted(n for n, j in owner.items() if not is_session(j))
    shadows = {}
    for name, raw in value.items():
        where = f"shadows[{name!r}]"
        if name not in owner:
            raise MonitorConfigError(
                where, name, f"expected a judge of this monitor to shadow: {trace_judges}"
            )
        if is_session(owner[name]):
            raise MonitorConfigError(
                where, name, f"session judges are not shadowed; trace judges: {trace_judges}"
            )
        try:
            candidate = read_judge(raw, 0)
        except MonitorConfigError as e:
            raise MonitorConfigError(f"{where}: {e.field}", e.value, e.allowed) from None
        if tuple(candidate.feedback_names) != (name,):
            raise MonitorConfigError(
                where, list(candidate.feedback_names), f"expected {SHADOW_FORMS} ({name!r})"
            )
        if is_session(candidate):
            raise MonitorConfigError(where, raw, "expected a trace judge, not a session judge")
        if _judging(candidate) == _judging(_only(owner[name], name)):
            raise MonitorConfigError(
                where, raw, "expected a candidate that differs from the judge it shadows"
            )
        shadows[name] = candidate
    return shadows


def _judging(judge: Any) -> dict[str, Any]:
    """What makes a judge's verdicts: its dict form without where and how often it samples."""
    data = dict(judge.to_dict())
    data.pop("sample_rate", None)
    data.pop("filter_string", None)
    return data


def _only(judge: Any, name: str) -> Any:
    """The part of a judge that logs ``name``: one guideline of a guidelines judge."""
    guidelines = getattr(judge, "guidelines", None)
    if isinstance(guidelines, dict) and len(guidelines) > 1:
        return type(judge)({name: guidelines[name]}, judge.sample_rate, judge.model)
    return judge


def promoted(judges: list[Any], shadows: dict[str, Any], name: str) -> tuple[list[Any], dict]:
    """The judges and shadows once the shadow of ``name`` has become the judge: the candidate
    takes the judge's place (a guideline leaves its guidelines judge, the candidate follows
    it), keeping the judge's sample rate and filter unless the candidate sets its own."""
    if name not in shadows:
        allowed = sorted(shadows)
        raise MonitorConfigError(
            "judge",
            name,
            f"expected a judge with a shadow: {allowed}"
            if allowed
            else "expected a judge with a shadow; this monitor has none (add one with "
            "`mlflow monitor update --shadow NAME=SPEC`)",
        )
    candidate = shadows[name]
    out = []
    for judge in judges:
        if name not in judge.feedback_names:
            out.append(judge)
            continue
        if candidate.sample_rate is None and judge.sample_rate is not None:
            candidate = _with(candidate, sample_rate=judge.sample_rate)
        if candidate.filter_string is None and judge.filter_string is not None:
            candidate = _with(candidate, filter_string=judge.filter_string)
        guidelines = getattr(judge, "guidelines", None)
        if isinstance(guidelines, dict) and len(guidelines) > 1:
            rest = {k: v for k, v in guidelines.items() if k != name}
            out.append(type(judge)(rest, judge.sample_rate, judge.model, judge.filter_string))
        out.append(candidate)
    return out, {k: v for k, v in shadows.items() if k != name}


def _with(judge: Any, **fields: Any) -> Any:
    from dataclasses import replace

    return replace(judge, **fields)


def describe(shadows: dict[str, Any]) -> list[str]:
    """Lines for ``mlflow monitor get``."""
    lines = []
    for name, candidate in shadows.items():
        data = _judging(candidate)
        text = ", ".join(f"{k}={v!r}" for k, v in data.items() if k not in ("name", "kind"))
        lines.append(f"    - {name} -> {shadow_name(name)} ({text or 'as configured'})")
    return lines
