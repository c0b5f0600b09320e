"""One monitoring pass for one monitor: discover, sample, score, write feedback, export, checkpoint.

The pass walks the experiment's finished traces after its checkpoint, a page at a time. For each
page it scores the sampled (trace, judge) pairs that have no verdict from this monitor yet, logs
the verdicts, exports the page, then advances the checkpoint. Pages overlap: the judges of the
next page start before this page is finished, so the judge stays busy while the engine exports
and saves the checkpoint; the checkpoint passes a page only once all of its verdicts and error
feedback are written. A crash anywhere repeats at most the pages in flight, and their repeat
writes nothing twice (see feedback.py and export.py). Every
``sweep_every_s`` a sweep revisits the last ``late_window_s`` to pick up traces that finished or
arrived after the cursor passed them, and to retry judges that failed.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from mlflow.entities import TraceInfo
from mlflow.tracking import MlflowClient

from mlflow_monitor_plugin.config import mirrors
from mlflow_monitor_plugin.config.model import ExternalMonitor
from mlflow_monitor_plugin.config.tags import MonitorTags
from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint, sweep_floor_ms
from mlflow_monitor_plugin.discovery.sampling import is_sampled
from mlflow_monitor_plugin.discovery.shards import Shard
from mlflow_monitor_plugin.discovery.strata import draw, filters_of, newly_by_feedback
from mlflow_monitor_plugin.engine.budget import Budget
from mlflow_monitor_plugin.engine.lease import new_owner
from mlflow_monitor_plugin.engine.native import NativeFence
from mlflow_monitor_plugin.engine.passes import (
    Cursor,
    PageInFlight,
    PassContext,
    PassStats,
    is_ahead,
    lowest,
)
from mlflow_monitor_plugin.engine.sessions import SessionPass
from mlflow_monitor_plugin.engine.shards import CHECKPOINT_KEY, ShardWork
from mlflow_monitor_plugin.exceptions import ExportError, MonitorConfigError, MonitorNotFoundError
from mlflow_monitor_plugin.export.parquet import ParquetExporter
from mlflow_monitor_plugin.observe.skipped import SKIPPED_KEY, Skips
from mlflow_monitor_plugin.observe.tracker import STALE_KEY, QualitySettings, QualityTracker
from mlflow_monitor_plugin.redaction import masker_for
from mlflow_monitor_plugin.scoring import limiter
from mlflow_monitor_plugin.scoring.feedback import FeedbackWriter, JudgeState, judge_states
from mlflow_monitor_plugin.scoring.judges import JudgeSpec, endpoint_missing, monitor_judges
from mlflow_monitor_plugin.scoring.pool import Due, InProcessScorer, Outcome, Scorer
from mlflow_monitor_plugin.scoring.runner import JudgeRunner, ScoringSettings
from mlflow_monitor_plugin.scoring.shadow import with_shadows

_logger = logging.getLogger(__name__)

COUNTERS = ("eligible", "sampled", "scored", "not_applicable", "failed", "already_done")
PAGES_AHEAD = 1  # pages whose judges start while the page before is still being scored
CONCURRENCY_EVERY_S = 5.0  # how often the concurrency snapshot tag is rewritten, at most


@dataclass(frozen=True)
class EngineSettings:
    page_size: int = 200
    max_failed_passes: int = 5
    late_window_s: float = 24 * 3600.0
    sweep_every_s: float = 120.0
    lease_ttl_s: float = 60.0
    resync_every_s: float = 3600.0  # re-export yesterday and today, for later feedback; 0: off
    session_quiet_s: float = 300.0  # a session is judged once quiet this long (engine/sessions.py)
    export: bool = True
    windows: bool = True  # quality windows, charts and live metrics (observe/)
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    shard: Shard | None = None  # this replica's share of the traces (engine/shards.py)


def _masked(monitor: ExternalMonitor, text: str | None) -> str | None:
    """``text`` (a judge's error, which may quote the model's reply about a trace) as the
    monitor's personal-data policy would copy it out; withheld when the policy cannot run."""
    if not text or not monitor.pii.enabled:
        return text
    try:
        masker = masker_for(monitor.pii)
    except MonitorConfigError:
        return "(message withheld: the monitor's pii policy cannot be applied here)"
    return masker.mask_text(text)[0] if masker else text


