"""What an alert rule judges: one window's counts (``WindowStats``) and the Wilson interval.

Pure. ``WindowStats`` is the interface between the windows (who counts) and the alerts (who
judge): counts of one (monitor, judge, window) and the rates derived from them. Verdicts come
from a sample of the window's traces; since the sample is drawn by a hash independent of the
outcome, the sample's pass rate estimates the rate of the whole population of traces, and its
Wilson interval is that rate's interval. The sample rate sets how many verdicts there are, and
so how wide the interval is, and scales the estimated number of failing traces. Where the
window's traces were sampled at different rates (strata, config/strata.py), ``cells`` hold
their counts per stratum and rate, and the rate and its interval are the weighted ones of
observe/estimate.py (without the finite population correction: an alert judges the process).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from statistics import NormalDist

from mlflow_monitor_plugin.observe.estimate import Cell, Estimate, stratified
from mlflow_monitor_plugin.observe.windows import wilson_effective


def z_score(confidence: float) -> float:
    """The two-sided normal quantile: 1.96 at 0.95."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (the windows' formula, at any
    ``confidence``); (0, 1) when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within 0..{n}, got {successes}")
    p = successes / n
    low, high = wilson_effective(p, n, z_score(confidence))
    # at p = 0 or 1 the bound is exact in theory; keep rounding from moving it past p
    return max(0.0, min(p, low)), min(1.0, max(p, high))


def window_start_ms(at_ms: int, width_ms: int) -> int:
    """The start of the fixed window (aligned on the epoch) that holds ``at_ms``."""
    return at_ms - at_ms % width_ms


@dataclass(frozen=True)
class Rate:
    """An estimated rate with its interval at ``confidence``, from ``successes`` of ``n``."""

    successes: int
    n: int
    confidence: float
    cells: tuple[Cell, ...] = field(default=(), compare=False)  # weighted when several

    @cached_property
    def _weighted(self) -> Estimate | None:
        if len(self.cells) < 2:
            return None
        return stratified(self.cells, z_score(self.confidence), finite=False)

    @property
    def value(self) -> float | None:
        if self._weighted is not None:
            return self._weighted.pass_rate
        return self.successes / self.n if self.n else None

    @cached_property
    def interval(self) -> tuple[float, float]:
        if self._weighted is not None:
            return self._weighted.low, self._weighted.high
        return wilson_interval(self.successes, self.n, self.confidence)

    @property
    def low(self) -> float:
        return self.interval[0]

    @property
    def high(self) -> float:
        return self.interval[1]


@dataclass(frozen=True)
class WindowStats:
    """One (monitor, judge, window): what the store holds for it.

    ``traces`` are the window's eligible (finished, non-evaluation) traces, ``sampled`` those
    the judge's sample picked, ``verdicts`` the pass/fail verdicts written (``passes`` of them
    passing), ``errors`` the error feedbacks. ``failing_trace_ids`` lists a few sampled traces
    with a failing verdict. ``lag_seconds`` is the monitor's lag when the stats were taken.
    """

    monitor_id: str
    judge: str | None
    start_ms: int
    width_ms: int
    traces: int = 0
    sampled: int = 0
    verdicts: int = 0
    passes: int = 0
    errors: int = 0
    sample_rate: float = 1.0
    lag_seconds: float | None = None
    failing_trace_ids: tuple[str, ...] = ()
    # per stratum and inclusion probability (observe/estimate.py), when sampled unevenly
    cells: tuple[Cell, ...] = field(default=(), compare=False)
    scored: int = 0  # verdicts of every kind (yes/no, numbers, labels)
    labels: int = 0  # people's labels paired with a verdict (observe/labels.py)
    agreements: int = 0  # of those, the ones agreeing with the judge

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.width_ms

    @property
    def failures(self) -> int:
        return self.verdicts - self.passes

    def pass_rate(self, confidence: float = 0.95) -> Rate:
        """The population pass rate, from the sampled verdicts (weighted by their inclusion
        probability when the window holds several)."""
        return Rate(self.passes, self.verdicts, confidence, self.cells)

    def error_rate(self, confidence: float = 0.95) -> Rate:
        """The share of judge calls that ended in an error."""
        return Rate(self.errors, self.verdicts + self.errors, confidence)

    def agreement(self, confidence: float = 0.95) -> Rate:
        """The share of people's labels that agree with the judge."""
        return Rate(self.agreements, self.labels, confidence)

    def human_overrides(self, confidence: float = 0.95) -> Rate:
        """The share of the judge's verdicts that a person labelled otherwise."""
        return Rate(self.labels - self.agreements, max(self.scored, self.labels), confidence)

    @property
    def estimated_failing(self) -> float:
        """Failing traces in the whole window: failing verdicts over the sample rate (each over
        its own inclusion probability when the window holds several)."""
        if len(self.cells) > 1 and (weighted := stratified(self.cells, finite=False)):
            return weighted.estimated_failing
        return self.failures / self.sample_rate if self.sample_rate > 0 else 0.0
