"""The coverage ledger: per hourly window and judge, what the monitor saw, sampled and scored.

For each window (the traces whose request time falls in the hour) and judge: traces seen (those
the judge's filter admits), sampled, scored, failed (an error feedback and no verdict), skipped
(behind the cursor with nothing written, and the daemon did not run the judge there: see
skipped.py), not applicable (behind the cursor with nothing written: the judge did not apply),
pending (ahead of the cursor), and the delay from a trace's end to its verdict. The daemon's
heartbeat is the ``lag_seconds`` metric it charts every few minutes on the monitor's metrics
run, so an hour with no heartbeat is an hour the daemon was down. Everything is read from the
store, so the ledger is exact whenever it is asked; ``state`` sums a row up:

* ``open``: the window has not ended, or ended less than ``LATE_S`` ago with traces pending;
* ``behind``: it ended longer ago and sampled traces are still pending (the daemon is down or
  behind);
* ``errors``: judge errors left (retried on later passes, or given up);
* ``skipped``: the daemon did not run the judge on some of the window's traces (no judge
  endpoint, say); they stay unscored until a backfill scores them;
* ``caught up``: everything is scored, but late: the daemon was down or behind (``gap`` says
  how late the slowest verdict came), and has closed the gap by itself;
* ``ok``: scored, in time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import TraceInfo

from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint
from mlflow_monitor_plugin.discovery.sampling import is_sampled
from mlflow_monitor_plugin.discovery.strata import draw, filters_of
from mlflow_monitor_plugin.observe.skipped import Skips
from mlflow_monitor_plugin.observe.windows import HOUR_MS, percentile, window_start
from mlflow_monitor_plugin.scoring.feedback import JudgeState, judge_states

STATES = ("open", "behind", "errors", "skipped", "caught up", "ok")
COUNTS = ("seen", "sampled", "scored", "failed", "skipped", "not_applicable", "pending")
LATE_S = 15 * 60.0  # a verdict later than this after its trace ended marks a gap


def trace_state(
    info: TraceInfo,
    state: JudgeState | None,
    rate: float,
    monitor_id: str,
    behind: bool,
    skipped: bool = False,
) -> str:
    """Where one (trace, judge) pair stands: unsampled, scored, failed, skipped (the cursor
    passed it while the daemon did not run the judge), not_applicable (the cursor passed it and
    nothing was written) or pending."""
    if not is_sampled(info.trace_id, monitor_id, rate):
        return "unsampled"
    if state and state.done:
        return "scored"
    if state and state.errors:
        return "failed"
    if not behind:
        return "pending"
    return "skipped" if skipped else "not_applicable"


def verdict_delay_s(info: TraceInfo, state: JudgeState | None) -> float | None:
    """Seconds from the trace's end to its first verdict's creation."""
    if not state or not state.done:
        return None
    stamps = [a.create_time_ms for g in state.verdicts for a in g if a.create_time_ms]
    if not stamps:
        return None
    ended = info.timestamp_ms + (info.execution_duration or 0)
    return max(0.0, (min(stamps) - ended) / 1000)


@dataclass
class Coverage:
    """One judge's counts over one window."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    delays: list[float] = field(default_factory=list)
    lowest_rate: float = 1.0  # the lowest effective sample rate (a daily budget lowers it)

    def add(self, where: str, delay_s: float | None) -> None:
        self.counts["seen"] += 1
        if where == "unsampled":
            return
        self.counts["sampled"] += 1
        self.counts[where] += 1
        if delay_s is not None:
            self.delays.append(delay_s)


def window_state(coverage: Coverage, end_ms: int, now_ms: int, late_s: float = LATE_S) -> str:
    """The ledger's one-word summary of a window (see the module's docstring)."""
    c = coverage.counts
    if c["pending"]:
        return "behind" if now_ms >= end_ms + int(late_s * 1000) else "open"
    if c["failed"]:
        return "errors"
    if c["skipped"]:
        return "skipped"
    if now_ms < end_ms:
        return "open"
    if coverage.delays and max(coverage.delays) > late_s:
        return "caught up"
    return "ok"


