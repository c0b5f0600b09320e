"""``WindowStats`` of one monitor and judge over a rule's window, counted from the store.

Reads the window's finished traces (request time in the window, no spans) and classifies each
with the windows engine's own ``observe.collect.outcomes``: the same verdict the quality windows
count (the one the reconcile keeps, several parts as one), errors, and unsampled traces. A rule's
window may be of any width, so this counts its own range rather than the hourly tallies.
``AlertRunner`` only needs an object with ``window(monitor, judge, start_ms, width_ms, now_ms)``
and ``lag_seconds(monitor, tags)``. Complete windows are cached for ``cache_s`` so a pass
re-reads only the current one.
"""

from __future__ import annotations

import json
import time
from typing import Any

from mlflow.tracking import MlflowClient

from mlflow_monitor_plugin.alerts.stats import WindowStats
from mlflow_monitor_plugin.config.model import ExternalMonitor
from mlflow_monitor_plugin.config.tags import NAMESPACE
from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint, lag_ms
from mlflow_monitor_plugin.discovery.traces import TraceSource
from mlflow_monitor_plugin.observe.collect import draws_of, outcomes, window_strata
from mlflow_monitor_plugin.observe.estimate import Cell
from mlflow_monitor_plugin.observe.labels import label_spaces, trust_stats
from mlflow_monitor_plugin.observe.windows import VERDICT_KINDS, category
from mlflow_monitor_plugin.scoring.feedback import MONITOR_KEY

__all__ = ["MONITOR_KEY", "StoreWindows", "judge_rate"]

CHECKPOINT_TAG = NAMESPACE + "checkpoint"
MAX_FAILING_IDS = 5
MAX_FAILED_PASSES = 5  # the daemon's default: whether an error is retried does not matter here
PAGE = 500


def judge_rate(monitor: ExternalMonitor, name: str) -> float:
    """The sample rate of the judge that logs feedback ``name``."""
    suite = monitor.assessments_config
    for judge in suite.assessments or []:
        if name in judge.feedback_names:
            rate = judge.sample_rate
            return suite.default_rate if rate is None else rate
    return suite.default_rate


def _agreement(
    monitor: ExternalMonitor, judge: str | None, pairs: dict[tuple[str, str], int], scored: int
) -> dict[str, int]:
    """A window's people's labels and agreements, counted as the quality windows do."""
    if judge is None:
        return {}
    numbers = trust_stats(pairs, {}, label_spaces(monitor).get(judge))
    return {
        "scored": scored,
        "labels": numbers["human_labels"],
        "agreements": numbers["human_agreed"],
    }


class StoreWindows:
    """Counts windows of one experiment from the store."""

    def __init__(self, experiment_id: str, client: MlflowClient | None = None, cache_s: float = 60):
        self.experiment_id = experiment_id
        self.client = client or MlflowClient()
        self.cache_s = cache_s
        self._cache: dict[tuple[Any, ...], tuple[float, WindowStats]] = {}

    def window(
        self,
        monitor: ExternalMonitor,
        judge: str | None,
        start_ms: int,
        width_ms: int,
        now_ms: int,
    ) -> WindowStats:
        key = (monitor.monitor_id, monitor.config_version, judge, start_ms, width_ms)
        complete = start_ms + width_ms <= now_ms
        cached = self._cache.get(key)
        if complete and cached and time.monotonic() - cached[0] < self.cache_s:
            return cached[1]
        stats = self._count(monitor, judge, start_ms, width_ms)
        if complete:
            self._cache = {k: v for k, v in self._cache.items() if k[3] >= start_ms - width_ms}
            self._cache[key] = (time.monotonic(), stats)
        return stats

    def _count(
        self, monitor: ExternalMonitor, judge: str | None, start_ms: int, width_ms: int
    ) -> WindowStats:
        rate = judge_rate(monitor, judge) if judge else 1.0
        judges = ((judge, rate),) if judge else ()
        counts = {"traces": 0, "sampled": 0, "pass": 0, "fail": 0, "error": 0, "scored": 0}
        pairs: dict[tuple[str, str], int] = {}
        failing: list[str] = []
        cells: dict[tuple[str | None, float | None], Cell] = {}  # a stratified judge's
        strata = window_strata(monitor) if judge else {}
        source = TraceSource(self.experiment_id, self.client)
        for page in source.infos_after(Checkpoint(start_ms, ""), PAGE, start_ms + width_ms):
            draws = draws_of(source, page, strata, judges)
            for info, drawn in zip(page, draws, strict=True):
                counts["traces"] += 1
                if judge is None:
                    continue
                outcome = outcomes(
                    info, monitor.monitor_id, judges, MAX_FAILED_PASSES, draws=drawn
                )[judge]
                if drawn is not None:
                    key = (outcome.stratum, outcome.rate)
                    cells.setdefault(key, Cell(*key)).add(outcome.sampled, outcome.kind)
                if not outcome.sampled:
                    continue
                counts["sampled"] += 1
                if outcome.kind in counts:
                    counts[outcome.kind] += 1
                if outcome.kind in VERDICT_KINDS:
                    counts["scored"] += 1
                    if outcome.human is not None:
                        pair = (category(outcome.kind, outcome.value), outcome.human)
                        pairs[pair] = pairs.get(pair, 0) + 1
                if outcome.kind == "fail" and len(failing) < MAX_FAILING_IDS:
                    failing.append(info.trace_id)
        return WindowStats(
            monitor_id=monitor.monitor_id,
            judge=judge,
            start_ms=start_ms,
            width_ms=width_ms,
            traces=counts["traces"],
            sampled=counts["sampled"],
            verdicts=counts["pass"] + counts["fail"],
            passes=counts["pass"],
            errors=counts["error"],
            sample_rate=rate,
            failing_trace_ids=tuple(failing),
            cells=tuple(cells.values()),
            **_agreement(monitor, judge, pairs, counts["scored"]),
        )

    def lag_seconds(self, monitor: ExternalMonitor, tags: dict[str, str]) -> float | None:
        """The score cursor's lag behind the newest finished trace, as `status` reports it."""
        stored: Any = None
        try:
            stored = json.loads(tags.get(CHECKPOINT_TAG) or "null")
        except json.JSONDecodeError:
            stored = None
        score = None
        if isinstance(stored, dict) and stored.get("monitor_id") == monitor.monitor_id:
            score = Checkpoint.from_dict(stored.get("score"), f"of experiment {self.experiment_id}")
        lag = lag_ms(score, TraceSource(self.experiment_id, self.client).newest_timestamp_ms())
        return None if lag is None else lag / 1000
