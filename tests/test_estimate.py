"""The weighted estimator of a window's pass rate (observe/estimate.py), pure: the worked
example of docs/sampling.md by hand, the interval against scipy's Wilson intervals, the
uniform case equal to the windows' formula, and seeded simulations of many windows whose true
population rate is known, counting how often the 95% interval holds it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from mlflow_monitor_plugin.observe.estimate import Cell, stratified
from mlflow_monitor_plugin.observe.windows import Outcome, population_interval, tally

# (stratum, share of traces, failure rate, sample rate): errors and slow traces fail more
STRATIFIED = [("errors", 0.03, 0.50, 1.0), ("slow", 0.07, 0.25, 0.5), ("default", 0.90, 0.04, 0.05)]
SPARSE = [("errors", 0.03, 0.50, 1.0), ("slow", 0.07, 0.25, 0.5), ("default", 0.90, 0.02, 0.02)]
UNIFORM = [("default", 1.0, 0.08, 0.11)]
BUDGET = [("day", 0.5, 0.05, 0.2), ("evening", 0.5, 0.05, 0.05)]  # a budget halved the rate twice


def cells_of(counts: list[tuple[str, float, int, int, int, int]]) -> list[Cell]:
    return [Cell(s, p, n_all, sampled, passed, failed) for s, p, n_all, sampled, passed, failed
            in counts]  # fmt: skip


def test_worked_example_of_the_docs_by_hand():
    # 1,000 traces: 30 errors all judged (15 fail), 70 slow at 0.5 (36 judged, 9 fail), 900
    # others at 0.05 (45 judged, 2 fail)
    cells = cells_of([("errors", 1.0, 30, 30, 15, 15), ("slow", 0.5, 70, 36, 27, 9),
                      ("default", 0.05, 900, 45, 43, 2)])  # fmt: skip
    est = stratified(cells)
    assert est is not None
    by_hand = (30 * 15 / 30 + 70 * 27 / 36 + 900 * 43 / 45) / 1000
    assert est.pass_rate == pytest.approx(by_hand) == pytest.approx(0.9275)
    assert est.estimated_failing == pytest.approx(15 / 1.0 + 9 / 0.5 + 2 / 0.05)  # 73
    # MOVER: each stratum's Wilson interval at n / fpc, combined with the weights
    below = above = 0.0
    for n_all, n, passed in ((70, 36, 27), (900, 45, 43)):
        p, fpc = passed / n, (n_all - n) / (n_all - 1)
        z2, m = 1.959963984540054**2, n / fpc
        center = (p + z2 / (2 * m)) / (1 + z2 / m)
        half = math.sqrt(z2) * math.sqrt(p * (1 - p) / m + z2 / (4 * m * m)) / (1 + z2 / m)
        below += (n_all / 1000 * (p - (center - half))) ** 2
        above += (n_all / 1000 * (center + half - p)) ** 2
    assert est.low == pytest.approx(by_hand - math.sqrt(below))
    assert est.high == pytest.approx(by_hand + math.sqrt(above))
    assert (round(est.low, 4), round(est.high, 4)) == (0.8370, 0.9567)  # as docs/sampling.md says
    unweighted = (15 + 27 + 43) / (30 + 36 + 45)
    assert unweighted < est.low  # the sample's own rate is far off: failures were oversampled


def test_interval_is_the_wilson_intervals_of_scipy_combined():
    cells = cells_of([("a", 1.0, 40, 40, 25, 15), ("b", 0.1, 500, 48, 45, 3)])
    est = stratified(cells, finite=False)
    weights = {"a": 40 / 540, "b": 500 / 540}
    below = above = 0.0
    for c in cells:
        ci = binomtest(c.passed, c.judged).proportion_ci(confidence_level=0.95, method="wilson")
        p = c.passed / c.judged
        below += (weights[c.stratum] * (p - ci.low)) ** 2
        above += (weights[c.stratum] * (ci.high - p)) ** 2
    rate = weights["a"] * 25 / 40 + weights["b"] * 45 / 48
    assert est.pass_rate == pytest.approx(rate)
    assert est.low == pytest.approx(rate - math.sqrt(below), abs=1e-9)
    assert est.high == pytest.approx(rate + math.sqrt(above), abs=1e-9)


def test_one_cell_is_the_uniform_formula_and_windows_keep_their_numbers():
    est = stratified(cells_of([(None, 0.5, 80, 40, 33, 7)]))
    assert est.pass_rate == 33 / 40
    low, high = population_interval(33, 40, 80)
    assert (est.low, est.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert est.estimated_failing == 14.0
    # A window of one stratum at one rate is published exactly as before (no weighting path).
    outcomes = [Outcome(True, "pass", rate=0.5)] * 3 + [Outcome(True, "fail", rate=0.5)]
    outcomes += [Outcome(False, rate=0.5)] * 4
    stats = tally(outcomes).stats(0.5)
    assert (stats["pass_rate_low95"], stats["pass_rate_high95"]) == population_interval(3, 4, 8)


def test_a_window_of_several_strata_is_published_weighted():
    outcomes = [Outcome(True, "fail", rate=1.0, stratum="errors")] * 2
    outcomes += [Outcome(True, "pass", rate=0.1, stratum="default")] * 9
    outcomes += [Outcome(False, rate=0.1, stratum="default")] * 81
    stats = tally(outcomes).stats(0.1)
    assert stats["pass_rate"] == pytest.approx(90 / 92)  # not the sample's 9/11
    assert stats["estimated_failing"] == pytest.approx(2.0)  # not 2 / 0.1
    # every sampled default trace passed: no room above, much below (9 verdicts for 90 traces)
    assert stats["pass_rate_low95"] < 0.9 and stats["pass_rate_high95"] == pytest.approx(90 / 92)
    assert stats["verdicts"] == 11 and stats["eligible"] == 92


def test_every_trace_judged_is_exact_and_no_verdict_is_no_estimate():
    est = stratified(cells_of([("a", 1.0, 10, 10, 7, 3), ("b", 1.0, 5, 5, 5, 0)]))
    assert est.pass_rate == est.low == est.high == pytest.approx(12 / 15)
    assert stratified(cells_of([("a", 0.1, 10, 0, 0, 0)])) is None


def simulate(design, windows: int, seed: int, finite: bool = True) -> float:
    """Coverage of the 95% interval over ``windows`` windows of 800-2,000 traces each. With
    ``finite`` the truth is each window's own pass rate (every trace judged); without, the
    rate of the process (the alerts' view). Sampling in a stratum is a hash independent of the
    outcome: the sampled count is binomial, the passes among them hypergeometric."""
    rng = np.random.default_rng(seed)
    shares = np.array([share for _, share, _, _ in design])
    process = sum(share * (1 - fail) for _, share, fail, _ in design) / shares.sum()
    held = counted = 0
    for _ in range(windows):
        sizes = rng.multinomial(rng.integers(800, 2001), shares / shares.sum())
        cells, passing = [], 0
        for (name, _, fail, rate), size in zip(design, sizes, strict=True):
            good = int(rng.binomial(size, 1 - fail))
            sampled = int(rng.binomial(size, rate))
            passed = int(rng.hypergeometric(good, size - good, sampled)) if sampled else 0
            cells.append(Cell(name, rate, int(size), sampled, passed, sampled - passed))
            passing += good
        est = stratified(cells, finite=finite)
        if est is None:
            continue
        truth = passing / sizes.sum() if finite else process
        counted += 1
        held += est.low - 1e-12 <= truth <= est.high + 1e-12
    return held / counted


@pytest.mark.parametrize(
    ("name", "design"),
    [("uniform", UNIFORM), ("stratified", STRATIFIED), ("sparse", SPARSE), ("budget", BUDGET)],
)
def test_the_95_interval_holds_the_true_rate_95_percent_of_the_time(name, design):
    coverage = simulate(design, 3000, seed=20261206)
    process = simulate(design, 3000, seed=20261207, finite=False)
    print(f"{name}: coverage of the window's rate {coverage:.3f}, of the process's {process:.3f}")
    assert 0.93 <= coverage <= 0.97, coverage
    assert 0.93 <= process <= 0.97, process


def test_the_uniform_simulation_is_the_windows_own_formula():
    # a single cell goes through population_interval in the windows: same coverage
    rng = np.random.default_rng(7)
    held = 0
    for _ in range(2000):
        size = int(rng.integers(800, 2001))
        good = int(rng.binomial(size, 0.92))
        sampled = int(rng.binomial(size, 0.11))
        passed = int(rng.hypergeometric(good, size - good, sampled))
        low, high = population_interval(passed, sampled, float(size))
        held += low <= good / size <= high
    assert 0.93 <= held / 2000 <= 0.97
