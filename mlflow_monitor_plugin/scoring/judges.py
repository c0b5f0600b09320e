"""Config entries ⇄ ``mlflow.genai.scorers`` objects, and which judges apply to a trace.

Feedback names follow the Databricks judges (``safety``, ``groundedness``, ``chunk_relevance``,
``chunk_relevance/precision``, a guideline's key), so queries written for Databricks carry over.
Only names from the fixed catalog (config/catalog.py) become built-in scorers; a custom judge is
a prompt given to MLflow's ``make_judge``; a code judge is looked up by name among the installed
entry points of group ``mlflow_monitor.scorers``. Nothing read from a tag is imported or
evaluated.
"""

from __future__ import annotations

import json
import logging
import os
import typing
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from mlflow.entities import SpanType, Trace

from mlflow_monitor_plugin.config.catalog import CATALOG
from mlflow_monitor_plugin.config.custom import (
    ENTRY_POINT_GROUP,
    VALUE_TYPES,
    CodeJudge,
    CustomJudge,
    template_variables,
)
from mlflow_monitor_plugin.config.model import AssessmentsSuiteConfig, GuidelinesJudge
from mlflow_monitor_plugin.config.prices import Price

_logger = logging.getLogger(__name__)

JUDGE_MODEL_ENV = "MLFLOW_GENAI_JUDGE_DEFAULT_MODEL"
# MLflow's judges call an OpenAI-compatible endpoint when one of these is set (or a key for
# api.openai.com is present).
LLM_ENDPOINT_ENVS = ("OPENAI_API_KEY", "OPENAI_API_BASE", "OPENAI_BASE_URL")


class CodeJudgeUnavailable(LookupError):
    """A code judge's name has no installed entry point (or it does not load)."""


@dataclass(frozen=True)
class ScorerFactory:
    """Builds one scorer. A plain value, so a judge can be sent to a scoring process (see
    pool.py) and used as a dict key. ``kind`` is 'builtin' (a class of the fixed catalog),
    'custom' (``make_judge``) or 'code' (an installed entry point)."""

    kind: str
    name: str
    kwargs_json: str = "{}"
    scorer_class: str = ""

    @classmethod
    def of(cls, kind: str, name: str, scorer_class: str = "", **kwargs: Any) -> ScorerFactory:
        return cls(kind, name, json.dumps(kwargs, sort_keys=True), scorer_class)

    def __call__(self) -> Any:
        kwargs = json.loads(self.kwargs_json)
        if self.kind == "custom":
            from mlflow.genai.judges import make_judge

            value_type = _value_type(kwargs.pop("feedback_value_type", None))
            return make_judge(name=self.name, feedback_value_type=value_type, **kwargs)
        if self.kind == "code":
            return load_code_scorer(self.name)
        from mlflow.genai import scorers

        return getattr(scorers, self.scorer_class)(name=self.name, **kwargs)


def _value_type(data: Any) -> Any:
    if data is None:
        return None
    if isinstance(data, list):
        return typing.Literal[tuple(data)]
    return VALUE_TYPES[data]


def load_code_scorer(name: str) -> Any:
    """The scorer an installed package exposes as entry point ``name`` of group
    ``mlflow_monitor.scorers``: a ``Scorer`` (e.g. an ``@scorer`` function) or a ``Scorer``
    subclass, which is instantiated."""
    from mlflow.genai.scorers import Scorer

    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        raise CodeJudgeUnavailable(
            f"no entry point {name!r} in group {ENTRY_POINT_GROUP!r} is installed in the "
            "daemon's environment"
        )
    try:
        obj = found[0].load()
    except Exception as e:
        raise CodeJudgeUnavailable(
            f"entry point {name!r} ({found[0].value}) does not load: {type(e).__name__}: {e}"
        ) from None
    if isinstance(obj, type) and issubclass(obj, Scorer):
        obj = obj()
    if not isinstance(obj, Scorer):
        raise CodeJudgeUnavailable(
            f"entry point {name!r} ({found[0].value}) is a {type(obj).__name__}, expected an "
            "mlflow.genai Scorer (an @scorer function or a Scorer subclass)"
        )
    return obj


