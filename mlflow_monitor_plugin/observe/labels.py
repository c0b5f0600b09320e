"""People's labels beside a judge's verdicts: which label counts, what a judge can say, and the
agreement numbers of a window. Pure (reads the assessment objects a trace info carries).

A person labels a trace for a judge by giving feedback under the judge's feedback name with a
HUMAN source: the UI's "Add feedback" or its edit of the judge's assessment (an override), the
Review page, ``mlflow.log_feedback(source=AssessmentSource("HUMAN", ...))`` or ``mlflow monitor
label``. The label that counts is the person's latest valid one: a label edited in the UI
leaves the old one invalid, so its latest value counts. It is paired with the judge's verdict
(the one the windows count, even when the person's override made it invalid). A label of a
kind the judge never gives (a number for a yes/no judge) is not paired; the windows count it
in ``human_invalid``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Feedback

from mlflow_monitor_plugin.config.catalog import CATALOG
from mlflow_monitor_plugin.exceptions import MonitorConfigError
from mlflow_monitor_plugin.observe.agreement import agreement
from mlflow_monitor_plugin.observe.windows import category, classify
from mlflow_monitor_plugin.scoring.feedback import is_human
from mlflow_monitor_plugin.scoring.fingerprint import fingerprint_number

YES_NO = ("yes", "no")
# A built-in judge's labels when not yes/no, by name.
_BUILTIN_CHOICES = {"user_frustration": ("none", "resolved", "unresolved")}


@dataclass(frozen=True)
class LabelSpace:
    """What a judge's verdicts can be: ``yes/no``, ``number``, ``choices`` (``choices``),
    ``text`` or ``any`` (a code or registered judge: whatever it returns)."""

    kind: str
    choices: tuple[str, ...] = ()

    def allows(self, label: str) -> bool:
        if self.kind == "yes/no":
            return label in YES_NO
        if self.kind == "number":
            return label not in YES_NO and _is_number(label)
        if self.kind == "choices":
            return label in self.choices
        return True

    def describe(self) -> str:
        if self.kind == "yes/no":
            return "yes or no (or true/false, pass/fail)"
        if self.kind == "number":
            return "a number"
        if self.kind == "choices":
            return f"one of {list(self.choices)}"
        return "any value"


ANY = LabelSpace("any")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def space_of(judge: Any, name: str) -> LabelSpace:
    """The labels of a config judge (config/model.py, config/custom.py) under ``name``."""
    kind = type(judge).__name__
    if kind == "GuidelinesJudge":
        return LabelSpace("yes/no")
    if kind == "BuiltinJudge":
        if name in _BUILTIN_CHOICES:
            return LabelSpace("choices", _BUILTIN_CHOICES[name])
        return LabelSpace("yes/no") if name in CATALOG else ANY
    if kind == "CustomJudge":
        value_type = judge.feedback_value_type
        if value_type == "bool":
            return LabelSpace("yes/no")
        if value_type in ("int", "float"):
            return LabelSpace("number")
        if isinstance(value_type, list):
            return LabelSpace("choices", tuple(str(v).strip().lower() for v in value_type))
        return LabelSpace("text")
    return ANY


def label_spaces(monitor: Any) -> dict[str, LabelSpace]:
    """The label space of every judge of a monitor, by feedback name (a judge registered in
    MLflow: any value)."""
    spaces = {}
    for judge in monitor.assessments_config.assessments or []:
        for name in judge.feedback_names:
            spaces[name] = space_of(judge, name)
    return spaces


def check_label(space: LabelSpace, value: Any, judge: str) -> str:
    """The label of ``value``, or ``MonitorConfigError`` naming what the judge gives."""
    label = category(*classify(value))
    if not space.allows(label):
        raise MonitorConfigError(
            "value", value, f"judge {judge} gives {space.describe()}: a label must be one of them"
        )
    return label


def latest_human(assessments: Iterable[Any], name: str) -> Any | None:
    """A person's latest valid feedback named ``name`` among a trace's assessments."""
    latest = None
    for a in assessments or []:
        if a.name != name or not isinstance(a, Feedback) or not is_human(a):
            continue
        if a.valid is False or getattr(a, "error", None) is not None or a.value is None:
            continue
        if latest is None or (a.create_time_ms or 0, a.assessment_id) > (
            latest.create_time_ms or 0,
            latest.assessment_id,
        ):
            latest = a
    return latest


def human_label(assessments: Iterable[Any], name: str) -> str | None:
    """The label of a person's latest valid feedback for judge ``name``, None without one."""
    found = latest_human(assessments, name)
    return None if found is None else category(*classify(found.value))


def trust_stats(
    pairs: Mapping[tuple[str, str], int],
    fingerprints: Mapping[str, int],
    space: LabelSpace | None = None,
) -> dict[str, Any]:
    """A window's fingerprints and agreement-with-people numbers, from a tally's counts:
    ``pairs`` (judge's label, person's label) -> traces, ``fingerprints`` -> when its newest
    verdict was written. ``fingerprint`` is the newest judge's; ``fingerprint_before`` the one
    before it in the window, when the judge changed in it."""
    space = space or ANY
    valid = {k: n for k, n in pairs.items() if space.allows(k[1])}
    numbers = agreement(valid)
    newest = sorted(fingerprints, key=lambda f: (fingerprints[f], f), reverse=True)
    return {
        "fingerprint": newest[0] if newest else None,
        "fingerprint_before": newest[1] if len(newest) > 1 else None,
        "fingerprints": len(fingerprints),
        "judge_fingerprint": fingerprint_number(newest[0] if newest else None),
        "human_labels": numbers["n"],
        "human_agreed": numbers["agreed"],
        "human_agreement": numbers["agreement"],
        "human_agreement_low95": numbers["agreement_low95"],
        "human_agreement_high95": numbers["agreement_high95"],
        "human_kappa": numbers["kappa"],
        "human_kappa_low95": numbers["kappa_low95"],
        "human_kappa_high95": numbers["kappa_high95"],
        "human_overrides": numbers["n"] - numbers["agreed"],
        "human_invalid": sum(pairs.values()) - numbers["n"],
    }
