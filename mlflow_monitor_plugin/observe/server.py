"""The daemon's HTTP endpoint: ``/metrics`` (Prometheus text format) and ``/healthz``.

``/healthz`` answers 200 while passes finish, and 503 with a JSON reason when no pass finished
within three intervals (the daemon hangs) or the last pass failed and the tracking store does not
answer. ``Health.record`` is the daemon's pass observer; it probes the store only after a pass
that had errors, so a healthy daemon pays nothing for it. The same verdict is on ``/metrics``
(``mlflow_monitor_healthy``), with the interval and the passes' export failures.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mlflow_monitor_plugin.observe.live import METRICS, LiveMetrics
from mlflow_monitor_plugin.redact import redact

_logger = logging.getLogger(__name__)

STALE_INTERVALS = 3


def probe_store() -> None:
    """Raise if the tracking store does not answer a trivial query."""
    from mlflow.tracking import MlflowClient

    MlflowClient().search_experiments(max_results=1)


class Health:
    """Whether the daemon is alive and its store reachable, from the passes it reports."""

    def __init__(
        self,
        interval_s: float,
        probe: Callable[[], None] = probe_store,
        live: LiveMetrics = METRICS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self.interval_s = interval_s
        self._probe = probe
        self._live = live
        self._clock = clock
        self._wall = wall
        self._since = clock()  # the first pass gets three intervals too
        self.last_pass: float | None = None
        self.store_error: str | None = None
        self._lock = threading.Lock()
        live.interval_seconds.set(interval_s)
        live.healthy.set_function(lambda: float(self.check()[0] == 200))

    def __call__(self, report: Any) -> None:
        self.record(report)

    def record(self, report: Any) -> None:
        """Called after every daemon pass with its ``PassReport``."""
        store_error = None
        for stats in report.stats:  # at 0 from a monitor's first pass: increase() sees the 1st
            failures = self._live.export_failures.labels(stats.experiment_id)
            if stats.export_error:
                failures.inc()
        if report.errors:
            self._live.pass_failures.inc(len(report.errors))
            try:
                self._probe()
            except Exception as e:
                store_error = redact(str(e))[:500]
        with self._lock:
            self.last_pass = self._clock()
            self.store_error = store_error
        self._live.last_pass_timestamp.set(self._wall())

    def check(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of ``/healthz``."""
        with self._lock:
            last, store_error = self.last_pass, self.store_error
        age = self._clock() - (last if last is not None else self._since)
        limit = STALE_INTERVALS * self.interval_s
        body: dict[str, Any] = {
            "interval_seconds": self.interval_s,
            "last_pass_seconds_ago": None if last is None else round(age, 3),
        }
        if store_error is not None:
            return 503, {**body, "status": "unhealthy",
                         "reason": f"tracking store unreachable: {store_error}"}  # fmt: skip
        if age > limit:
            what = "no pass finished" if last is None else "no pass finished since the last one"
            reason = (
                f"{what} in {age:.0f}s, more than {STALE_INTERVALS} intervals "
                f"of {self.interval_s:g}s"
            )
            return 503, {**body, "status": "unhealthy", "reason": reason}
        return 200, {**body, "status": "ok"}


def _handler(live: LiveMetrics, health: Health | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server calls
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(live.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz" and health is not None:
                status, body = health.check()
                self._send(status, json.dumps(body).encode(), "application/json")
            else:
                self._send(404, b'{"error": "not found: try /metrics or /healthz"}',
                           "application/json")  # fmt: skip

        def _send(self, status: int, payload: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            _logger.debug("metrics endpoint: " + format, *args)

    return Handler


class MetricsServer:
    """``/metrics`` and ``/healthz`` on a background thread. ``start`` raises ``OSError`` when
    the address is taken."""

    def __init__(
        self, host: str, port: int, health: Health | None = None, live: LiveMetrics = METRICS
    ):
        self.host, self.port = host, port
        self._handler = _handler(live, health)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        self._server = ThreadingHTTPServer((self.host, self.port), self._handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="mlflow-monitor-metrics", daemon=True
        )
        self._thread.start()
        _logger.info("Serving /metrics and /healthz on http://%s:%s", self.host, self.port)
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