@dataclass(frozen=True)
class JudgeSpec:
    """One judge as the engine runs it: its feedback name, rate and the factory of its scorer.
    ``session`` judges score a whole conversation; ``unavailable`` says why a judge cannot run
    in this environment (a code judge that is not installed); ``price`` is its model's, when
    known (the engine sets it, see config/prices.py)."""

    name: str
    rate: float
    is_llm: bool
    model: str | None
    needs: frozenset[str]  # 'inputs', 'outputs', 'retrieval', 'tools', 'session'
    make: ScorerFactory
    filter_string: str | None = None
    session: bool = False
    unavailable: str | None = None
    price: Price | None = None

    def applies_to(self, trace: Trace) -> bool:
        return all(_has(trace, need) for need in self.needs - {"session"})

    def applies_to_session(self, traces: list[Trace]) -> bool:
        needs = self.needs - {"session"}
        return all(any(_has(t, need) for t in traces) for need in needs)

    def call(self, scorer: Any, trace: Trace, session: list[Trace] | None = None) -> Any:
        """Run ``scorer`` (built by ``make``) on a trace, or on a session's traces."""
        if self.make.kind == "code":
            from mlflow.genai.utils.trace_utils import (
                resolve_inputs_from_trace,
                resolve_outputs_from_trace,
            )

            if self.session:
                return scorer.run(session=session)
            inputs = resolve_inputs_from_trace(None, trace)
            outputs = resolve_outputs_from_trace(None, trace)
            return scorer.run(inputs=inputs, outputs=outputs, trace=trace)
        if self.session:
            return scorer(session=session)
        return scorer(trace=trace)


def _has(trace: Trace, need: str) -> bool:
    if need == "retrieval":
        return bool(trace.search_spans(span_type=SpanType.RETRIEVER))
    if need == "tools":
        return bool(trace.search_spans(span_type=SpanType.TOOL))
    value = trace.data.request if need == "inputs" else trace.data.response
    return value not in (None, "", "null", "{}", "[]")


def _model_kwargs(model: str | None) -> dict[str, Any]:
    return {"model": model} if model else {}


def build_judges(suite: AssessmentsSuiteConfig) -> list[JudgeSpec]:
    """The judges a suite runs, each with its effective rate and model. A code judge that is
    not installed comes back with ``unavailable`` set, the others are unaffected."""
    specs = []
    for judge in suite.assessments or []:
        rate = judge.sample_rate if judge.sample_rate is not None else suite.default_rate
        model = getattr(judge, "model", None) or suite.model or os.environ.get(JUDGE_MODEL_ENV)
        model = model or None
        where = judge.filter_string
        if isinstance(judge, GuidelinesJudge):
            for name, texts in judge.guidelines.items():
                make = ScorerFactory.of(
                    "builtin", name, "Guidelines", guidelines=texts, **_model_kwargs(model)
                )
                needs = frozenset({"inputs", "outputs"})
                specs.append(JudgeSpec(name, rate, True, model, needs, make, where))
        elif isinstance(judge, CustomJudge):
            make = ScorerFactory.of(
                "custom",
                judge.name,
                instructions=judge.instructions,
                feedback_value_type=judge.feedback_value_type,
                **_model_kwargs(model),
            )
            used = template_variables(judge.instructions)
            needs = frozenset({"session"} if judge.session else used & {"inputs", "outputs"})
            specs.append(
                JudgeSpec(judge.name, rate, True, model, needs, make, where, judge.session)
            )
        elif isinstance(judge, CodeJudge):
            specs.append(_code_spec(judge, rate, where))
        else:
            info = CATALOG[judge.name]
            llm_model = model if info.llm else None
            make = ScorerFactory.of(
                "builtin", judge.name, info.scorer, **(judge.args or {}), **_model_kwargs(llm_model)
            )
            specs.append(
                JudgeSpec(
                    judge.name, rate, info.llm, llm_model, frozenset(info.needs), make, where,
                    info.session,
                )
            )  # fmt: skip
    return specs


def _code_spec(judge: CodeJudge, rate: float, where: str | None) -> JudgeSpec:
    make = ScorerFactory.of("code", judge.name)
    try:
        scorer = load_code_scorer(judge.name)
    except CodeJudgeUnavailable as e:
        return JudgeSpec(
            judge.name, rate, False, None, frozenset(), make, where, unavailable=str(e)
        )
    session = bool(getattr(scorer, "is_session_level_scorer", False))
    needs = frozenset({"session"} if session else ())
    return JudgeSpec(judge.name, rate, False, None, needs, make, where, session)


def llm_endpoint_configured(environ: dict[str, str] | None = None) -> bool:
    """Whether MLflow's LLM judges have an endpoint to call in this environment."""
    env = os.environ if environ is None else environ
    return any(env.get(name) for name in LLM_ENDPOINT_ENVS) or bool(env.get(JUDGE_MODEL_ENV))
