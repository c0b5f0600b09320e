"""MLflow's judge calls handed to the judge proxy in the calling thread: no loopback hop.

MLflow's judge client posts each call with ``requests.post`` to the judge's base URL (an
OpenAI-compatible ``OPENAI_API_BASE``, or ``MLFLOW_GATEWAY_URI`` for ``gateway:/`` models),
which the daemon points at its judge proxy (proxy.py). In the daemon's process a transport
adapter for the proxy's URL is mounted on every ``requests`` session, so such a call never
crosses the loopback: the judge thread runs the proxy's ``forward`` itself (its gate, rate
limit, Retry-After, retries and token count), and ``forward`` talks to the real endpoint over
its pool of keep-alive connections. Measured: the loopback hop (a TCP connection per call, a
server thread per connection, the HTTP parsed and written twice) was the largest part of the
daemon's CPU beyond MLflow's own (BENCHMARKS.md, issue 25).

Every other request keeps its adapters: only URLs under the proxy's reach this one. A client
that does not use ``requests`` still reaches the proxy over HTTP, as before. A scoring process
(scoring/pool.py) mounts the adapter in ``remote`` mode: its calls go to the daemon's proxy
over one pool of keep-alive connections, so the daemon's gate still counts every process's
calls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import requests
import requests.adapters
import urllib3
from requests.structures import CaseInsensitiveDict

from mlflow_monitor_plugin.scoring import usage

_HOP_HEADERS = frozenset(
    {"host", "content-length", "connection", "keep-alive", "transfer-encoding"}
)
Forward = Callable[[str, bytes, dict[str, str], "str | None"], tuple[int, dict[str, str], bytes]]

_lock = threading.Lock()
_original_init: Any = None


class ProxyAdapter(requests.adapters.BaseAdapter):
    """A ``requests`` transport whose every call is ``forward(path, body, headers, call id)``."""

    def __init__(self, forward: Forward):
        super().__init__()
        self._forward = forward

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        headers: dict[str, str] = {}
        call_id = None
        for key, value in request.headers.items():
            lower = key.lower()
            if lower == usage.CALL_HEADER.lower():
                call_id = value
            elif lower not in _HOP_HEADERS:
                headers[key] = value
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        status, out_headers, payload = self._forward(request.path_url, body, headers, call_id)
        response = requests.Response()
        response.status_code = status
        response.headers = CaseInsensitiveDict(out_headers)
        response._content = payload
        response.encoding = "utf-8"
        response.url = request.url or ""
        response.request = request
        response.reason = "OK" if status < 400 else "Error"
        return response

    def close(self) -> None:
        pass


def remote(proxy_url: str, timeout_s: float) -> Forward:
    """``forward`` for a scoring process: POST to the daemon's proxy, keep-alive."""
    pool = urllib3.PoolManager(maxsize=256, block=False, retries=False)
    base = proxy_url.rstrip("/")

    def forward(
        path: str, body: bytes, headers: dict[str, str], call_id: str | None
    ) -> tuple[int, dict[str, str], bytes]:
        sent = {**headers, usage.CALL_HEADER: call_id} if call_id else headers
        reply = pool.request(
            "POST", base + path, body=body, headers=sent,
            timeout=urllib3.Timeout(total=timeout_s),
        )  # fmt: skip
        return reply.status, {"Content-Type": reply.headers.get("Content-Type", "")}, reply.data

    return forward


def install(prefix: str, forward: Forward) -> None:
    """Mount an adapter for URLs under ``prefix`` (the proxy's) on every ``requests`` session
    made from now on (MLflow makes one per judge call); replaces an earlier one."""
    global _original_init
    adapter = ProxyAdapter(forward)
    with _lock:
        original = _original_init or requests.Session.__init__

        def __init__(session: requests.Session, *args: Any, **kwargs: Any) -> None:
            original(session, *args, **kwargs)
            session.mount(prefix, adapter)

        _original_init = original
        requests.Session.__init__ = __init__  # type: ignore[method-assign]


def uninstall() -> None:
    global _original_init
    with _lock:
        if _original_init is not None:
            requests.Session.__init__ = _original_init  # type: ignore[method-assign]
            _original_init = None
