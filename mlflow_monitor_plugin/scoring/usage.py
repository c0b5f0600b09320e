"""Tokens per judge call: read from the judge's replies by the proxy, handed to the verdict.

The channel. The judge proxy (proxy.py) sees every upstream reply and its ``usage``, but not
which verdict a call serves: MLflow's client opens a connection per call, from a handler
thread of its own, possibly in a scoring process. So the scorer side names the call: each
scorer thread owns its own scorer objects, whose ``extra_headers`` (a field of MLflow 3.17's
built-in scorers and of ``make_judge``) carry ``X-MLflow-Monitor-Call: <id>``, a fresh id set
before each judge run. The proxy strips the header before forwarding, adds each reply's usage
to that id in its ``UsageLedger``, and the scorer thread takes the sum when the run ends: in
the daemon's process directly, from a scoring process with one loopback GET to the proxy. A
thread runs one judge call at a time, so the id names exactly the HTTP calls of one verdict
(the judge's tool-calling turns, and the attempts the runner or the proxy retried), whatever
the process, thread or connection. Calls without the header (a code judge's own HTTP client)
go uncounted: their tokens are unknown, never guessed.

Pure apart from the ledger's lock and the one GET.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

_logger = logging.getLogger(__name__)

CALL_HEADER = "X-MLflow-Monitor-Call"
USAGE_PATH = "/_mlflow_monitor/usage/"
PROXY_URL_ENV = "MLFLOW_MONITOR_USAGE_URL"  # set while the proxy runs; scoring processes inherit

# Verdict metadata (strings, as assessment metadata is). Absent tokens: unknown.
PROMPT_TOKENS_KEY = "mlflow_monitor.prompt_tokens"
COMPLETION_TOKENS_KEY = "mlflow_monitor.completion_tokens"
TOTAL_TOKENS_KEY = "mlflow_monitor.total_tokens"
CALLS_KEY = "mlflow_monitor.judge_calls"  # upstream replies that carried usage
COST_KEY = "mlflow_monitor.cost_usd"  # absent: no price for the judge's model
PRICE_SOURCE_KEY = "mlflow_monitor.price_source"
# What MLflow 3.17's own judge adapters record on their feedback (one call's worth).
MLFLOW_INPUT_TOKENS = "mlflow.assessment.judgeInputTokens"
MLFLOW_OUTPUT_TOKENS = "mlflow.assessment.judgeOutputTokens"


@dataclass(frozen=True)
class Usage:
    """Tokens of the upstream calls of one verdict (or any sum of verdicts)."""

    prompt: int = 0
    completion: int = 0
    total: int = 0
    calls: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt + other.prompt,
            self.completion + other.completion,
            self.total + other.total,
            self.calls + other.calls,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt": self.prompt,
            "completion": self.completion,
            "total": self.total,
            "calls": self.calls,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Usage | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(*(int(data.get(k, 0)) for k in ("prompt", "completion", "total", "calls")))
        except (TypeError, ValueError):
            return None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return int(value)


def parse_usage(body: bytes) -> Usage | None:
    """The ``usage`` of an OpenAI-style reply (chat completions or responses), None without."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _count(usage.get("completion_tokens", usage.get("output_tokens")))
    total = _count(usage.get("total_tokens"))
    if prompt is None and completion is None and total is None:
        return None
    if total is None:
        total = (prompt or 0) + (completion or 0)
    return Usage(prompt or 0, completion or 0, total, 1)


class UsageLedger:
    """The proxy's side: usage summed per call id until the scorer takes it."""

    MAX_IDS = 100_000  # ids whose verdict never came to take them (a killed scoring process)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, Usage] = {}

    def add(self, call_id: str, usage: Usage) -> None:
        with self._lock:
            if call_id not in self._by_id and len(self._by_id) >= self.MAX_IDS:
                self._by_id.pop(next(iter(self._by_id)))
            self._by_id[call_id] = self._by_id.get(call_id, Usage()) + usage

    def take(self, call_id: str) -> Usage | None:
        with self._lock:
            return self._by_id.pop(call_id, None)


_active: UsageLedger | None = None  # the ledger of this process's proxy, when it runs here


def activate(ledger: UsageLedger | None) -> None:
    global _active
    _active = ledger


