"""A loopback forwarder between MLflow's judge client and the judge endpoint: an
OpenAI-compatible one, or the tracking server's AI Gateway for ``gateway:/<endpoint>`` models.

MLflow's judge client retries 429/5xx/timeouts itself, on a fixed schedule that ignores
Retry-After. The daemon routes judge calls through this proxy so that one place rate-limits
every judge HTTP call, honours Retry-After, retries with jittered exponential backoff, and
bounds a call's total time: it points ``OPENAI_API_BASE`` at the proxy, and MLflow's
``MLFLOW_GATEWAY_URI`` at its ``/_gateway`` route, which forwards to the tracking server's AI
Gateway (the gateway holds the provider's key, so the daemon needs none; it passes no
Retry-After on, so backoff does the waiting). It also holds the concurrency gate (limiter.py):
at most the adaptive limit of calls are in flight to the judge, and each call's round trip and
outcome (429, 503, 504 and timeouts are congestion) adjust that limit. When the retries run
out it answers 400 with the reason, which MLflow's client does not retry: the engine then logs
error feedback and retries the (trace, judge) on a later pass.

The proxy forwards the caller's headers (the API key among them) and never logs them. It also
counts each reply's tokens for the verdict that made the call (usage.py explains the channel).
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests.certs
import requests.utils
import urllib3

from mlflow_monitor_plugin.config.prices import CATALOG_ENV, offline_catalog
from mlflow_monitor_plugin.redact import add_secret_url
from mlflow_monitor_plugin.scoring import limiter, transport, usage
from mlflow_monitor_plugin.scoring.limiter import (
    DROPPED,
    IGNORED,
    OK,
    AdaptiveLimit,
    ConcurrencyGate,
    FixedLimit,
    LimitSettings,
)
from mlflow_monitor_plugin.scoring.runner import RateLimiter, backoff_delay

_logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
CONGESTION_STATUSES = frozenset({408, 429, 503, 504})  # the judge is overloaded: cut the limit
BASE_ENVS = ("OPENAI_API_BASE", "OPENAI_BASE_URL")
DEFAULT_UPSTREAM = "https://api.openai.com/v1"
GATEWAY_URI_ENV = "MLFLOW_GATEWAY_URI"
GATEWAY_PREFIX = "/_gateway"  # the proxy's route to the tracking server's AI Gateway
TIMEOUT_ENV = "MLFLOW_GATEWAY_ROUTE_TIMEOUT_SECONDS"
_HOP_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding"}
_CALL_HEADER = usage.CALL_HEADER.lower()  # ours: never forwarded to the judge


@dataclass(frozen=True)
class ProxySettings:
    rate_limit: float | None = None  # HTTP calls per second to the judge, all threads together
    attempts: int = 6
    timeout_s: float = 60.0  # one upstream call
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 120.0
    connections: int = 256  # kept alive to the judge: at least the concurrent judge calls
    concurrency: LimitSettings = LimitSettings()  # the adaptive limit of calls in flight
    fixed_concurrency: int | None = None  # --workers: a fixed limit instead


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class JudgeProxy:
    """Forwards ``POST <path>`` to ``upstream + path`` with rate limit, retries and Retry-After."""

    def __init__(
        self,
        upstream: str | None,
        settings: ProxySettings | None = None,
        sleep: Callable[[float], None] = time.sleep,
        gateway: str | None = None,
    ):
        self.upstream = (upstream or DEFAULT_UPSTREAM).rstrip("/")
        # calls to ``gateway:/`` models: MLFLOW_GATEWAY_URI names the proxy + GATEWAY_PREFIX
        self.gateway = gateway.rstrip("/") if gateway else None
        self.settings = settings or ProxySettings()
        self._sleep = sleep
        self._limiter = RateLimiter(self.settings.rate_limit)
        s = self.settings
        limit = (
            FixedLimit(s.fixed_concurrency)
            if s.fixed_concurrency
            else AdaptiveLimit(s.concurrency, time.monotonic())
        )
        self.gate = ConcurrencyGate(limit)
        self.ledger = usage.UsageLedger()
        self._rng = random.Random()
        # One pool of keep-alive connections for every handler thread: MLflow's client opens a
        # new connection per call, so per-thread state would be rebuilt (and, against a real
        # endpoint, a TLS handshake made) on every call.
        self._http = _connection_pool(self.upstream, self.settings.connections)
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="mlflow-monitor-judge-proxy", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> JudgeProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.clear()

    def target(self, path: str) -> str:
        """Where a call goes: the tracking server's AI Gateway for a ``gateway:/`` model, the
        OpenAI-compatible endpoint for the others."""
        if self.gateway and path.startswith(GATEWAY_PREFIX + "/"):
            return _join(self.gateway, path[len(GATEWAY_PREFIX) :])
        return _join(self.upstream, path)

    def forward(
        self, path: str, body: bytes, headers: dict[str, str], call_id: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One judge call, retried as needed; returns (status, headers, body) for the caller.
        The tokens of its replies are added to ``call_id`` in the ledger."""
        s = self.settings
        last = "no attempt made"
        for attempt in range(s.attempts):
            started = self.gate.acquire()
            # Waiting for the rate limit holds a slot: the limit must not grow on that.
            held_back = self._limiter.wait(self._sleep) > 0
            started = self.gate.clock() if held_back else started
            outcome, throttled = IGNORED, False
            try:
                response = self._http.request(
                    "POST",
                    self.target(path),
                    body=body,
                    headers=headers,
                    timeout=urllib3.Timeout(total=s.timeout_s),
                )
            except Exception as e:  # only its type is reported: a message may quote a header
                timed_out = isinstance(e, urllib3.exceptions.TimeoutError)
                outcome = DROPPED if timed_out else IGNORED
                last = f"timed out after {s.timeout_s:g}s" if timed_out else type(e).__name__
                delay = backoff_delay(attempt, s.backoff_s, s.backoff_max_s, self._rng)
            else:
                throttled = response.status == 429
                if response.status in CONGESTION_STATUSES:
                    outcome = DROPPED
                elif response.status < 500:
                    outcome = OK
                if call_id and (used := usage.parse_usage(response.data)) is not None:
                    self.ledger.add(call_id, used)
                if response.status not in RETRY_STATUSES:
                    kept = {
                        "Content-Type": response.headers.get("Content-Type", "application/json")
                    }
                    return response.status, kept, response.data
                last = f"HTTP {response.status}"
                wait = retry_after_seconds(response.headers.get("Retry-After"), time.time())
                delay = (
                    min(wait, s.retry_after_max_s)
                    if wait is not None
                    else backoff_delay(attempt, s.backoff_s, s.backoff_max_s, self._rng)
                )
            finally:
                self.gate.release(started, outcome, not held_back, throttled)
            _logger.debug("Judge call %s (attempt %d); retrying in %.2fs", last, attempt + 1, delay)
            if attempt + 1 < s.attempts:
                self._sleep(delay)
        message = f"mlflow-monitor: judge endpoint failed after {s.attempts} attempts ({last})"
        payload = json.dumps({"error": {"message": message, "type": "judge_unavailable"}}).encode()
        return 400, {"Content-Type": "application/json"}, payload

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes

            def log_message(self, *args: Any) -> None:  # headers carry the key: log nothing
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                call_id = self.headers.get(usage.CALL_HEADER)
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in _HOP_HEADERS and k.lower() != _CALL_HEADER
                }
                status, out_headers, payload = proxy.forward(self.path, body, headers, call_id)
                self._reply(status, out_headers, payload)

            def do_GET(self) -> None:  # a scoring process takes a verdict's usage
                if not self.path.startswith(usage.USAGE_PATH):
                    self._reply(404, {"Content-Type": "application/json"}, b"{}")
                    return
                taken = proxy.ledger.take(self.path[len(usage.USAGE_PATH) :])
                payload = json.dumps(taken.to_dict() if taken else None).encode()
                self._reply(200, {"Content-Type": "application/json"}, payload)

            def _reply(self, status: int, out_headers: dict[str, str], payload: bytes) -> None:
                self.send_response(status)
                for key, value in out_headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # hundreds of judge calls may connect at once


