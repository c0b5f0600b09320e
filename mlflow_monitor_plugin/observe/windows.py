"""Quality windows, pure: window keys, a trace's outcome per judge, tallies, rates and intervals.

A window is (monitor, judge, width, start): the traces whose request time falls in
``[start, start + width)``. Its counts come from what each trace carries (``Outcome``), so they
can be recomputed exactly from the store at any time; ``Tally`` sums them and ``Tally.stats``
turns a tally into the numbers we publish. Nothing here reads the clock or the store.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mlflow_monitor_plugin.observe.estimate import Cell, merge_cells, stratified

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
WIDTHS = {"1h": HOUR_MS, "1d": DAY_MS}
Z95 = 1.959963984540054  # the two-sided 95% quantile of the normal distribution

PASS_VALUES = frozenset({"yes", "true", "pass", "passed"})
FAIL_VALUES = frozenset({"no", "false", "fail", "failed"})
# Outcome kinds: a verdict (pass, fail, other, numeric), an error, or nothing yet
VERDICT_KINDS = ("pass", "fail", "other", "numeric")


def window_start(timestamp_ms: int, width_ms: int) -> int:
    """The start of the window of ``width_ms`` (aligned on the UTC epoch) holding the time."""
    return timestamp_ms - timestamp_ms % width_ms


def width_name(width_ms: int) -> str:
    for name, ms in WIDTHS.items():
        if ms == width_ms:
            return name
    raise ValueError(f"width {width_ms} ms is not one of {sorted(WIDTHS)}")


def classify(value: Any) -> tuple[str, float | str | None]:
    """A feedback value as (kind, value): pass/fail for yes/no and booleans, numeric for numbers,
    other (with its label) for any other category."""
    if isinstance(value, bool):
        return ("pass" if value else "fail"), None
    if isinstance(value, (int, float)):
        number = float(value)
        return ("numeric", number) if math.isfinite(number) else ("other", str(value))
    text = str(getattr(value, "value", value)).strip().lower()  # CategoricalRating is an enum
    if text in PASS_VALUES:
        return "pass", None
    if text in FAIL_VALUES:
        return "fail", None
    return "other", text[:64]


def category(kind: str, value: float | str | None = None) -> str:
    """A verdict or label as one comparable category: ``yes``, ``no``, a number as text, or
    the label (observe/labels.py pairs a judge's with a person's)."""
    if kind == "pass":
        return "yes"
    if kind == "fail":
        return "no"
    if kind == "numeric" and isinstance(value, float):
        return f"{value:g}"
    return "" if value is None else str(value)


def combine(kinds: list[tuple[str, float | str | None]]) -> tuple[str, float | str | None]:
    """One verdict from several feedbacks of one judge (one per retrieved chunk, say): pass only
    if every part passes, fail if any part fails, else the first part."""
    if not kinds:
        return "other", None
    if len(kinds) == 1:
        return kinds[0]
    names = {k for k, _ in kinds}
    if names <= {"pass", "fail"}:
        return ("fail" if "fail" in names else "pass"), None
    if names == {"numeric"}:
        values = [float(v) for _, v in kinds if v is not None]
        return "numeric", sum(values) / len(values)
    return kinds[0]


@dataclass(frozen=True)
class Outcome:
    """What one trace contributes to one judge's window."""

    sampled: bool
    kind: str = "unscored"  # pass, fail, other, numeric, error, skipped, unscored
    value: float | str | None = None  # the number (numeric) or the label (other)
    seconds: float | None = None  # the judge's latency, when the verdict recorded it
    retryable: bool = False  # an error the monitor will retry
    created_ms: int | None = None  # when the verdict (or error) was written
    rate: float | None = None  # the effective sample rate on this trace (budget included)
    tokens: int | None = None  # the judge's tokens for this verdict or error (None: unknown)
    cost_usd: float | None = None  # their cost (None: unknown)
    stratum: str | None = None  # the trace's stratum for the judge (config/strata.py)
    fingerprint: str | None = None  # of the judge that made the verdict (scoring/fingerprint.py)
    human: str | None = None  # a person's label for the judge on this trace (observe/labels.py)


