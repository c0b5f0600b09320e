"""After each pass: update the windows the pass touched, then the quality dataset, the MLflow
metrics run and the live metrics. Called once per pass by the engine; never fails the pass.

The truth is the store: the first time a UTC day is touched, all its traces are read (one
``search_traces`` range without spans); after that only the traces a pass touched are read
again, so a pass costs about one more page read per page it processed, however many traces the
experiment holds. Days the late-arrival sweep no longer revisits are dropped from memory.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Metric

from mlflow_monitor_plugin.config.model import ExternalMonitor
from mlflow_monitor_plugin.config.tags import MonitorTags
from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint, lag_ms
from mlflow_monitor_plugin.exceptions import ExportError
from mlflow_monitor_plugin.observe.collect import (
    Day,
    Judges,
    WindowReader,
    last_hour,
    window_judges,
    window_strata,
)
from mlflow_monitor_plugin.observe.dataset import QualityDataset, quality_uri
from mlflow_monitor_plugin.observe.labels import label_spaces, trust_stats
from mlflow_monitor_plugin.observe.live import METRICS, LiveMetrics
from mlflow_monitor_plugin.observe.mlflow_run import MetricsRun, rolling_metrics, window_metrics
from mlflow_monitor_plugin.observe.spend import RateSchedule, budget_rates, schedule_of
from mlflow_monitor_plugin.observe.windows import (
    DAY_MS,
    HOUR_MS,
    WIDTHS,
    Outcome,
    Tally,
    settled,
    window_start,
)
from mlflow_monitor_plugin.scoring.judges import monitor_judges

_logger = logging.getLogger(__name__)

STALE_KEY = "windows_stale"  # tag: {"days": [day start ms], "at": ms}, written by a backfill


@dataclass(frozen=True)
class QualitySettings:
    settle_s: float = 3600.0  # a closed window is charted this long after it ends, at the earliest
    late_window_s: float = 24 * 3600.0  # the engine's late window: windows older never change
    max_failed_passes: int = 5
    lag_every_s: float = 300.0  # how often lag_seconds is charted
    run_check_s: float = 60.0  # how often to check that a user has not deleted the metrics run
    update_every_s: float = 30.0  # while passes keep finding traces; at once when one finds none
    export: bool = True  # write the quality dataset beside the trace export
    # Shard 0 of several: the other replicas' verdicts reach the store, not this process, so
    # the windows also follow the slowest shard's cursor through the store (``_follow``).
    all_shards: bool = False
    # People label traces at any time, outside any pass: the days in memory are read again this
    # often, so the windows and /metrics count the labels given since (0: only at a restart).
    labels_every_s: float = 900.0


def window_rows(
    monitor: ExternalMonitor,
    judges: Judges,
    width: str,
    start_ms: int,
    tallies: dict[str, Tally],
    computed_ms: int,
) -> list[dict[str, Any]]:
    """The quality rows of one window, one per judge."""
    width_ms = DAY_MS if width == "1d" else HOUR_MS
    spaces = label_spaces(monitor)
    rows = []
    for name, rate in judges:
        tally = tallies[name]
        rows.append(
            {
                "monitor_id": monitor.monitor_id,
                "experiment_id": monitor.experiment_id,
                "judge": name,
                "width": width,
                "window_start": dt.datetime.fromtimestamp(start_ms / 1000, dt.timezone.utc),
                "window_end": dt.datetime.fromtimestamp(
                    (start_ms + width_ms) / 1000, dt.timezone.utc
                ),
                "window_start_ms": start_ms,
                "computed_at": dt.datetime.fromtimestamp(computed_ms / 1000, dt.timezone.utc),
                **tally.stats(rate),
                **trust_stats(tally.pairs, tally.fingerprints, spaces.get(name)),
            }
        )
    return rows


def day_rows(
    monitor: ExternalMonitor, judges: Judges, day: Day, computed_ms: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The hourly rows and the daily rows of one day."""
    hourly = [
        row
        for hour in sorted(day.hours)
        for row in window_rows(
            monitor, judges, "1h", hour, day.hour_tallies(hour, judges), computed_ms
        )
    ]
    daily = window_rows(monitor, judges, "1d", day.start_ms, day.day_tallies(judges), computed_ms)
    return hourly, daily


def _key_of(monitor: ExternalMonitor, judges: Judges) -> tuple[Any, ...]:
    """What the windows in memory were read for: a change reads them again."""
    return monitor.monitor_id, judges, tuple(sorted(window_strata(monitor).items()))


