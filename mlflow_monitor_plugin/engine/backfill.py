"""Backfill: score a past range of traces with a monitor's judges, exactly once beside the daemon.

A backfill walks the finished traces of a range a page at a time (memory stays flat however long
the range) and scores the sampled (trace, judge) pairs that have no verdict of the monitor yet,
through the same scorer and ``FeedbackWriter`` as a pass (``MonitorEngine.score_due``), so its
verdicts carry the same identity and metadata as the daemon's.

It never races the daemon, because it only takes pairs the daemon will never score (``owner``):
traces behind the daemon's checkpoint, and of those inside the daemon's late window only the
judges it has never tried on a trace it has seen (the sweep leaves those alone; a judge added by
``update`` is the usual case). Traces ahead of the checkpoint, and retries of failures inside the
window, are left to the daemon and counted as such. One backfill works a monitor at a time (a
lease of its own). Its cursor is a tag per (monitor, range as written, judges): killed and run
again, it resumes after the last page it finished; a page it was cut short in is repeated, and
the repeat finds the verdicts already written.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from mlflow.entities import TraceInfo
from mlflow.exceptions import MlflowException

from mlflow_monitor_plugin.config.model import ExternalMonitor
from mlflow_monitor_plugin.config.prices import PriceBook
from mlflow_monitor_plugin.config.tags import NAMESPACE
from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint, sweep_floor_ms
from mlflow_monitor_plugin.discovery.sampling import is_sampled
from mlflow_monitor_plugin.discovery.strata import draw, filters_of
from mlflow_monitor_plugin.discovery.timerange import TimeRange
from mlflow_monitor_plugin.engine.budget import priced
from mlflow_monitor_plugin.engine.lease import Lease
from mlflow_monitor_plugin.engine.pipeline import (
    PAGES_AHEAD,
    Cursor,
    EngineSettings,
    MonitorEngine,
    PassContext,
    PassStats,
)
from mlflow_monitor_plugin.exceptions import (
    ExportError,
    MonitorConfigError,
    MonitorError,
    MonitorNotFoundError,
)
from mlflow_monitor_plugin.export.parquet import ParquetExporter
from mlflow_monitor_plugin.observe.tracker import STALE_KEY
from mlflow_monitor_plugin.observe.windows import DAY_MS, window_start
from mlflow_monitor_plugin.scoring.feedback import FeedbackWriter, JudgeState, judge_states
from mlflow_monitor_plugin.scoring.judges import JudgeSpec, endpoint_missing, monitor_judges
from mlflow_monitor_plugin.scoring.pool import Due, Outcome
from mlflow_monitor_plugin.scoring.shadow import shadow_specs

_logger = logging.getLogger(__name__)

LEASE_KEY = "backfill_lease"
CURSOR_PREFIX = "backfill."
SKEW_MARGIN_MS = 15 * 60 * 1000  # a sweep in flight, and clocks a little apart
COUNTS = ("sampled", "already_done", "daemon", "due", "scored", "not_applicable", "failed")

DONE, DAEMON, OURS = "done", "daemon", "backfill"


@dataclass(frozen=True)
class BackfillSettings:
    late_window_s: float = 24 * 3600.0  # the daemon's --late-window
    page_size: int = 200
    lease_ttl_s: float = 60.0


def owner(
    timestamp_ms: int,
    trace_id: str,
    state: JudgeState | None,
    seen: bool,
    daemon_cursor: Checkpoint | None,
    floor_ms: int,
) -> str:
    """Who scores a sampled (trace, judge): nobody (``DONE``), the daemon, or the backfill.
    Pure. ``seen``: the monitor wrote something on the trace or exported it (what the sweep
    calls seen); ``floor_ms``: the oldest request time the daemon's sweep may still revisit."""
    if state is not None and state.done:
        return DONE
    if daemon_cursor is None or daemon_cursor.is_before(timestamp_ms, trace_id):
        return DAEMON  # its next pass scores every pair ahead of its checkpoint
    if timestamp_ms < floor_ms:
        return OURS  # the daemon never comes back this far
    if seen and state is None:
        return OURS  # the sweep retries failures on seen traces, never a judge not tried
    return DAEMON