@dataclass
class Tally:
    """The summed outcomes of one judge over some traces; tallies of hours add up to a day."""

    eligible: int = 0
    sampled: int = 0
    passed: int = 0
    failed: int = 0
    other: int = 0
    errors: int = 0
    retryable: int = 0
    numbers: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    rate_sum: float = 0.0  # the effective rates of the eligible traces that recorded one
    rated: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    costed: int = 0  # verdicts and errors whose cost is known
    uncosted: int = 0  # verdicts whose cost is unknown (tokens or price unknown)
    skipped: int = 0  # sampled, but the daemon did not run the judge (observe/skipped.py)
    # (stratum, inclusion probability) -> its counts: the weighted estimate when more than one
    cells: dict[tuple[str | None, float | None], Cell] = field(default_factory=dict)
    # judge fingerprint -> when its newest verdict here was written (ms; 0: unknown)
    fingerprints: dict[str, int] = field(default_factory=dict)
    # (the judge's category, a person's label) -> traces: agreement with people (labels.py)
    pairs: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        self.eligible += 1
        key = (outcome.stratum, outcome.rate)
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = Cell(*key)
        cell.add(outcome.sampled, outcome.kind)
        if outcome.rate is not None:
            self.rate_sum += outcome.rate
            self.rated += 1
        if not outcome.sampled:
            return
        self.sampled += 1
        self._add_cost(outcome)
        kind = outcome.kind
        if kind == "pass":
            self.passed += 1
        elif kind == "fail":
            self.failed += 1
        elif kind == "numeric" and isinstance(outcome.value, float):
            self.numbers.append(outcome.value)
        elif kind == "other":
            self.other += 1
            label = str(outcome.value)
            self.labels[label] = self.labels.get(label, 0) + 1
        elif kind == "error":
            self.errors += 1
            self.retryable += outcome.retryable
        elif kind == "skipped":
            self.skipped += 1
        if kind in VERDICT_KINDS and outcome.seconds is not None:
            self.latencies.append(outcome.seconds)
        if kind in VERDICT_KINDS:
            self._add_trust(outcome)

    def _add_trust(self, outcome: Outcome) -> None:
        if outcome.fingerprint:
            stamp = max(outcome.created_ms or 0, self.fingerprints.get(outcome.fingerprint, 0))
            self.fingerprints[outcome.fingerprint] = stamp
        if outcome.human is not None:
            pair = (category(outcome.kind, outcome.value), outcome.human)
            self.pairs[pair] = self.pairs.get(pair, 0) + 1

    def _add_cost(self, outcome: Outcome) -> None:
        self.tokens += outcome.tokens or 0
        if outcome.cost_usd is not None:
            self.cost_usd += outcome.cost_usd
            self.costed += 1
        elif outcome.kind in VERDICT_KINDS:
            self.uncosted += 1  # no usage in the reply, or no price for the model

    def merge(self, other: Tally) -> Tally:
        labels = dict(self.labels)
        for label, n in other.labels.items():
            labels[label] = labels.get(label, 0) + n
        return Tally(
            self.eligible + other.eligible,
            self.sampled + other.sampled,
            self.passed + other.passed,
            self.failed + other.failed,
            self.other + other.other,
            self.errors + other.errors,
            self.retryable + other.retryable,
            self.numbers + other.numbers,
            self.latencies + other.latencies,
            labels,
            self.rate_sum + other.rate_sum,
            self.rated + other.rated,
            self.tokens + other.tokens,
            self.cost_usd + other.cost_usd,
            self.costed + other.costed,
            self.uncosted + other.uncosted,
            self.skipped + other.skipped,
            merge_cells(self.cells, other.cells),
            fingerprints=_newest(self.fingerprints, other.fingerprints),
            pairs=_summed(self.pairs, other.pairs),
        )

    @property
    def verdicts(self) -> int:
        return self.passed + self.failed + self.other + len(self.numbers)

    def stats(self, rate: float) -> dict[str, Any]:
        """The published numbers of this tally, for a judge sampled at ``rate``."""
        judged = self.passed + self.failed
        rate_value = self.passed / judged if judged else None
        low, high = wilson(self.passed, judged) if judged else (None, None)
        population = self.population_size(judged)
        pop_low, pop_high = (
            population_interval(self.passed, judged, population) if judged else (None, None)
        )
        return {
            "sample_rate": rate,
            "eligible": self.eligible,
            "sampled": self.sampled,
            "verdicts": self.verdicts,
            "passed": self.passed,
            "failed": self.failed,
            "other": self.other,
            "numeric": len(self.numbers),
            "errors": self.errors,
            "skipped": self.skipped,
            "unscored": self.sampled - self.verdicts - self.errors - self.skipped,
            "pass_rate": rate_value,
            "pass_rate_low95": pop_low,
            "pass_rate_high95": pop_high,
            "sample_low95": low,
            "sample_high95": high,
            "estimated_failing": self.failed / rate if rate > 0 else None,
            "value_mean": sum(self.numbers) / len(self.numbers) if self.numbers else None,
            "value_p50": percentile(self.numbers, 50),
            "value_p90": percentile(self.numbers, 90),
            "latency_p50": percentile(self.latencies, 50),
            "latency_p95": percentile(self.latencies, 95),
            "effective_rate": self.rate_sum / self.rated if self.rated else rate,
            "judge_tokens": self.tokens,
            "judge_cost_usd": self.cost_usd if self.costed else None,
            "judge_cost_unknown": self.uncosted,
            **self.weighted(),
        }

    def weighted(self) -> dict[str, Any]:
        """Where traces were sampled at different rates (strata, a daily budget's steps): the
        pass rate, its interval and the failing traces, weighted (observe/estimate.py)."""
        if len(self.cells) < 2:
            return {}
        estimate = stratified(self.cells.values())
        if estimate is None:
            return {}
        return {
            "pass_rate": estimate.pass_rate,
            "pass_rate_low95": estimate.low,
            "pass_rate_high95": estimate.high,
            "estimated_failing": estimate.estimated_failing,
        }

    def population_size(self, judged: int) -> float:
        """The judged traces scaled by the share of traces sampled: the population the
        sample stands for (the traces a judge would have judged at rate 1)."""
        if not self.sampled:
            return float(judged)
        return judged * self.eligible / self.sampled


