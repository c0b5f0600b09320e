"""Config entries ⇄ ``mlflow.genai.scorers`` objects, and which judges apply to a trace.

Feedback names follow the Databricks judges (``safety``, ``groundedness``, ``chunk_relevance``,
``chunk_relevance/precision``, a guideline's key), so queries written for Databricks carry over.
Only names from the fixed catalog (config/catalog.py) become built-in scorers; a custom judge is
a prompt given to MLflow's ``make_judge``; a code judge is looked up by name among the installed
entry points of group ``mlflow_monitor.scorers``. Nothing read from a tag is imported or
evaluated. A judge started in MLflow's own registry (config/registered.py) is built from its
stored definition by ``Scorer.model_validate_json``, which reads data; one whose definition
carries code is built only when the operator allowed it (``allow_registered_code``, the
daemon's ``--allow-registered-code``).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field, replace
from typing import Any

from mlflow.entities import SpanType, Trace

from mlflow_monitor_plugin.config.catalog import CATALOG
from mlflow_monitor_plugin.config.model import AssessmentsSuiteConfig
from mlflow_monitor_plugin.config.prices import Price
from mlflow_monitor_plugin.config.scorers import (  # noqa: F401 - re-exported
    JUDGE_MODEL_ENV,
    REGISTERED_CODE_REFUSED,
    CodeJudgeUnavailable,
    Definition,
    ScorerFactory,
    allow_registered_code,
    definitions,
    load_code_scorer,
    registered_code_allowed,
)
from mlflow_monitor_plugin.config.strata import Stratum, strata_of

_logger = logging.getLogger(__name__)

GATEWAY_URI_ENV = "MLFLOW_GATEWAY_URI"  # MLflow's: where gateway:/ models are called
NO_ENDPOINT = (
    "no judge endpoint in the daemon's environment: set OPENAI_API_KEY (and OPENAI_API_BASE "
    "for an OpenAI-compatible server) where `mlflow monitor run` runs, or give the judge a "
    "gateway:/<endpoint> model"
)
# MLflow's judges call an OpenAI-compatible endpoint when one of these is set (or a key for
# api.openai.com is present).
LLM_ENDPOINT_ENVS = ("OPENAI_API_KEY", "OPENAI_API_BASE", "OPENAI_BASE_URL")


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
    origin: str = "monitor"  # or "mlflow": started in MLflow's registry (config/registered.py)
    strata: tuple[Stratum, ...] = ()  # where it samples at other rates (config/strata.py)
    # (stratum, inclusion probability) of the one trace a due pair holds it for: the verdict's
    draw: tuple[str, float] | None = field(default=None, compare=False)
    shadow_of: str | None = None  # a shadow judge (scoring/shadow.py): the judge it stands beside

    def applies_to(self, trace: Trace) -> bool:
        return all(_has(trace, need) for need in self.needs - {"session"})

    def applies_to_session(self, traces: list[Trace]) -> bool:
        needs = self.needs - {"session"}
        return all(any(_has(t, need) for t in traces) for need in needs)

    def call(self, scorer: Any, trace: Trace, session: list[Trace] | None = None) -> Any:
        """Run ``scorer`` (built by ``make``) on a trace, or on a session's traces."""
        if self.make.kind in ("code", "registered_code"):
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


_SHAPE = "_mlflow_monitor_shape"  # on a fetched trace: what it carries, worked out once


def _has(trace: Trace, need: str) -> bool:
    """Whether the trace carries what a judge needs. Each of the four is worked out once per
    trace object, whatever the number of judges asking (the request and response are
    serialized from the root span on each access)."""
    shape = trace.__dict__.get(_SHAPE)
    if shape is None:
        shape = trace.__dict__[_SHAPE] = {}
    if need not in shape:
        shape[need] = _carries(trace, need)
    return shape[need]


def _carries(trace: Trace, need: str) -> bool:
    if need == "retrieval":
        return bool(trace.search_spans(span_type=SpanType.RETRIEVER))
    if need == "tools":
        return bool(trace.search_spans(span_type=SpanType.TOOL))
    value = trace.data.request if need == "inputs" else trace.data.response
    return value not in (None, "", "null", "{}", "[]")


def build_judges(suite: AssessmentsSuiteConfig) -> list[JudgeSpec]:
    """The judges a suite runs, each with its effective rate and model. A code judge that is
    not installed comes back with ``unavailable`` set, the others are unaffected."""
    specs = []
    for d in definitions(suite):
        if d.make.kind == "code":
            specs.append(_code_spec(d))
        else:
            specs.append(
                JudgeSpec(
                    d.name, d.rate, d.llm, d.model, d.needs, d.make, d.filter_string, d.session
                )
            )
    return [s if s.session else replace(s, strata=strata_of(suite, s.name)) for s in specs]


