"""A fake LLM judge: a real HTTP server on loopback speaking OpenAI chat completions.

MLflow's judges call it when ``OPENAI_API_BASE`` points here. Verdicts are deterministic (a
function of the request text) and faults are injectable, per call or as a share of calls:
latency, 429 with Retry-After, 500, a hang past the client's timeout, malformed JSON. With
``max_concurrent`` it behaves as a rate-limited API: a call beyond that many in progress is
answered 429 with Retry-After at once (counted as ``over_capacity``).
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "hang", "malformed")


def default_verdict(prompt: str) -> str:
    """'no' when the conversation mentions UNSAFE, else 'yes': stable across runs and processes."""
    return "no" if "UNSAFE" in prompt else "yes"


@dataclass
class JudgeBehaviour:
    latency_s: float = 0.0
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FAULTS
    retry_after_s: float = 1.0
    hang_s: float = 30.0
    scripted: list[str] = field(default_factory=list)  # faults for the next calls, in order
    verdict: Callable[[str], str] = default_verdict
    seed: int = 0
    max_concurrent: int | None = None  # calls in progress beyond this are answered 429
    # the reply's "usage" from the request; returning None leaves it out (an endpoint without)
    usage: Callable[[dict[str, Any]], dict[str, int] | None] | None = None
    # the rationale from the prompt and verdict (default: "fake judge says <verdict> (<digest>)")
    rationale: Callable[[str, str], str] | None = None
    malformed_text: str = "this is {not json"  # the reply's content on a "malformed" fault


class FakeJudge:
    """Start with ``with FakeJudge() as judge:``; ``judge.url`` is the OpenAI base URL."""

    def __init__(self, behaviour: JudgeBehaviour | None = None):
        self.behaviour = behaviour or JudgeBehaviour()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.times: list[float] = []  # time.monotonic() of each request's arrival
        self.peers: list[tuple[str, int]] = []  # the client's address: one per connection
        self.served: dict[str, int] = {}
        self.outcomes: list[str] = []  # each request's outcome, in arrival order
        self.active = 0  # calls in progress
        self.peak_active = 0
        self._lock = threading.Lock()
        self._random = random.Random(self.behaviour.seed)
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    def __enter__(self) -> FakeJudge:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def count(self, outcome: str) -> int:
        with self._lock:
            return self.served.get(outcome, 0)

    def _admit(self) -> bool:
        """Count a call in progress; False (and not counted) when over ``max_concurrent``."""
        with self._lock:
            cap = self.behaviour.max_concurrent
            if cap is not None and self.active >= cap:
                return False
            self.active += 1
            self.peak_active = max(self.peak_active, self.active)
            return True

    def _done(self) -> None:
        with self._lock:
            self.active -= 1

    def _next_fault(self) -> str | None:
        b = self.behaviour
        with self._lock:
            if b.scripted:
                fault = b.scripted.pop(0)
                return None if fault == "ok" else fault
            if b.fault_rate and self._random.random() < b.fault_rate:
                return self._random.choice(b.faults)
        return None

    def _record(
        self, outcome: str, body: dict[str, Any], headers: dict[str, str], peer: Any = None
    ) -> None:
        with self._lock:
            self.peers.append(peer)
            self.served[outcome] = self.served.get(outcome, 0) + 1
            self.outcomes.append(outcome)
            self.requests.append(body)
            self.headers.append(headers)
            self.times.append(time.monotonic())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        judge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # as real servers do: no 40 ms stall on keep-alive

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {}
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if not judge._admit():
                    judge._record("over_capacity", body, dict(self.headers), self.client_address)
                    self._send(
                        429,
                        {"error": {"message": "too many requests", "type": "rate_limit_error"}},
                        {"Retry-After": f"{judge.behaviour.retry_after_s:g}"},
                    )
                    return
                try:
                    self._answer(body)
                finally:
                    judge._done()

            def _answer(self, body: dict[str, Any]) -> None:
                fault = judge._next_fault()
                judge._record(fault or "ok", body, dict(self.headers), self.client_address)
                behaviour = judge.behaviour
                if behaviour.latency_s:
                    time.sleep(behaviour.latency_s)
                if fault == "429":
                    self._send(
                        429,
                        {"error": {"message": "rate limited", "type": "rate_limit_error"}},
                        {"Retry-After": f"{behaviour.retry_after_s:g}"},
                    )
                elif fault == "500":
                    self._send(500, {"error": {"message": "internal error", "type": "server"}})
                elif fault == "hang":
                    time.sleep(behaviour.hang_s)
                    self._send(504, {"error": {"message": "gateway timeout"}})
                elif fault == "malformed":
                    reply = _completion(body, behaviour.malformed_text, behaviour.usage)
                    self._send(200, reply)
                else:
                    prompt = json.dumps(body.get("messages", []))
                    verdict = behaviour.verdict(prompt)
                    why = behaviour.rationale(prompt, verdict) if behaviour.rationale else None
                    reply = _completion(body, answer(body, prompt, verdict, why), behaviour.usage)
                    self._send(200, reply)

            def _send(
                self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nothing to answer

        return Handler


def answer(body: dict[str, Any], prompt: str, verdict: str, rationale: str | None = None) -> str:
    """The reply MLflow's judge expects, from the JSON schema it asks for in
    ``response_format``: a result of the schema's type (an enum's choice, a bool, a number),
    ``{"tools": []}`` to the tool-extraction request of the tool-call judges."""
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema") or {}
    properties = schema.get("properties") or {}
    if "tools" in properties and "result" not in properties:
        return json.dumps({"tools": []})
    return json.dumps(
        {"result": _typed(properties.get("result") or {}, verdict),
         "rationale": rationale or f"fake judge says {verdict} ({digest})"}
    )  # fmt: skip


def _typed(result: dict[str, Any], verdict: str) -> Any:
    """``verdict`` ('yes' or 'no') in the type the schema wants for the result."""
    good = verdict != "no"
    choices = result.get("enum")
    if not choices and result.get("anyOf"):  # Optional[...] and the like
        choices = next((a.get("enum") for a in result["anyOf"] if a.get("enum")), None)
        kind = next((a.get("type") for a in result["anyOf"] if a.get("type") != "null"), None)
    else:
        kind = result.get("type")
    if choices:
        if verdict in choices:
            return verdict
        return choices[0] if good else choices[-1]  # e.g. user_frustration: none .. unresolved
    if kind == "boolean":
        return good
    if kind in ("integer", "number"):
        return 5 if good else 1
    return verdict


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # a client may open hundreds of connections at once


DEFAULT_USAGE = {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}


def _completion(
    request: dict[str, Any],
    content: str,
    usage: Callable[[dict[str, Any]], dict[str, int] | None] | None = None,
) -> dict[str, Any]:
    reply = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "fake"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
    }
    used = usage(request) if usage is not None else dict(DEFAULT_USAGE)
    if used is not None:
        reply["usage"] = used
    return reply
