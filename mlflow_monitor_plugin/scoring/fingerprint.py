"""A judge's fingerprint: what made a verdict, as a short hash in the verdict's metadata.

The fingerprint covers what decides a judge's answers, not where or how often it samples:
its kind and scorer class, the name its scorer is built under, its effective model (the
daemon's default resolved), its definition (a built-in's options, a guideline's rules, a
custom judge's instructions and value type, a registered judge's stored definition) and the
version of the code that writes its prompt: MLflow's for the judges MLflow builds (built-ins,
guidelines, custom and registered judges), the installed package's for a code judge. The same
judge gives the same fingerprint in every process and after a restart; any change of model,
prompt, options or MLflow gives another, so a step in a quality curve can be told from a change
of judge. A shadow and the judge it becomes once promoted share their fingerprint.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib.metadata import entry_points
from typing import Any

from mlflow_monitor_plugin.config.custom import ENTRY_POINT_GROUP
from mlflow_monitor_plugin.config.shadows import shadow_name
from mlflow_monitor_plugin.scoring.judges import JudgeSpec

FINGERPRINT_KEY = "mlflow_monitor.fingerprint"
SHADOW_OF_KEY = "mlflow_monitor.shadow_of"  # on a shadow's verdicts: the judge it stands beside
LENGTH = 16  # hex digits kept: 64 bits


def describe(judge: JudgeSpec) -> dict[str, Any]:
    """The parts of a judge the fingerprint is a hash of (plain data)."""
    make = judge.make
    definition = json.loads(make.kwargs_json)
    if isinstance(definition, dict):
        definition.pop("model", None)  # the effective model is its own part
    code = make.kind == "code"
    return {
        "kind": make.kind,
        "class": make.scorer_class,
        "name": make.name,
        "model": _model(judge),
        "definition": definition,
        "mlflow": None if code else _mlflow_version(),
        "package": _package_version(make.name) if code else None,
    }


def fingerprint(judge: JudgeSpec) -> str:
    """The judge's fingerprint: the first 16 hex digits of the SHA-256 of ``describe``."""
    text = json.dumps(describe(judge), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:LENGTH]


@functools.lru_cache(maxsize=512)
def provenance(judge: JudgeSpec) -> dict[str, str]:
    """The metadata every verdict of ``judge`` carries beside the writer's own."""
    meta = {FINGERPRINT_KEY: fingerprint(judge)}
    if judge.shadow_of is not None:
        meta[SHADOW_OF_KEY] = judge.shadow_of
    return meta


def feedback_name(judge: JudgeSpec, name: str) -> str:
    """The name a feedback of ``judge`` is logged under: a shadow's under ``shadow/``."""
    if judge.shadow_of is None or name.startswith(shadow_name("")):
        return name
    return shadow_name(name)


def fingerprint_number(value: str | None) -> float | None:
    """A fingerprint as a number for a chart (its first 6 hex digits): a line that steps where
    the judge changed."""
    if not value:
        return None
    try:
        return float(int(value[:6], 16))
    except ValueError:
        return None


def _model(judge: JudgeSpec) -> str | None:
    if not judge.is_llm:
        return None
    if judge.model:
        return judge.model
    from mlflow.genai.judges.utils import get_default_model

    return get_default_model()


@functools.lru_cache(maxsize=1)
def _mlflow_version() -> str:
    import mlflow

    return mlflow.__version__


@functools.lru_cache(maxsize=64)
def _package_version(name: str) -> str | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            dist = getattr(ep, "dist", None)
            return f"{dist.metadata['Name']}=={dist.version}" if dist is not None else ep.value
    return None
