"""Judges registered in MLflow's own scorer registry: the experiment's Judges page, or
``Scorer.register()`` and ``.start()`` in Python.

MLflow stores each judge as a serialized scorer (JSON) per version, and its online-scoring
config (sample rate, filter) apart. A monitored experiment's judges are the monitor's config
plus the judges *started* there (sample rate > 0): the daemon runs those too, with all of its
guarantees. This module reads them (``read``) and classifies each one without building it
(``RegisteredJudge.of``): what kind of scorer it is, its model, its scope, and why it cannot run
here, if it cannot. Nothing read is executed: a scorer whose definition carries code (a
``@scorer`` function's source, a third-party wrapper's module) runs only when the operator
opts in on the daemon's command line (``run --allow-registered-code``); until then it is
listed as unavailable, with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

_logger = logging.getLogger(__name__)

KINDS = ("builtin", "instructions", "aligned", "code", "third_party", "unknown")
CODE_KINDS = frozenset({"code", "third_party"})  # their definitions import or exec code
_VARIABLE = re.compile(r"\{\{\s*(\w+)\s*\}\}")
GROUND_TRUTH_CLASSES = frozenset(
    {"Correctness", "Equivalence", "ExpectationsGuidelines", "RetrievalSufficiency"}
)

# MLflow 3.17's online-scoring checkpoints: the trace (or session) time up to which its
# server-side runner has scored an experiment (engine/registered.py explains why we move them).
MLFLOW_TRACE_CHECKPOINT = "mlflow.latestOnlineScoring.trace.checkpoint"
MLFLOW_SESSION_CHECKPOINT = "mlflow.latestOnlineScoring.session.checkpoint"
# What MLflow's online scoring (and evaluation) writes on a registered scorer's feedback.
SCORER_NAME_KEY = "mlflow.assessment.scorerName"


def as_dict(serialized: Any) -> dict[str, Any]:
    """A stored serialized scorer as a plain dict: the SQL store hands a ``SerializedScorer``
    dataclass, REST a JSON string."""
    if isinstance(serialized, dict):
        return serialized
    if dataclasses.is_dataclass(serialized) and not isinstance(serialized, type):
        return dataclasses.asdict(serialized)
    if isinstance(serialized, (str, bytes)):
        data = json.loads(serialized)
        if isinstance(data, dict):
            return data
    raise ValueError(f"a serialized scorer is a JSON object, not {type(serialized).__name__}")


def _has_key(obj: Any, key: str) -> bool:
    if isinstance(obj, dict):
        return obj.get(key) is not None or any(_has_key(v, key) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_key(item, key) for item in obj)
    return False


def kind_of(data: dict[str, Any]) -> str:
    """Which of ``KINDS`` a serialized scorer is; code anywhere in it (an ensemble's member
    too) makes it ``code``."""
    if _has_key(data, "call_source"):
        return "code"
    if _has_key(data, "third_party_scorer_data"):
        return "third_party"
    if data.get("instructions_judge_pydantic_data") is not None:
        return "instructions"
    if data.get("builtin_scorer_class") is not None:
        return "builtin"
    if data.get("memory_augmented_judge_data") is not None:
        return "aligned"
    return "unknown"


def model_of(data: dict[str, Any]) -> str | None:
    for key in ("instructions_judge_pydantic_data", "builtin_scorer_pydantic_data"):
        if isinstance(data.get(key), dict):
            return data[key].get("model")
    aligned = data.get("memory_augmented_judge_data")
    if isinstance(aligned, dict) and isinstance(aligned.get("base_judge"), dict):
        return model_of(aligned["base_judge"])
    return None


@dataclass(frozen=True)
class RegisteredJudge:
    """One judge of MLflow's registry (its latest version) and its online-scoring config."""

    name: str
    serialized: str  # the definition, as JSON (what ``Scorer.model_validate_json`` reads)
    version: int
    scorer_id: str
    kind: str
    model: str | None = None
    session: bool = False
    variables: frozenset[str] = frozenset()  # an instructions judge's template variables
    builtin_class: str | None = None
    llm: bool = True  # calls a judge model (a deterministic built-in or code may not)
    sample_rate: float | None = None  # None: never started (no online-scoring config)
    filter_string: str | None = None
    problem: str | None = None  # why it cannot be run (beyond needing the code opt-in)

    @property
    def started(self) -> bool:
        """Started in MLflow: "Automatic evaluation" on, ``Scorer.start()``."""
        return bool(self.sample_rate)

    @classmethod
    def of(
        cls,
        name: str,
        serialized: Any,
        version: int,
        scorer_id: str,
        sample_rate: float | None = None,
        filter_string: str | None = None,
    ) -> RegisteredJudge:
        """Classify a stored judge, never failing: what cannot be read is a ``problem``."""
        try:
            data = as_dict(serialized)
        except (ValueError, TypeError) as e:
            return cls(name, str(serialized)[:2000], version, scorer_id, "unknown",
                       sample_rate=sample_rate, filter_string=filter_string,
                       problem=f"its definition is not readable JSON ({e})")  # fmt: skip
        kind = kind_of(data)
        model = model_of(data)
        instructions = (data.get("instructions_judge_pydantic_data") or {}).get("instructions")
        variables = frozenset(_VARIABLE.findall(instructions or ""))
        session = bool(data.get("is_session_level_scorer")) or "conversation" in variables
        builtin = data.get("builtin_scorer_class")
        llm = kind in ("instructions", "aligned") or (
            kind == "builtin" and _is_llm_builtin(builtin)
        )
        problem = None
        if kind == "unknown":
            problem = (
                "its definition is of a kind this daemon's MLflow "
                f"{_mlflow_version()} does not know (written by MLflow "
                f"{data.get('mlflow_version') or 'unknown'})"
            )
        elif kind in ("instructions", "aligned") and model is None:
            problem = "it names no model: its gateway endpoint was deleted"
        elif "expectations" in variables or builtin in GROUND_TRUTH_CLASSES:
            problem = (
                "it compares against expectations (ground truth), which production traces lack"
            )
        return cls(
            name,
            json.dumps(data, default=str),
            version,
            scorer_id,
            kind,
            model,
            session,
            variables,
            builtin,
            llm,
            sample_rate,
            filter_string,
            problem,
        )

    def describe(self, sampling: bool = True) -> str:
        """E.g. ``instructions judge, gateway:/judge, 40% of traces where tags.env = 'prod'``."""
        kinds = {"instructions": "LLM judge (instructions)", "aligned": "aligned LLM judge",
                 "code": "custom code", "third_party": "third-party scorer",
                 "unknown": "unknown kind"}  # fmt: skip
        kind = kinds.get(self.kind, self.builtin_class or self.kind)
        scope = " on sessions" if self.session else ""
        if not self.started:
            state = "not started" if self.sample_rate is None else "stopped"
        else:
            state = f"{self.sample_rate:.0%} of {'sessions' if self.session else 'traces'}"
            state += f" where {self.filter_string}" if self.filter_string else ""
        model = f", {self.model}" if self.model else ""
        return f"{kind}{scope}{model}, {state}" if sampling else f"{kind}{scope}{model}"