class QualityTracker:
    """Keeps one monitor's recent days in memory and publishes their windows."""

    def __init__(
        self,
        experiment_id: str,
        client: Any,
        source: Any,
        settings: QualitySettings | None = None,
        live: LiveMetrics = METRICS,
        wall: Callable[[], float] = time.time,
        stale_marker: Callable[[], Any] | None = None,
    ):
        self.experiment_id = experiment_id
        self.client = client
        self.source = source
        self.settings = settings or QualitySettings()
        self.live = live
        self._wall = wall
        self._stale_marker = stale_marker  # the days a backfill changed (see ``refresh``)
        self._stale_at: Any = None
        self._key: tuple[Any, ...] | None = None
        self.days: dict[int, Day] = {}
        self._unexported: set[int] = set()
        self._reader: WindowReader | None = None
        self._run: MetricsRun | None = None
        self._lag_logged_ms = 0
        self._run_checked_ms = 0
        self._pending: dict[str, int] = {}  # touched by passes since the last update
        self._updated_ms: int | None = None  # the engine's time of the last update
        self._updated_wall_ms: int | None = None
        self._schedule = RateSchedule()  # a daily budget's steps (observe/spend.py)
        self._budgeted: frozenset[str] = frozenset()  # the judges a budget lowers: LLM ones
        self._followed_ms: int | None = None  # all_shards: the slowest cursor, last update
        self._rolling_step = 0  # the step of the last rolling-hour point (seconds)
        self._rolling_charted: set[str] = set()  # judges with a rolling-hour point already
        self._labels_read_ms: int | None = None  # when the days were last read for new labels

    def _reset(self, monitor: ExternalMonitor, judges: Judges) -> None:
        """A new monitor, or its judges, rates or strata changed: start from the store again."""
        self._key = _key_of(monitor, judges)
        self.days.clear()
        self._unexported.clear()
        self._reader = WindowReader(
            self.source,
            monitor.monitor_id,
            judges,
            self.settings.max_failed_passes,
            rate_of=self._rate_of,
            strata=window_strata(monitor),
        )
        self._run = MetricsRun(self.client, self.experiment_id, monitor.monitor_id)

    def after_pass(
        self,
        monitor: ExternalMonitor,
        cursor: Checkpoint | None,
        touched: dict[str, int],
        stats: Any,
        now_ms: int,
    ) -> None:
        """Record the pass; every ``update_every_s`` (and whenever a pass found nothing new,
        so a catch-up ends with exact windows) bring the windows up to date and publish them."""
        wall_ms = int(self._wall() * 1000)
        self.live.pass_seconds.labels(self.experiment_id).observe(stats.seconds)
        if stats.exported:
            self.live.traces_exported.labels(self.experiment_id).inc(stats.exported)
        self._pending.update(touched)
        every_ms = self.settings.update_every_s * 1000
        first_verdicts = any(  # a judge's first verdicts are charted at once (rolling hour)
            counts.get("scored") and name not in self._rolling_charted
            for name, counts in getattr(stats, "judges", {}).items()
        )
        due = (
            self._updated_ms is None
            or now_ms - self._updated_ms >= every_ms
            or (self._pending and not touched)
            or first_verdicts
        )
        if not due:
            return
        since_ms = self._updated_wall_ms or wall_ms - int(stats.seconds * 1000) - 1
        self._updated_ms, self._updated_wall_ms = now_ms, wall_ms
        touched, self._pending = self._pending, {}
        specs = monitor_judges(monitor)
        judges = tuple((j.name, j.rate) for j in specs if not j.session)
        if self._key != _key_of(monitor, judges):
            self._reset(monitor, judges)
        self._budgeted = frozenset(j.name for j in specs if j.is_llm)
        self._schedule = schedule_of(
            MonitorTags(self.client), self.experiment_id, monitor.monitor_id
        )
        budgeted = monitor.cost.daily_budget_usd is not None
        self.live.set_budget_factor(
            self.experiment_id, self._schedule.factor(now_ms) if budgeted else None
        )
        self._reload_stale()
        self._reread_for_labels(wall_ms)
        if self.settings.all_shards:
            self._follow(cursor, judges)
        self._count(self._update(touched), since_ms)
        today = self.days.get(window_start(now_ms, DAY_MS))
        self.live.set_agreement(self.experiment_id, monitor, judges, today)
        if self.settings.export:
            self._export(monitor, judges, wall_ms)
        self._chart(monitor, judges, cursor, now_ms, wall_ms)
        horizon = now_ms - int(self.settings.late_window_s * 1000) - DAY_MS
        for start in [s for s in self.days if s + DAY_MS < horizon]:
            del self.days[start]

    def _reload_stale(self) -> None:
        """Read again the days in memory that a backfill has written verdicts in since."""
        marker = self._stale_marker() if self._stale_marker else None
        if not isinstance(marker, dict) or marker.get("at") == self._stale_at:
            return
        self._stale_at = marker.get("at")
        assert self._reader is not None
        for start in marker.get("days", []):
            if start in self.days:
                self.days[start] = self._reader.load_day(start)
                self._unexported.add(start)

    def _reread_for_labels(self, wall_ms: int) -> None:
        every_ms = self.settings.labels_every_s * 1000
        if self._labels_read_ms is None or not every_ms:
            self._labels_read_ms = wall_ms
        elif wall_ms - self._labels_read_ms >= every_ms and self._reader is not None:
            self._labels_read_ms = wall_ms
            for start in list(self.days):
                self.days[start] = self._reader.load_day(start)
                self._unexported.add(start)

    def _follow(self, slowest: Checkpoint | None, judges: Judges) -> None:
        """Shard 0 of several: read again, from the store, the traces every shard has passed
        since the last update (their verdicts are in by now) and the hours whose errors wait
        for a retry (another replica retries them). Each trace is read about once more."""
        assert self._reader is not None
        if slowest is None:
            return
        until = slowest.timestamp_ms + 1
        since = self._followed_ms
        if since is None:  # the days in memory were read before: read them again whole
            since = min(self.days, default=until)
        self._followed_ms = until
        if since < until:
            for start in range(window_start(since, DAY_MS), until, DAY_MS):
                if start not in self.days:
                    self.days[start] = self._reader.load_day(start)
                else:
                    begin, end = max(since, start), min(until, start + DAY_MS)
                    self._reader.read_range(self.days[start], begin, end)
                self._unexported.add(start)
        for start, day in self.days.items():
            waiting = [
                hour
                for hour in list(day.hours)
                if any(t.retryable for t in day.hour_tallies(hour, judges).values())
            ]
            for hour in waiting:
                self._reader.read_range(day, hour, hour + HOUR_MS)
                self._unexported.add(start)

    def refresh(
        self,
        monitor: ExternalMonitor,
        day_starts: list[int],
        now_ms: int,
        judge_names: list[str],
    ) -> int:
        """Publish again the days another writer (a backfill) scored ``judge_names`` in: read
        them from the store, rewrite their quality dataset, and chart those judges on the
        settled windows the daemon will not chart again (a judge's point is never logged
        twice). Returns the points charted."""
        wall_ms = int(self._wall() * 1000)
        judges = window_judges(monitor)
        if self._key != _key_of(monitor, judges):
            self._reset(monitor, judges)
        assert self._reader is not None and self._run is not None
        for start in day_starts:
            self.days[start] = self._reader.load_day(start)
            self._unexported.add(start)
        self._export(monitor, judges, wall_ms)  # even where this process exports no traces
        # Only these judges: windows older than the daemon's memory may have been charted with
        # every judge, and the run's list of charted windows no longer names them.
        charted = self._chart_judges(monitor, judges, day_starts, judge_names, now_ms)
        for start in day_starts:
            del self.days[start]  # the daemon's own days are its to keep; ours are done
        return charted

    def _chart_judges(
        self,
        monitor: ExternalMonitor,
        judges: Judges,
        day_starts: list[int],
        names: list[str],
        now_ms: int,
    ) -> int:
        assert self._run is not None
        s = self.settings
        settle_ms, late_ms = int(s.settle_s * 1000), int(s.late_window_s * 1000)
        ours = tuple(j for j in judges if j[0] in set(names))
        run_id = self._run.run_id()
        have = {
            (name, width): self._run.steps(f"{name}/verdicts" + ("_1d" if width == "1d" else ""))
            for name, _ in ours
            for width in WIDTHS
        }
        rows = []
        for start in day_starts:
            day = self.days[start]
            windows = [("1h", h, HOUR_MS, day.hour_tallies(h, judges)) for h in sorted(day.hours)]
            windows.append(("1d", start, DAY_MS, day.day_tallies(judges)))
            for width, begin, width_ms, tallies in windows:
                end = begin + width_ms
                # a window the daemon will chart, with every judge, when it settles
                daemons = (width, begin) not in self._run.written and now_ms < end + late_ms
                retryable = sum(t.retryable for t in tallies.values())
                if daemons or not settled(end, now_ms, None, retryable, settle_ms, late_ms):
                    continue
                rows += [
                    r
                    for r in window_rows(monitor, ours, width, begin, tallies, now_ms)
                    if r["verdicts"] and begin // 1000 not in have[(r["judge"], width)]
                ]
        metrics = [m for r in rows for m in window_metrics(r)]
        if metrics:
            self._run.log([], metrics)
        _logger.debug("Charted %d points of %s on run %s", len(metrics), names, run_id)
        return len(metrics)

    def _rate_of(self, judge: str, rate: float, timestamp_ms: int) -> float:
        return budget_rates(self._schedule, self._budgeted)(judge, rate, timestamp_ms)

    def _update(self, touched: dict[str, int]) -> dict[str, dict[str, Outcome]]:
        """Bring the touched days up to date; the touched traces' outcomes now."""
        assert self._reader is not None
        by_day: dict[int, dict[str, int]] = {}
        for trace_id, stamp in touched.items():
            by_day.setdefault(window_start(stamp, DAY_MS), {})[trace_id] = stamp
        fresh: dict[str, dict[str, Outcome]] = {}
        for start, traces in sorted(by_day.items()):
            if start in self.days:
                fresh.update(self._reader.refresh(self.days[start], traces))
            else:
                self.days[start] = self._reader.load_day(start)
                fresh.update(self._reader.outcomes_of(self.days[start], traces))
            self._unexported.add(start)
        return fresh

    def _count(self, fresh: dict[str, dict[str, Outcome]], since_ms: int) -> None:
        """Live metrics: the verdicts and errors written since the last update."""
        self.live.count(self.experiment_id, fresh.values(), since_ms)

    def _export(self, monitor: ExternalMonitor, judges: Judges, wall_ms: int) -> None:
        dataset = QualityDataset(quality_uri(monitor.export_uri))
        for start in sorted(self._unexported):
            day = self.days.get(start)
            if day is None:
                self._unexported.discard(start)
                continue
            hourly, daily = day_rows(monitor, judges, day, wall_ms)
            date = dt.datetime.fromtimestamp(start / 1000, dt.timezone.utc).date()
            try:
                dataset.write_day(monitor.monitor_id, "1h", date, hourly)
                dataset.write_day(monitor.monitor_id, "1d", date, daily)
            except ExportError as e:
                _logger.error("Quality windows of %s not exported (retried next pass): %s", date, e)
                return
            self._unexported.discard(start)

    def _rolling(self, judges: Judges, now_ms: int, wall_ms: int) -> list[Metric]:
        """The rolling-hour points of this update (observe/mlflow_run.py: ``rolling_metrics``),
        one update per second at most."""
        if wall_ms // 1000 <= self._rolling_step:
            return []
        points = rolling_metrics(last_hour(self.days, judges, now_ms), wall_ms)
        if points:
            self._rolling_step = wall_ms // 1000
            self._rolling_charted |= {p.key.rsplit("/", 1)[0] for p in points}
        return points

    def _settled_rows(
        self, monitor: ExternalMonitor, judges: Judges, cursor_ms: int | None, now_ms: int
    ) -> list[dict[str, Any]]:
        s = self.settings
        settle_ms, late_ms = int(s.settle_s * 1000), int(s.late_window_s * 1000)
        assert self._run is not None
        written = self._run.written
        rows = []
        for start, day in sorted(self.days.items()):
            windows = [("1h", h, HOUR_MS, day.hour_tallies(h, judges)) for h in sorted(day.hours)]
            windows.append(("1d", start, DAY_MS, day.day_tallies(judges)))
            for width, begin, width_ms, tallies in windows:
                if (width, begin) in written:
                    continue
                retryable = sum(t.retryable for t in tallies.values())
                if settled(begin + width_ms, now_ms, cursor_ms, retryable, settle_ms, late_ms):
                    rows += window_rows(monitor, judges, width, begin, tallies, now_ms)
        return rows

    def _chart(
        self,
        monitor: ExternalMonitor,
        judges: Judges,
        cursor: Checkpoint | None,
        now_ms: int,
        wall_ms: int,
    ) -> None:
        assert self._run is not None
        extra = []
        lag = lag_ms(cursor, self.source.newest_timestamp_ms())
        if lag is not None:
            self.live.lag_seconds.labels(self.experiment_id, monitor.monitor_id).set(lag / 1000)
            if wall_ms - self._lag_logged_ms >= self.settings.lag_every_s * 1000:
                extra.append(Metric("lag_seconds", lag / 1000, wall_ms, wall_ms // 1000))
        if wall_ms - self._run_checked_ms >= self.settings.run_check_s * 1000:
            self._run.verify()
            self._run_checked_ms = wall_ms
        self._run.run_id()  # resolve the run (and what it already charted) before filtering
        rows = self._settled_rows(monitor, judges, cursor.timestamp_ms if cursor else None, now_ms)
        extra += self._rolling(judges, now_ms, wall_ms)
        if not rows and not extra:
            return
        keep_after = now_ms - int(self.settings.late_window_s * 1000) - 2 * DAY_MS
        self._run.log(rows, extra, keep_after)
        if extra:
            self._lag_logged_ms = wall_ms
