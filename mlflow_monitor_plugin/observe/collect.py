"""A monitor's windows as the store holds them: each trace's outcome per judge, read a UTC day
at a time, with per-hour tallies that are recomputed only for the hours a pass touched."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import TraceInfo

from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint
from mlflow_monitor_plugin.discovery.sampling import is_sampled
from mlflow_monitor_plugin.discovery.strata import draw, matching
from mlflow_monitor_plugin.observe.labels import human_label
from mlflow_monitor_plugin.observe.skipped import Skips
from mlflow_monitor_plugin.observe.windows import (
    DAY_MS,
    HOUR_MS,
    Outcome,
    Tally,
    classify,
    combine,
    tally,
    window_start,
)
from mlflow_monitor_plugin.scoring import usage
from mlflow_monitor_plugin.scoring.feedback import SECONDS_KEY, VERDICT_KEY, judge_states
from mlflow_monitor_plugin.scoring.fingerprint import FINGERPRINT_KEY
from mlflow_monitor_plugin.scoring.judges import monitor_judges

_logger = logging.getLogger(__name__)

Judges = tuple[tuple[str, float], ...]  # (feedback name, sample rate) of each judge
# judge name, configured rate, trace time -> the effective rate (a daily budget's, engine/budget.py)
RateOf = Callable[[str, float, int], float]
Draws = dict[str, tuple[str, float]]  # judge -> (stratum, rate before the budget) on one trace
Strata = dict[str, tuple[Any, ...]]  # judge -> its strata (config/strata.py), stratified only


@functools.lru_cache(maxsize=4096)
def _plain(sampled: bool, rate: float, stratum: str | None = None) -> Outcome:
    """Shared by every trace they describe: most outcomes are unsampled or unscored."""
    return Outcome(sampled=sampled, rate=rate, stratum=stratum)


def window_judges(monitor: Any) -> Judges:
    """(feedback name, sample rate) of the monitor's trace judges. A session judge's verdict
    belongs to a whole session, not to the trace it is logged on, so the windows of traces
    leave session judges out (``status`` counts them per session)."""
    return tuple((j.name, j.rate) for j in monitor_judges(monitor) if not j.session)


def window_strata(monitor: Any) -> Strata:
    """The strata of the monitor's stratified trace judges."""
    return {j.name: j.strata for j in monitor_judges(monitor) if j.strata and not j.session}


def draws_of(
    source: Any, page: list[TraceInfo], strata: Strata | None, judges: Judges
) -> list[Draws | None]:
    """Each trace's stratum and rate per stratified judge: one search per stratum filter."""
    mine = {name: (strata[name], rate) for name, rate in judges if strata and name in strata}
    if not mine:
        return [None] * len(page)
    filters = {s.filter_string for ss, _ in mine.values() for s in ss if s.filter_string}
    matched = matching(source, page, filters)
    return [{j: draw(i, ss, rate, matched) for j, (ss, rate) in mine.items()} for i in page]


def _created(assessments: Iterable[Any]) -> int | None:
    stamps = [a.create_time_ms for a in assessments if getattr(a, "create_time_ms", None)]
    return max(stamps) if stamps else None


def _seconds(assessment: Any) -> float | None:
    try:
        return float((assessment.metadata or {})[SECONDS_KEY])
    except (KeyError, TypeError, ValueError):
        return None  # written before verdicts recorded their latency


def _usage(assessment: Any) -> tuple[int | None, float | None]:
    used = usage.from_metadata(assessment.metadata)
    return (used.total if used else None), usage.cost_of(assessment.metadata)


def outcomes(
    info: TraceInfo,
    monitor_id: str,
    judges: Judges,
    max_failed_passes: int,
    rate_of: RateOf | None = None,
    skips: Skips | None = None,
    draws: Draws | None = None,
) -> dict[str, Outcome]:
    """What this trace contributes to each judge's window, from the monitor's assessments;
    ``rate_of`` gives a judge's effective rate on the trace when a budget lowered it, ``skips``
    where the daemon did not run a judge (a reader's view: the daemon's windows go without),
    ``draws`` the trace's stratum and its rate for the stratified judges (``draws_of``)."""
    states = judge_states(info, monitor_id)
    result = {}
    for name, configured in judges:
        stratum, base = draws[name] if draws and name in draws else (None, configured)
        rate = rate_of(name, base, info.timestamp_ms) if rate_of else base
        if not is_sampled(info.trace_id, monitor_id, rate):
            result[name] = _plain(False, rate, stratum)
            continue
        state = states.get(name)
        if state and state.verdicts:
            # the verdict the reconcile keeps when two daemons raced: the lowest verdict id
            group = min(state.verdicts, key=lambda g: g[0].metadata.get(VERDICT_KEY, ""))
            primary = [a for a in group if a.name == name] or group[:1]
            kind, value = combine([classify(getattr(a, "value", None)) for a in primary])
            tokens, cost = _usage(group[0])
            result[name] = Outcome(
                True, kind, value, _seconds(group[0]), False, _created(group), rate, tokens, cost,
                stratum, group[0].metadata.get(FINGERPRINT_KEY),
                human_label(info.assessments, name),
            )  # fmt: skip
        elif state and state.errors:
            retryable = state.failed_passes < max_failed_passes
            tokens, cost = _usage(max(state.errors, key=lambda a: a.create_time_ms or 0))
            result[name] = Outcome(
                True, "error", None, None, retryable, _created(state.errors), rate, tokens, cost,
                stratum,
            )  # fmt: skip
        elif skips is not None and skips.reason(name, info.timestamp_ms):
            result[name] = Outcome(True, "skipped", rate=rate, stratum=stratum)
        else:
            result[name] = _plain(True, rate, stratum)
    return result


