"""How many judge calls may be in flight at once: an adaptive limit, its gate, and its snapshot.

``AdaptiveLimit`` is the arithmetic (pure; every method takes ``now``). It follows TCP's
congestion control as Netflix's concurrency-limits applies it to RPCs: start small; while calls
succeed and their latency stays flat, grow by one per answered call (doubling every round trip,
"slow start"); on a 429, a timeout or a 503, or when the round trip rises well above the
no-load round trip, halve. After a cut it remembers 0.95 of the limit that failed as a ceiling,
climbs back to it quickly and then probes above it slowly, faster the longer the probe holds
(as TCP CUBIC does), so a judge that accepts N concurrent calls is kept near N with few 429s.
Rising latency never takes the limit below ``latency_floor``: with few calls in flight, a slower
answer is this host's CPU, not the judge. The limit never goes above ``max_limit``.

``ConcurrencyGate`` applies a limit to the threads that make calls (the judge proxy's). The
process's active gate is registered here, so the judge threads can size themselves to it
(``current_limit``) and ``snapshot()`` serves ``status`` and a metrics endpoint; scoring processes
read the daemon's gate through a small shared-memory board (``board`` / ``attach``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OK, DROPPED, IGNORED = "ok", "dropped", "ignored"  # what became of one call
PROBE_DECAY = 0.75  # a cut below the ceiling lowers it by this factor
PROBE_GAIN = 3.0  # above the ceiling, each round trip adds 1/PROBE_GAIN of the excess


@dataclass(frozen=True)
class LimitSettings:
    initial: int = 8
    max_limit: int = 256
    min_limit: int = 1
    latency_floor: int = 8  # rising latency alone never cuts the limit below this
    latency_tolerance: float = 2.0  # a round trip this many times the no-load one...
    latency_excess_s: float = 0.025  # ...and this much longer is a sign of congestion
    backoff: float = 0.5
    no_load_window_s: float = 30.0  # the no-load round trip is the least of the last two windows

    def validate(self) -> None:
        if not 1 <= self.min_limit <= self.initial <= self.max_limit:
            raise ValueError(
                "concurrency limits must satisfy 1 <= min_limit <= initial <= max_limit, got "
                f"min_limit={self.min_limit}, initial={self.initial}, max_limit={self.max_limit}"
            )


class AdaptiveLimit:
    """The concurrency limit, adjusted after every call from its outcome and round trip."""

    mode = "adaptive"

    def __init__(self, settings: LimitSettings | None = None, now: float = 0.0):
        self.settings = settings or LimitSettings()
        self.settings.validate()
        self._limit = float(min(self.settings.initial, self.settings.max_limit))
        self.ceiling: float | None = None  # 0.95 of the limit at the last cut; None: slow start
        self._cut_at = float("-inf")  # calls that started before the last cut cannot cut again
        self._rtt: float | None = None  # smoothed round trip of calls started after the cut
        self._rtt_samples = 0
        self._window_start = now
        self._window_min: float | None = None
        self._previous_min: float | None = None
        self._answered_since_cut = False
        self.cuts = 0

    @property
    def limit(self) -> int:
        return max(self.settings.min_limit, int(self._limit))

    @property
    def no_load_rtt(self) -> float | None:
        known = [m for m in (self._window_min, self._previous_min) if m is not None]
        return min(known) if known else None

    @property
    def rtt(self) -> float | None:
        return self._rtt

    def on_sample(
        self, now: float, started: float, outcome: str, in_flight: int, may_grow: bool = True
    ) -> None:
        """One call, begun at ``started`` and answered at ``now``; ``in_flight`` counts it."""
        if outcome == IGNORED:
            return
        if outcome == DROPPED:
            if started >= self._cut_at:
                self._cut(now, self.settings.min_limit)
            return
        rtt = max(0.0, now - started)
        self._observe_rtt(now, rtt)
        if started < self._cut_at:
            return  # sent under the old limit: says nothing about the new one
        self._rtt_samples += 1
        self._answered_since_cut = True
        self._rtt = rtt if self._rtt is None else 0.8 * self._rtt + 0.2 * rtt
        if self._congested():
            if self._limit > self.settings.latency_floor:
                self._cut(now, self.settings.latency_floor)
            return
        # Grow only while the limit is what holds calls back; an idle limit proves nothing.
        if may_grow and in_flight >= 0.5 * self._limit:
            self._grow()

    def _observe_rtt(self, now: float, rtt: float) -> None:
        if now - self._window_start >= self.settings.no_load_window_s:
            self._previous_min, self._window_min = self._window_min, None
            self._window_start = now
        if self._window_min is None or rtt < self._window_min:
            self._window_min = rtt

    def _congested(self) -> bool:
        s, base = self.settings, self.no_load_rtt
        if self._rtt is None or base is None or self._rtt_samples < min(8, self.limit):
            return False
        return self._rtt > s.latency_tolerance * base and self._rtt - base > s.latency_excess_s

    def _grow(self) -> None:
        limit, ceiling = self._limit, self.ceiling
        if ceiling is None:
            grown = limit + 1  # slow start: doubles every round trip
        elif limit < ceiling:
            grown = min(ceiling, limit + 1)  # back to the last good level, as fast
        else:  # probing above it: +1/10 per round trip at first, faster the longer it holds
            grown = limit + max(0.1, (limit - ceiling) / PROBE_GAIN) / limit
        self._limit = min(float(self.settings.max_limit), grown)

    def _cut(self, now: float, floor: int) -> None:
        self._cut_at = now
        self._rtt, self._rtt_samples = None, 0
        answered, self._answered_since_cut = self._answered_since_cut, False
        if self._limit <= floor:
            return  # nothing left to cut: the judge is refusing everyone, not us
        if self.ceiling is None or self._limit >= self.ceiling:
            # Just below the limit that failed. A cut in slow start may have overshot by up to
            # a round trip's growth: the climb back then fails sooner, and sets it closer.
            self.ceiling = 0.95 * self._limit
        elif answered:  # failed on the way back: the judge takes less now
            self.ceiling = max(0.95 * self._limit, PROBE_DECAY * self.ceiling)
        # (Failures with no answer in between are one burst, or an outage: the ceiling stays.)
        self.ceiling = max(float(self.settings.min_limit), self.ceiling)
        self._limit = max(float(floor), self._limit * self.settings.backoff)
        self.cuts += 1

    def snapshot(self) -> dict[str, Any]:
        rtt, base = self._rtt, self.no_load_rtt
        return {
            "mode": self.mode,
            "limit": self.limit,
            "max": self.settings.max_limit,
            "rtt_ms": None if rtt is None else round(rtt * 1000, 1),
            "no_load_rtt_ms": None if base is None else round(base * 1000, 1),
            "cuts": self.cuts,
        }


class FixedLimit:
    """``--workers N``: a limit that never moves."""

    mode = "fixed"

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"a fixed concurrency limit must be at least 1, got {limit}")
        self.limit = limit

    def on_sample(self, *args: Any, **kwargs: Any) -> None:
        pass

    def snapshot(self) -> dict[str, Any]:
        return {"mode": self.mode, "limit": self.limit, "max": self.limit}


Limit = AdaptiveLimit | FixedLimit
_BOARD_SLOTS = 3  # limit, in flight, waiting


class ConcurrencyGate:
    """Holds calls back while ``limit`` are in flight; feeds each call's outcome to the limit."""

    def __init__(self, limit: Limit, clock: Callable[[], float] = time.monotonic):
        self._limit = limit
        self.clock = clock
        self._cond = threading.Condition()
        self.in_flight = 0
        self.waiting = 0
        self.calls = 0
        self.dropped = 0
        self.throttled = 0  # of them, answered 429 (Too Many Requests)
        self._board: Any = None

    def acquire(self) -> float:
        """Wait for a free slot; returns the call's start time, for ``release``."""
        with self._cond:
            self.waiting += 1
            self._publish()
            while self.in_flight >= self._limit.limit:
                self._cond.wait()
            self.waiting -= 1
            self.in_flight += 1
            self._publish()
        return self.clock()

    def release(
        self, started: float, outcome: str, may_grow: bool = True, throttled: bool = False
    ) -> None:
        """A call ended; ``throttled``: the judge answered it 429."""
        with self._cond:
            self._limit.on_sample(self.clock(), started, outcome, self.in_flight, may_grow)
            self.in_flight -= 1
            self.calls += 1
            self.dropped += outcome == DROPPED
            self.throttled += throttled
            self._publish()
            self._cond.notify_all()

    @property
    def limit(self) -> int:
        return self._limit.limit

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return {
                **self._limit.snapshot(),
                "in_flight": self.in_flight,
                "waiting": self.waiting,
                "calls": self.calls,
                "dropped": self.dropped,
                "throttled": self.throttled,
            }

    def board(self) -> Any:
        """The limit and counts in shared memory, for the scoring processes (created once)."""
        if self._board is None:
            import multiprocessing

            self._board = multiprocessing.get_context("forkserver").RawArray("i", _BOARD_SLOTS)
            with self._cond:
                self._publish()
        return self._board

    def _publish(self) -> None:
        if self._board is not None:
            self._board[0], self._board[1], self._board[2] = (
                self._limit.limit, self.in_flight, self.waiting
            )  # fmt: skip


