"""A daily budget's arithmetic, pure: the rate schedule, a day's spend, the pacing decision.

The budget scales every judge's configured sample rate by a factor in [0, 1] that is a step
function of trace time (``RateSchedule``): a trace at request time ``t`` is judged iff
``hash(trace, monitor) < rate * factor(t)``. Sampling stays dense (a trace picked at the lower
rate is one also picked at the configured rate) and deterministic: the daemon, its sweep, the
windows and a restart all decide the same for the same trace. A step holds until the end of
its UTC day, so each day starts at the configured rate again.

A day is the UTC day of the traces' request time: the budget caps what the judges spend on
one day's traces, which is what a window of that day reports (``DaySpend``).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BUDGET_TAG = "budget"  # the experiment tag mlflow_monitor.budget: the steps, for this monitor
TAG_PREFIX = "mlflow_monitor."  # config/tags.py's NAMESPACE
DAY_MS = 86_400_000
MIN_FACTOR = 1 / 1024  # below this the budget stops judging for the rest of the day
HOUR_MS = 3_600_000


def day_of(timestamp_ms: int) -> int:
    return timestamp_ms - timestamp_ms % DAY_MS


def quantize(factor: float) -> float:
    """The factor rounded down to a power of two (1, 1/2, 1/4, ...), or 0: few steps a day,
    and a rate lowered twice is the same as one lowered once to the same value."""
    if factor >= 1:
        return 1.0
    if factor < MIN_FACTOR:
        return 0.0
    step = 1.0
    while step > factor:
        step /= 2
    return step


@dataclass
class RateSchedule:
    """The budget's factor as steps ``(from_ms, factor)``, each holding to its day's end."""

    steps: list[tuple[int, float]] = field(default_factory=list)

    def factor(self, timestamp_ms: int) -> float:
        i = bisect.bisect_right(self.steps, (timestamp_ms, float("inf"))) - 1
        if i < 0:
            return 1.0
        start, value = self.steps[i]
        return value if day_of(start) == day_of(timestamp_ms) else 1.0

    def set(self, from_ms: int, factor: float) -> bool:
        """Make ``factor`` hold from ``from_ms`` on; steps at or after it are replaced.
        True when the schedule changed."""
        if self.factor(from_ms) == factor and not self._after(from_ms):
            return False
        self.steps = [s for s in self.steps if s[0] < from_ms]
        if self.factor(from_ms) != factor:
            self.steps.append((from_ms, factor))
        return True

    def _after(self, from_ms: int) -> bool:
        return bool(self.steps) and self.steps[-1][0] >= from_ms

    def prune(self, before_ms: int) -> None:
        self.steps = [s for s in self.steps if day_of(s[0]) >= day_of(before_ms)]

    def to_list(self) -> list[list[Any]]:
        return [[start, value] for start, value in self.steps]

    @classmethod
    def from_list(cls, value: Any) -> RateSchedule:
        steps = []
        for item in value if isinstance(value, list) else []:
            try:
                start, factor = int(item[0]), float(item[1])
            except (TypeError, ValueError, IndexError):
                continue  # a damaged step: the configured rate holds there
            if 0.0 <= factor <= 1.0:
                steps.append((start, factor))
        return cls(sorted(steps))


@dataclass
class DaySpend:
    """What the judges spent on one day's traces, and what is promised to calls in flight."""

    day_ms: int
    usd: float = 0.0
    calls: int = 0  # judge verdicts counted (each with its cost known or estimated)
    uncounted: int = 0  # verdicts whose cost is unknown and could not be estimated
    traces: int = 0  # the day's traces seen so far (for the arrival rate)
    last_ms: int = 0  # the newest trace time seen
    reserved: float = 0.0

    def add(self, usd: float | None) -> None:
        if usd is None:
            self.uncounted += 1
        else:
            self.usd += usd
            self.calls += 1

    @property
    def committed(self) -> float:
        return self.usd + self.reserved

    @property
    def per_call(self) -> float | None:
        return self.usd / self.calls if self.calls else None


def pace(
    budget_usd: float,
    spend: DaySpend,
    now_trace_ms: int,
    cost_per_trace: float | None,
    next_call_usd: float | None,
) -> float:
    """The factor for traces from ``now_trace_ms`` on, before rounding.

    0 once what is spent and promised leaves less than the next call's cost. Otherwise the
    share of the rest of the day's expected traces (the day's arrival rate so far) that the
    rest of the budget pays for at the configured rates, at most 1.
    """
    left = budget_usd - spend.committed
    # a relative tolerance: 20 calls of $0.000075 fit $0.0015 though their float sum exceeds it
    if left <= 0 or (next_call_usd is not None and left < next_call_usd * (1 - 1e-9)):
        return 0.0
    if not cost_per_trace or spend.traces < 1:
        return 1.0
    elapsed = max(now_trace_ms - spend.day_ms, HOUR_MS)  # an hour at least: no wild start
    remaining_ms = max(spend.day_ms + DAY_MS - now_trace_ms, 0)
    expected = spend.traces / elapsed * remaining_ms * cost_per_trace
    return 1.0 if expected <= left else left / expected


def schedule_of(tags: Any, experiment_id: str, monitor_id: str) -> RateSchedule:
    """The budget's steps as saved for this monitor (none: the configured rates hold)."""
    try:
        stored = tags.read_json(experiment_id, BUDGET_TAG) or {}
    except Exception:  # the windows fall back to the configured rates
        return RateSchedule()
    if not isinstance(stored, dict) or stored.get("monitor_id") != monitor_id:
        return RateSchedule()
    return RateSchedule.from_list(stored.get("steps"))


def budget_rates(
    schedule: RateSchedule, budgeted: frozenset[str]
) -> Callable[[str, float, int], float]:
    """A judge's effective rate on a trace: its configured rate, times the budget's factor when
    the budget lowers that judge (an LLM judge)."""

    def rate_of(judge: str, rate: float, timestamp_ms: int) -> float:
        if judge not in budgeted or not schedule.steps:
            return rate
        return rate * schedule.factor(timestamp_ms)

    return rate_of


def budget_factor(monitor: Any, tags: dict[str, str], now_ms: int) -> float | None:
    """The daily budget's factor on the sample rates at ``now_ms``, from the experiment's tags
    as read (``tags``: name -> value); None when the monitor has no budget."""
    if monitor.cost.daily_budget_usd is None:
        return None
    try:
        stored = json.loads(tags.get(TAG_PREFIX + BUDGET_TAG) or "null")
    except ValueError:
        stored = None
    if not isinstance(stored, dict) or stored.get("monitor_id") != monitor.monitor_id:
        return 1.0
    return RateSchedule.from_list(stored.get("steps")).factor(now_ms)
