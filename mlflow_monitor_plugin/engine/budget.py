"""The daily budget in the daemon: lower the sample rate so a day's judge spend stays under it.

``Budget`` sits beside a monitor's engine. For every (trace, judge) the pass considers it gives
the effective rate, ``rate * factor(trace time)`` (observe/spend.py); for every pair made due
it reserves the judge's expected cost, and each verdict replaces its reservation with what the
verdict's metadata says it cost. A judge whose cost per call is not known yet (a new monitor:
no verdict of it on any day the budget read, and no stated ``call_cost_usd``) is *probed*
first: the pass scores the smallest prefix of its page that holds ``PROBES`` sampled pairs of
that judge and waits for their verdicts (``probe_prefix``), so the measured tokens, at the
model's price, give the estimate before anything more is promised. So the day stops at the
budget give or take the probe calls (at most ``PROBES`` per judge, once per monitor), the
calls already in flight when the budget binds, and the difference between a call's cost and
its judge's mean.

State. The spend of a day is derived from the store, not kept: the first time a pass meets a
day's traces, the budget reads that day's traces and sums the cost in this monitor's verdict
metadata (each verdict once, error feedback included). A restart therefore resumes from the
true spend, nothing is double-counted, and two daemons (one holding the lease) agree. Only the
decisions are persisted: the factor's steps, in the experiment tag ``mlflow_monitor.budget``,
written before any pair sampled under a new step is scored, so the sweep, the windows and a
restarted daemon sample exactly as the pass did. Spend made by another process (a backfill)
on a day this daemon has in memory is seen at its next start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from mlflow.entities import TraceInfo

from mlflow_monitor_plugin.config.model import ExternalMonitor
from mlflow_monitor_plugin.config.prices import PriceBook
from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint
from mlflow_monitor_plugin.discovery.sampling import is_sampled
from mlflow_monitor_plugin.exceptions import MonitorError
from mlflow_monitor_plugin.observe.spend import (
    BUDGET_TAG,
    DAY_MS,
    HOUR_MS,
    DaySpend,
    RateSchedule,
    day_of,
    pace,
    quantize,
)
from mlflow_monitor_plugin.scoring import usage
from mlflow_monitor_plugin.scoring.feedback import JUDGE_KEY, MONITOR_KEY, VERDICT_KEY
from mlflow_monitor_plugin.scoring.judges import JudgeSpec
from mlflow_monitor_plugin.scoring.runner import Verdict

_logger = logging.getLogger(__name__)

KEEP_DAYS = 35  # steps older than this are dropped (windows that old are no longer recomputed)
PROBES = 2  # calls of a judge whose cost is unknown scored before anything more is promised


def priced(judges: list[JudgeSpec], monitor: ExternalMonitor, book: PriceBook) -> list[JudgeSpec]:
    """The judges with their model's price, where one is known (config/prices.py)."""
    out = []
    for judge in judges:
        if judge.is_llm:
            judge = replace(judge, price=book.price(judge.model or _default_model()))
        out.append(judge)
    return out


def _default_model() -> str:
    from mlflow.genai.judges.utils import get_default_model

    return get_default_model()


@dataclass
class _Reservation:
    day: int
    usd: float


@dataclass
class _JudgeCost:
    usd: float = 0.0
    calls: int = 0

    @property
    def mean(self) -> float | None:
        return self.usd / self.calls if self.calls else None


@dataclass
class BudgetStatus:
    """What ``status`` shows of a budget, also saved in its tag."""

    budget_usd: float
    day_ms: int
    spent_usd: float
    factor: float
    binding_since_ms: int | None = None
    enforced: bool = True
    reason: str | None = None