class _BoardView:
    """The daemon's gate as a scoring process sees it: numbers only."""

    def __init__(self, board: Any):
        self._board = board

    @property
    def limit(self) -> int:
        return int(self._board[0])

    def snapshot(self) -> dict[str, Any]:
        limit, in_flight, waiting = self._board[:_BOARD_SLOTS]
        return {"mode": "shared", "limit": limit, "in_flight": in_flight, "waiting": waiting}


_active: ConcurrencyGate | _BoardView | None = None


def activate(gate: ConcurrencyGate | None) -> None:
    """Make ``gate`` this process's active gate (None: there is none)."""
    global _active
    _active = gate


def attach(board: Any) -> None:
    """In a scoring process: follow the daemon's gate through its shared board."""
    global _active
    _active = _BoardView(board) if board is not None else None


def board() -> Any:
    """The active gate's shared board, to hand to scoring processes; None without a gate."""
    return _active.board() if isinstance(_active, ConcurrencyGate) else None


def current_limit() -> int | None:
    """The active concurrency limit of judge calls, or None when no gate is active."""
    return _active.limit if _active is not None else None


def snapshot() -> dict[str, Any] | None:
    """The limit, calls in flight and waiting, and counters: numbers only, no secrets."""
    return _active.snapshot() if _active is not None else None
