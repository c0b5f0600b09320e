"""``plan`` per stratum: a stratified judge's traces, calls and cost in each of its strata, and
the failing traces it finds per day against uniform sampling at the same number of calls.

Each stratum's failure rate comes from the monitor's recent verdicts of the judge on the
replayed traces of that stratum, each weighted by the inverse of the inclusion probability it
was sampled with (``mlflow_monitor.inclusion_prob`` in its metadata; 1 for verdicts written
before it was recorded, which were sampled uniformly), so verdicts an older stratification
oversampled do not skew it. Then, per day,

    found (stratified) = Σ_h scored_h f_h
    found (uniform)    = r_u Σ_h traces_h f_h,    r_u = Σ_h scored_h / Σ_h traces_h

the second being what a uniform rate making the same judge calls would find. A stratum whose
traces were never judged leaves both unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow.entities import TraceInfo

from mlflow_monitor_plugin.observe.windows import classify, combine
from mlflow_monitor_plugin.scoring.feedback import INCLUSION_KEY, VERDICT_KEY, judge_states


@dataclass
class StratumPlan:
    """One stratum of one judge over the replayed period."""

    name: str
    rate: float
    traces: int = 0
    sampled: float = 0.0  # picked by the sample (expected, for a monitor not created yet)
    verdicts: int = 0  # the monitor's pass/fail verdicts of the judge on its traces
    weight: float = 0.0  # their summed inverse inclusion probabilities
    failing: float = 0.0  # the same, over the failing ones

    def add_verdict(self, failed: bool, probability: float) -> None:
        self.verdicts += 1
        self.weight += 1 / probability
        self.failing += failed / probability

    @property
    def fail_rate(self) -> float | None:
        return self.failing / self.weight if self.weight else None


def verdicts_by_judge(info: TraceInfo, monitor_id: str) -> dict[str, tuple[bool, float]]:
    """(failed, inclusion probability) of this monitor's pass/fail verdict per judge."""
    out = {}
    for judge, state in judge_states(info, monitor_id).items():
        if not state.verdicts:
            continue
        group = min(state.verdicts, key=lambda g: g[0].metadata.get(VERDICT_KEY, ""))
        kind, _ = combine([classify(getattr(a, "value", None)) for a in group if a.name == judge])
        if kind not in ("pass", "fail"):
            continue
        try:
            probability = float((group[0].metadata or {}).get(INCLUSION_KEY, 1.0))
        except (TypeError, ValueError):
            probability = 1.0
        out[judge] = (kind == "fail", probability if probability > 0 else 1.0)
    return out


def strata_rows(
    strata: dict[str, StratumPlan], scale: float, calls_per_verdict: float | None, usd: float | None
) -> dict[str, Any]:
    """A judge's per-stratum rows per day, and the failing traces found per day: stratified,
    and uniform at the same calls."""
    rows = []
    for s in strata.values():
        scored = s.sampled * scale
        calls = None if calls_per_verdict is None else scored * calls_per_verdict
        rows.append(
            {
                "stratum": s.name,
                "rate": s.rate,
                "traces_per_day": s.traces * scale,
                "scored_per_day": scored,
                "calls_per_day": calls,
                "usd_per_day": None if calls is None or usd is None else calls * usd,
                "verdicts_seen": s.verdicts,
                "fail_rate": s.fail_rate,
                "failures_found_per_day": None
                if s.fail_rate is None and scored
                else scored * (s.fail_rate or 0.0),
            }
        )
    traces = sum(s.traces for s in strata.values())
    scored = sum(s.sampled for s in strata.values())
    known = all(s.fail_rate is not None for s in strata.values() if s.traces)
    uniform_rate = scored / traces if traces else None
    found = uniform = None
    if known and uniform_rate is not None:
        found = sum(r["failures_found_per_day"] or 0.0 for r in rows)
        uniform = uniform_rate * sum(s.traces * (s.fail_rate or 0.0) for s in strata.values())
        uniform *= scale
    return {
        "strata": rows,
        "uniform_rate_same_calls": uniform_rate,
        "failures_found_per_day": found,
        "uniform_failures_found_per_day": uniform,
    }
