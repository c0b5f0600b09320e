"""The adaptive concurrency limit (pure, on a simulated clock), its gate, and the judge proxy
keeping a judge that allows N concurrent calls near N."""

import heapq
import random
import threading
import time

import pytest

from mlflow_monitor_plugin.scoring import limiter
from mlflow_monitor_plugin.scoring.limiter import (
    DROPPED,
    IGNORED,
    OK,
    AdaptiveLimit,
    ConcurrencyGate,
    FixedLimit,
    LimitSettings,
)
from mlflow_monitor_plugin.scoring.proxy import JudgeProxy, ProxySettings


def answered(lim, n, now, rtt, in_flight=None):
    """``n`` calls answered OK at ``now``, each sent ``rtt`` earlier."""
    for _ in range(n):
        lim.on_sample(now, now - rtt, OK, lim.limit if in_flight is None else in_flight)


def test_slow_start_doubles_the_limit_every_round_trip_up_to_the_maximum():
    lim = AdaptiveLimit(LimitSettings(initial=8, max_limit=40), now=0.0)
    seen = []
    for round_trip in range(1, 5):
        answered(lim, lim.limit, now=0.5 * round_trip, rtt=0.5)
        seen.append(lim.limit)
    assert seen == [16, 32, 40, 40]


def test_an_idle_limit_does_not_grow():
    lim = AdaptiveLimit(LimitSettings(initial=8), now=0.0)
    answered(lim, 100, now=1.0, rtt=0.5, in_flight=2)  # the caller never needs more than 2
    assert lim.limit == 8


@pytest.mark.parametrize("outcome", [DROPPED])
def test_a_429_halves_the_limit_once_per_round_trip(outcome):
    lim = AdaptiveLimit(LimitSettings(initial=32), now=0.0)
    lim.on_sample(1.0, 0.99, outcome, 32)
    assert lim.limit == 16 and lim.cuts == 1
    lim.on_sample(1.01, 0.98, outcome, 31)  # sent before the cut: already accounted for
    assert lim.limit == 16 and lim.cuts == 1
    lim.on_sample(1.6, 1.5, outcome, 16)  # sent under the new limit: cut again
    assert lim.limit == 8 and lim.cuts == 2


def test_ignored_outcomes_change_nothing():
    lim = AdaptiveLimit(LimitSettings(initial=8), now=0.0)
    for _ in range(50):
        lim.on_sample(1.0, 0.5, IGNORED, 8)
    assert lim.limit == 8 and lim.rtt is None


@pytest.mark.parametrize(
    ("base_s", "slow_s", "cut"),
    [(0.5, 1.5, True), (2.0, 5.0, True), (0.5, 0.8, False), (0.002, 0.02, False)],
    ids=["0.5s-to-1.5s", "2s-to-5s", "within-tolerance", "instant-judge-cpu-noise"],
)
def test_rising_latency_halves_the_limit_but_not_below_the_floor(base_s, slow_s, cut):
    lim = AdaptiveLimit(LimitSettings(initial=8, latency_floor=8), now=0.0)
    now = 0.0
    for _ in range(4):  # slow start to 128 at the no-load round trip
        now += base_s
        answered(lim, lim.limit, now, base_s)
    assert lim.limit == 128
    for _ in range(20):
        now += slow_s
        answered(lim, 8, now, slow_s)
    if cut:
        assert lim.limit < 128 and lim.limit >= 8 and lim.cuts >= 1
    else:
        assert lim.limit >= 128 and lim.cuts == 0


def test_rising_latency_never_cuts_below_the_floor():
    lim = AdaptiveLimit(LimitSettings(initial=8, latency_floor=8), now=0.0)
    answered(lim, 8, now=0.5, rtt=0.5)
    for k in range(1, 30):
        answered(lim, 16, now=0.5 + 3 * k, rtt=3.0)
    assert lim.limit >= 8


def test_fixed_limit_never_moves():
    lim = FixedLimit(12)
    lim.on_sample(1.0, 0.0, DROPPED, 12)
    assert lim.limit == 12 and lim.snapshot()["mode"] == "fixed"
    with pytest.raises(ValueError, match="at least 1"):
        FixedLimit(0)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="min_limit <= initial <= max_limit"):
        AdaptiveLimit(LimitSettings(initial=300, max_limit=256))