def heartbeat_minutes(beats_ms: Iterable[int], start_ms: int, every_s: float) -> int:
    """Minutes of the hour from ``start_ms`` in which the daemon charted its lag (each beat
    vouches for ``every_s`` seconds before it)."""
    covered: set[int] = set()
    span = max(1, int(every_s // 60))
    for beat in beats_ms:
        if start_ms <= beat < start_ms + HOUR_MS + every_s * 1000:
            minute = (beat - start_ms) // 60_000
            covered.update(m for m in range(minute - span, minute) if 0 <= m < 60)
    return len(covered)


def ledger_rows(
    windows: dict[int, dict[str, Coverage]],
    rates: dict[str, float],
    now_ms: int,
    beats_ms: list[int] | None,
    beat_every_s: float = 300.0,
) -> list[dict[str, Any]]:
    """The ledger's rows, oldest window first; ``beats_ms`` None when the daemon charts no
    heartbeat (no metrics run): then the ``daemon`` column is unknown."""
    rows = []
    for start in sorted(windows):
        end = start + HOUR_MS
        if beats_ms is None or start > now_ms:
            daemon = None
        else:
            daemon = heartbeat_minutes(beats_ms, start, beat_every_s)
        for judge, coverage in sorted(windows[start].items()):
            delays = coverage.delays
            rows.append(
                {
                    "window_start_ms": start,
                    "judge": judge,
                    "sample_rate": rates.get(judge),
                    "effective_rate": min(coverage.lowest_rate, rates.get(judge, 1.0)),
                    **coverage.counts,
                    "delay_p50_s": percentile(delays, 50),
                    "delay_max_s": max(delays) if delays else None,
                    "daemon_minutes": daemon,
                    "state": window_state(coverage, end, now_ms),
                }
            )
    return rows


def collect(
    pages: Iterator[list[TraceInfo]],
    judges: list[Any],
    monitor_id: str,
    cursor: Checkpoint | None,
    matching: Any,
    rate_of: Callable[[str, float, int], float] | None = None,
    skips: Skips | None = None,
) -> dict[int, dict[str, Coverage]]:
    """Coverage per hourly window and judge over ``pages`` of trace infos. ``judges`` carry
    ``name``, ``rate`` and ``filter_string``; ``matching(page, filter)`` gives the ids a
    filter admits; ``rate_of(judge, rate, timestamp_ms)`` the effective rate where a daily
    budget lowered it; ``skips`` where the daemon did not run a judge."""
    windows: dict[int, dict[str, Coverage]] = {}
    for page in pages:
        filters = {j.filter_string for j in judges if j.filter_string}
        filters |= filters_of(judges)  # and their strata's (config/strata.py)
        admitted = {f: matching(page, f) for f in filters}
        for info in page:
            states = judge_states(info, monitor_id)
            behind = cursor is not None and not cursor.is_before(info.timestamp_ms, info.trace_id)
            hour = windows.setdefault(window_start(info.timestamp_ms, HOUR_MS), {})
            for judge in judges:
                if judge.filter_string and info.trace_id not in admitted[judge.filter_string]:
                    continue
                state = states.get(judge.name)
                _, rate = draw(info, getattr(judge, "strata", ()), judge.rate, admitted)
                rate = rate_of(judge.name, rate, info.timestamp_ms) if rate_of else rate
                skipped = skips is not None and skips.reason(judge.name, info.timestamp_ms)
                where = trace_state(info, state, rate, monitor_id, behind, bool(skipped))
                coverage = hour.setdefault(judge.name, Coverage())
                coverage.add(where, verdict_delay_s(info, state))
                coverage.lowest_rate = min(coverage.lowest_rate, rate)
    return windows
