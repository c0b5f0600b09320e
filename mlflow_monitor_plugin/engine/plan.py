"""What a monitor config will cost, before it runs: its sampler and filters replayed on the last
period's real traces, priced from recent usage or from a few real judge calls.

For each judge, ``plan`` walks the finished traces of ``[now - over, now)`` as the daemon
would: the judge's filter, then the sample (for an existing monitor, the very hash the daemon
uses, so the count is exact for those traces; for a monitor not created yet its id does not
exist, and the count is the expected ``rate x traces``). Per day is that count scaled to 24
hours. Calls and tokens per verdict come from the usage in this monitor's verdicts on those
traces (``recent usage``), else from ``measure`` real judge calls on a few of them (through
the judge proxy, nothing written), else they are unknown. The price is the model's
(config/prices.py); a judge without usage or price has its cost shown unknown, never guessed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlflow_monitor_plugin.config.model import ExternalMonitor
from mlflow_monitor_plugin.config.prices import PriceBook
from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint
from mlflow_monitor_plugin.discovery.sampling import is_sampled
from mlflow_monitor_plugin.discovery.strata import DEFAULT_STRATUM, draw, filters_of
from mlflow_monitor_plugin.engine.budget import priced
from mlflow_monitor_plugin.engine.strata import StratumPlan, strata_rows, verdicts_by_judge
from mlflow_monitor_plugin.scoring import usage
from mlflow_monitor_plugin.scoring.feedback import JUDGE_KEY, MONITOR_KEY, VERDICT_KEY
from mlflow_monitor_plugin.scoring.judges import JudgeSpec, monitor_judges

_logger = logging.getLogger(__name__)

DAY_MS = 86_400_000


@dataclass
class JudgePlan:
    """One judge's share of a plan."""

    judge: str
    rate: float
    llm: bool
    model: str | None
    traces: int = 0  # the period's traces its filter lets through
    sampled: float = 0  # of those, the ones its sample picks (expected, for a new monitor)
    exact: bool = True
    basis: str = "unknown"  # where calls and tokens per verdict come from
    verdicts_seen: int = 0
    calls_per_verdict: float | None = None
    tokens_per_call: float | None = None
    prompt_per_call: float | None = None
    completion_per_call: float | None = None
    price_source: str | None = None
    usd_per_call: float | None = None
    strata: dict[str, StratumPlan] = field(default_factory=dict)  # a stratified judge's
    _usage: list[usage.Usage] = field(default_factory=list, repr=False)

    def add_usage(self, used: usage.Usage) -> None:
        self._usage.append(used)

    def settle(self, basis: str, price: Any) -> None:
        """Per-call figures from the usages gathered."""
        if not self.llm:
            self.calls_per_verdict, self.tokens_per_call, self.usd_per_call = 0.0, 0.0, 0.0
            self.basis = "no LLM call"
            return
        if not self._usage:
            return
        total = sum(self._usage, usage.Usage())
        self.basis, self.verdicts_seen = basis, len(self._usage)
        calls = max(total.calls, 1)
        self.calls_per_verdict = total.calls / len(self._usage)
        self.tokens_per_call = total.total / calls
        self.prompt_per_call = total.prompt / calls
        self.completion_per_call = total.completion / calls
        if price is not None:
            self.price_source = price.source
            self.usd_per_call = price.cost(total.prompt, total.completion) / calls

    def per_day(self, period_ms: int) -> dict[str, float | None]:
        scale = DAY_MS / period_ms
        scored = self.sampled * scale
        calls = _times(scored, self.calls_per_verdict)
        return {
            "traces_per_day": self.traces * scale,
            "scored_per_day": scored,
            "calls_per_day": calls,
            "tokens_per_day": _times(calls, self.tokens_per_call),
            "usd_per_day": _times(calls, self.usd_per_call),
        }


def _times(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a * b


@dataclass
class Plan:
    monitor_id: str | None
    since_ms: int
    until_ms: int
    judges: list[JudgePlan]
    daily_budget_usd: float | None = None

    @property
    def period_ms(self) -> int:
        return max(1, self.until_ms - self.since_ms)

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "judge": j.judge,
                "rate": j.rate,
                "model": j.model,
                "traces": j.traces,
                "sampled": j.sampled,
                "exact": j.exact,
                **j.per_day(self.period_ms),
                "calls_per_verdict": j.calls_per_verdict,
                "tokens_per_call": j.tokens_per_call,
                "usd_per_call": j.usd_per_call,
                "price_source": j.price_source,
                "basis": j.basis,
                **(
                    strata_rows(
                        j.strata, DAY_MS / self.period_ms, j.calls_per_verdict, j.usd_per_call
                    )
                    if j.strata
                    else {}
                ),  # fmt: skip
            }
            for j in self.judges
        ]

    def total(self) -> dict[str, float | None]:
        rows = [j.per_day(self.period_ms) for j in self.judges]
        out: dict[str, float | None] = {}
        for key in ("scored_per_day", "calls_per_day", "tokens_per_day", "usd_per_day"):
            values = [r[key] for r in rows]
            out[key] = None if any(v is None for v in values) else sum(v or 0.0 for v in values)
        known = [r["usd_per_day"] for r in rows if r["usd_per_day"] is not None]
        out["usd_per_day_known"] = sum(known)
        return out

    def to_dict(self) -> dict[str, Any]:
        total = self.total()
        budget = self.daily_budget_usd
        binds = None
        if budget is not None and total["usd_per_day_known"] is not None:
            binds = total["usd_per_day_known"] > budget
        return {
            "monitor_id": self.monitor_id,
            "since_ms": self.since_ms,
            "until_ms": self.until_ms,
            "judges": self.rows(),
            "total": total,
            "daily_budget_usd": budget,
            "budget_binds": binds,
        }


