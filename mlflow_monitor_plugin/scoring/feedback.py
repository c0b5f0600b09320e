"""Write verdicts with ``mlflow.log_feedback``, exactly once per (trace, judge).

Every feedback we log names who made it in its source (``judge_source``) and carries metadata
naming the monitor, the judge, the config version and a verdict id shared by the feedbacks of one
verdict (a retrieval judge logs several), with their count. Reading a trace's assessments back
therefore tells, for each judge, whether a complete verdict is there, only part of one (a crash
mid-write), or an error from an earlier pass. That is what makes a rerun after a crash write
nothing twice; ``reconcile`` removes the duplicates two daemons racing on the same trace can
leave, keeping the same verdict whichever daemon looks.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlflow
from mlflow.entities import (
    AssessmentError,
    AssessmentSource,
    AssessmentSourceType,
    Feedback,
    TraceInfo,
)

from mlflow_monitor_plugin.redact import redact
from mlflow_monitor_plugin.scoring.fingerprint import feedback_name, provenance
from mlflow_monitor_plugin.scoring.judges import JudgeSpec
from mlflow_monitor_plugin.scoring.runner import Verdict

_logger = logging.getLogger(__name__)

MONITOR_KEY = "mlflow_monitor.monitor_id"
JUDGE_KEY = "mlflow_monitor.judge"
VERDICT_KEY = "mlflow_monitor.verdict_id"
PARTS_KEY = "mlflow_monitor.parts"
CONFIG_VERSION_KEY = "mlflow_monitor.config_version"
FAILED_PASSES_KEY = "mlflow_monitor.failed_passes"
SECONDS_KEY = "mlflow_monitor.seconds"  # the judge's latency (absent before version 0.2)
SESSION_VERSION_KEY = "mlflow_monitor.session_version"  # on a session judge's verdicts
STRATUM_KEY = "mlflow_monitor.stratum"  # the trace's stratum for the judge (config/strata.py)
INCLUSION_KEY = "mlflow_monitor.inclusion_prob"  # its sample rate there, budget included
SCORER_NAME_KEY = "mlflow.assessment.scorerName"  # MLflow's, on a registered scorer's feedback
ONLINE_SESSION_KEY = "mlflow.assessment.onlineScoringSessionId"
CODE_SOURCE_PREFIX = "mlflow_monitor/"
# What MLflow's Feedback carries when its maker named no one: never a judge's name.
_ANONYMOUS_SOURCE_IDS = (None, "", "default")


def judge_source(judge: JudgeSpec) -> AssessmentSource:
    """Who a judge's verdicts name as their source: an LLM judge's model URI, the id MLflow's own
    judges give (``openai:/gpt-4o-mini``); ``mlflow_monitor/<judge>`` for a code judge."""
    if judge.is_llm:
        from mlflow.genai.judges.utils import get_default_model

        return AssessmentSource(AssessmentSourceType.LLM_JUDGE, judge.model or get_default_model())
    return AssessmentSource(AssessmentSourceType.CODE, CODE_SOURCE_PREFIX + judge.name)


def draw_metadata(judge: JudgeSpec) -> dict[str, str]:
    """The stratum and inclusion probability a trace judge's verdict was sampled with."""
    if judge.draw is None:
        return {}
    stratum, probability = judge.draw
    return {STRATUM_KEY: stratum, INCLUSION_KEY: repr(float(probability))}


def _feedback_source(feedback: Any, judge: JudgeSpec) -> AssessmentSource:
    """The scorer's own source when it names someone of the judge's kind, else ``judge_source``
    (MLflow's code scorers leave every Feedback's default, CODE ``default``)."""
    ours = judge_source(judge)
    theirs = feedback.source
    if (
        theirs is not None
        and theirs.source_type == ours.source_type
        and theirs.source_id not in _ANONYMOUS_SOURCE_IDS
    ):
        return theirs
    return ours


