"""Monitor configuration: the Databricks-compatible objects, their validation and JSON form.

Pure: nothing here talks to MLflow or reads the clock. Every validation failure raises
``MonitorConfigError`` naming the field, the value received and what is allowed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mlflow_monitor_plugin.config.alerts import AlertRule, rules_from
from mlflow_monitor_plugin.exceptions import MonitorConfigError

SCHEMA_VERSION = 1

#: The Databricks LLM judges, by the name a user writes in ``BuiltinJudge(name=...)``.
LLM_JUDGES = ("safety", "groundedness", "relevance_to_query", "chunk_relevance")

#: MLflow's deterministic scorers (no LLM), with the arguments each accepts.
DETERMINISTIC_JUDGES: dict[str, tuple[str, ...]] = {
    "pii_detection": ("pii_types",),
    "response_length": ("min_length", "max_length", "unit"),
    "regex_match": ("pattern", "match_type", "case_insensitive"),
}

BUILTIN_JUDGES = LLM_JUDGES + tuple(DETERMINISTIC_JUDGES)

PII_TYPES = ("email", "phone", "ssn", "credit_card", "ip_address")

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_GUIDELINE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}$")
_MODEL_URI = re.compile(r"^[A-Za-z0-9_\-]+:/.+$")


def _check_rate(field_name: str, value: Any, *, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise MonitorConfigError(field_name, value, "expected a number between 0.0 and 1.0")
    if not 0.0 <= value <= 1.0:
        raise MonitorConfigError(field_name, value, "expected a number between 0.0 and 1.0")
    return float(value)


def _check_model(field_name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _MODEL_URI.match(value):
        raise MonitorConfigError(
            field_name, value, "expected an MLflow model URI such as 'openai:/gpt-4o-mini'"
        )
    return value


def check_identifier(field_name: str, value: Any) -> str:
    """Catalog and schema names: letters, digits and underscores, not starting with a digit."""
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise MonitorConfigError(
            field_name,
            value,
            "expected 1-255 letters, digits and underscores, not starting with a digit",
        )
    return value


def _check_builtin_args(name: str, args: Any) -> dict[str, Any]:
    field_name = f"BuiltinJudge({name!r}).args"
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise MonitorConfigError(field_name, args, "expected a dict of scorer arguments")
    allowed = DETERMINISTIC_JUDGES.get(name, ())
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        what = f"expected only {', '.join(allowed)}" if allowed else "expected no arguments"
        raise MonitorConfigError(field_name, dict(args), f"{what} (unknown: {', '.join(unknown)})")
    args = dict(args)
    if name == "regex_match":
        _check_regex_args(field_name, args)
    elif name == "response_length":
        _check_length_args(field_name, args)
    elif name == "pii_detection" and "pii_types" in args:
        types = args["pii_types"]
        if not isinstance(types, list) or not types or any(t not in PII_TYPES for t in types):
            raise MonitorConfigError(
                f"{field_name}.pii_types", types, f"expected a non-empty list of {list(PII_TYPES)}"
            )
    return args


def _check_regex_args(field_name: str, args: dict[str, Any]) -> None:
    pattern = args.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise MonitorConfigError(f"{field_name}.pattern", pattern, "expected a regular expression")
    try:
        re.compile(pattern)
    except re.error as e:
        raise MonitorConfigError(
            f"{field_name}.pattern", pattern, f"expected a valid regular expression ({e})"
        ) from None
    if args.get("match_type", "search") not in ("search", "fullmatch"):
        raise MonitorConfigError(
            f"{field_name}.match_type", args["match_type"], "expected 'search' or 'fullmatch'"
        )
    if not isinstance(args.get("case_insensitive", False), bool):
        raise MonitorConfigError(
            f"{field_name}.case_insensitive", args["case_insensitive"], "expected true or false"
        )


def _check_length_args(field_name: str, args: dict[str, Any]) -> None:
    for key in ("min_length", "max_length"):
        value = args.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise MonitorConfigError(f"{field_name}.{key}", value, "expected an integer >= 0")
    lo, hi = args.get("min_length"), args.get("max_length")
    if lo is None and hi is None:
        raise MonitorConfigError(field_name, args, "expected min_length, max_length or both")
    if lo is not None and hi is not None and lo > hi:
        raise MonitorConfigError(field_name, args, "expected min_length <= max_length")
    if args.get("unit", "chars") not in ("chars", "words"):
        raise MonitorConfigError(f"{field_name}.unit", args["unit"], "expected 'chars' or 'words'")


@dataclass
class BuiltinJudge:
    """A built-in judge: one of the Databricks four, or an MLflow deterministic scorer.

    ``args`` carries a deterministic scorer's arguments, e.g.
    ``BuiltinJudge(name="regex_match", args={"pattern": "^Answer:"})``.
    """

    name: str
    sample_rate: float | None = None
    model: str | None = None
    args: dict[str, Any] | None = None

    def validate(self) -> BuiltinJudge:
        if self.name not in BUILTIN_JUDGES:
            raise MonitorConfigError(
                "BuiltinJudge.name", self.name, f"expected one of {list(BUILTIN_JUDGES)}"
            )
        rate = _check_rate(
            f"BuiltinJudge({self.name!r}).sample_rate", self.sample_rate, optional=True
        )
        model = _check_model(f"BuiltinJudge({self.name!r}).model", self.model)
        if model is not None and self.name in DETERMINISTIC_JUDGES:
            raise MonitorConfigError(
                f"BuiltinJudge({self.name!r}).model",
                model,
                "expected no model: deterministic scorers call no LLM",
            )
        args = _check_builtin_args(self.name, self.args)
        return BuiltinJudge(self.name, rate, model, args or None)

    @property
    def feedback_names(self) -> tuple[str, ...]:
        return (self.name,)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for key in ("sample_rate", "model", "args"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass
class GuidelinesJudge:
    """Named guidelines, each judged by MLflow's ``Guidelines`` scorer under its own name."""

    guidelines: dict[str, list[str]]
    sample_rate: float | None = None
    model: str | None = None

    def validate(self) -> GuidelinesJudge:
        if not isinstance(self.guidelines, Mapping) or not self.guidelines:
            raise MonitorConfigError(
                "GuidelinesJudge.guidelines",
                self.guidelines,
                "expected a non-empty dict of {name: [guideline, ...]}",
            )
        for name, texts in self.guidelines.items():
            if not isinstance(name, str) or not _GUIDELINE_NAME.match(name):
                raise MonitorConfigError(
                    "GuidelinesJudge.guidelines name",
                    name,
                    "expected a non-empty name of letters, digits, '_', '-' or '.' (at most 100)",
                )
            if (
                not isinstance(texts, list)
                or not texts
                or any(not isinstance(t, str) or not t.strip() for t in texts)
            ):
                raise MonitorConfigError(
                    f"GuidelinesJudge.guidelines[{name!r}]",
                    texts,
                    "expected a non-empty list of non-empty strings",
                )
        rate = _check_rate("GuidelinesJudge.sample_rate", self.sample_rate, optional=True)
        model = _check_model("GuidelinesJudge.model", self.model)
        return GuidelinesJudge({k: list(v) for k, v in self.guidelines.items()}, rate, model)

    @property
    def feedback_names(self) -> tuple[str, ...]:
        return tuple(self.guidelines)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"guidelines": self.guidelines}
        for key in ("sample_rate", "model"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


Judge = BuiltinJudge | GuidelinesJudge


def judge_from_dict(value: Any, index: int = 0) -> Judge:
    """Read a judge from its object or its Databricks dict form."""
    if isinstance(value, (BuiltinJudge, GuidelinesJudge)):
        return value.validate()
    field_name = f"assessments[{index}]"
    if not isinstance(value, Mapping):
        raise MonitorConfigError(
            field_name,
            value,
            "expected BuiltinJudge, GuidelinesJudge or a dict with 'name' or 'guidelines'",
        )
    keys = set(value)
    if "guidelines" in value:
        extra = keys - {"guidelines", "sample_rate", "model", "name"}
        if extra or value.get("name", "guidelines") != "guidelines":
            raise MonitorConfigError(
                field_name,
                dict(value),
                "expected a guidelines judge with guidelines, sample_rate, model",
            )
        return GuidelinesJudge(
            value["guidelines"], value.get("sample_rate"), value.get("model")
        ).validate()
    if "name" in value:
        extra = keys - {"name", "sample_rate", "model", "args"}
        if extra:
            raise MonitorConfigError(
                field_name,
                dict(value),
                f"expected only name, sample_rate, model, args (unknown: {sorted(extra)})",
            )
        return BuiltinJudge(
            value["name"], value.get("sample_rate"), value.get("model"), value.get("args")
        ).validate()
    raise MonitorConfigError(field_name, dict(value), "expected a dict with 'name' or 'guidelines'")


@dataclass
class AssessmentsSuiteConfig:
    """What a monitor runs: the judges, the default sample rate, an optional judge model."""

    sample: float | None = None
    paused: bool | None = False
    assessments: list[Judge] | None = None
    model: str | None = None

    def validate(self) -> AssessmentsSuiteConfig:
        sample = _check_rate("AssessmentsSuiteConfig.sample", self.sample, optional=True)
        if self.paused is not None and not isinstance(self.paused, bool):
            raise MonitorConfigError(
                "AssessmentsSuiteConfig.paused", self.paused, "expected true or false"
            )
        model = _check_model("AssessmentsSuiteConfig.model", self.model)
        raw = self.assessments if self.assessments is not None else []
        if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Sequence):
            raise MonitorConfigError(
                "AssessmentsSuiteConfig.assessments", raw, "expected a list of judges"
            )
        judges = [judge_from_dict(j, i) for i, j in enumerate(raw)]
        seen: set[str] = set()
        for judge in judges:
            for name in judge.feedback_names:
                if name in seen:
                    raise MonitorConfigError(
                        "AssessmentsSuiteConfig.assessments",
                        name,
                        "expected each judge and guideline name at most once",
                    )
                seen.add(name)
        return AssessmentsSuiteConfig(sample, bool(self.paused), judges, model)

    @property
    def default_rate(self) -> float:
        return 1.0 if self.sample is None else self.sample

    @property
    def feedback_names(self) -> list[str]:
        return [name for judge in self.assessments or [] for name in judge.feedback_names]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sample": self.sample,
            "paused": bool(self.paused),
            "model": self.model,
            "assessments": [j.to_dict() for j in self.assessments or []],
        }

    @classmethod
    def from_dict(cls, value: Any) -> AssessmentsSuiteConfig:
        if isinstance(value, AssessmentsSuiteConfig):
            return value.validate()
        if not isinstance(value, Mapping):
            raise MonitorConfigError(
                "assessments_config", value, "expected AssessmentsSuiteConfig or a dict"
            )
        extra = set(value) - {"sample", "paused", "assessments", "model"}
        if extra:
            raise MonitorConfigError(
                "assessments_config",
                sorted(extra),
                "expected only sample, paused, assessments, model",
            )
        return cls(
            value.get("sample"),
            value.get("paused", False),
            value.get("assessments"),
            value.get("model"),
        ).validate()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")


