"""The daemon's live metrics in Prometheus form (``prometheus_client``), on one registry.

``METRICS`` is the process's registry; the passes update it, the metrics server
(``observe/server.py``) serves it. Components that keep their own state (the concurrency
limiter, for one) can publish it without this module knowing them: ``add_snapshot_source``
takes a name and a callable returning a mapping of numbers, read at every scrape and exposed
as ``mlflow_monitor_<name>_<key>`` gauges.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from mlflow_monitor_plugin.observe.labels import label_spaces, trust_stats
from mlflow_monitor_plugin.observe.windows import VERDICT_KINDS, Outcome

_logger = logging.getLogger(__name__)

PREFIX = "mlflow_monitor"
_CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_PASS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
_NAME = re.compile(r"[^a-zA-Z0-9_]")
_VALUE_LABELS = {"pass": "yes", "fail": "no", "numeric": "numeric"}  # any other: "other"


class _Snapshots(Collector):
    """Gauges read from registered ``snapshot()`` callables at scrape time."""

    def __init__(self) -> None:
        self._sources: dict[str, Callable[[], Mapping[str, float]]] = {}
        self._lock = threading.Lock()

    def add(self, name: str, snapshot: Callable[[], Mapping[str, float]]) -> None:
        with self._lock:
            self._sources[_NAME.sub("_", name)] = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            sources = dict(self._sources)
        for name, snapshot in sorted(sources.items()):
            try:
                values = dict(snapshot())
            except Exception as e:  # a broken source must not break the scrape
                _logger.debug("Snapshot source %s failed: %s", name, e)
                continue
            for key, value in sorted(values.items()):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    family = f"{PREFIX}_{name}_{_NAME.sub('_', str(key))}"
                    yield GaugeMetricFamily(family, f"{name} snapshot: {key}", value=value)


class LiveMetrics:
    """Counters, gauges and histograms of the daemon, registered on their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        judge = ["experiment", "judge"]
        self.verdicts = Counter(
            f"{PREFIX}_verdicts", "Verdicts written, by judge and value.", [*judge, "value"],
            registry=r,
        )  # fmt: skip
        self.judge_errors = Counter(
            f"{PREFIX}_judge_errors", "Error feedback written, by judge.", judge, registry=r
        )
        self.judge_call_seconds = Histogram(
            f"{PREFIX}_judge_call_seconds", "Time of one judge call (with its retries).",
            judge, buckets=_CALL_BUCKETS, registry=r,
        )  # fmt: skip
        self.judge_tokens = Counter(
            f"{PREFIX}_judge_tokens", "Judge tokens of the verdicts and errors written.", judge,
            registry=r,
        )  # fmt: skip
        self.judge_cost_usd = Counter(
            f"{PREFIX}_judge_cost_usd", "Cost in USD of the verdicts and errors written (those "
            "with a known price).", judge, registry=r,
        )  # fmt: skip
        self.human_labels = Gauge(
            f"{PREFIX}_human_labels", "People's labels paired with the judge's verdicts, on "
            "today's traces (UTC day).", judge, registry=r,
        )  # fmt: skip
        self.human_agreement = Gauge(
            f"{PREFIX}_human_agreement", "Share of today's labels agreeing with the judge.",
            judge, registry=r,
        )  # fmt: skip
        self.human_kappa = Gauge(
            f"{PREFIX}_human_kappa", "Cohen's kappa of the judge and people, today.", judge,
            registry=r,
        )  # fmt: skip
        self.pass_seconds = Histogram(
            f"{PREFIX}_pass_seconds", "Time of one monitor's pass.", ["experiment"],
            buckets=_PASS_BUCKETS, registry=r,
        )  # fmt: skip
        self.lag_seconds = Gauge(
            f"{PREFIX}_lag_seconds", "How far the checkpoint trails the newest finished trace.",
            ["experiment", "monitor"], registry=r,
        )  # fmt: skip
        self.traces_exported = Counter(
            f"{PREFIX}_traces_exported", "Traces written to the export.", ["experiment"],
            registry=r,
        )  # fmt: skip
        self.export_failures = Counter(
            f"{PREFIX}_export_failures", "Passes whose export (or re-sync) failed.",
            ["experiment"], registry=r,
        )  # fmt: skip
        self.budget_factor = Gauge(
            f"{PREFIX}_budget_factor", "The daily budget's factor on the sample rates now "
            "(1: not binding); only for monitors with a budget.", ["experiment"], registry=r,
        )  # fmt: skip
        self.last_pass_timestamp = Gauge(
            f"{PREFIX}_last_pass_timestamp_seconds", "Unix time the daemon's last pass ended.",
            registry=r,
        )  # fmt: skip
        self.pass_failures = Counter(
            f"{PREFIX}_pass_failures", "Monitor passes that raised.", registry=r
        )
        self.interval_seconds = Gauge(
            f"{PREFIX}_interval_seconds", "The daemon's --interval between passes.", registry=r
        )
        self.healthy = Gauge(
            f"{PREFIX}_healthy", "1 while /healthz answers 200, 0 while it answers 503.",
            registry=r,
        )  # fmt: skip
        self._snapshots = _Snapshots()
        r.register(self._snapshots)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, resident memory, open fds

    def count(
        self, experiment_id: str, outcomes: Iterable[Mapping[str, Outcome]], since_ms: int
    ) -> None:
        """Count the verdicts and errors (judge -> outcome, per trace) written since
        ``since_ms``, with their latency, tokens and cost. A judge's error count exists from its
        first outcome on, at 0, so an error ratio reads 0 rather than nothing."""
        for by_judge in outcomes:
            for judge, outcome in by_judge.items():
                errors = self.judge_errors.labels(experiment_id, judge)
                if outcome.created_ms is None or outcome.created_ms < since_ms:
                    continue
                if outcome.kind == "error":
                    errors.inc()
                elif outcome.kind in VERDICT_KINDS:
                    value = _VALUE_LABELS.get(outcome.kind, "other")
                    self.verdicts.labels(experiment_id, judge, value).inc()
                    if outcome.seconds is not None:
                        self.judge_call_seconds.labels(experiment_id, judge).observe(
                            outcome.seconds
                        )
                else:
                    continue
                if outcome.tokens:
                    self.judge_tokens.labels(experiment_id, judge).inc(outcome.tokens)
                if outcome.cost_usd is not None:
                    self.judge_cost_usd.labels(experiment_id, judge).inc(outcome.cost_usd)

    def set_agreement(self, experiment_id: str, monitor: Any, judges: Any, day: Any) -> None:
        """Agreement with people on today's traces (``day``: the tracker's ``Day``), per
        judge; a judge without labels today shows 0 labels and no rate."""
        if day is None:
            return
        spaces = label_spaces(monitor)
        for name, tally in day.day_tallies(judges).items():
            numbers = trust_stats(tally.pairs, tally.fingerprints, spaces.get(name))
            self.human_labels.labels(experiment_id, name).set(numbers["human_labels"])
            for gauge, key in ((self.human_agreement, "human_agreement"),
                               (self.human_kappa, "human_kappa")):  # fmt: skip
                if numbers[key] is None:
                    with contextlib.suppress(KeyError):
                        gauge.remove(experiment_id, name)
                else:
                    gauge.labels(experiment_id, name).set(numbers[key])

    def set_budget_factor(self, experiment_id: str, factor: float | None) -> None:
        """The daily budget's factor now; None (no budget) removes the experiment's series."""
        if factor is None:
            self.budget_factor.remove(experiment_id)
        else:
            self.budget_factor.labels(experiment_id).set(factor)

    def add_snapshot_source(self, name: str, snapshot: Callable[[], Mapping[str, float]]) -> None:
        """Expose ``snapshot()``'s numbers as gauges, e.g. a concurrency limiter's state."""
        self._snapshots.add(name, snapshot)


METRICS = LiveMetrics()