@dataclass
class BackfillStats:
    """Counts of one backfill (or dry run), per judge, and where it stands."""

    experiment_id: str
    window: TimeRange
    judges: list[JudgeSpec]
    counts: PassStats
    traces: int = 0
    resumed_from_ms: int | None = None
    position_ms: int | None = None
    complete: bool = False
    seconds: float = 0.0

    def count(self, judge: str, what: str) -> int:
        return self.counts.judges.get(judge, {}).get(what, 0)

    @property
    def verdicts(self) -> int:
        return self.counts.total("scored")

    @property
    def errors(self) -> int:
        return self.counts.total("failed")

    def judge_calls(self) -> int:
        """Judge calls the due pairs take, at most (one per LLM judge and trace; a judge that
        does not apply to a trace makes none; chunk_relevance makes one per retrieved chunk)."""
        return sum(self.count(j.name, "due") for j in self.judges if j.is_llm)

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"judge": j.name, "traces": self.traces, **{k: self.count(j.name, k) for k in COUNTS},
             "judge_calls": self.count(j.name, "due") if j.is_llm else 0}
            for j in self.judges
        ]  # fmt: skip


def cursor_key(monitor_id: str, window: TimeRange, judges: list[str]) -> str:
    """The tag (under the plugin's namespace) holding the cursor of one backfill."""
    what = f"{monitor_id}\x00{window.key}\x00{','.join(sorted(judges))}"
    return CURSOR_PREFIX + hashlib.sha256(what.encode()).hexdigest()[:20]


def select_judges(monitor: ExternalMonitor, names: list[str] | None) -> list[JudgeSpec]:
    """The monitor's trace judges, or only the ones named (a shadow by its name,
    ``shadow/<judge>``, only when named); an unknown name is a config error. Session judges are
    the session pass's, and unavailable code judges cannot run."""
    judges = [j for j in monitor_judges(monitor) if not j.session]
    judges = [j for j in judges if not j.unavailable]
    if names:
        judges += [s for s in shadow_specs(monitor, judges) if not s.unavailable]
    known = [j.name for j in judges]
    for name in names or []:
        if name not in known:
            raise MonitorConfigError(
                "judge", name, f"the monitor of experiment {monitor.experiment_id} runs only "
                f"{', '.join(known)}"
            )  # fmt: skip
    book = PriceBook(monitor.cost.prices)  # its verdicts' cost, as the daemon's (docs/cost.md)
    return priced([j for j in judges if not names or j.name in names], monitor, book)