@dataclass
class ExternalMonitor:
    """A monitor as stored on its experiment."""

    experiment_id: str
    assessments_config: AssessmentsSuiteConfig
    catalog_name: str
    schema_name: str
    export_uri: str
    monitor_id: str
    config_version: int = 1
    created_at_ms: int = 0
    updated_at_ms: int = 0
    schema_version: int = field(default=SCHEMA_VERSION)
    alerts: list[AlertRule] = field(default_factory=list)  # see config/alerts.py

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.created_at_ms / 1000, tz=timezone.utc)

    @property
    def updated_at(self) -> datetime:
        return datetime.fromtimestamp(self.updated_at_ms / 1000, tz=timezone.utc)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "monitor_id": self.monitor_id,
            "experiment_id": self.experiment_id,
            "catalog_name": self.catalog_name,
            "schema_name": self.schema_name,
            "export_uri": self.export_uri,
            "config_version": self.config_version,
            "created_at_ms": self.created_at_ms,
            "updated_at_ms": self.updated_at_ms,
            "assessments_config": self.assessments_config.to_dict(),
            **({"alerts": [r.to_dict() for r in self.alerts]} if self.alerts else {}),
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> ExternalMonitor:
        version = value.get("schema_version")
        if version != SCHEMA_VERSION:
            raise MonitorConfigError(
                "schema_version",
                version,
                f"this mlflow-monitor reads schema version {SCHEMA_VERSION}",
            )
        try:
            suite = AssessmentsSuiteConfig.from_dict(value["assessments_config"])
            return cls(
                experiment_id=str(value["experiment_id"]),
                assessments_config=suite,
                catalog_name=check_identifier("catalog_name", value["catalog_name"]),
                schema_name=check_identifier("schema_name", value["schema_name"]),
                export_uri=str(value["export_uri"]),
                monitor_id=str(value["monitor_id"]),
                config_version=int(value["config_version"]),
                created_at_ms=int(value["created_at_ms"]),
                updated_at_ms=int(value["updated_at_ms"]),
                alerts=rules_from(value.get("alerts"), suite.feedback_names),
            )
        except KeyError as e:
            raise MonitorConfigError(
                str(e.args[0]), None, "expected the stored monitor to have this field"
            ) from None

    def __str__(self) -> str:
        suite = self.assessments_config
        lines = [
            f"ExternalMonitor(experiment_id={self.experiment_id!r})",
            f"  export_uri:   {self.export_uri}",
            f"  sample:       {suite.default_rate:g}" + ("  (paused)" if suite.paused else ""),
            f"  judge model:  {suite.model or 'default'}",
            f"  created:      {_iso(self.created_at_ms)}   updated: {_iso(self.updated_at_ms)}"
            f"   version: {self.config_version}",
            "  assessments:",
        ]
        for judge in suite.assessments or []:
            rate = judge.sample_rate if judge.sample_rate is not None else suite.default_rate
            if isinstance(judge, GuidelinesJudge):
                for name, texts in judge.guidelines.items():
                    lines.append(f"    - {name} (guidelines, {len(texts)} rule(s)) @ {rate:g}")
            else:
                extra = f" {judge.args}" if judge.args else ""
                lines.append(f"    - {judge.name}{extra} @ {rate:g}")
        lines += ["  alerts:"] if self.alerts else []
        lines += [f"    - {r.name}: {r.describe()}" for r in self.alerts]
        return "\n".join(lines)