@dataclass
class JudgeState:
    """What a monitor has already written on one trace for one judge."""

    complete: list[list[Any]] = field(default_factory=list)  # whole verdicts, each a group
    partial: list[list[Any]] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)
    # Verdicts MLflow's own online scoring wrote for this judge (engine/native.py): they make
    # the pair done, count in the windows when the monitor wrote none, and are never deleted.
    native: list[Any] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return bool(self.complete or self.native)

    @property
    def untidy(self) -> bool:
        """A whole verdict with something beside it: another verdict, a partial one or an
        error, which a crash between a write and its clean-up (or a race) leaves."""
        return bool(self.complete) and bool(len(self.complete) > 1 or self.partial or self.errors)

    @property
    def verdicts(self) -> list[list[Any]]:
        """The complete verdicts, the monitor's own first, else MLflow's runner's."""
        return self.complete or [[a] for a in self.native]

    @property
    def failed_passes(self) -> int:
        return max((int(a.metadata.get(FAILED_PASSES_KEY, 1)) for a in self.errors), default=0)


def judge_states(info: TraceInfo, monitor_id: str) -> dict[str, JudgeState]:
    """Group this monitor's assessments on a trace by judge and verdict."""
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    states: dict[str, JudgeState] = defaultdict(JudgeState)
    for assessment in info.assessments or []:
        meta = assessment.metadata or {}
        if _native(assessment, meta):
            states[meta[SCORER_NAME_KEY]].native.append(assessment)
            continue
        if meta.get(MONITOR_KEY) != monitor_id or JUDGE_KEY not in meta:
            continue
        if is_human(assessment):
            continue  # a person's override in the UI, which copies the verdict's metadata
        if SESSION_VERSION_KEY in meta:
            continue  # a session's verdict: see session_states
        if getattr(assessment, "error", None) is not None:
            states[meta[JUDGE_KEY]].errors.append(assessment)
        else:
            groups[(meta[JUDGE_KEY], meta.get(VERDICT_KEY, ""))].append(assessment)
    for (judge, _), group in sorted(groups.items()):
        expected = int(group[0].metadata.get(PARTS_KEY, 1))
        state = states[judge]
        (state.complete if len(group) >= expected else state.partial).append(group)
    return dict(states)


def is_human(assessment: Any) -> bool:
    """Whether a person gave the assessment (the UI's "Add feedback", an override, the Review
    page, or ``log_feedback`` with a HUMAN source)."""
    source = getattr(assessment, "source", None)
    kind = getattr(source, "source_type", None)
    return str(getattr(kind, "value", kind)).upper() == AssessmentSourceType.HUMAN


def _native(assessment: Any, meta: dict[str, Any]) -> bool:
    """A verdict of a judge registered in MLflow, written by MLflow (its online scoring, or a
    run of the registered judge): no monitor's metadata, the registered scorer's name, no
    error, on a trace (a session's verdict has its own metadata)."""
    return (
        SCORER_NAME_KEY in meta
        and MONITOR_KEY not in meta
        and getattr(assessment, "error", None) is None
        and ONLINE_SESSION_KEY not in meta
        and getattr(assessment, "valid", True) is not False
        and not is_human(assessment)  # a person's edit copies the metadata
    )


@dataclass
class SessionState:
    """What a monitor has written for one session judge on the session's first trace: its
    verdicts (the newest valid one supersedes the older ones, which are kept invalid) and
    errors. A verdict a person has overridden is invalid too, and still counts as done."""

    verdicts: list[Any] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)

    def done(self, version: str) -> bool:
        return any(a.metadata.get(SESSION_VERSION_KEY) == version for a in self.verdicts)

    @property
    def current(self) -> Any | None:
        valid = [a for a in self.verdicts if a.valid is not False]
        return max(valid, key=lambda a: a.create_time_ms, default=None)

    @property
    def failed_passes(self) -> int:
        return max((int(a.metadata.get(FAILED_PASSES_KEY, 1)) for a in self.errors), default=0)

    def as_judge_state(self) -> JudgeState:
        """The errors, as ``FeedbackWriter.write`` replaces them."""
        return JudgeState(errors=list(self.errors))


def session_states(info: TraceInfo, monitor_id: str) -> dict[str, SessionState]:
    """This monitor's session verdicts on a session's first trace, by judge."""
    states: dict[str, SessionState] = defaultdict(SessionState)
    for assessment in info.assessments or []:
        meta = assessment.metadata or {}
        if meta.get(MONITOR_KEY) != monitor_id or SESSION_VERSION_KEY not in meta:
            continue
        state = states[meta.get(JUDGE_KEY, "")]
        if getattr(assessment, "error", None) is not None:
            state.errors.append(assessment)
        else:
            state.verdicts.append(assessment)
    return dict(states)


