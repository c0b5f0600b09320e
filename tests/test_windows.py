import math

import pytest

from mlflow_monitor_plugin.observe.windows import (
    DAY_MS,
    HOUR_MS,
    Outcome,
    Tally,
    classify,
    combine,
    percentile,
    population_interval,
    settled,
    tally,
    trend,
    wilson,
    window_start,
)

# Wilson 95% intervals computed by hand: center (p + z²/2n) / (1 + z²/n), half-width
# z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n), z = 1.959964; scipy agrees to the digits shown.
WILSON_TABLE = [
    (0, 10, 0.0, 0.2775),
    (5, 10, 0.2366, 0.7634),
    (9, 10, 0.5958, 0.9821),
    (1, 1, 0.2065, 1.0),
    (50, 100, 0.4038, 0.5962),
    (95, 100, 0.8882, 0.9785),
]


@pytest.mark.parametrize(("k", "n", "low", "high"), WILSON_TABLE)
def test_wilson_matches_the_hand_computed_table(k, n, low, high):
    got = wilson(k, n)
    assert got == (pytest.approx(low, abs=5e-5), pytest.approx(high, abs=5e-5))


@pytest.mark.parametrize(("k", "n"), [(0, 3), (2, 7), (13, 40), (199, 200), (1000, 1000)])
def test_wilson_agrees_with_scipy(k, n):
    from scipy.stats import binomtest  # a dependency of MLflow

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson(k, n) == (pytest.approx(ci.low, abs=1e-9), pytest.approx(ci.high, abs=1e-9))


@pytest.mark.parametrize(("k", "n"), [(1, 0), (-1, 3), (4, 3)])
def test_wilson_rejects_impossible_counts(k, n):
    with pytest.raises(ValueError):
        wilson(k, n)


def test_population_interval_is_exact_when_every_trace_is_judged():
    assert population_interval(7, 10, 10.0) == (0.7, 0.7)


def test_population_interval_narrows_with_the_share_sampled_and_equals_wilson_for_a_huge_one():
    small_share = population_interval(40, 50, 5_000_000.0)
    assert small_share == pytest.approx(wilson(40, 50), abs=1e-5)
    half = population_interval(40, 50, 100.0)
    # finite population correction: n_eff = n (N - 1) / (N - n) = 50 * 99 / 50 = 99
    p, n_eff, z = 0.8, 99.0, 1.959963984540054
    center = (p + z * z / (2 * n_eff)) / (1 + z * z / n_eff)
    half_width = z * math.sqrt(p * (1 - p) / n_eff + z * z / (4 * n_eff**2)) / (1 + z * z / n_eff)
    assert half == pytest.approx((center - half_width, center + half_width))
    assert half[1] - half[0] < small_share[1] - small_share[0]


@pytest.mark.parametrize(
    ("stamp", "width", "start"),
    [(0, HOUR_MS, 0), (HOUR_MS - 1, HOUR_MS, 0), (HOUR_MS, HOUR_MS, HOUR_MS),
     (DAY_MS + 5 * HOUR_MS + 7, DAY_MS, DAY_MS), (DAY_MS + 5 * HOUR_MS + 7, HOUR_MS,
                                                  DAY_MS + 5 * HOUR_MS)],
)  # fmt: skip
def test_window_start_aligns_on_the_utc_epoch(stamp, width, start):
    assert window_start(stamp, width) == start


@pytest.mark.parametrize(
    ("value", "expected"),
    [("yes", ("pass", None)), ("NO", ("fail", None)), (True, ("pass", None)),
     (False, ("fail", None)), (0.25, ("numeric", 0.25)), (3, ("numeric", 3.0)),
     ("maybe", ("other", "maybe")), (float("nan"), ("other", "nan"))],
)  # fmt: skip
def test_classify_feedback_values(value, expected):
    assert classify(value) == expected


def test_combine_parts_of_one_verdict():
    assert combine([("pass", None), ("fail", None)]) == ("fail", None)
    assert combine([("pass", None), ("pass", None)]) == ("pass", None)
    assert combine([("numeric", 1.0), ("numeric", 0.0)]) == ("numeric", 0.5)


def test_tally_stats_counts_rates_and_the_population_estimates():
    outcomes = (
        [Outcome(False)] * 6  # eligible, not sampled
        + [Outcome(True, "pass", seconds=1.0)] * 3
        + [Outcome(True, "fail", seconds=3.0)]
        + [Outcome(True, "error", retryable=True), Outcome(True)]  # an error, one not scored
    )
    stats = tally(outcomes).stats(rate=0.5)
    assert (stats["eligible"], stats["sampled"], stats["verdicts"]) == (12, 6, 4)
    assert (stats["passed"], stats["failed"], stats["errors"], stats["unscored"]) == (3, 1, 1, 1)
    assert stats["pass_rate"] == 0.75
    assert stats["estimated_failing"] == 2.0  # 1 failing verdict / sample rate 0.5
    assert (stats["sample_low95"], stats["sample_high95"]) == wilson(3, 4)
    # the 4 judged stand for 4 * 12 / 6 = 8 traces
    assert (stats["pass_rate_low95"], stats["pass_rate_high95"]) == population_interval(3, 4, 8)
    assert stats["latency_p50"] == 1.0 and stats["latency_p95"] == pytest.approx(2.7)
    assert tally(outcomes).retryable == 1


def test_tallies_of_hours_merge_into_the_tally_of_the_day():
    first = tally([Outcome(True, "pass", seconds=1.0), Outcome(True, "numeric", 2.0)])
    second = tally([Outcome(True, "fail"), Outcome(True, "other", "maybe"), Outcome(False)])
    day = first.merge(second)
    whole = tally(
        [Outcome(True, "pass", seconds=1.0), Outcome(True, "numeric", 2.0), Outcome(True, "fail"),
         Outcome(True, "other", "maybe"), Outcome(False)]
    )  # fmt: skip
    assert day == whole
    assert Tally().stats(1.0)["pass_rate"] is None


def test_percentile_interpolates_like_numpy():
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)


def test_settled_waits_for_the_cursor_the_grace_period_and_retries():
    end = 10 * HOUR_MS
    assert not settled(end, end + 1, end, 0, 600_000, DAY_MS)  # just closed
    assert settled(end, end + 600_000, end, 0, 600_000, DAY_MS)
    assert not settled(end, end + 600_000, end - 1, 0, 600_000, DAY_MS)  # cursor not past it
    assert not settled(end, end + 600_000, end, 2, 600_000, DAY_MS)  # errors to retry
    assert settled(end, end + DAY_MS, None, 2, 600_000, DAY_MS)  # the sweep has left it


def test_trend_arrows():
    assert (trend(0.9, 0.95), trend(0.95, 0.9), trend(0.9, 0.901), trend(None, 0.9)) == (
        "↑", "↓", "→", " ",
    )  # fmt: skip
