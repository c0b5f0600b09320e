"""The MLflow scorer objects a monitor's judges stand for, built on demand from plain data.

``definitions`` turns a suite's entries into ``Definition``s: each judge's feedback name, rate,
model, filter, what a trace must carry, and a ``ScorerFactory``, a plain value (it crosses to
scoring processes, and keys caches) that builds the ``mlflow.genai.scorers`` object when called.
Only names from the fixed catalog (config/catalog.py) become built-in scorers; a custom judge is
a prompt given to MLflow's ``make_judge``; a code judge is looked up by name among the installed
entry points of group ``mlflow_monitor.scorers``; a judge registered in MLflow is rebuilt from
its stored definition by ``Scorer.model_validate_json``, which reads data, unless that
definition carries code: then only after the operator's opt-in (``allow_registered_code``, the
daemon's ``--allow-registered-code``). Nothing read from a tag is imported or evaluated.
The engine's view of a judge (scoring/judges.py) and its copy in MLflow's registry
(config/mirrors.py) are both made from these.
"""

from __future__ import annotations

import json
import os
import typing
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from mlflow_monitor_plugin.config.catalog import CATALOG
from mlflow_monitor_plugin.config.custom import (
    ENTRY_POINT_GROUP,
    VALUE_TYPES,
    CodeJudge,
    CustomJudge,
    template_variables,
)
from mlflow_monitor_plugin.config.model import AssessmentsSuiteConfig, GuidelinesJudge

JUDGE_MODEL_ENV = "MLFLOW_GENAI_JUDGE_DEFAULT_MODEL"
# MLflow's own switch for running a stored @scorer's source; set only by ``allow_registered_code``
# (the daemon's --allow-registered-code): the one opt-in this module trusts is ``_code_allowed``
MLFLOW_CUSTOM_SCORERS_ENV = "MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS"
_code_allowed = False
_ALLOWED_IN_CHILD_ENV = "_MLFLOW_MONITOR_REGISTERED_CODE_ALLOWED"  # for scoring processes


class CodeJudgeUnavailable(LookupError):
    """A code judge's name has no installed entry point (or it does not load)."""


REGISTERED_CODE_REFUSED = (
    "its definition in MLflow carries code, which the daemon runs only when started with "
    "--allow-registered-code"
)


def allow_registered_code() -> None:
    """The operator's opt-in (``run --allow-registered-code``): judges registered in MLflow
    whose definition carries code (a ``@scorer`` function's source) may be built and run. Set
    before scoring processes start, so they inherit it."""
    global _code_allowed
    _code_allowed = True
    os.environ[MLFLOW_CUSTOM_SCORERS_ENV] = "true"
    os.environ[_ALLOWED_IN_CHILD_ENV] = "1"


def registered_code_allowed() -> bool:
    return _code_allowed


@dataclass(frozen=True)
class ScorerFactory:
    """Builds one scorer. A plain value, so a judge can be sent to a scoring process
    (scoring/pool.py) and used as a dict key. ``kind`` is 'builtin' (a class of the fixed
    catalog), 'custom' (``make_judge``), 'code' (an installed entry point), 'registered' or
    'registered_code' (a judge stored in MLflow's registry, its definition in ``kwargs_json``)."""

    kind: str  # builtin, custom, code, registered, registered_code
    name: str
    kwargs_json: str = "{}"  # a registered judge's stored definition, for 'registered*'
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
        if self.kind in ("registered", "registered_code"):
            from mlflow.genai.scorers import Scorer

            # A scoring process (forkserver: fresh globals) builds only what the daemon sent
            # it, which the daemon sends only when its operator allowed it.
            allowed = _code_allowed or os.environ.get(_ALLOWED_IN_CHILD_ENV) == "1"
            if self.kind == "registered_code" and not allowed:
                raise CodeJudgeUnavailable(REGISTERED_CODE_REFUSED)
            return Scorer.model_validate_json(self.kwargs_json)
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
class Definition:
    """One judge of a suite: what the engine runs and what MLflow's registry lists."""

    name: str  # its feedback name
    rate: float
    llm: bool
    model: str | None
    needs: frozenset[str]  # 'inputs', 'outputs', 'retrieval', 'tools', 'session'
    make: ScorerFactory
    filter_string: str | None = None
    session: bool = False  # a code judge's scope is known once it is loaded


def _model_kwargs(model: str | None) -> dict[str, Any]:
    return {"model": model} if model else {}


def definitions(suite: AssessmentsSuiteConfig) -> list[Definition]:
    """The judges of a suite, each with its effective rate and model, in config order."""
    found = []
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
                found.append(Definition(name, rate, True, model, needs, make, where))
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
            found.append(
                Definition(judge.name, rate, True, model, needs, make, where, judge.session)
            )
        elif isinstance(judge, CodeJudge):
            make = ScorerFactory.of("code", judge.name)
            found.append(Definition(judge.name, rate, False, None, frozenset(), make, where))
        else:
            info = CATALOG[judge.name]
            llm_model = model if info.llm else None
            make = ScorerFactory.of(
                "builtin", judge.name, info.scorer, **(judge.args or {}), **_model_kwargs(llm_model)
            )
            found.append(
                Definition(
                    judge.name, rate, info.llm, llm_model, frozenset(info.needs), make, where,
                    info.session,
                )
            )  # fmt: skip
    return found