def enabled() -> bool:
    """Whether judge calls go through a proxy that counts them (here or in the daemon)."""
    return _active is not None or bool(os.environ.get(PROXY_URL_ENV))


def new_call_id() -> str:
    return uuid.uuid4().hex


def take(call_id: str) -> Usage | None:
    """The usage the proxy saw for ``call_id`` (None: no reply with usage), and forget it."""
    if _active is not None:
        return _active.take(call_id)
    url = os.environ.get(PROXY_URL_ENV)
    if not url:
        return None
    try:
        with urllib.request.urlopen(f"{url}{USAGE_PATH}{call_id}", timeout=5) as reply:
            return Usage.from_dict(json.loads(reply.read()))
    except Exception as e:  # tokens unknown for this verdict; never fail it
        _logger.debug("Could not read the usage of judge call %s: %s", call_id, e)
        return None


def set_call_header(scorer: Any, call_id: str) -> bool:
    """Name the next calls of ``scorer`` (owned by the calling thread); False when the scorer
    has no headers to carry the id (a code judge). MLflow 3.17's built-in scorers keep them in
    the field ``extra_headers``, ``make_judge``'s judges in the private ``_extra_headers``."""
    for attribute in ("extra_headers", "_extra_headers"):
        try:
            headers = getattr(scorer, attribute)
        except AttributeError:
            continue
        if not isinstance(headers, dict):
            try:
                setattr(scorer, attribute, {**(headers or {})})
                headers = getattr(scorer, attribute)
            except Exception:  # a frozen model: leave its calls uncounted
                return False
        headers[CALL_HEADER] = call_id
        return True
    return False


def from_metadata(metadata: dict[str, Any] | None) -> Usage | None:
    """A verdict's usage from its metadata: ours, else what MLflow's adapter recorded."""
    meta = metadata or {}
    try:
        if TOTAL_TOKENS_KEY in meta:
            return Usage(
                int(meta.get(PROMPT_TOKENS_KEY, 0)),
                int(meta.get(COMPLETION_TOKENS_KEY, 0)),
                int(meta[TOTAL_TOKENS_KEY]),
                int(meta.get(CALLS_KEY, 1)),
            )
        if MLFLOW_INPUT_TOKENS in meta or MLFLOW_OUTPUT_TOKENS in meta:
            prompt = int(float(meta.get(MLFLOW_INPUT_TOKENS, 0)))
            completion = int(float(meta.get(MLFLOW_OUTPUT_TOKENS, 0)))
            return Usage(prompt, completion, prompt + completion, 1)
    except (TypeError, ValueError):
        return None
    return None


def cost_of(metadata: dict[str, Any] | None) -> float | None:
    """A verdict's recorded cost in USD, None when unknown."""
    try:
        return float((metadata or {})[COST_KEY])
    except (KeyError, TypeError, ValueError):
        return None


def usage_metadata(usage: Usage, cost_usd: float | None, price_source: str | None) -> dict:
    """The verdict metadata of its usage and, when the model's price is known, its cost."""
    out = {
        PROMPT_TOKENS_KEY: str(usage.prompt),
        COMPLETION_TOKENS_KEY: str(usage.completion),
        TOTAL_TOKENS_KEY: str(usage.total),
        CALLS_KEY: str(usage.calls),
    }
    if cost_usd is not None:
        out[COST_KEY] = f"{cost_usd:.8f}"
        out[PRICE_SOURCE_KEY] = price_source or "unknown"
    return out


NO_LLM = "no LLM call"  # the price source of a judge that calls no LLM: it costs nothing


def free_metadata() -> dict[str, str]:
    """The cost metadata of a verdict of a judge that calls no LLM (a deterministic or code
    judge): $0, so windows and ``status`` count it as known, not unknown."""
    return {COST_KEY: f"{0:.8f}", PRICE_SOURCE_KEY: NO_LLM}


def verdict_cost(
    metadata: dict[str, Any], call_cost_usd: float | None, ok: bool
) -> tuple[float | None, bool]:
    """(cost in USD or None when unknown, whether the usage was known) of one verdict."""
    cost = cost_of(metadata)
    if cost is not None:
        return cost, True
    used = from_metadata(metadata)
    if used is None and not ok:
        return 0.0, False  # an error with no reply read: nothing billed that we can tell
    if call_cost_usd is not None:
        return call_cost_usd * (used.calls if used else 1), used is not None
    return None, used is not None