Measure = Callable[[list[tuple[str, JudgeSpec]]], list[Any]]


def plan(
    monitor: ExternalMonitor,
    source: Any,
    now_ms: int,
    over_ms: int = DAY_MS,
    existing: bool = True,
    measure: Measure | None = None,
    measure_n: int = 3,
    book: PriceBook | None = None,
) -> Plan:
    """Replay ``monitor``'s sampler and filters on ``[now - over, now)`` of ``source`` (a
    discovery ``TraceSource``). ``existing``: the monitor has its id (exact counts); else the
    counts are expected values. ``measure`` runs real judge calls on (trace id, judge) pairs
    for the judges that have no recent usage, and returns their verdicts."""
    book = book or PriceBook(monitor.cost.prices)
    specs = [j for j in monitor_judges(monitor) if not j.unavailable]
    specs = priced([j for j in specs if not j.session], monitor, book)
    plans = {j.name: JudgePlan(j.name, j.rate, j.is_llm, j.model, exact=existing) for j in specs}
    for j in specs:  # a stratified judge's strata in the order they are tried, default last
        order = [(s.name, s.sample_rate) for s in j.strata] + [(DEFAULT_STRATUM, j.rate)]
        plans[j.name].strata = {n: StratumPlan(n, r) for n, r in order} if j.strata else {}
    since = now_ms - over_ms
    samples: dict[str, list[str]] = {j.name: [] for j in specs}
    for page in source.infos_after(Checkpoint(since, ""), 500, now_ms):
        filters = {j.filter_string for j in specs if j.filter_string} | filters_of(specs)
        matching = {f: source.matching(page, f) for f in filters}
        for info in page:
            seen = _usage_by_judge(info, monitor.monitor_id) if existing else {}
            judged = verdicts_by_judge(info, monitor.monitor_id) if existing else {}
            for judge in specs:
                if judge.filter_string and info.trace_id not in matching[judge.filter_string]:
                    continue
                p = plans[judge.name]
                p.traces += 1
                name, rate = draw(info, judge.strata, judge.rate, matching)
                stratum = p.strata.get(name)
                if stratum is not None:
                    stratum.traces += 1
                    if judge.name in judged:
                        stratum.add_verdict(*judged[judge.name])
                if not existing:
                    p.sampled += rate
                    if stratum is not None:
                        stratum.sampled += rate
                    picked = len(samples[judge.name]) < measure_n
                elif is_sampled(info.trace_id, monitor.monitor_id, rate):
                    p.sampled += 1
                    if stratum is not None:
                        stratum.sampled += 1
                    picked = len(samples[judge.name]) < measure_n
                else:
                    continue
                if judge.name in seen:
                    p.add_usage(seen[judge.name])
                elif picked:
                    samples[judge.name].append(info.trace_id)
    for judge in specs:
        p = plans[judge.name]
        if p._usage or not judge.is_llm:
            p.settle("recent usage", judge.price)
        elif measure is not None and samples[judge.name]:
            _measure(p, judge, samples[judge.name], measure)
    return Plan(
        monitor.monitor_id if existing else None,
        since,
        now_ms,
        [plans[j.name] for j in specs],
        monitor.cost.daily_budget_usd,
    )


def _measure(p: JudgePlan, judge: JudgeSpec, trace_ids: list[str], measure: Measure) -> None:
    for verdict in measure([(t, judge) for t in trace_ids]):
        used = usage.from_metadata(verdict.metadata)
        if used is not None:
            p.add_usage(used)
    p.settle(f"measured ({len(trace_ids)} calls)", judge.price)


def judge_calls(source: Any) -> Measure:
    """Real judge calls on a few traces (writing nothing), for judges with no recent usage: in
    the caller's judge proxy, which counts their tokens."""
    from mlflow_monitor_plugin.scoring.runner import JudgeRunner, ScoringSettings

    def run(pairs: list[tuple[str, JudgeSpec]]) -> list[Any]:
        traces = {t.info.trace_id: t for t in source.fetch(sorted({t for t, _ in pairs}))}
        runner = JudgeRunner(ScoringSettings(workers=2, attempts=1))
        try:
            tasks = [(traces[t], j) for t, j in pairs if t in traces and j.applies_to(traces[t])]
            return [verdict for verdict, _ in runner.run(tasks)]
        finally:
            runner.close()

    return run


def _usage_by_judge(info: Any, monitor_id: str) -> dict[str, usage.Usage]:
    """The usage of this monitor's verdicts on a trace, per judge (once per verdict)."""
    out: dict[str, usage.Usage] = {}
    seen = set()
    for assessment in info.assessments or []:
        meta = assessment.metadata or {}
        if meta.get(MONITOR_KEY) != monitor_id or JUDGE_KEY not in meta:
            continue
        key = (meta[JUDGE_KEY], meta.get(VERDICT_KEY, assessment.assessment_id))
        if key in seen or getattr(assessment, "error", None) is not None:
            continue
        seen.add(key)
        used = usage.from_metadata(meta)
        if used is not None:
            out[meta[JUDGE_KEY]] = out.get(meta[JUDGE_KEY], usage.Usage()) + used
    return out