class Budget:
    """One monitor's daily budget in one daemon. ``rate``/``reserve`` are called as pairs are
    sampled, ``charge`` as verdicts arrive, ``finish`` at the end of each pass."""

    def __init__(self, tags: Any, experiment_id: str, source: Any, page_size: int = 500):
        self.tags = tags
        self.experiment_id = experiment_id
        self.source = source
        self.page_size = page_size
        self.book: PriceBook | None = None
        self.monitor: ExternalMonitor | None = None
        self.judges: list[JudgeSpec] = []
        self.schedule = RateSchedule()
        self.decided_ms = 0  # the newest trace time a factor was decided for
        self.days: dict[int, DaySpend] = {}
        self._per_judge: dict[str, _JudgeCost] = {}
        self._reserved: dict[tuple[str, str], _Reservation] = {}
        self._said: set[str] = set()
        self._refused: str | None = None
        self._no_usage: str | None = None  # a judge returned no usage and no call cost is stated
        self._binding_since: int | None = None
        self._dirty = False
        self._raise_from_zero = False  # the budget changed: a stopped day may resume
        # stratified judges: their rates summed over new traces, the count, the newest time
        self._drawn: dict[str, list[float]] = {}
        self._apart: frozenset[str] = frozenset()  # shadow judges whose cost the budget ignores

    # -- the pass ------------------------------------------------------------------------
    def start(self, monitor: ExternalMonitor, judges: list[JudgeSpec]) -> list[JudgeSpec]:
        """Read the monitor's budget at a pass's start; returns the judges, priced."""
        if self.book is None or self.monitor is None or self.monitor.cost != monitor.cost:
            self.book = PriceBook(monitor.cost.prices)
            self._raise_from_zero = self.monitor is not None
            self._no_usage = None
            self.days.clear()  # read again from the store: prices or call cost may differ
            self._per_judge.clear()
        if self.monitor is None or self.monitor.monitor_id != monitor.monitor_id:
            self._load_schedule(monitor.monitor_id)
            self.days.clear()
        self.monitor = monitor
        every = priced(judges, monitor, self.book)
        counted = monitor.assessments_config.shadows_in_budget
        self._apart = frozenset(j.name for j in every if j.shadow_of and not counted)
        self.judges = [j for j in every if j.name not in self._apart]
        self._refused = self._refusal()
        if self.active and self._refused:
            self._say_once(self._refused, logging.WARNING)
        return every

    @property
    def budget_usd(self) -> float | None:
        return self.monitor.cost.daily_budget_usd if self.monitor else None

    @property
    def active(self) -> bool:
        return self.budget_usd is not None

    @property
    def enforced(self) -> bool:
        return self.active and self._refused is None

    def rate(self, judge: JudgeSpec, info: TraceInfo, base: float | None = None) -> float:
        """The effective sample rate of ``judge`` on this trace, whose rate before the
        budget is ``base`` (its stratum's, config/strata.py) or else the judge's."""
        rate = judge.rate if base is None else base
        drawn = self._drawn.setdefault(judge.name, [0.0, 0, 0]) if judge.strata else None
        if drawn is not None and base is not None and info.timestamp_ms > drawn[2]:
            drawn[:] = drawn[0] + base, drawn[1] + 1, info.timestamp_ms  # new traces, once
        if not self.enforced or not judge.is_llm:
            return rate
        stamp = info.timestamp_ms
        if stamp > self.decided_ms:
            self._decide(stamp, judge)
        return rate * self.schedule.factor(stamp)

    def probe_prefix(self, page: list[TraceInfo], judges: list[JudgeSpec], monitor_id: str) -> int:
        """How many traces of ``page`` to score before going on: all of them, unless a judge's
        cost per call is unknown; then the shortest prefix in which each such judge is sampled
        ``PROBES`` times (filters aside: a shorter prefix only probes again). The caller waits
        for that prefix's verdicts, whose costs are the estimate from then on."""
        if not self.enforced:
            return len(page)
        unknown = [j for j in judges if self._counts(j) and self._estimate(j.name) is None]
        if not unknown:
            return len(page)
        left = dict.fromkeys((j.name for j in unknown), PROBES)
        for index, info in enumerate(page, start=1):
            factor = self.schedule.factor(info.timestamp_ms)
            for judge in unknown:
                if left[judge.name] and is_sampled(info.trace_id, monitor_id, judge.rate * factor):
                    left[judge.name] -= 1
            if not any(left.values()):
                return index
        return len(page)

    def probing(self, judges: list[JudgeSpec]) -> bool:
        """Whether some judge's cost per call is still unknown (the caller waits for each
        page's verdicts before the next)."""
        return self.enforced and any(
            self._counts(j) and self._estimate(j.name) is None for j in judges
        )

    def _counts(self, judge: JudgeSpec) -> bool:
        """Whether the budget counts the judge's calls: an LLM judge, not a shadow kept apart."""
        return judge.is_llm and judge.name not in self._apart

    def reserve(self, judge: JudgeSpec, info: TraceInfo) -> None:
        """A pair of ``judge`` on this trace is due: promise its expected cost."""
        if not self.enforced or not self._counts(judge):
            return
        estimate = self._estimate(judge.name) or 0.0
        day = self._day(info.timestamp_ms)
        key = (info.trace_id, judge.name)
        if key in self._reserved:
            return
        self._reserved[key] = _Reservation(day.day_ms, estimate)
        day.reserved += estimate

    def charge(self, verdict: Verdict) -> None:
        """A verdict arrived: its recorded cost replaces its reservation."""
        if not self.active or not verdict.judge.is_llm:
            return
        held = self._reserved.pop((verdict.trace_id, verdict.judge.name), None)
        if held is None:
            return
        day = self.days.get(held.day)
        if day is None:
            return
        day.reserved -= held.usd
        cost, known = usage.verdict_cost(verdict.metadata, self._call_cost, verdict.ok)
        if not known and verdict.ok:
            self._say_no_usage(verdict.judge.name)
        day.add(cost)
        self._dirty = True
        if cost is not None and verdict.ok:
            per = self._per_judge.setdefault(verdict.judge.name, _JudgeCost())
            per.usd, per.calls = per.usd + cost, per.calls + 1
        if cost is None and self.enforced:
            self._no_usage = self._refused = (
                f"cost.daily_budget_usd is not enforced: judge {verdict.judge.name} returned no "
                "token usage (or its model has no price) and no cost.call_cost_usd is stated"
            )
            self._say_once(self._refused, logging.WARNING)

    def finish(self) -> None:
        """End of a pass: drop what was promised to pairs never scored; save the decisions."""
        for held in self._reserved.values():
            if held.day in self.days:
                self.days[held.day].reserved -= held.usd
        self._reserved.clear()
        if self._dirty:
            try:
                self._save()
            except Exception as e:  # the day's spend for `status` only: the next pass saves it
                _logger.warning(
                    "Could not save the budget of experiment %s: %s", self.experiment_id, e
                )
        horizon = max(self.days, default=0) - 2 * DAY_MS
        for start in [d for d in self.days if d < horizon]:
            del self.days[start]

    def status(self, now_trace_ms: int) -> BudgetStatus | None:
        if not self.active:
            return None
        day = self.days.get(day_of(now_trace_ms)) or DaySpend(day_of(now_trace_ms))
        return BudgetStatus(
            self.budget_usd or 0.0,
            day.day_ms,
            day.usd,
            self.schedule.factor(now_trace_ms),
            self._binding_since,
            self.enforced,
            self._refused,
        )

    # -- decisions -------------------------------------------------------------------------
    def _decide(self, stamp: int, judge: JudgeSpec) -> None:
        day = self._day(stamp)
        if stamp > day.last_ms:
            day.traces += 1
            day.last_ms = stamp
        self.decided_ms = stamp
        current = self.schedule.factor(stamp)
        wanted = quantize(
            pace(
                self.budget_usd or 0.0,
                day,
                stamp,
                self._cost_per_trace() if self.monitor and self.monitor.cost.pace else None,
                self._estimate(judge.name),
            )
        )
        if wanted == current:
            return
        if wanted > current and wanted > 0 and not self._may_raise(stamp, current):
            return
        self.schedule.set(stamp, wanted)
        self.schedule.prune(stamp - KEEP_DAYS * DAY_MS)
        self._binding_since = None if wanted >= 1 else (self._binding_since or stamp)
        if wanted < 1 and current >= 1:
            _logger.warning(
                "The daily budget $%g binds: judges sample at %g x their rate from trace time "
                "%d (spent $%.4f) (experiment %s)",
                self.budget_usd, wanted, stamp, day.usd, self.experiment_id,
            )  # fmt: skip
        self._save()  # before any pair sampled under the new step is scored

    def _may_raise(self, stamp: int, current: float) -> bool:
        """Raise the factor again (less traffic than foreseen) at most hourly; from 0 (the day
        stopped) only after the budget was changed."""
        if current == 0:
            allowed, self._raise_from_zero = self._raise_from_zero, False
            return allowed
        last = self.schedule.steps[-1][0] if self.schedule.steps else 0
        return stamp - last >= HOUR_MS

    def _cost_per_trace(self) -> float | None:
        total, known = 0.0, False
        for judge in self.judges:
            if judge.is_llm and (cost := self._estimate(judge.name)) is not None:
                total += self._mean_rate(judge) * cost
                known = True
        return total if known else None

    def _mean_rate(self, judge: JudgeSpec) -> float:
        """The judge's expected calls per trace: its rate, or for a stratified judge the mean
        of its strata's rates over the traces seen (before the budget's factor)."""
        drawn = self._drawn.get(judge.name)
        return drawn[0] / drawn[1] if judge.strata and drawn and drawn[1] else judge.rate

    def _estimate(self, judge_name: str) -> float | None:
        """The expected cost of one call of a judge: its mean so far, the newest day's mean, or
        the stated ``call_cost_usd``."""
        mine = self._per_judge.get(judge_name)
        if mine and mine.mean is not None:
            return mine.mean
        for start in sorted(self.days, reverse=True):
            if (per_call := self.days[start].per_call) is not None:
                return per_call
        return self._call_cost

    @property
    def _call_cost(self) -> float | None:
        return self.monitor.cost.call_cost_usd if self.monitor else None

    def _refusal(self) -> str | None:
        if not self.active or self._call_cost is not None:
            return None
        if self._no_usage:
            return self._no_usage
        unpriced = [j for j in self.judges if j.is_llm and j.price is None]
        if unpriced:
            names = ", ".join(f"{j.name} ({j.model or _default_model()})" for j in unpriced)
            return (
                f"cost.daily_budget_usd is not enforced: no price is known for {names}; set "
                "cost.prices or cost.call_cost_usd"
            )
        return None

    def _say_no_usage(self, judge_name: str) -> None:
        if self._call_cost is not None:
            self._say_once(
                f"Judge {judge_name} returned no token usage: the daily budget counts its calls "
                f"at the stated cost.call_cost_usd ${self._call_cost:g} each",
                logging.INFO,
            )

    # -- the store ---------------------------------------------------------------------------
    def _day(self, stamp: int) -> DaySpend:
        start = day_of(stamp)
        if start not in self.days:
            self.days[start] = self._load_day(start, stamp)
        return self.days[start]

    def _load_day(self, start: int, first_ms: int) -> DaySpend:
        """The spend on a day's traces as the store holds it, and its traces before ``first_ms``."""
        day = DaySpend(start)
        monitor_id = self.monitor.monitor_id if self.monitor else ""
        llm = {j.name for j in self.judges if j.is_llm}
        pages = self.source.infos_after(Checkpoint(start, ""), self.page_size, start + DAY_MS)
        for page in pages:
            for info in page:
                if info.timestamp_ms < first_ms:
                    day.traces += 1
                    day.last_ms = max(day.last_ms, info.timestamp_ms)
                for judge, metadata, ok in _verdicts(info, monitor_id):
                    if judge in llm:
                        cost, _ = usage.verdict_cost(metadata, self._call_cost, ok)
                        day.add(cost)
                        if cost is not None and ok:
                            per = self._per_judge.setdefault(judge, _JudgeCost())
                            per.usd, per.calls = per.usd + cost, per.calls + 1
        _logger.debug("Budget: day %d spent $%.6f on %d calls", start, day.usd, day.calls)
        return day

    def _load_schedule(self, monitor_id: str) -> None:
        try:
            stored = self.tags.read_json(self.experiment_id, BUDGET_TAG) or {}
        except MonitorError as e:  # damaged: start the day's decisions afresh
            _logger.warning(
                "The budget tag of experiment %s is unreadable: %s", self.experiment_id, e
            )
            stored = {}
        if not isinstance(stored, dict) or stored.get("monitor_id") != monitor_id:
            self.schedule, self.decided_ms = RateSchedule(), 0
            return
        self.schedule = RateSchedule.from_list(stored.get("steps"))
        self.decided_ms = int(stored.get("decided_ms") or 0)

    def _save(self) -> None:
        monitor = self.monitor
        if monitor is None:
            return
        status = self.status(self.decided_ms)
        value = {
            "monitor_id": monitor.monitor_id,
            "steps": self.schedule.to_list(),
            "decided_ms": self.decided_ms,
            "budget_usd": self.budget_usd,
            "day_ms": status.day_ms if status else None,
            "spent_usd": round(status.spent_usd, 8) if status else None,
            "binding_since_ms": self._binding_since,
            "enforced": self.enforced,
            "reason": self._refused,
        }
        self.tags.write_json(self.experiment_id, BUDGET_TAG, value)
        self._dirty = False

    def _say_once(self, message: str, level: int) -> None:
        if message not in self._said:
            self._said.add(message)
            _logger.log(level, "%s (experiment %s)", message, self.experiment_id)


def _verdicts(info: TraceInfo, monitor_id: str) -> Iterable[tuple[str, dict[str, Any], bool]]:
    """(judge, metadata, ok) of each verdict this monitor wrote on a trace, once per verdict."""
    seen = set()
    for assessment in info.assessments or []:
        meta = assessment.metadata or {}
        if meta.get(MONITOR_KEY) != monitor_id or JUDGE_KEY not in meta:
            continue
        key = (meta[JUDGE_KEY], meta.get(VERDICT_KEY, assessment.assessment_id))
        if key in seen:
            continue
        seen.add(key)
        yield meta[JUDGE_KEY], meta, getattr(assessment, "error", None) is None