def _connection_pool(upstream: str, connections: int) -> urllib3.PoolManager:
    """Connections to ``upstream`` with the CA bundle and the proxy (``HTTPS_PROXY``,
    ``NO_PROXY``...) that MLflow's own client, a requests session, would use."""
    ca_certs = (
        os.environ.get("REQUESTS_CA_BUNDLE")
        or os.environ.get("CURL_CA_BUNDLE")
        or requests.certs.where()
    )
    options: dict[str, Any] = {
        "maxsize": connections, "block": False, "retries": False, "ca_certs": ca_certs
    }  # fmt: skip
    proxy = requests.utils.get_environ_proxies(upstream).get(urlsplit(upstream).scheme)
    return urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)


def _join(upstream: str, path: str) -> str:
    """``upstream`` + the route, keeping a query string of the upstream URL where it belongs."""
    base, extra = urlsplit(upstream), urlsplit(path)
    query = "&".join(q for q in (base.query, extra.query) if q)
    return urlunsplit(base._replace(path=base.path.rstrip("/") + extra.path, query=query))


def gateway_from_env() -> str | None:
    """The MLflow server whose AI Gateway serves ``gateway:/`` judge models: MLflow's own
    ``MLFLOW_GATEWAY_URI``, else an HTTP tracking URI; None on a local store without it."""
    import mlflow

    uri = os.environ.get(GATEWAY_URI_ENV) or mlflow.get_tracking_uri()
    return uri if uri.split(":", 1)[0] in ("http", "https") else None