def _is_llm_builtin(cls: str | None) -> bool:
    """Whether MLflow's built-in scorer class calls a judge model (the deterministic ones,
    ``PIIDetection``, ``ResponseLength``, ``RegexMatch``, do not)."""
    from mlflow_monitor_plugin.config.catalog import CATALOG

    return cls not in {info.scorer for info in CATALOG.values() if not info.llm}


def _mlflow_version() -> str:
    import mlflow

    return mlflow.__version__


def read(experiment_id: str, client: Any = None) -> list[RegisteredJudge]:
    """Every judge registered in MLflow on the experiment (its latest version), with its
    online-scoring config. A store that keeps no judges (MLflow's file store) has none; a
    failing read is logged and reads as none, never fails the caller."""
    from mlflow.tracking import MlflowClient

    store = (client or MlflowClient())._tracking_client.store
    try:
        versions = store.list_scorers(experiment_id)
        configs = (
            store.get_online_scoring_configs([v.scorer_id for v in versions]) if versions else []
        )
    except NotImplementedError:
        return []  # the file store: no judge registry
    except Exception as e:
        _logger.warning(
            "Could not read the judges registered in MLflow on experiment %s: %s", experiment_id, e
        )
        return []
    by_scorer = {c.scorer_id: c for c in configs}
    judges = []
    for v in versions:
        config = by_scorer.get(v.scorer_id)
        judges.append(
            RegisteredJudge.of(
                v.scorer_name,
                v.serialized_scorer,
                int(v.scorer_version),
                v.scorer_id,
                None if config is None else float(config.sample_rate),
                None if config is None else (config.filter_string or None),
            )
        )
    return sorted(judges, key=lambda j: j.name)