class FeedbackWriter:
    """Logs a monitor's verdicts on traces, and cleans up what a crash or a race left."""

    def __init__(
        self,
        monitor_id: str,
        config_version: int,
        log_feedback: Callable[..., Any] = mlflow.log_feedback,
        delete_assessment: Callable[..., Any] = mlflow.delete_assessment,
        log_assessment: Callable[..., Any] = mlflow.log_assessment,
        experiment_id: str = "",
    ):
        self.monitor_id = monitor_id
        self.config_version = config_version
        self.experiment_id = experiment_id  # whose traces (a scoring process fetches them)
        self._log = log_feedback
        self._delete = delete_assessment
        self._log_assessment = log_assessment

    def _metadata(
        self, judge: str, verdict_id: str, parts: int, seconds: float = 0.0
    ) -> dict[str, str]:
        return {
            MONITOR_KEY: self.monitor_id,
            JUDGE_KEY: judge,
            VERDICT_KEY: verdict_id,
            PARTS_KEY: str(parts),
            CONFIG_VERSION_KEY: str(self.config_version),
            SECONDS_KEY: f"{seconds:.3f}",
        }

    def write(self, verdict: Verdict, state: JudgeState | None, charge: bool = True) -> int:
        """Log a verdict (or its error), remove what it supersedes; return the feedbacks logged."""
        state = state or JudgeState()
        trace_id = verdict.trace_id
        verdict_id = uuid.uuid4().hex
        judge = verdict.judge
        if verdict.ok:
            for feedback in verdict.feedbacks:
                fields = dict(
                    name=feedback_name(judge, feedback.name),
                    value=feedback.value,
                    rationale=redact(feedback.rationale) if feedback.rationale else None,
                    source=_feedback_source(feedback, judge),
                    metadata={
                        **{k: str(v) for k, v in (feedback.metadata or {}).items()},
                        **verdict.metadata,
                        **draw_metadata(judge),
                        **self._metadata(
                            judge.name, verdict_id, len(verdict.feedbacks), verdict.seconds
                        ),
                        **provenance(judge),
                    },
                    span_id=feedback.span_id or verdict.root_span_id,
                )
                if verdict.overrides:  # the store marks the superseded verdict invalid
                    self._log_assessment(trace_id, Feedback(**fields, overrides=verdict.overrides))
                else:
                    self._log(trace_id=trace_id, **fields)
            stale = state.errors + [a for group in state.partial for a in group]
        else:
            metadata = {
                **verdict.metadata,
                **draw_metadata(judge),
                **self._metadata(judge.name, verdict_id, 1, verdict.seconds),
                **provenance(judge),
            }
            passes = state.failed_passes + 1 if charge else max(state.failed_passes, 1)
            metadata[FAILED_PASSES_KEY] = str(passes)
            self._log(
                trace_id=trace_id,
                name=judge.name,
                source=judge_source(judge),
                error=AssessmentError(
                    error_code=verdict.error_code or "JUDGE_ERROR",
                    error_message=verdict.error or "unknown error",
                ),
                metadata=metadata,
                span_id=verdict.root_span_id,
            )
            stale = state.errors
        for assessment in stale:
            self._delete_quietly(trace_id, assessment.assessment_id)
        return len(verdict.feedbacks) if verdict.ok else 1

    def reconcile(self, info: TraceInfo) -> int:
        """Keep one complete verdict per judge (the lowest verdict id); delete the others and
        any error or partial verdict beside it. Returns the assessments deleted."""
        deleted = 0
        for state in judge_states(info, self.monitor_id).values():
            if not state.complete:
                continue
            keep = min(state.complete, key=lambda g: g[0].metadata.get(VERDICT_KEY, ""))
            extra = [g for g in state.complete + state.partial if g is not keep]
            for assessment in [a for g in extra for a in g] + state.errors:
                self._delete_quietly(info.trace_id, assessment.assessment_id)
                deleted += 1
        return deleted

    def _delete_quietly(self, trace_id: str, assessment_id: str) -> None:
        try:
            self._delete(trace_id=trace_id, assessment_id=assessment_id)
        except Exception as e:  # already deleted by another daemon
            _logger.debug("Could not delete assessment %s: %s", assessment_id, e)
