"""The monitoring daemon: a ``schedule`` loop that runs a pass for every monitored experiment.

Signal handlers only set a flag; the loop waits on it, so SIGTERM/SIGINT finish the pass in
flight and return. A failing monitor is logged and retried with exponential backoff; one bad
monitor or an unreachable server never stops the others or the daemon. Missed periodic passes
are skipped, not replayed (``schedule`` does that).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import schedule

from mlflow_monitor_plugin.alerts.runner import AlertRunner
from mlflow_monitor_plugin.config.tags import MonitorTags
from mlflow_monitor_plugin.engine.lease import new_owner
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine, PassStats
from mlflow_monitor_plugin.exceptions import MonitorNotFoundError
from mlflow_monitor_plugin.scoring.pool import make_scorer

_logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 3.0
MAX_BACKOFF_S = 300.0


@dataclass
class MonitorHealth:
    failures: int = 0
    retry_at: float = 0.0
    last_error: str | None = None
    last_stats: PassStats | None = None


@dataclass
class PassReport:
    stats: list[PassStats] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors and not any(s.export_error for s in self.stats)


class Daemon:
    """Runs passes over the monitored experiments (all of them, or the ones given)."""

    def __init__(
        self,
        experiment_ids: list[str] | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        settings: EngineSettings | None = None,
        engine_factory: Callable[..., MonitorEngine] = MonitorEngine.create,
        discover: Callable[[], list[str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        alerts: AlertRunner | None = None,
    ):
        if interval_s < 1:
            raise ValueError(f"interval must be at least 1 second, got {interval_s}")
        self.experiment_ids = experiment_ids
        self.interval_s = interval_s
        self.settings = settings or EngineSettings()
        self._engine_factory = engine_factory
        self._discover = discover or (lambda: MonitorTags().monitored_experiment_ids())
        self._clock = clock
        self.engines: dict[str, MonitorEngine] = {}
        self.owner = new_owner()  # one per daemon: a recreated engine knows its own lease
        self.scorer = make_scorer(self.settings.scoring)  # shared by every monitor
        self.health: dict[str, MonitorHealth] = {}
        self.stop_flag = threading.Event()
        self._discovery_failures = 0
        self.alerts = alerts or AlertRunner.create()
        self.observers: list[Callable[[PassReport], None]] = []  # e.g. observe.server.Health

    def monitored(self) -> list[str]:
        return list(self.experiment_ids) if self.experiment_ids else self._discover()

    def _engine(self, experiment_id: str) -> MonitorEngine:
        if experiment_id not in self.engines:
            self.engines[experiment_id] = self._engine_factory(
                experiment_id, self.settings, owner=self.owner, scorer=self.scorer
            )
        return self.engines[experiment_id]

    def run_pass(self, now_ms: int | None = None, max_pages: int | None = None) -> PassReport:
        """One pass over every monitor that is not backing off; then its observers are told."""
        report = self._pass(now_ms, max_pages)
        for observer in self.observers:
            try:
                observer(report)
            except Exception:
                _logger.exception("Pass observer %r failed", observer)
        return report

    def _pass(self, now_ms: int | None, max_pages: int | None) -> PassReport:
        report = PassReport()
        try:
            experiment_ids = self.monitored()
            self._discovery_failures = 0
        except Exception as e:
            self._discovery_failures += 1
            report.errors["*"] = f"could not list monitored experiments: {e}"
            _logger.exception("Could not list monitored experiments")
            return report
        for gone in set(self.engines) - set(experiment_ids):
            engine = self.engines.pop(gone)  # the monitor or its experiment was deleted
            try:
                engine.release_lease()
            except Exception as e:
                _logger.debug("Could not release the lease of %s: %s", gone, e)
        for experiment_id in experiment_ids:
            if self.stop_flag.is_set():
                break
            health = self.health.setdefault(experiment_id, MonitorHealth())
            if self._clock() < health.retry_at:
                continue
            try:
                stats = self._engine(experiment_id).run_pass(now_ms, max_pages=max_pages)
            except Exception as e:
                self._record_failure(experiment_id, health, e, report)
                continue
            health.failures, health.last_error, health.last_stats = 0, None, stats
            shard = self.settings.shard  # the lease holder alone, shard 0 of shards, judges
            if not stats.skipped and (shard is None or shard.index == 0):  # the alerts
                self.alerts.after_pass(experiment_id, now_ms)
            report.stats.append(stats)
            level = logging.INFO if stats.traces or stats.export_error else logging.DEBUG
            _logger.log(level, "pass: %s", stats.summary())
        return report

    def _record_failure(
        self, experiment_id: str, health: MonitorHealth, error: Exception, report: PassReport
    ) -> None:
        health.failures += 1
        delay = min(MAX_BACKOFF_S, self.interval_s * 2**health.failures)
        health.retry_at = self._clock() + delay
        health.last_error = str(error)
        report.errors[experiment_id] = str(error)
        if isinstance(error, MonitorNotFoundError):
            _logger.warning("Monitor of experiment %s: %s", experiment_id, error)
        else:
            _logger.exception(
                "Pass failed for experiment %s (retry in %.0fs)", experiment_id, delay
            )

    def run_until_idle(self, max_passes: int = 1000) -> PassReport:
        """``run --once``: passes until nothing new turns up; the last report says what failed."""
        total = PassReport()
        if self.scorer is not None:
            self.scorer.start()
        for _ in range(max_passes):
            report = self.run_pass()
            for stats in report.stats:
                if stats.skipped:
                    report.errors[stats.experiment_id] = stats.skipped
            total.stats.extend(report.stats)
            total.errors.update(report.errors)
            if report.errors or not any(s.traces for s in report.stats):
                break
        self.release()
        return total

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: Any) -> None:
            _logger.info("Received %s: finishing the pass in flight", signal.Signals(signum).name)
            self.stop_flag.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def loop(self) -> None:
        """Run passes every ``interval_s`` until the stop flag is set."""
        scheduler = schedule.Scheduler()
        scheduler.every(self.interval_s).seconds.do(self.run_pass)
        _logger.info(
            "mlflow-monitor daemon started: %s, every %gs",
            f"experiments {', '.join(self.experiment_ids)}"
            if self.experiment_ids
            else "all monitored experiments",
            self.interval_s,
        )
        if self.scorer is not None:
            self.scorer.start()
        self.run_pass()
        while not self.stop_flag.is_set():
            scheduler.run_pending()
            idle = scheduler.idle_seconds
            self.stop_flag.wait(max(0.05, min(idle if idle is not None else 1.0, 1.0)))
        self.release()
        _logger.info("mlflow-monitor daemon stopped")

    def release(self) -> None:
        """Release every lease and stop the scoring processes."""
        if self.scorer is not None:
            self.scorer.close()
        for engine in self.engines.values():
            try:
                engine.release_lease()
            except Exception as e:
                _logger.debug("Could not release the lease of %s: %s", engine.experiment_id, e)
