"""Config entries ⇄ ``mlflow.genai.scorers`` objects, and which judges apply to a trace.

Feedback names follow the Databricks judges (``safety``, ``groundedness``, ``chunk_relevance``,
``chunk_relevance/precision``, a guideline's key), so queries written for Databricks carry over.
Only names from a fixed table are turned into scorers: nothing read from a tag is ever imported
or evaluated.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from mlflow.entities import SpanType, Trace

from mlflow_monitor_plugin.config.model import (
    DETERMINISTIC_JUDGES,
    AssessmentsSuiteConfig,
    GuidelinesJudge,
)

JUDGE_MODEL_ENV = "MLFLOW_GENAI_JUDGE_DEFAULT_MODEL"
# MLflow's judges call an OpenAI-compatible endpoint when one of these is set (or a key for
# api.openai.com is present).
LLM_ENDPOINT_ENVS = ("OPENAI_API_KEY", "OPENAI_API_BASE", "OPENAI_BASE_URL")


@dataclass(frozen=True)
class ScorerFactory:
    """Builds one ``mlflow.genai.scorers`` object. A plain value, so a judge can be sent to a
    scoring process (see scoring_pool.py) and used as a dict key; ``kind`` only ever comes
    from the tables below."""

    kind: str
    name: str
    kwargs_json: str = "{}"

    @classmethod
    def of(cls, kind: str, name: str, **kwargs: Any) -> ScorerFactory:
        return cls(kind, name, json.dumps(kwargs, sort_keys=True))

    def __call__(self) -> Any:
        from mlflow.genai import scorers

        return getattr(scorers, self.kind)(name=self.name, **json.loads(self.kwargs_json))


@dataclass(frozen=True)
class JudgeSpec:
    """One judge as the engine runs it: its feedback name, rate and the factory of its scorer."""

    name: str
    rate: float
    is_llm: bool
    model: str | None
    needs: frozenset[str]  # 'inputs', 'outputs', 'retrieval'
    make: ScorerFactory

    def applies_to(self, trace: Trace) -> bool:
        return all(_has(trace, need) for need in self.needs)


def _has(trace: Trace, need: str) -> bool:
    if need == "retrieval":
        return bool(trace.search_spans(span_type=SpanType.RETRIEVER))
    value = trace.data.request if need == "inputs" else trace.data.response
    return value not in (None, "", "null", "{}", "[]")


def _llm_scorer(kind: str, name: str, model: str | None, **kwargs: Any) -> ScorerFactory:
    return ScorerFactory.of(kind, name, **({"model": model} if model else {}), **kwargs)


# name -> (MLflow scorer class, what the trace must carry for the judge to apply)
_LLM = {
    "safety": ("Safety", frozenset({"outputs"})),
    "relevance_to_query": ("RelevanceToQuery", frozenset({"inputs", "outputs"})),
    "groundedness": ("RetrievalGroundedness", frozenset({"retrieval", "outputs"})),
    "chunk_relevance": ("RetrievalRelevance", frozenset({"retrieval", "inputs"})),
}
_CODE = {
    "pii_detection": "PIIDetection",
    "response_length": "ResponseLength",
    "regex_match": "RegexMatch",
}
assert set(_CODE) == set(DETERMINISTIC_JUDGES)


def build_judges(suite: AssessmentsSuiteConfig) -> list[JudgeSpec]:
    """The judges a suite runs, each with its effective rate and model."""
    specs = []
    for judge in suite.assessments or []:
        rate = judge.sample_rate if judge.sample_rate is not None else suite.default_rate
        model = judge.model or suite.model or os.environ.get(JUDGE_MODEL_ENV) or None
        if isinstance(judge, GuidelinesJudge):
            for name, texts in judge.guidelines.items():
                make = _llm_scorer("Guidelines", name, model, guidelines=texts)
                specs.append(
                    JudgeSpec(name, rate, True, model, frozenset({"inputs", "outputs"}), make)
                )
        elif judge.name in _LLM:
            kind, needs = _LLM[judge.name]
            specs.append(
                JudgeSpec(
                    judge.name, rate, True, model, needs, _llm_scorer(kind, judge.name, model)
                )
            )
        else:
            make = ScorerFactory.of(_CODE[judge.name], judge.name, **(judge.args or {}))
            specs.append(JudgeSpec(judge.name, rate, False, None, frozenset({"outputs"}), make))
    return specs


def llm_endpoint_configured(environ: dict[str, str] | None = None) -> bool:
    """Whether MLflow's LLM judges have an endpoint to call in this environment."""
    env = os.environ if environ is None else environ
    return any(env.get(name) for name in LLM_ENDPOINT_ENVS) or bool(env.get(JUDGE_MODEL_ENV))