def simulate(cap, latency_s, seconds, jitter=0.1, burst=None, seed=7):
    """A judge that answers in ``latency_s`` (+ up to ``jitter`` of it) and 429s at once any
    call beyond ``cap`` in progress, driven by callers that always have work. ``burst`` =
    (start, end): the judge answers every call 429 in that interval. Returns per-second counts
    of answered and 429 calls and the limit over time."""
    rng = random.Random(seed)
    lim = AdaptiveLimit(LimitSettings(), now=0.0)
    now, calls, at_judge, in_flight = 0.0, [], 0, 0
    ok, rejected, limits = {}, {}, []
    while now < seconds:
        while in_flight < lim.limit:
            in_flight += 1
            blocked = burst is not None and burst[0] <= now < burst[1]
            if at_judge >= cap or blocked:
                heapq.heappush(calls, (now + 0.002, now, False))
            else:
                at_judge += 1
                heapq.heappush(calls, (now + latency_s * (1 + jitter * rng.random()), now, True))
        end, started, good = heapq.heappop(calls)
        now = end
        lim.on_sample(now, started, OK if good else DROPPED, in_flight)
        in_flight -= 1
        counts = ok if good else rejected
        counts[int(now)] = counts.get(int(now), 0) + 1
        at_judge -= good
        limits.append((now, lim.limit))
    return ok, rejected, limits


@pytest.mark.parametrize(
    ("cap", "latency_s"), [(32, 0.5), (32, 2.0), (4, 0.5), (100, 0.5), (32, 0.05)]
)
def test_limit_converges_under_a_concurrency_cap(cap, latency_s):
    seconds = 40 * latency_s + 20
    ok, rejected, limits = simulate(cap, latency_s, seconds)
    after = [s for s in range(int(seconds)) if s >= 10]
    answered_rate = sum(ok.get(s, 0) for s in after) / len(after)
    share_429 = sum(rejected.get(s, 0) for s in after) / max(
        1, sum(ok.get(s, 0) + rejected.get(s, 0) for s in after)
    )
    assert answered_rate >= 0.8 * cap / latency_s, (answered_rate, cap / latency_s)
    assert share_429 < (0.06 if cap < 10 else 0.01), share_429
    assert max(limit for t, limit in limits if t >= 10) <= cap + 3


def test_limit_recovers_after_a_burst_of_429s():
    ok, rejected, limits = simulate(32, 0.5, 40, burst=(15.0, 18.0))
    during = [limit for t, limit in limits if 15.5 <= t < 18]
    assert during and max(during) <= 2  # halved down to the minimum while everything was 429
    assert sum(rejected.get(s, 0) for s in (15, 16, 17)) > 0
    assert sum(ok.get(s, 0) for s in range(25, 40)) / 15 >= 0.8 * 32 / 0.5  # back near the cap


def test_gate_holds_calls_beyond_the_limit_and_counts_them():
    gate = ConcurrencyGate(FixedLimit(2))
    first, second = gate.acquire(), gate.acquire()
    entered = threading.Event()

    def third():
        gate.release(gate.acquire(), OK)
        entered.set()

    thread = threading.Thread(target=third)
    thread.start()
    assert not entered.wait(0.2)
    assert gate.snapshot()["in_flight"] == 2 and gate.snapshot()["waiting"] == 1
    gate.release(first, OK)
    assert entered.wait(5)
    gate.release(second, DROPPED)
    thread.join()
    snap = gate.snapshot()
    assert (snap["in_flight"], snap["waiting"], snap["calls"], snap["dropped"]) == (0, 0, 3, 1)


def test_snapshot_follows_the_active_gate_and_holds_only_numbers():
    gate = ConcurrencyGate(AdaptiveLimit(LimitSettings(initial=4), now=time.monotonic()))
    limiter.activate(gate)
    try:
        assert limiter.current_limit() == 4
        snap = limiter.snapshot()
        assert snap["mode"] == "adaptive" and snap["limit"] == 4 and snap["in_flight"] == 0
        assert all(isinstance(v, int | float | str | None) for v in snap.values())
        board = limiter.board()
        limiter.attach(board)  # as a scoring process sees it
        assert limiter.current_limit() == 4 and limiter.snapshot()["mode"] == "shared"
    finally:
        limiter.activate(None)
    assert limiter.current_limit() is None and limiter.snapshot() is None


def test_proxy_keeps_a_capped_judge_near_its_cap_and_every_call_succeeds(fake_judge):
    fake_judge.behaviour.max_concurrent = 4
    fake_judge.behaviour.latency_s = 0.1
    fake_judge.behaviour.retry_after_s = 0.2
    proxy = JudgeProxy(fake_judge.url, ProxySettings(backoff_s=0.01)).start()
    statuses = []

    def caller():
        for _ in range(8):
            statuses.append(proxy.forward("/chat/completions", b'{"messages": []}', {})[0])

    try:
        threads = [threading.Thread(target=caller) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        proxy.stop()
    assert statuses == [200] * 128
    assert fake_judge.peak_active == 4
    rejected = fake_judge.count("over_capacity")
    assert 0 < rejected < 0.2 * 128, rejected  # it found the cap, and then kept under it
    snap = proxy.gate.snapshot()
    assert snap["cuts"] >= 1 and snap["limit"] <= 8 and snap["in_flight"] == 0
    assert snap["throttled"] == rejected  # every 429, for /metrics