def _summed(a: dict[Any, int], b: dict[Any, int]) -> dict[Any, int]:
    out = dict(a)
    for key, n in b.items():
        out[key] = out.get(key, 0) + n
    return out


def _newest(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {key: max(a.get(key, 0), b.get(key, 0)) for key in a.keys() | b.keys()}


def tally(outcomes: Iterable[Outcome]) -> Tally:
    result = Tally()
    for outcome in outcomes:
        result.add(outcome)
    return result


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (Wilson 1927)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    return wilson_effective(successes / n, n, z)


def population_interval(
    successes: int, n: int, population: float, z: float = Z95
) -> tuple[float, float]:
    """The 95% interval of the rate in a finite population of ``population`` traces of which
    ``n`` were sampled without replacement: the Wilson interval with the sample size inflated by
    the finite population correction, so it narrows to the observed rate when every trace is
    judged (``n == population``)."""
    if n >= population - 1e-9:
        p = successes / n
        return p, p
    fpc = (population - n) / (population - 1) if population > 1 else 1.0
    return wilson_effective(successes / n, n / fpc, z)


def wilson_effective(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson interval for an observed proportion ``p`` and an effective sample size."""
    z2 = z * z
    denominator = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile with linear interpolation (numpy's default), None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def settled(
    end_ms: int, now_ms: int, cursor_ms: int | None, retryable: int, settle_ms: int, late_ms: int
) -> bool:
    """Whether a window's numbers are final enough to chart: it has closed, the monitor has
    passed its end, ``settle_ms`` went by and no error in it is waiting for a retry; or the
    late-arrival sweep no longer revisits it."""
    if now_ms >= end_ms + late_ms:
        return True
    passed_end = cursor_ms is not None and cursor_ms >= end_ms
    return passed_end and now_ms >= end_ms + settle_ms and retryable == 0


def trend(previous: float | None, current: float | None, threshold: float = 0.005) -> str:
    """An arrow for the change of a rate between two windows."""
    if previous is None or current is None:
        return " "
    if current > previous + threshold:
        return "↑"
    if current < previous - threshold:
        return "↓"
    return "→"
