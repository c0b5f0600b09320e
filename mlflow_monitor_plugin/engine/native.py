"""MLflow's own online scoring on a monitored experiment: one engine per judge, never two.

MLflow 3.17's tracking server can run the judges started in its registry itself (a huey job
every minute; ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION``, on by default). On an experiment with a
monitor, the daemon runs every judge: the monitor's own and those started in MLflow
(config/registered.py), with its guarantees (seconds of latency, retries, export, windows,
alerts, budget). So that MLflow's runner never scores the same traces, the daemon tells it, in
MLflow's own terms, that the experiment's traces are taken care of: at least every
``EVERY_S`` seconds while a judge is started in MLflow there, it moves MLflow's online-scoring
checkpoints (``mlflow.latestOnlineScoring.trace.checkpoint`` and ``.session.checkpoint``) to
now. MLflow's runner looks only at traces older than its completion buffer
(``MLFLOW_ONLINE_SCORING_DEFAULT_TRACE_COMPLETION_BUFFER_SECONDS``, default 300 s) past its
checkpoint; with the checkpoint at most ``EVERY_S`` old, that window is empty and it scores
nothing there ("window has not advanced"). Judges on experiments without a monitor stay
MLflow's. Deleting the monitor hands the experiment back: MLflow's runner resumes from the
last checkpoint the daemon wrote.

Should MLflow's runner have scored a pair first anyway (the daemon was down past the buffer),
the daemon finds that verdict on the trace (its ``mlflow.assessment.scorerName``) and does not
score the pair again (scoring/feedback.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from mlflow_monitor_plugin.config.model import ExternalMonitor
from mlflow_monitor_plugin.config.registered import (
    MLFLOW_SESSION_CHECKPOINT,
    MLFLOW_TRACE_CHECKPOINT,
)

_logger = logging.getLogger(__name__)

EVERY_S = 30.0  # well inside MLflow's default 300 s completion buffer


class NativeFence:
    """Keeps MLflow's server-side runner off a monitored experiment's traces."""

    def __init__(
        self,
        client: Any,
        experiment_id: str,
        every_s: float = EVERY_S,
        wall: Callable[[], float] = time.time,
    ):
        self.client = client
        self.experiment_id = experiment_id
        self.every_s = every_s
        self._wall = wall
        self._moved_at = float("-inf")
        self._said = False

    def hold(self, monitor: ExternalMonitor) -> bool:
        """Move MLflow's checkpoints to now when due and a judge is started in MLflow on the
        experiment (else MLflow's runner has nothing to run there); True when moved."""
        if not any(j.started for j in monitor.registered):
            return False
        now = self._wall()
        if now - self._moved_at < self.every_s:
            return False
        value = json.dumps({"timestamp_ms": int(now * 1000), "trace_id": None})
        try:
            for key in (MLFLOW_TRACE_CHECKPOINT, MLFLOW_SESSION_CHECKPOINT):
                self.client.set_experiment_tag(self.experiment_id, key, value)
        except Exception as e:  # the next pass tries again; the backstop covers the gap
            _logger.warning(
                "Could not hold MLflow's online scoring off experiment %s: %s",
                self.experiment_id, e,
            )  # fmt: skip
            return False
        self._moved_at = now
        if not self._said:
            self._said = True
            names = ", ".join(j.name for j in monitor.registered if j.started)
            _logger.info(
                "Experiment %s: the daemon runs the judges started in MLflow (%s) and holds "
                "MLflow's own online scoring off this experiment's traces (its checkpoints "
                "follow the daemon), so no judge is run by both",
                self.experiment_id, names,
            )  # fmt: skip
        return True
