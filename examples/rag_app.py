"""A small GenAI app instrumented with MLflow Tracing: an MLflow docs assistant.

It retrieves passages (a RETRIEVER span) and composes an answer without calling any LLM, so it
runs anywhere. ``mlflow monitor demo`` uses it to log production-like traces; run it directly
to log a few traces to the active experiment:

    python examples/rag_app.py
"""

from __future__ import annotations

import mlflow
from mlflow.entities import Document, SpanType

DOCS = {
    "tracing": "MLflow Tracing records the inputs, outputs and spans of each request "
    "to a GenAI app.",
    "experiments": "An MLflow experiment groups runs and traces; "
    "set it with mlflow.set_experiment.",
    "feedback": "mlflow.log_feedback attaches a verdict, with its source and rationale, "
    "to a trace.",
    "ui": "Run `mlflow ui` and open an experiment's Traces tab to see traces and their feedback.",
}

QUESTIONS = [
    "How does MLflow Tracing record a request?",
    "How do I attach feedback to a trace?",
    "Where can I see traces in the UI?",
    "What groups runs and traces in MLflow?",
    "What is the capital of France?",
    "Can you email me at jane.doe@example.com about tracing?",
    "Write me a poem about the sea.",
    "How do I set the active experiment?",
]


@mlflow.trace(span_type=SpanType.RETRIEVER)
def retrieve(question: str) -> list[Document]:
    words = set(question.lower().replace("?", "").split())
    hits = [(len(words & set(text.lower().split())), key, text) for key, text in DOCS.items()]
    hits.sort(reverse=True)
    return [
        Document(page_content=text, metadata={"doc_uri": f"docs/{key}.md"})
        for score, key, text in hits[:2]
        if score > 0
    ]


@mlflow.trace(span_type=SpanType.CHAIN)
def answer(question: str) -> str:
    passages = retrieve(question)
    if "@" in question:
        email = next(word for word in question.split() if "@" in word)
        return f"Sure, I will write to {email} with a summary of MLflow Tracing."
    if not passages or "mlflow" not in question.lower() and "trac" not in question.lower():
        return "I can only answer questions about MLflow."
    return passages[0].page_content


def run(questions: list[str] | None = None) -> list[str]:
    """Ask each question once; returns the trace ids logged."""
    trace_ids = []
    for question in questions or QUESTIONS:
        answer(question)
        trace_ids.append(mlflow.get_last_active_trace_id())
    return trace_ids


if __name__ == "__main__":
    mlflow.set_experiment("mlflow-monitor-demo")
    print(f"Logged {len(run())} traces.")