class Backfill:
    """One backfill of one monitor over one range. ``create`` wires the real collaborators."""

    def __init__(
        self,
        engine: MonitorEngine,
        window: TimeRange,
        judge_names: list[str] | None = None,
        settings: BackfillSettings | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.engine = engine
        self.tags = engine.tags
        self.experiment_id = engine.experiment_id
        self.settings = settings or BackfillSettings()
        self._clock = clock
        monitor = self.tags.read_config(self.experiment_id)
        if monitor is None:
            raise MonitorNotFoundError(f"Experiment {self.experiment_id} has no monitor.")
        self.monitor = monitor
        self.judges = select_judges(monitor, judge_names)
        self.window = window
        self.key = cursor_key(monitor.monitor_id, window, [j.name for j in self.judges])
        self.lease = Lease(
            self.tags, self.experiment_id, engine.owner, self.settings.lease_ttl_s, key=LEASE_KEY
        )

    @classmethod
    def create(
        cls,
        experiment_id: str,
        window: TimeRange,
        judge_names: list[str] | None = None,
        settings: BackfillSettings | None = None,
        engine_settings: EngineSettings | None = None,
        scorer: Any = None,
    ) -> Backfill:
        engine = MonitorEngine.create(experiment_id, engine_settings, scorer=scorer)
        return cls(engine, window, judge_names, settings)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- the walk ------------------------------------------------------------------------
    def dry_run(self, on_page: Callable[[BackfillStats], None] | None = None) -> BackfillStats:
        """Count what a backfill of the whole range would score, writing nothing."""
        stats = self._stats()
        self._walk(stats, Checkpoint(self.window.since_ms, ""), None, on_page)
        return stats

    def run(
        self,
        on_outcome: Callable[[Outcome], None] | None = None,
        on_page: Callable[[BackfillStats], None] | None = None,
    ) -> BackfillStats:
        """Score the range, resuming a backfill of it that was cut short."""
        paused = self.monitor.assessments_config.paused
        if paused:
            raise MonitorError(
                f"The monitor of experiment {self.experiment_id} is paused; update it with "
                "paused off to backfill."
            )
        missing = {j.name: why for j in self.judges if (why := endpoint_missing(j))}
        if missing:
            names, why = ", ".join(missing), next(iter(missing.values()))
            raise MonitorError(
                f"No judge endpoint for {names}: {why}; or name only other judges with --judge."
            )
        if not self.lease.acquire(self._now_ms()):
            holder = (self.tags.read_json(self.experiment_id, LEASE_KEY) or {}).get("owner")
            raise MonitorError(
                f"Another backfill of experiment {self.experiment_id} is running ({holder}); "
                "run this one when it is done."
            )
        try:
            return self._run(on_outcome, on_page)
        finally:
            self.engine.scorer.settle()  # nothing of this backfill may still be writing after it
            self.lease.release()

    def _run(
        self,
        on_outcome: Callable[[Outcome], None] | None,
        on_page: Callable[[BackfillStats], None] | None,
    ) -> BackfillStats:
        record = self._read_record()
        if record is not None:  # resume: the range as resolved when the backfill first started
            self.window = TimeRange(
                int(record["since_ms"]), int(record["until_ms"]), self.window.key
            )
        stats = self._stats()
        where = f"of backfill {self.key} of experiment {self.experiment_id}"
        start = Checkpoint.from_dict((record or {}).get("cursor"), where)
        if start is not None:
            stats.resumed_from_ms = stats.position_ms = start.timestamp_ms
            _logger.info("Resuming backfill %s after %s", self.key, start)
        else:
            start = Checkpoint(self.window.since_ms, "")
        writer = FeedbackWriter(
            self.monitor.monitor_id,
            self.monitor.config_version,
            experiment_id=self.monitor.experiment_id,
        )
        ctx = PassContext(self.monitor, self.judges, writer, Cursor(None, None), None, stats.counts)

        days: set[int] = set()  # UTC days with verdicts of ours not published yet
        in_flight: deque[tuple[Due, Iterator[Outcome], list[TraceInfo]]] = deque()

        def finish() -> None:
            """Collect the oldest page in flight, publish the days behind it, save the cursor."""
            due, outcomes, page = in_flight.popleft()
            last = page[-1]
            self.engine.collect(ctx, due, outcomes, stats.counts, on_outcome)
            days.update(window_start(i.timestamp_ms, DAY_MS) for i in page if i.trace_id in due)
            done = {d for d in days if d + DAY_MS <= last.timestamp_ms}
            self._publish(done)
            days.difference_update(done)
            self._save_record(Checkpoint(last.timestamp_ms, last.trace_id))
            self.lease.acquire(self._now_ms())  # renew: a long backfill keeps it

        def score(due: Due, page: list[TraceInfo]) -> None:
            # as a pass does: the next page's judges start while this one's are still out
            outcomes = self.engine.scorer.score(ctx.writer, due) if due else iter(())
            in_flight.append((due, outcomes, page))
            while len(in_flight) > PAGES_AHEAD:
                finish()

        self._walk(stats, start, score, on_page)
        while in_flight:
            finish()
        self._publish(days)
        self._delete_record()
        stats.complete = True
        return stats

    def _stats(self) -> BackfillStats:
        return BackfillStats(
            self.experiment_id, self.window, self.judges, PassStats(self.experiment_id)
        )

    def _walk(
        self,
        stats: BackfillStats,
        start: Checkpoint,
        score: Callable[[Due, list[TraceInfo]], None] | None,
        on_page: Callable[[BackfillStats], None] | None,
    ) -> None:
        started = time.monotonic()
        # Read before any page: a trace exported after this was scored before it was exported,
        # so its verdicts are on the page (see ``owner``).
        exported = self._exported_ids()
        pages = self.engine.source.infos_after(
            start, self.settings.page_size, until_ms=self.window.until_ms
        )
        while True:
            # The daemon's position, read before the page: it only moves forward, so what is
            # behind it now stays behind it, and a verdict it writes later is on a later read.
            daemon_cursor = self.engine.read_cursor(self.monitor).score
            window_ms = int(self.settings.late_window_s * 1000) + SKEW_MARGIN_MS
            floor_ms = sweep_floor_ms(self._now_ms(), window_ms)
            page = next(pages, None)
            if page is None:
                break
            due = self._due(page, stats, exported, daemon_cursor, floor_ms)
            if score is not None:
                score(due, page)
            stats.traces += len(page)
            stats.position_ms = page[-1].timestamp_ms
            stats.seconds = time.monotonic() - started
            if on_page is not None:
                on_page(stats)
        stats.seconds = time.monotonic() - started

    def _due(
        self,
        page: list[TraceInfo],
        stats: BackfillStats,
        exported: set[str],
        daemon_cursor: Checkpoint | None,
        floor_ms: int,
    ) -> Due:
        monitor_id, counts = self.monitor.monitor_id, stats.counts
        due: Due = {}
        filters = {j.filter_string for j in self.judges if j.filter_string}
        filters |= filters_of(self.judges)  # the judges' and their strata's
        matching = {f: self.engine.source.matching(page, f) for f in filters}
        for info in page:
            states = judge_states(info, monitor_id)
            seen = bool(states) or info.trace_id in exported
            for judge in self.judges:
                if judge.filter_string and info.trace_id not in matching[judge.filter_string]:
                    continue
                stratum, rate = draw(info, judge.strata, judge.rate, matching)
                if not is_sampled(info.trace_id, monitor_id, rate):
                    continue
                counts.count(judge.name, "sampled")
                state = states.get(judge.name)
                who = owner(info.timestamp_ms, info.trace_id, state, seen, daemon_cursor, floor_ms)
                if who == DONE:
                    counts.count(judge.name, "already_done")
                elif who == DAEMON:
                    counts.count(judge.name, "daemon")
                else:
                    counts.count(judge.name, "due")
                    pair = (replace(judge, draw=(stratum, rate)), state)
                    due.setdefault(info.trace_id, []).append(pair)
        return due

    def _exported_ids(self) -> set[str]:
        """Traces of the daemon's late window already exported (empty when unknown: then only
        verdicts make a trace seen, which leaves more to the daemon, never less)."""
        window_ms = int(self.settings.late_window_s * 1000) + SKEW_MARGIN_MS
        floor_ms = max(self.window.since_ms, sweep_floor_ms(self._now_ms(), window_ms))
        if floor_ms >= self.window.until_ms:
            return set()
        try:
            return ParquetExporter(self.monitor.export_uri).exported_ids(
                floor_ms, self.window.until_ms
            )
        except (ExportError, OSError) as e:
            _logger.info("Could not read the export (%s); only verdicts mark traces seen", e)
            return set()

    def _publish(self, days: set[int]) -> None:
        """The quality windows of days this backfill wrote verdicts in: their dataset and
        charts (observe/tracker.py ``refresh``), and the tag that has a running daemon read
        them again. Never fails the backfill: ``report`` and ``status`` read the store."""
        if not days:
            return
        now_ms = self._now_ms()
        horizon = now_ms - int(self.settings.late_window_s * 1000) - 2 * DAY_MS
        marker = self.tags.read_json(self.experiment_id, STALE_KEY) or {}
        recent = {d for d in [*marker.get("days", []), *days] if d >= horizon}
        self.tags.write_json(self.experiment_id, STALE_KEY, {"days": sorted(recent), "at": now_ms})
        if self.engine.quality is None:
            return
        try:
            self.engine.quality.refresh(
                self.monitor, sorted(days), now_ms, [j.name for j in self.judges]
            )
        except Exception:
            _logger.exception("Quality windows of the backfilled days not published")

    # -- the cursor tag ------------------------------------------------------------------
    def _read_record(self) -> dict[str, Any] | None:
        record = self.tags.read_json(self.experiment_id, self.key)
        if not isinstance(record, dict) or record.get("monitor_id") != self.monitor.monitor_id:
            return None
        return record

    def _save_record(self, cursor: Checkpoint) -> None:
        self.tags.write_json(
            self.experiment_id,
            self.key,
            {
                "monitor_id": self.monitor.monitor_id,
                "range": self.window.key,
                "since_ms": self.window.since_ms,
                "until_ms": self.window.until_ms,
                "judges": [j.name for j in self.judges],
                "cursor": cursor.to_dict(),
                "updated_ms": self._now_ms(),
            },
        )

    def _delete_record(self) -> None:
        try:
            self.tags.client.delete_experiment_tag(self.experiment_id, NAMESPACE + self.key)
        except MlflowException as e:  # never written (nothing in range), or already gone
            _logger.debug("Backfill tag %s not deleted: %s", self.key, e)