@dataclass
class Day:
    """One UTC day of a monitor's traces, by hour, and the hours' tallies per judge."""

    start_ms: int
    hours: dict[int, dict[str, dict[str, Outcome]]] = field(default_factory=dict)
    _tallies: dict[int, dict[str, Tally]] = field(default_factory=dict)
    stamps: dict[str, int] = field(default_factory=dict)  # each trace's request time

    def put(self, timestamp_ms: int, trace_id: str, by_judge: dict[str, Outcome]) -> int:
        hour = window_start(timestamp_ms, HOUR_MS)
        self.hours.setdefault(hour, {})[trace_id] = by_judge
        self.stamps[trace_id] = timestamp_ms
        self._tallies.pop(hour, None)
        return hour

    def between(self, from_ms: int, until_ms: int, judges: Judges) -> dict[str, Tally]:
        """The tallies of the traces whose request time is in ``[from_ms, until_ms)``."""
        found = {name: Tally() for name, _ in judges}
        for hour, traces in self.hours.items():
            if hour + HOUR_MS <= from_ms or hour >= until_ms:
                continue
            for trace_id, by_judge in traces.items():
                if from_ms <= self.stamps.get(trace_id, hour) < until_ms:
                    for name, _ in judges:
                        if name in by_judge:
                            found[name].add(by_judge[name])
        return found

    def hour_tallies(self, hour: int, judges: Judges) -> dict[str, Tally]:
        if hour not in self._tallies:
            traces = self.hours.get(hour, {}).values()
            self._tallies[hour] = {
                name: tally(t[name] for t in traces if name in t) for name, _ in judges
            }
        return self._tallies[hour]

    def day_tallies(self, judges: Judges) -> dict[str, Tally]:
        total = {name: Tally() for name, _ in judges}
        for hour in sorted(self.hours):
            for name, part in self.hour_tallies(hour, judges).items():
                total[name] = total[name].merge(part)
        return total


class WindowReader:
    """Reads a monitor's outcomes from the store: whole days, or the traces a pass touched."""

    def __init__(
        self,
        source: Any,
        monitor_id: str,
        judges: Judges,
        max_failed_passes: int,
        page_size: int = 500,
        rate_of: RateOf | None = None,
        skips: Skips | None = None,
        strata: Strata | None = None,
    ):
        self.source = source  # a discovery TraceSource (finished, non-evaluation traces)
        self.strata = strata  # the stratified judges' strata (config/strata.py)
        self.monitor_id = monitor_id
        self.judges = judges
        self.max_failed_passes = max_failed_passes
        self.page_size = page_size
        self.rate_of = rate_of
        self.skips = skips

    def _infos(self, from_ms: int, until_ms: int) -> Iterable[tuple[TraceInfo, Draws | None]]:
        for page in self.source.infos_after(Checkpoint(from_ms, ""), self.page_size, until_ms):
            yield from zip(page, draws_of(self.source, page, self.strata, self.judges), strict=True)

    def _outcomes(self, info: TraceInfo, draws: Draws | None = None) -> dict[str, Outcome]:
        return outcomes(
            info, self.monitor_id, self.judges, self.max_failed_passes, self.rate_of, self.skips,
            draws,
        )  # fmt: skip

    def load_day(self, day_start_ms: int) -> Day:
        day = Day(day_start_ms)
        for info, draws in self._infos(day_start_ms, day_start_ms + DAY_MS):
            day.put(info.timestamp_ms, info.trace_id, self._outcomes(info, draws))
        return day

    def refresh(self, day: Day, touched: dict[str, int]) -> dict[str, dict[str, Outcome]]:
        """Re-read the touched traces of ``day`` (one time range per hour they fall in) and
        store what they carry now; returns their outcomes by trace id."""
        by_hour: dict[int, list[int]] = {}
        for stamp in touched.values():
            by_hour.setdefault(window_start(stamp, HOUR_MS), []).append(stamp)
        fresh = {}
        for stamps in by_hour.values():
            for trace_id, by_judge in self.read_range(day, min(stamps), max(stamps) + 1):
                if trace_id in touched:
                    fresh[trace_id] = by_judge
        return fresh

    def read_range(
        self, day: Day, from_ms: int, until_ms: int
    ) -> list[tuple[str, dict[str, Outcome]]]:
        """Re-read every trace of ``day`` in [from_ms, until_ms) and store what it carries."""
        read = []
        for info, draws in self._infos(from_ms, until_ms):
            by_judge = self._outcomes(info, draws)
            day.put(info.timestamp_ms, info.trace_id, by_judge)
            read.append((info.trace_id, by_judge))
        return read

    def outcomes_of(self, day: Day, trace_ids: Iterable[str]) -> dict[str, dict[str, Outcome]]:
        wanted = set(trace_ids)
        return {
            trace_id: by_judge
            for traces in day.hours.values()
            for trace_id, by_judge in traces.items()
            if trace_id in wanted
        }


def last_hour(days: dict[int, Day], judges: Judges, now_ms: int) -> dict[str, Tally]:
    """Each judge's tally over the traces whose request time is in the hour up to ``now_ms``."""
    total = {name: Tally() for name, _ in judges}
    for start, day in days.items():
        if start + DAY_MS > now_ms - HOUR_MS and start <= now_ms:
            for name, part in day.between(now_ms - HOUR_MS, now_ms + 1, judges).items():
                total[name] = total[name].merge(part)
    return total