def _code_spec(d: Definition) -> JudgeSpec:
    try:
        scorer = load_code_scorer(d.name)
    except CodeJudgeUnavailable as e:
        return JudgeSpec(
            d.name, d.rate, False, None, frozenset(), d.make, d.filter_string, unavailable=str(e)
        )
    session = bool(getattr(scorer, "is_session_level_scorer", False))
    needs = frozenset({"session"} if session else ())
    return JudgeSpec(d.name, d.rate, False, None, needs, d.make, d.filter_string, session)


def llm_endpoint_configured(environ: dict[str, str] | None = None) -> bool:
    """Whether MLflow's LLM judges have an endpoint to call in this environment."""
    env = os.environ if environ is None else environ
    return any(env.get(name) for name in LLM_ENDPOINT_ENVS) or bool(env.get(JUDGE_MODEL_ENV))


def endpoint_missing(judge: JudgeSpec, environ: dict[str, str] | None = None) -> str | None:
    """Why an LLM judge has no endpoint to call in this environment, None when it has one. A
    ``gateway:/<endpoint>`` model is called through the tracking server's AI Gateway, which
    holds the provider key: it needs an HTTP tracking URI (or ``MLFLOW_GATEWAY_URI``), no key."""
    if not judge.is_llm:
        return None
    env = os.environ if environ is None else environ
    if is_gateway(judge.model):
        if env.get(GATEWAY_URI_ENV) or _http(_tracking_uri(env)):
            return None
        return (
            f"its model {judge.model} is called through an MLflow tracking server's AI Gateway: "
            "set MLFLOW_TRACKING_URI to the server (http://...), or MLFLOW_GATEWAY_URI"
        )
    if llm_endpoint_configured(env):
        return None
    return NO_ENDPOINT


def is_gateway(model: str | None) -> bool:
    return bool(model) and model.startswith("gateway:/")


def _http(uri: str | None) -> bool:
    return bool(uri) and uri.split(":", 1)[0] in ("http", "https")


def _tracking_uri(env: Any) -> str | None:
    if env is os.environ:
        import mlflow

        return mlflow.get_tracking_uri()
    return env.get("MLFLOW_TRACKING_URI")


# What a trace must carry for a registered built-in judge, by MLflow scorer class.
_BUILTIN_NEEDS = {info.scorer: frozenset(info.needs) for info in CATALOG.values()}
_BUILTIN_NEEDS["Guidelines"] = frozenset({"inputs", "outputs"})


def build_registered(judges: Any, taken: Any = ()) -> list[JudgeSpec]:
    """The judges started in MLflow's registry (``RegisteredJudge``, config/registered.py) as
    the engine runs them, origin ``mlflow``. One whose name the monitor's config also holds is
    the monitor's (its own judge, mirrored there, or a clash: the config wins) and is left
    out. One that cannot run here comes back with ``unavailable`` set."""
    specs = []
    for r in judges:
        if not r.started or r.name in taken:
            continue
        code = r.kind in ("code", "third_party")
        make = ScorerFactory("registered_code" if code else "registered", r.name, r.serialized)
        if r.kind == "instructions":
            needs = frozenset(r.variables & {"inputs", "outputs"})
        else:
            needs = _BUILTIN_NEEDS.get(r.builtin_class or "", frozenset())
        needs = needs - {"session"} | ({"session"} if r.session else frozenset())
        unavailable = r.problem or (
            REGISTERED_CODE_REFUSED if code and not registered_code_allowed() else None
        )
        if unavailable is None:
            unavailable = _loads(make)
        specs.append(
            JudgeSpec(
                r.name, float(r.sample_rate or 0.0), r.llm, r.model if r.llm else None, needs,
                make, r.filter_string, r.session, unavailable, origin="mlflow",
            )
        )  # fmt: skip
    return specs


@functools.lru_cache(maxsize=256)
def _loads(make: ScorerFactory) -> str | None:
    """None when MLflow builds the stored scorer, else why not (an unknown class, a newer
    format): listed as unavailable, never a crash of the pass."""
    quiet = logging.getLogger("mlflow.genai.scorers.base")  # its complaint is ours to say
    level, quiet.level = quiet.level, logging.CRITICAL
    try:
        make()
    except Exception as e:
        return f"MLflow cannot load its definition: {type(e).__name__}: {str(e)[:300]}"
    finally:
        quiet.setLevel(level)
    return None


def monitor_judges(monitor: Any) -> list[JudgeSpec]:
    """Every judge of a monitored experiment: the monitor's config, then the judges started
    in MLflow's registry (``monitor.registered``, read with the config)."""
    own = build_judges(monitor.assessments_config)
    names = set(monitor.assessments_config.feedback_names)
    return own + build_registered(getattr(monitor, "registered", ()), names)
