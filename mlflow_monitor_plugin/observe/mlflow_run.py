"""The monitor's windows as MLflow metrics, on one run per monitor in the monitored experiment.

Each window is one point: timestamp = window start (ms), step = window start (s), names like
``safety/pass_rate`` (hourly) and ``safety/pass_rate_1d`` (daily). Beside them, at each
update, ``safety/pass_rate_rolling_1h``: the last hour's rate as of then (``rolling_metrics``).
MLflow keeps a metric's history append-only (a row is keyed by its value too, and no API
deletes one), so a changed value would add a second point at the same step. A window is
therefore charted once, when it has settled (see ``windows.settled``); the run's tag
``mlflow_monitor.windows_written`` lists the recent windows already charted so a restarted
daemon never charts one twice. The quality
dataset and ``mlflow monitor report`` always carry the latest numbers.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any

from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

_logger = logging.getLogger(__name__)

RUN_TAG = "mlflow_monitor.metrics_run"  # value: the monitor id
WRITTEN_TAG = "mlflow_monitor.windows_written"
CHARTED = (
    "pass_rate",
    "pass_rate_low95",
    "pass_rate_high95",
    "verdicts",
    "errors",
    "estimated_failing",
    "value_mean",
    "latency_p95",
    "effective_rate",
    "judge_tokens",
    "judge_cost_usd",
    "judge_fingerprint",  # steps where the judge changed (scoring/fingerprint.py)
    "human_labels",  # agreement with people (observe/labels.py), where labelled
    "human_agreement",
    "human_kappa",
)
_WHEN_LABELLED = frozenset({"human_labels"})  # charted only in windows with labels
_BATCH = 1000  # MLflow's limit of metrics per log_batch
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


# The rolling hour: each judge's pass rate over the traces of the last 60 minutes (request
# time) as of each windows update, at the update's time: a chart within minutes, provisional
# (late verdicts move it); the settled hourly points above are the numbers of record.
ROLLING_RATE, ROLLING_VERDICTS = "pass_rate_rolling_1h", "verdicts_rolling_1h"


def rolling_metrics(tallies: dict[str, Any], wall_ms: int) -> list[Metric]:
    """The rolling-hour points of the judges with verdicts (``tallies``: judge -> Tally of the
    last hour), timestamp and step the update's time."""
    points = []
    for judge, tally in tallies.items():
        judged = tally.passed + tally.failed
        if judged:
            for name, value in ((ROLLING_RATE, tally.passed / judged), (ROLLING_VERDICTS, judged)):
                points.append(
                    Metric(metric_key(judge, name, "1h"), value, wall_ms, wall_ms // 1000)
                )
    return points


def run_name(monitor_id: str) -> str:
    return f"monitor: {monitor_id}"


def metric_key(judge: str, name: str, width: str) -> str:
    suffix = "" if width == "1h" else f"_{width}"
    return f"{_UNSAFE.sub('_', judge)}/{name}{suffix}"


def window_metrics(row: dict[str, Any]) -> list[Metric]:
    """The points of one window row (a row of the quality dataset), None values left out."""
    start_ms = int(row["window_start_ms"])

    def key(name: str) -> str:
        return metric_key(row["judge"], name, row["width"])

    return [
        Metric(key(name), float(row[name]), start_ms, start_ms // 1000)
        for name in CHARTED
        if row.get(name) is not None and (row[name] or name not in _WHEN_LABELLED)
    ]


class MetricsRun:
    """Finds (or creates, or re-creates after a user deleted it) the monitor's metrics run."""

    def __init__(self, client: MlflowClient, experiment_id: str, monitor_id: str):
        self.client = client
        self.experiment_id = experiment_id
        self.monitor_id = monitor_id
        self._run_id: str | None = None
        self.written: set[tuple[str, int]] = set()

    def _find(self) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{RUN_TAG}` = '{self.monitor_id}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        return runs[0].info.run_id if runs else None

    def heartbeats(self, since_ms: int) -> list[int] | None:
        """When the daemon charted its lag since ``since_ms`` (its heartbeat; None when the
        monitor has no metrics run yet)."""
        run_id = self._find()
        if run_id is None:
            return None
        history = self.client.get_metric_history(run_id, "lag_seconds")
        return sorted(m.timestamp for m in history if m.timestamp >= since_ms)

    def steps(self, key: str) -> set[int]:
        """The steps ``key`` has a point at on the run."""
        return {m.step for m in self.client.get_metric_history(self.run_id(), key)}

    def _create(self) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name(self.monitor_id),
            tags={
                RUN_TAG: self.monitor_id,
                "mlflow.note.content": "Quality windows of the monitor: one point per window.",
            },
        )
        # finished, so the UI shows no endless spinner; logging to it still works
        self.client.update_run(run.info.run_id, status="FINISHED")
        _logger.info("Created the metrics run %s of monitor %s", run.info.run_id, self.monitor_id)
        return run.info.run_id

    def run_id(self) -> str:
        if self._run_id is None:
            found = self._find()
            self._run_id = found or self._create()
            self.written = self._read_written() if found else set()
        return self._run_id

    def verify(self) -> None:
        """Forget the run if a user deleted it, so the next ``run_id`` creates it again and
        every settled window in memory is charted there."""
        if self._run_id is None:
            return
        try:
            stage = self.client.get_run(self._run_id).info.lifecycle_stage
        except MlflowException:
            stage = "deleted"  # purged for good
        if stage != "active":
            _logger.warning("Metrics run %s was deleted; creating it again", self._run_id)
            self._run_id = None
            self.written = set()

    def _read_written(self) -> set[tuple[str, int]]:
        assert self._run_id is not None
        value = self.client.get_run(self._run_id).data.tags.get(WRITTEN_TAG)
        try:
            return {(str(w), int(s)) for w, s in json.loads(value)} if value else set()
        except (TypeError, ValueError):
            _logger.warning("Ignoring the malformed tag %s on run %s", WRITTEN_TAG, self._run_id)
            return set()

    def log(
        self, rows: list[dict[str, Any]], extra: Iterable[Metric] = (), keep_after_ms: int = 0
    ) -> int:
        """Chart ``rows`` (windows not charted yet) and ``extra`` points; returns points logged.
        A run deleted meanwhile is re-created once and the points logged there."""
        for attempt in (1, 2):
            try:
                return self._log(rows, list(extra), keep_after_ms)
            except MlflowException as e:
                if attempt == 2 or self._find() == self._run_id:
                    raise
                _logger.warning("Metrics run %s is gone (%s); creating it again", self._run_id, e)
                self._run_id = None
        return 0

    def _log(self, rows: list[dict[str, Any]], extra: list[Metric], keep_after_ms: int) -> int:
        run_id = self.run_id()
        fresh = [r for r in rows if (r["width"], int(r["window_start_ms"])) not in self.written]
        metrics = [m for r in fresh for m in window_metrics(r)] + extra
        for start in range(0, len(metrics), _BATCH):
            self.client.log_batch(run_id, metrics=metrics[start : start + _BATCH])
        if fresh:
            self.written |= {(r["width"], int(r["window_start_ms"])) for r in fresh}
            # older windows never change again: only the recent ones need remembering
            self.written = {(w, s) for w, s in self.written if s >= keep_after_ms}
            value = json.dumps(sorted(self.written), separators=(",", ":"))
            self.client.log_batch(run_id, tags=[RunTag(WRITTEN_TAG, value)])
        return len(metrics)
