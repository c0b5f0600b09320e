"""Provisional: ``WindowStats`` of one monitor and judge, counted from the tracking store.

Reads the window's finished traces with ``search_traces`` (request time in the window, no
spans) and this monitor's feedback on them, recognised by the metadata scoring/feedback.py
writes. The windows engine (``observe/``) supersedes this module: ``AlertRunner`` only needs an
object with ``window(monitor, judge, start_ms, width_ms, now_ms)`` and ``lag_seconds(monitor,
tags)``. Complete windows are cached for ``cache_s`` so a pass re-reads only the current one.
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
from mlflow_monitor_plugin.discovery.sampling import is_sampled
from mlflow_monitor_plugin.discovery.traces import FINISHED, NOT_EVALUATION, TraceSource

# The metadata scoring/feedback.py writes on every feedback (tests check they agree).
MONITOR_KEY = "mlflow_monitor.monitor_id"
CHECKPOINT_TAG = NAMESPACE + "checkpoint"
PASS_VALUES = ("yes", "true", "pass", True)
FAIL_VALUES = ("no", "false", "fail", False)
MAX_FAILING_IDS = 5
PAGE = 500


def judge_rate(monitor: ExternalMonitor, name: str) -> float:
    """The sample rate of the judge that logs feedback ``name``."""
    suite = monitor.assessments_config
    for judge in suite.assessments or []:
        if name in judge.feedback_names:
            rate = judge.sample_rate
            return suite.default_rate if rate is None else rate
    return suite.default_rate


def _outcome(assessments: list[Any], monitor_id: str, judge: str) -> str | None:
    """'pass', 'fail', 'error' or None for one trace's feedback from this monitor and judge."""
    values, errors = [], 0
    for a in assessments:
        meta = getattr(a, "metadata", None) or {}
        if a.name != judge or meta.get(MONITOR_KEY) != monitor_id or not getattr(a, "valid", True):
            continue
        if getattr(a, "error", None) is not None:
            errors += 1
            continue
        value = getattr(a, "value", None)
        values.append(value.lower() if isinstance(value, str) else value)
    if values:
        if any(v in FAIL_VALUES for v in values):
            return "fail"
        return "pass" if all(v in PASS_VALUES for v in values) else None
    return "error" if errors else None


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
        counts = {"traces": 0, "sampled": 0, "pass": 0, "fail": 0, "error": 0}
        failing: list[str] = []
        where = (
            f"{FINISHED} AND {NOT_EVALUATION} AND trace.timestamp_ms >= {start_ms} "
            f"AND trace.timestamp_ms < {start_ms + width_ms}"
        )
        token = None
        while True:
            page = self.client.search_traces(
                locations=[self.experiment_id],
                filter_string=where,
                max_results=PAGE,
                page_token=token,
                include_spans=False,
            )
            for trace in page:
                info = trace.info
                counts["traces"] += 1
                if judge is None or not is_sampled(info.trace_id, monitor.monitor_id, rate):
                    continue
                counts["sampled"] += 1
                outcome = _outcome(info.assessments or [], monitor.monitor_id, judge)
                if outcome is not None:
                    counts[outcome] += 1
                if outcome == "fail" and len(failing) < MAX_FAILING_IDS:
                    failing.append(info.trace_id)
            token = page.token
            if not token:
                break
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