class MonitorEngine:
    """Runs passes for one experiment's monitor. Collaborators are handed in; ``create`` wires
    the real ones."""

    CHECKPOINT_KEY = CHECKPOINT_KEY

    def __init__(
        self,
        experiment_id: str,
        tags: MonitorTags,
        scorer: Scorer,
        source_factory: Callable[[str], Any],
        settings: EngineSettings | None = None,
        owner: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        quality: QualityTracker | None = None,
    ):
        self.experiment_id = experiment_id
        self.tags = tags
        self.scorer = scorer
        self.source = source_factory(experiment_id)
        self.settings = settings or EngineSettings()
        self.owner = owner or new_owner()
        self._last_sweep_ms: int | None = None
        self._last_resync_ms: int | None = None
        self._export_retry_at_ms = 0
        self._export_failures = 0
        self._reported: set[tuple[str, str]] = set()  # unavailable judges already logged
        self._skipping: dict[str, str] = {}  # judges this pass does not run, and why
        self._skips: Skips | None = None  # their trace-time ranges (observe/skipped.py)
        self._sessions: SessionPass | None = None
        self._concurrency_at = float("-inf")
        self._concurrency_last: dict[str, Any] | None = None
        self.shards = ShardWork(
            tags, experiment_id, self.owner, self.settings.lease_ttl_s, self.settings.shard, sleep
        )
        self.lease = self.shards.lease
        self.quality = quality
        self.budget = Budget(tags, experiment_id, self.source)  # cost.daily_budget_usd
        self.native = NativeFence(tags.client, experiment_id)  # MLflow's runner kept off
        self._mirrored: tuple[str, int] | None = None  # the config listed in MLflow's registry

    @classmethod
    def create(
        cls,
        experiment_id: str,
        settings: EngineSettings | None = None,
        owner: str | None = None,
        scorer: Scorer | None = None,
    ) -> MonitorEngine:
        """The engine with real collaborators; ``scorer`` is a daemon's shared process pool,
        or None to score on threads in this process."""
        from mlflow_monitor_plugin.discovery.traces import TraceSource

        settings = settings or EngineSettings()
        client = MlflowClient()
        if scorer is None:
            fetch = TraceSource(experiment_id, client).fetch
            scorer = InProcessScorer(JudgeRunner(settings.scoring), fetch)
        tags = MonitorTags(client)
        quality = None
        shard = settings.shard
        if settings.windows and (shard is None or shard.index == 0):  # one replica of shards
            quality = QualityTracker(
                experiment_id,
                client,
                TraceSource(experiment_id, client),
                QualitySettings(
                    late_window_s=settings.late_window_s,
                    max_failed_passes=settings.max_failed_passes,
                    export=settings.export,
                    all_shards=bool(shard and shard.sharded),
                ),
                stale_marker=lambda: tags.read_json(experiment_id, STALE_KEY),
            )
        return cls(
            experiment_id,
            tags,
            scorer,
            lambda exp: TraceSource(exp, client),
            settings,
            owner,
            quality=quality,
        )

    # -- state in tags -------------------------------------------------------------------
    def read_cursor(self, monitor: ExternalMonitor) -> Cursor:
        if not self.shards.started:  # a reader (status, backfill): the lowest of every shard
            shards = self.shards.shard_cursors(monitor.monitor_id)
            if len(shards) > 1:
                return Cursor(lowest([s for _, s, _ in shards]), lowest([e for *_, e in shards]))
        stored = self.tags.read_json(self.experiment_id, self.shards.key(CHECKPOINT_KEY)) or {}
        if not self.shards.current(stored, monitor.monitor_id):
            # A new monitor starts from the experiment's first trace, a new layout where the
            # old one's shards left off (engine/shards.py).
            start = self.shards.handed_over.start
            return Cursor(start, start)
        where = f"of experiment {self.experiment_id}"
        return Cursor(
            Checkpoint.from_dict(stored.get("score"), where),
            Checkpoint.from_dict(stored.get("export"), where),
        )

    def _save_cursor(self, monitor: ExternalMonitor, cursor: Cursor) -> None:
        value = self.shards.stamp(cursor.to_dict(monitor.monitor_id))
        self.tags.write_json(self.experiment_id, self.shards.key(CHECKPOINT_KEY), value)

    def acquire_lease(self, now_ms: int) -> bool:
        return self.lease.acquire(now_ms)

    def release_lease(self) -> None:
        self.lease.release()

    # -- the pass ------------------------------------------------------------------------
    def run_pass(self, now_ms: int | None = None, max_pages: int | None = None) -> PassStats:
        started = time.monotonic()
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        stats = PassStats(self.experiment_id)
        monitor = self.tags.read_config(self.experiment_id)
        if monitor is None:
            raise MonitorNotFoundError(f"Experiment {self.experiment_id} has no monitor.")
        stats.skipped = self.shards.admit(monitor.monitor_id, now_ms, self.settings.export)
        if stats.skipped:
            return stats
        self._keep_mlflow_in_step(monitor)
        judges = self.budget.start(monitor, self.judges_for(monitor))
        writer = FeedbackWriter(
            monitor.monitor_id, monitor.config_version, experiment_id=self.experiment_id
        )
        export = self._export_for(monitor, now_ms, stats)
        cursor = self.read_cursor(monitor)
        walked_from = cursor.score.timestamp_ms if cursor.score else None
        trace_judges = [j for j in judges if not j.session]
        ctx = PassContext(monitor, trace_judges, writer, cursor, export, stats)
        pages = self.source.infos_after(cursor.start(export is not None), self.settings.page_size)
        in_flight: deque[PageInFlight] = deque()
        try:
            for done, page in enumerate(pages, start=1):
                if walked_from is None:  # a new monitor: from its first trace
                    walked_from = page[0].timestamp_ms
                for part in self._parts(ctx, page):
                    in_flight.append(self._begin(ctx, part))
                    ahead = 0 if self.budget.probing(trace_judges) else PAGES_AHEAD
                    while len(in_flight) > ahead:
                        self._finish(ctx, in_flight.popleft())
                if ctx.lost or (max_pages is not None and done >= max_pages):
                    break
            while in_flight:
                self._finish(ctx, in_flight.popleft())
            session_judges = [j for j in judges if j.session]
            if session_judges and not ctx.lost:
                renew = lambda: self.shards.renew(int(time.time() * 1000))  # noqa: E731
                logged = self.sessions.run(
                    monitor, session_judges, writer, stats.count, now_ms, renew
                )
                stats.feedback_logged += logged
            if self._sweep_due(now_ms) and not ctx.lost:
                self._sweep(ctx, now_ms, walked_from)
        finally:
            self.scorer.settle()  # nothing of this pass may still be writing after it
            self.budget.finish()
            if self._sessions is not None:
                self._sessions.runner.settle()
        if ctx.lost:
            self.shards.stand_down()
        if walked_from is not None:
            self._record_skips(monitor, walked_from, ctx.cursor.score)
        self._publish_concurrency(final=True)
        if export is not None and cursor.export is not None and self._resync_due(now_ms):
            self._resync(export, cursor.export, now_ms, stats)
        stats.seconds = time.monotonic() - started
        self._observe(ctx, now_ms)
        return stats

    def _keep_mlflow_in_step(self, monitor: ExternalMonitor) -> None:
        """MLflow's side of the monitor: its judges listed in MLflow's registry (once per
        config version, for a config written by an older version or whose listing failed),
        and MLflow's own runner held off the experiment (engine/native.py). Never fails a pass."""
        try:
            key = (monitor.monitor_id, monitor.config_version)
            if self._mirrored != key:
                state = mirrors.read_state(self.tags, self.experiment_id, monitor.monitor_id)
                if not mirrors.in_step(state, monitor):
                    mirrors.sync(monitor, self.tags)
                self._mirrored = key
            self.native.hold(monitor)
        except Exception:
            _logger.exception("MLflow's judge registry of experiment %s not kept in step",
                              self.experiment_id)  # fmt: skip

    @property
    def sessions(self) -> SessionPass:
        """The pass of the session judges, made on first use."""
        if self._sessions is None:
            client = self.source.client
            self._sessions = SessionPass.create(
                self.experiment_id, self.tags, client, self.settings, self.shards
            )
        return self._sessions

    def _observe(self, ctx: PassContext, now_ms: int) -> None:
        """Quality windows, charts and live metrics of this pass (observe/); never fails it."""
        if self.quality is None:
            return
        try:
            cursor = ctx.cursor.score
            if self.quality.settings.all_shards:  # windows settle once every shard passed
                cursor = self.shards.slowest_score(ctx.monitor.monitor_id)
            self.quality.after_pass(ctx.monitor, cursor, ctx.touched, ctx.stats, now_ms)
        except Exception:
            _logger.exception("Quality windows of experiment %s not updated", self.experiment_id)

    def judges_for(self, monitor: ExternalMonitor) -> list[JudgeSpec]:
        """The judges this pass runs; those it skips, and why, go to ``_skipping``."""
        self._skipping = {}
        if monitor.assessments_config.paused:
            return []
        judges = []
        for judge in with_shadows(monitor, monitor_judges(monitor)):
            if judge.shadow_of in self._skipping:  # a shadow goes where its judge goes
                self._skipping[judge.name] = f"its judge {judge.shadow_of} is skipped"
            elif judge.unavailable:
                self._skipping[judge.name] = f"unavailable: {judge.unavailable}"
                if (judge.name, judge.unavailable) not in self._reported:
                    self._reported.add((judge.name, judge.unavailable))
                    _logger.warning("Judge %s is unavailable: %s", judge.name, judge.unavailable)
            elif missing := endpoint_missing(judge):
                self._skipping[judge.name] = missing
            else:
                judges.append(judge)
        return judges

    def _record_skips(
        self, monitor: ExternalMonitor, walked_from: int, walked_to: Checkpoint | None
    ) -> None:
        """Extend the skipped judges' ranges by the traces this pass walked (status and
        report tell them from judges that did not apply); never fails the pass."""
        if not self._skipping or walked_to is None:
            return
        key = self.shards.key(SKIPPED_KEY)
        try:
            if self._skips is None or self._skips.monitor_id != monitor.monitor_id:
                stored = self.tags.read_json(self.experiment_id, key)
                self._skips = Skips.from_dict(stored, monitor.monitor_id)
            if self._skips.record(self._skipping, walked_from, walked_to.timestamp_ms):
                self.tags.write_json(self.experiment_id, key, self._skips.to_dict())
        except Exception as e:  # status only: never fail a pass over it
            self._skips = None
            _logger.debug("Could not record the skipped judges: %s", e)

    def _export_for(
        self, monitor: ExternalMonitor, now_ms: int, stats: PassStats
    ) -> ParquetExporter | None:
        if not self.settings.export:
            return None
        if now_ms < self._export_retry_at_ms:
            return None
        try:
            masker = masker_for(monitor.pii)
        except MonitorConfigError as e:  # never export unmasked: the cursor waits for the fix
            self._export_failures += 1
            delay_s = min(600, 5 * 2 ** min(self._export_failures, 7))
            self._export_retry_at_ms = now_ms + delay_s * 1000
            stats.export_error = str(e)
            _logger.error("Export of experiment %s is on hold: %s", self.experiment_id, e)
            return None
        return ParquetExporter(monitor.export_uri, masker=masker)

    def _parts(self, ctx: PassContext, page: list[TraceInfo]) -> Iterator[list[TraceInfo]]:
        """The page whole, or, while a daily budget does not know a judge's cost per call yet,
        a first part that probes it (engine/budget.py), then the rest. While it probes, the
        pass finishes each part before it begins the next (``run_pass``)."""
        while page:
            cut = self.budget.probe_prefix(page, ctx.judges, ctx.monitor.monitor_id)
            yield page[:cut]
            page = page[cut:]

    def _begin(self, ctx: PassContext, page: list[TraceInfo]) -> PageInFlight:
        """Sample the page and start its judges."""
        cursor, stats = ctx.cursor, ctx.stats
        mine = [i for i in page if self.shards.owns(i.trace_id)]
        to_score = [i for i in mine if is_ahead(cursor.score, i)]
        to_export = [i for i in mine if is_ahead(cursor.export, i)] if ctx.export else []
        overlap = self.shards.handed_over
        if to_export and overlap.in_overlap(to_export[0].timestamp_ms, to_export[0].trace_id):
            old = self.shards.exported_by_old(ctx.export)  # exported by the layout before
            to_export = [
                i
                for i in to_export
                if not (overlap.in_overlap(i.timestamp_ms, i.trace_id) and i.trace_id in old)
            ]
        stats.traces += len(to_score)
        due = self._due(ctx, to_score, stats)
        outcomes = self.scorer.score(ctx.writer, due) if due else iter(())
        return PageInFlight(page, to_export, due, outcomes)

    def _finish(self, ctx: PassContext, p: PageInFlight) -> None:
        """Collect the page's verdicts, write its error feedback, export it, checkpoint it."""
        cursor, export, stats = ctx.cursor, ctx.export, ctx.stats
        self.collect(ctx, p.due, p.outcomes, stats)
        exported = export is not None
        if p.to_export and export is not None:
            since = cursor.export.timestamp_ms if cursor.export else 0
            batch_key = f"{self.shards.batch_prefix()}{since}-{p.page[0].trace_id}"
            exported = self._export(export, batch_key, [i.trace_id for i in p.to_export], stats)
        cursor.advance(p.page[-1], score=True, export=exported)
        self._save_cursor(ctx.monitor, cursor)
        if not self.shards.renew(int(time.time() * 1000)):  # a long catch-up keeps it
            ctx.lost = True  # another daemon has it, or the layout changed: stop here

    def _score(
        self,
        ctx: PassContext,
        infos: list[TraceInfo],
        stats: PassStats,
        seen: Callable[[TraceInfo, dict[str, JudgeState]], bool] | None = None,
    ) -> None:
        self.score_due(ctx, self._due(ctx, infos, stats, seen), stats)

    def _due(
        self,
        ctx: PassContext,
        infos: list[TraceInfo],
        stats: PassStats,
        seen: Callable[[TraceInfo, dict[str, JudgeState]], bool] | None = None,
    ) -> Due:
        """The sampled judges that have no verdict yet on these traces. On a trace the
        monitor has ``seen`` before, only judges that failed or were cut short are due. A
        whole verdict found with another, a partial one or an error beside it (a crash between
        a write and its clean-up, or a race) is tidied here, wherever the trace is read."""
        monitor, judges = ctx.monitor, ctx.judges
        by_name = {j.name: j for j in judges}  # a shadow samples with its judge (same rate)
        due: Due = {}
        filters = {j.filter_string for j in judges if j.filter_string} | filters_of(judges)
        matching = {f: self.source.matching(infos, f) for f in filters}  # judges' and strata's
        for info in infos:
            states = judge_states(info, monitor.monitor_id)
            if any(s.untidy for s in states.values()):  # left by a crash: tidy it now
                stats.duplicates_removed += ctx.writer.reconcile(info)
            retry_only = seen is not None and seen(info, states)
            if not retry_only:  # new to the monitor: its window changes
                ctx.touched[info.trace_id] = info.timestamp_ms
            for judge in judges:
                if judge.filter_string and info.trace_id not in matching[judge.filter_string]:
                    continue
                stats.count(judge.name, "eligible")
                sampler = by_name.get(judge.shadow_of or "", judge)  # a shadow: its judge's
                stratum, base = draw(info, sampler.strata, sampler.rate, matching)
                rate = self.budget.rate(sampler, info, base)
                if not is_sampled(info.trace_id, monitor.monitor_id, rate):
                    continue
                stats.count(judge.name, "sampled")
                state = states.get(judge.name)
                if state and state.done:
                    stats.count(judge.name, "already_done")
                elif state and state.failed_passes >= self.settings.max_failed_passes:
                    stats.count(judge.name, "failed")
                elif (
                    retry_only
                    and not (state and (state.errors or state.partial))
                    and not (judge.strata and self._by_feedback(ctx, info, judge, matching))
                ):
                    continue  # not applicable when first seen, nor sampled since by feedback
                else:
                    due.setdefault(info.trace_id, []).append(
                        (replace(judge, draw=(stratum, rate)), state)
                    )
                    self.budget.reserve(judge, info)
                    ctx.touched[info.trace_id] = info.timestamp_ms
        return due

    def _by_feedback(
        self, ctx: PassContext, info: TraceInfo, judge: JudgeSpec, matching: dict[str, set[str]]
    ) -> bool:
        """Whether a human feedback newly put a trace the monitor had seen in the sample."""
        monitor_id = ctx.monitor.monitor_id

        def sampled(base: float) -> bool:
            return is_sampled(info.trace_id, monitor_id, self.budget.rate(judge, info, base))

        return newly_by_feedback(info, judge.strata, judge.rate, matching, sampled)

    def score_due(
        self,
        ctx: PassContext,
        due: Due,
        stats: PassStats,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        """Score the due (trace, judge) pairs, log their verdicts, then the error feedback of
        the failures; ``on_outcome`` sees each outcome as it arrives (a backfill's progress)."""
        if due:
            self.collect(ctx, due, self.scorer.score(ctx.writer, due), stats, on_outcome)

    def collect(
        self,
        ctx: PassContext,
        due: Due,
        outcomes: Iterator[Outcome],
        stats: PassStats,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        """Count the outcomes as they arrive (good verdicts are already written), then write
        the error feedback of the failed ones."""
        writer = ctx.writer
        answered, failed = set(), []
        for outcome in outcomes:
            self._publish_concurrency()
            verdict = outcome.verdict
            if on_outcome is not None:
                on_outcome(outcome)
            if not outcome.applicable:
                stats.count(verdict.judge.name, "not_applicable")
                continue
            stats.feedback_logged += outcome.logged
            self.budget.charge(verdict)
            stats.count(verdict.judge.name, "scored" if verdict.ok else "failed")
            if verdict.ok:
                answered.add(verdict.judge.name)
            else:
                failed.append(verdict)
                log = _logger.debug if verdict.skipped else _logger.warning
                log(
                    "Judge %s failed on trace %s after %d attempts: %s",
                    verdict.judge.name, verdict.trace_id, verdict.attempts,
                    _masked(ctx.monitor, verdict.error),
                )  # fmt: skip
        # Error feedback makes a failure visible and due again on later sweeps. A failure counts
        # towards --max-failed-passes only if the judge answered others in this pass: an outage
        # of the judge itself never uses up a trace's retries.
        states = {(t, judge.name): state for t, pairs in due.items() for judge, state in pairs}
        for verdict in failed:
            state = states[(verdict.trace_id, verdict.judge.name)]
            charge = verdict.judge.name in answered and not verdict.skipped
            stats.feedback_logged += writer.write(verdict, state, charge)

    def _publish_concurrency(self, final: bool = False) -> None:
        """The judge calls' concurrency limit and calls in flight, for ``status``: numbers
        only, rewritten every few seconds at most, and at the end of a pass that called."""
        now = time.monotonic()
        if now - self._concurrency_at < (1.0 if final else CONCURRENCY_EVERY_S):
            return
        snapshot = limiter.snapshot()
        if snapshot is None or snapshot == self._concurrency_last:
            return
        self._concurrency_at, self._concurrency_last = now, snapshot
        try:
            self.tags.write_json(
                self.experiment_id,
                "concurrency",
                {**snapshot, "updated_ms": int(time.time() * 1000)},
            )
        except Exception as e:  # status only: never fail a pass over it
            _logger.debug("Could not save the concurrency snapshot: %s", e)

    def _export(
        self,
        export: ParquetExporter,
        batch_key: str,
        trace_ids: list[str],
        stats: PassStats,
    ) -> bool:
        try:
            # Fetched after scoring, so the verdicts of this pass are in the copy.
            traces = self.source.fetch(trace_ids)
            export.write_batch(batch_key, traces, int(time.time() * 1000))
        except ExportError as e:
            self._export_failures += 1
            delay_s = min(600, 5 * 2 ** min(self._export_failures, 7))
            self._export_retry_at_ms = int(time.time() * 1000) + delay_s * 1000
            stats.export_error = str(e)
            _logger.error("Export of experiment %s failed: %s", self.experiment_id, e)
            return False
        self._export_failures = 0
        stats.exported += len(traces)
        return True

    def _resync_due(self, now_ms: int) -> bool:
        every_ms = self.settings.resync_every_s * 1000
        if not every_ms or self.shards.shard.sharded:
            return False  # shards: partitions are shared, replaced whole by no one replica
        if self._last_resync_ms is None:
            self._last_resync_ms = now_ms  # the first re-sync comes one period after start
        return now_ms - self._last_resync_ms >= every_ms

    def _resync(
        self, export: ParquetExporter, upto: Checkpoint, now_ms: int, stats: PassStats
    ) -> None:
        from mlflow_monitor_plugin.export.resync import resync

        self._last_resync_ms = now_ms
        today = dt.datetime.fromtimestamp(now_ms / 1000, dt.timezone.utc).date()
        try:
            rows = resync(self.source, export, today - dt.timedelta(days=1), today, upto)
        except ExportError as e:
            stats.export_error = str(e)
            _logger.error("Re-sync of experiment %s failed: %s", self.experiment_id, e)
            return
        _logger.info("Re-synced %d traces of experiment %s", rows, self.experiment_id)

    def _sweep_due(self, now_ms: int) -> bool:
        last = self._last_sweep_ms
        return last is None or now_ms - last >= self.settings.sweep_every_s * 1000

    def _sweep(self, ctx: PassContext, now_ms: int, walked_from: int | None) -> None:
        """Revisit the late window behind the cursor: late traces, failed judges, duplicates.
        A pass whose judges all answered stops where the cursor was when it started: what it
        walked is the next sweep's (a catch-up does not read its traces a second time at once).
        A pass with failures sweeps up to the cursor, so they are retried now, not in
        ``sweep_every_s``."""
        cursor, export, stats = ctx.cursor, ctx.export, ctx.stats
        self._last_sweep_ms = now_ms
        if cursor.score is None or walked_from is None:
            return
        floor = Checkpoint(sweep_floor_ms(now_ms, int(self.settings.late_window_s * 1000)), "")
        until = cursor.score.timestamp_ms + 1
        if not stats.total("failed"):
            until = min(until, walked_from + 1)
        exported = export.exported_ids(floor.timestamp_ms, until) if export else set()
        sweep = PassStats(self.experiment_id)

        def seen(info: TraceInfo, states: dict[str, JudgeState]) -> bool:
            return bool(states) or info.trace_id in exported

        for page in self.source.infos_after(floor, self.settings.page_size, until_ms=until):
            page = [i for i in page if not is_ahead(cursor.score, i)]
            page = [i for i in page if self.shards.owns(i.trace_id)]
            if not page:
                continue
            self._score(ctx, page, sweep, seen)  # which tidies what a crash or race left
            late = [i.trace_id for i in page if i.trace_id not in exported]
            if export and late and not is_ahead(cursor.export, page[-1]):
                key = f"{self.shards.batch_prefix()}late-{uuid.uuid4().hex}"
                self._export(export, key, late, stats)
        stats.feedback_logged += sweep.feedback_logged
        stats.duplicates_removed += sweep.duplicates_removed
        for judge, counts in sweep.judges.items():
            for what in ("scored", "failed"):
                stats.count(judge, what, counts[what])
