"""A person's label for a judge on a trace, as ``mlflow monitor label`` gives it, and the
traces where a person and a judge disagree (``curate --disagreement``).

A label is feedback under the judge's name with a HUMAN source, the form the MLflow UI's "Add
feedback" writes, checked first against what the judge can say (observe/labels.py). A person's
second label on a trace overrides their first (MLflow keeps the first, marked invalid), so the
latest one counts, as when a label is edited in the UI.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.entities import AssessmentSource, AssessmentSourceType, Feedback, TraceInfo
from mlflow.tracking import MlflowClient

from mlflow_monitor_plugin.config.model import ExternalMonitor
from mlflow_monitor_plugin.config.tags import MonitorTags
from mlflow_monitor_plugin.exceptions import MonitorConfigError, MonitorNotFoundError
from mlflow_monitor_plugin.observe.labels import (
    LabelSpace,
    check_label,
    label_spaces,
    latest_human,
)
from mlflow_monitor_plugin.observe.windows import category, classify, combine
from mlflow_monitor_plugin.scoring.feedback import VERDICT_KEY, judge_states

DEFAULT_USER = "mlflow-monitor-cli"


def labelled_judge(monitor: ExternalMonitor, judge: str) -> LabelSpace:
    """The label space of one of the monitor's judges; ``MonitorConfigError`` naming them."""
    spaces = label_spaces(monitor)
    if judge not in spaces:
        raise MonitorConfigError(
            "judge", judge, f"expected a judge of this monitor: {list(spaces)}"
        )
    return spaces[judge]


def label_trace(
    experiment_id: str,
    trace_id: str,
    judge: str,
    value: Any,
    rationale: str | None = None,
    user: str = DEFAULT_USER,
) -> Feedback:
    """Log ``value`` as ``user``'s label for ``judge`` on the trace; refused (a config error)
    when the judge never gives such a value. Returns the logged feedback."""
    client = MlflowClient()
    monitor = MonitorTags(client).read_config(experiment_id)
    if monitor is None:
        raise MonitorNotFoundError(f"Experiment {experiment_id} has no monitor.")
    space = labelled_judge(monitor, judge)
    check_label(space, value, judge)
    trace = client.get_trace(trace_id)
    if trace.info.experiment_id != experiment_id:
        raise MonitorConfigError(
            "trace_id", trace_id, f"expected a trace of experiment {experiment_id}"
        )
    source = AssessmentSource(AssessmentSourceType.HUMAN, user)
    mine = [
        a
        for a in trace.info.assessments or []
        if a.name == judge and a.valid is not False and a.source.source_id == user
        and a.source.source_type == AssessmentSourceType.HUMAN
    ]  # fmt: skip
    feedback = Feedback(name=judge, value=value, rationale=rationale, source=source)
    if mine:  # their newer label supersedes their older one, as an edit in the UI does
        feedback.overrides = max(mine, key=lambda a: a.create_time_ms or 0).assessment_id
    return mlflow.log_assessment(trace_id, feedback)


def judge_verdict(info: TraceInfo, monitor_id: str, judge: str) -> tuple[str, list[Any]] | None:
    """The judge's verdict on a trace as the windows count it (a person's override, which
    leaves it invalid, does not hide it): its label and feedbacks."""
    state = judge_states(info, monitor_id).get(judge)
    if not state or not state.verdicts:
        return None
    group = min(state.verdicts, key=lambda g: g[0].metadata.get(VERDICT_KEY, ""))
    primary = [a for a in group if a.name == judge] or group[:1]
    return category(*combine([classify(a.value) for a in primary])), group


def disagreement_on(
    info: TraceInfo, monitor_id: str, judge: str, space: LabelSpace
) -> tuple[list[Any], Any] | None:
    """The judge's feedbacks and the person's label on a trace where they disagree, else None
    (no verdict, no label, agreement, or a label of a kind the judge never gives)."""
    verdict = judge_verdict(info, monitor_id, judge)
    person = latest_human(info.assessments, judge)
    if verdict is None or person is None:
        return None
    label = category(*classify(person.value))
    if not space.allows(label) or label == verdict[0]:
        return None
    return verdict[1], person


def human_tags(person: Any) -> dict[str, str]:
    """The tags a curated record carries of the person's label."""
    tags = {
        "mlflow_monitor.human_value": str(person.value),
        "mlflow_monitor.human_source": str(person.source.source_id),
    }
    if person.rationale:
        tags["mlflow_monitor.human_rationale"] = str(person.rationale)[:1000]
    return tags
