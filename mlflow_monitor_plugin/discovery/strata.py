"""Which stratum a trace is in for a judge, and so its sample rate (config/strata.py).

Pure but for ``matching``, which asks the trace source once per stratum filter for a page of
traces (the same search the judges' own ``filter_string`` uses). A human feedback stratum is
decided from the assessments the trace carries (they come back with the search): a valid
feedback of that name, from a person (source type ``HUMAN``), of that value. Such a trace
changes stratum when the feedback arrives; the sweep scores it then, when the new stratum's
rate picks it and the old one did not (``newly_by_feedback``).

The strata are config/strata.py's ``Stratum`` (name, sample_rate, filter_string,
human_feedback with name and value), read by attribute: discovery does not import config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mlflow.entities import Feedback, TraceInfo

DEFAULT_STRATUM = "default"  # the traces no stratum matches (config/strata.py's too)
Matched = Mapping[str, set[str]]  # filter string -> the ids of a page it matches
HUMAN = "HUMAN"


def filters_of(judges: Iterable[Any]) -> set[str]:
    """The filter strings of the judges' strata."""
    return {s.filter_string for j in judges for s in getattr(j, "strata", ()) if s.filter_string}


def matching(source: Any, infos: list[TraceInfo], filters: Iterable[str]) -> dict[str, set[str]]:
    """The ids among ``infos`` each filter matches: one search per filter."""
    return {f: source.matching(infos, f) for f in filters}


def feedback_text(value: Any) -> str:
    """A feedback value as text to compare: booleans ``true``/``false``, whole numbers without
    a fraction (``1.0`` is ``1``), text trimmed and lower-cased."""
    value = getattr(value, "value", value)  # CategoricalRating is an enum
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip().lower()


def has_feedback(info: TraceInfo, wanted: Any) -> bool:
    """Whether the trace carries a valid human feedback named and valued as ``wanted``."""
    for assessment in info.assessments or []:
        if not isinstance(assessment, Feedback) or assessment.name != wanted.name:
            continue
        source = getattr(assessment, "source", None)
        if getattr(source, "source_type", None) != HUMAN or assessment.valid is False:
            continue
        if getattr(assessment, "error", None) is not None:
            continue
        if wanted.value is None or feedback_text(assessment.value) == feedback_text(wanted.value):
            return True
    return False


def _matches(info: TraceInfo, stratum: Any, matched: Matched, feedback: bool) -> bool:
    if stratum.filter_string and info.trace_id not in matched.get(stratum.filter_string, ()):
        return False
    if stratum.human_feedback is not None:
        return feedback and has_feedback(info, stratum.human_feedback)
    return True


def draw(
    info: TraceInfo,
    strata: tuple[Any, ...],
    default_rate: float,
    matched: Matched,
    feedback: bool = True,
) -> tuple[str, float]:
    """(stratum name, sample rate) of the trace: its first matching stratum, else the
    default. ``feedback=False``: as if no human feedback had arrived yet."""
    for stratum in strata:
        if _matches(info, stratum, matched, feedback):
            return stratum.name, stratum.sample_rate
    return DEFAULT_STRATUM, default_rate


def newly_by_feedback(
    info: TraceInfo,
    strata: tuple[Any, ...],
    default_rate: float,
    matched: Matched,
    sampled: Callable[[float], bool],
) -> bool:
    """Whether a human feedback put the trace into the sample: its stratum is a human
    feedback one, and the stratum it had without the feedback did not pick it (``sampled``
    says whether a base rate picks the trace, the budget's factor included)."""
    name, _ = draw(info, strata, default_rate, matched)
    if not any(s.name == name and s.human_feedback for s in strata):
        return False
    _, before = draw(info, strata, default_rate, matched, feedback=False)
    return not sampled(before)
