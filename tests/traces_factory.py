"""Real traces for tests, logged through MLflow Tracing (synchronously: see conftest)."""

from __future__ import annotations

import mlflow
from mlflow.entities import Document, SpanType


@mlflow.trace(span_type=SpanType.RETRIEVER)
def _retrieve(question: str) -> list[Document]:
    return [
        Document(page_content=f"MLflow docs about {question}", metadata={"doc_uri": "a.md"}),
        Document(page_content="Tracing records spans.", metadata={"doc_uri": "b.md"}),
    ]


@mlflow.trace(name="rag_app", span_type=SpanType.CHAIN)
def _rag(question: str) -> str:
    _retrieve(question)
    return f"Answer about {question}"


@mlflow.trace(name="chat_app", span_type=SpanType.CHAIN)
def _chat(question: str) -> str:
    return f"Reply to {question}"


def log_traces(count: int, retriever: bool = True, prefix: str = "q") -> list[str]:
    """Log ``count`` traces to the active experiment; returns their ids in order."""
    ids = []
    for i in range(count):
        (_rag if retriever else _chat)(f"{prefix}{i}")
        ids.append(mlflow.get_last_active_trace_id())
    return ids


def feedback_by_trace(experiment_id: str) -> dict[str, list]:
    """Every valid assessment on every trace of the experiment, by trace id."""
    traces = mlflow.search_traces(
        locations=[experiment_id], return_type="list", include_spans=False
    )
    return {t.info.trace_id: [a for a in t.info.assessments if a.valid] for t in traces}


@mlflow.trace(name="get_weather", span_type=SpanType.TOOL)
def _get_weather(city: str) -> str:
    return f"Sunny in {city}"


@mlflow.trace(name="agent", span_type=SpanType.AGENT)
def _agent(question: str, session: str | None, tags: dict[str, str] | None) -> str:
    if session:
        mlflow.update_current_trace(metadata={"mlflow.trace.session": session})
    if tags:
        mlflow.update_current_trace(tags=tags)
    _retrieve(question)
    return f"{_get_weather('Paris')}, as you asked: {question}"


def log_agent_traces(
    count: int,
    session: str | None = None,
    tags: dict[str, str] | None = None,
    prefix: str = "q",
) -> list[str]:
    """Traces of a tool-calling agent (a TOOL and a RETRIEVER span), in ``session`` if given."""
    ids = []
    for i in range(count):
        _agent(f"{prefix}{i}", session, tags)
        ids.append(mlflow.get_last_active_trace_id())
    return ids
