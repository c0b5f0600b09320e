"""Traces with request times in the past (a backfill's history), logged through MLflow Tracing."""

from __future__ import annotations

import time

import mlflow
from mlflow.entities import SpanType

DAY_MS = 86_400_000


def log_trace_at(timestamp_ms: int, question: str, retriever: bool = False) -> str:
    """One finished trace whose request time is ``timestamp_ms``; returns its id."""
    start_ns = timestamp_ms * 1_000_000
    root = mlflow.start_span_no_context(
        "rag_app" if retriever else "chat_app",
        span_type=SpanType.CHAIN,
        inputs={"question": question},
        start_time_ns=start_ns,
    )
    if retriever:
        child = mlflow.start_span_no_context(
            "retrieve", parent_span=root, span_type=SpanType.RETRIEVER,
            inputs={"question": question}, start_time_ns=start_ns + 1_000,
        )  # fmt: skip
        docs = [{"page_content": f"MLflow docs about {question}", "metadata": {"doc_uri": "a.md"}}]
        child.end(outputs=docs, end_time_ns=start_ns + 2_000)
    root.end(outputs=f"Answer about {question}", end_time_ns=start_ns + 5_000_000)
    return root.trace_id


def log_history(days: int, per_day: int, prefix: str = "h", unsafe_every: int = 0) -> list[str]:
    """``per_day`` traces on each of the last ``days`` days (oldest first), at least a day old
    each; every ``unsafe_every``-th question mentions UNSAFE (the fake judge then says no)."""
    now_ms = int(time.time() * 1000)
    ids = []
    for day in range(days, 0, -1):
        for i in range(per_day):
            n = len(ids)
            bad = unsafe_every and n % unsafe_every == 0
            question = f"{prefix}{n} {'UNSAFE' if bad else 'ok'}"
            ids.append(log_trace_at(now_ms - day * DAY_MS - i * 60_000, question))
    return ids