def upstream_from_env() -> str | None:
    """The judge endpoint configured for MLflow's OpenAI judges, or None when there is none."""
    for name in BASE_ENVS:
        if os.environ.get(name):
            return os.environ[name]
    return DEFAULT_UPSTREAM if os.environ.get("OPENAI_API_KEY") else None


@contextmanager
def judge_proxy(settings: ProxySettings | None = None) -> Iterator[JudgeProxy | None]:
    """Route this process's OpenAI judge calls through a ``JudgeProxy`` while the block runs;
    MLflow's judges read the model catalog they ship instead of fetching it (config/prices.py)."""
    upstream, gateway = upstream_from_env(), gateway_from_env()
    if upstream is None and gateway is None:
        yield None
        return
    catalog_changed = offline_catalog()
    user_timeout = os.environ.get(TIMEOUT_ENV)
    settings = settings or ProxySettings()
    if user_timeout:
        settings = ProxySettings(**{**settings.__dict__, "timeout_s": float(user_timeout)})
    if upstream is not None:
        add_secret_url(upstream)  # the environment will name the proxy, not the upstream
    proxy = JudgeProxy(upstream, settings, gateway=gateway).start()
    limiter.activate(proxy.gate)
    usage.activate(proxy.ledger)
    names = (*BASE_ENVS, TIMEOUT_ENV, usage.PROXY_URL_ENV, GATEWAY_URI_ENV)
    saved = {name: os.environ.get(name) for name in names}
    budget = settings.attempts * (settings.timeout_s + settings.retry_after_max_s) + 60
    routes = {BASE_ENVS[0]: proxy.url, BASE_ENVS[1]: proxy.url} if upstream else {}
    if gateway:  # MLflow calls {MLFLOW_GATEWAY_URI}/gateway/mlflow/v1/chat/completions
        routes[GATEWAY_URI_ENV] = proxy.url + GATEWAY_PREFIX
    os.environ.update({**routes, TIMEOUT_ENV: f"{budget:g}", usage.PROXY_URL_ENV: proxy.url})
    transport.install(proxy.url, proxy.forward)  # this process: no loopback hop (transport.py)
    _logger.info("Judge calls go through a local proxy to the configured endpoint")
    try:
        yield proxy
    finally:
        transport.uninstall()
        limiter.activate(None)
        usage.activate(None)
        proxy.stop()
        if catalog_changed:
            os.environ.pop(CATALOG_ENV, None)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
