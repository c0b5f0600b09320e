"""Monitor configuration: the Databricks-compatible objects, their validation and JSON form.

Pure: nothing here talks to MLflow or reads the clock. Every validation failure raises
``MonitorConfigError`` naming the field, the value received and what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mlflow_monitor_plugin.config.alerts import AlertRule, rules_from
from mlflow_monitor_plugin.config.catalog import check_options, judge_info
from mlflow_monitor_plugin.config.checks import (
    check_filter,
    check_identifier,
    check_model,
    check_rate,
)
from mlflow_monitor_plugin.config.custom import CodeJudge, CustomJudge, custom_judge_from_dict
from mlflow_monitor_plugin.config.prices import CostConfig, cost_from
from mlflow_monitor_plugin.config.shadows import check_shadows
from mlflow_monitor_plugin.config.shadows import describe as describe_shadows
from mlflow_monitor_plugin.config.strata import Stratum, describe, refuse_on_session, strata_from
from mlflow_monitor_plugin.exceptions import MonitorConfigError
from mlflow_monitor_plugin.redaction.policy import RedactionPolicy, policy_from

SCHEMA_VERSION = 1
# What `get` says when the config names no judge model (scoring/judges.py resolves it).
DEFAULT_MODEL_TEXT = "default ($MLFLOW_GENAI_JUDGE_DEFAULT_MODEL of the daemon, else MLflow's)"

_GUIDELINE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}$")


@dataclass
class BuiltinJudge:
    """A built-in judge by name (see ``mlflow monitor judges``), with its scorer's options.

    ``args`` carries the options, e.g. ``BuiltinJudge(name="regex_match", args={"pattern":
    "^Answer:"})``; ``filter_string`` (MLflow trace search syntax) limits the judge to the
    traces it matches (for a session judge: sessions whose first trace matches).
    """

    name: str
    sample_rate: float | None = None
    model: str | None = None
    args: dict[str, Any] | None = None
    filter_string: str | None = None
    strata: tuple[Stratum, ...] | None = None  # config/strata.py; None: the monitor's

    def validate(self) -> BuiltinJudge:
        info = judge_info("BuiltinJudge.name", self.name)
        where = f"BuiltinJudge({self.name!r})"
        rate = check_rate(f"{where}.sample_rate", self.sample_rate, optional=True)
        model = check_model(f"{where}.model", self.model)
        if model is not None and not info.llm:
            raise MonitorConfigError(
                f"{where}.model", model, "expected no model: deterministic scorers call no LLM"
            )
        args = check_options(info, self.args, f"{where}.args")
        filter_string = check_filter(f"{where}.filter_string", self.filter_string)
        strata = strata_from(f"{where}.strata", self.strata)
        refuse_on_session(where, strata, info.session)
        return BuiltinJudge(self.name, rate, model, args or None, filter_string, strata)

    @property
    def feedback_names(self) -> tuple[str, ...]:
        return (self.name,)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for key in ("sample_rate", "model", "args", "filter_string"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.strata is not None:
            out["strata"] = [s.to_dict() for s in self.strata]
        return out


@dataclass
class GuidelinesJudge:
    """Named guidelines, each judged by MLflow's ``Guidelines`` scorer under its own name."""

    guidelines: dict[str, list[str]]
    sample_rate: float | None = None
    model: str | None = None
    filter_string: str | None = None
    strata: tuple[Stratum, ...] | None = None  # config/strata.py; None: the monitor's

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
        rate = check_rate("GuidelinesJudge.sample_rate", self.sample_rate, optional=True)
        model = check_model("GuidelinesJudge.model", self.model)
        filter_string = check_filter("GuidelinesJudge.filter_string", self.filter_string)
        strata = strata_from("GuidelinesJudge.strata", self.strata)
        return GuidelinesJudge(
            {k: list(v) for k, v in self.guidelines.items()}, rate, model, filter_string, strata
        )

    @property
    def feedback_names(self) -> tuple[str, ...]:
        return tuple(self.guidelines)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"guidelines": self.guidelines}
        for key in ("sample_rate", "model", "filter_string"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.strata is not None:
            out["strata"] = [s.to_dict() for s in self.strata]
        return out


Judge = BuiltinJudge | GuidelinesJudge | CustomJudge | CodeJudge
_FORMS = (
    "BuiltinJudge, GuidelinesJudge, CustomJudge, CodeJudge or a dict with 'name' or 'guidelines'"
)


def judge_from_dict(value: Any, index: int = 0) -> Judge:
    """Read a judge from its object or its dict form (Databricks' for the built-ins)."""
    if isinstance(value, (BuiltinJudge, GuidelinesJudge, CustomJudge, CodeJudge)):
        return value.validate()
    field_name = f"assessments[{index}]"
    if not isinstance(value, Mapping):
        raise MonitorConfigError(field_name, value, f"expected {_FORMS}")
    if value.get("kind") in ("custom", "code") or "instructions" in value:
        return custom_judge_from_dict(value, field_name)
    keys = set(value)
    if "guidelines" in value:
        extra = keys - {"guidelines", "sample_rate", "model", "name", "filter_string", "strata"}
        if extra or value.get("name", "guidelines") != "guidelines":
            raise MonitorConfigError(
                field_name,
                dict(value),
                "expected a guidelines judge with guidelines, sample_rate, model, filter_string, "
                "strata",
            )
        return GuidelinesJudge(
            value["guidelines"],
            value.get("sample_rate"),
            value.get("model"),
            value.get("filter_string"),
            value.get("strata"),
        ).validate()
    if "name" in value:
        extra = keys - {"name", "sample_rate", "model", "args", "filter_string", "strata"}
        if extra:
            raise MonitorConfigError(
                field_name,
                dict(value),
                "expected only name, sample_rate, model, args, filter_string, strata "
                f"(unknown: {sorted(extra)})",
            )
        return BuiltinJudge(
            value["name"],
            value.get("sample_rate"),
            value.get("model"),
            value.get("args"),
            value.get("filter_string"),
            value.get("strata"),
        ).validate()
    raise MonitorConfigError(field_name, dict(value), f"expected {_FORMS}")


@dataclass
class AssessmentsSuiteConfig:
    """What a monitor runs: the judges, the default sample rate, an optional judge model.

    ``shadows`` maps a judge's name to a candidate run beside it on the same sampled traces
    (config/shadows.py); ``shadows_in_budget`` counts their cost against a daily budget.
    """

    sample: float | None = None
    paused: bool | None = False
    assessments: list[Judge] | None = None
    model: str | None = None
    strata: tuple[Stratum, ...] | None = None  # every trace judge's, unless it has its own
    shadows: dict[str, Any] | None = None
    shadows_in_budget: bool = False

    def validate(self) -> AssessmentsSuiteConfig:
        sample = check_rate("AssessmentsSuiteConfig.sample", self.sample, optional=True)
        if self.paused is not None and not isinstance(self.paused, bool):
            raise MonitorConfigError(
                "AssessmentsSuiteConfig.paused", self.paused, "expected true or false"
            )
        model = check_model("AssessmentsSuiteConfig.model", self.model)
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
        strata = strata_from("AssessmentsSuiteConfig.strata", self.strata) or None
        shadows = check_shadows(self.shadows, judges, judge_from_dict)
        if not isinstance(self.shadows_in_budget, bool):
            raise MonitorConfigError(
                "AssessmentsSuiteConfig.shadows_in_budget",
                self.shadows_in_budget,
                "expected true or false",
            )
        return AssessmentsSuiteConfig(
            sample, bool(self.paused), judges, model, strata, shadows or None,
            self.shadows_in_budget,
        )  # fmt: skip

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
            **({"strata": [s.to_dict() for s in self.strata]} if self.strata else {}),
            **(
                {"shadows": {k: j.to_dict() for k, j in (self.shadows or {}).items()}}
                if self.shadows
                else {}
            ),
            **({"shadows_in_budget": True} if self.shadows_in_budget else {}),
        }

    @classmethod
    def from_dict(cls, value: Any) -> AssessmentsSuiteConfig:
        if isinstance(value, AssessmentsSuiteConfig):
            return value.validate()
        if not isinstance(value, Mapping):
            raise MonitorConfigError(
                "assessments_config", value, "expected AssessmentsSuiteConfig or a dict"
            )
        extra = set(value) - {
            "sample", "paused", "assessments", "model", "strata", "shadows", "shadows_in_budget"
        }  # fmt: skip
        if extra:
            raise MonitorConfigError(
                "assessments_config",
                sorted(extra),
                "expected only sample, paused, assessments, model, strata, shadows, "
                "shadows_in_budget",
            )
        return cls(
            value.get("sample"),
            value.get("paused", False),
            value.get("assessments"),
            value.get("model"),
            value.get("strata"),
            value.get("shadows"),
            value.get("shadows_in_budget", False),
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
    cost: CostConfig = field(default_factory=CostConfig)  # see config/prices.py
    pii: RedactionPolicy = field(default_factory=RedactionPolicy)  # see redaction/policy.py
    # The judges registered in MLflow on the experiment (config/registered.py): read from
    # MLflow's registry with the config, never stored in the monitor's tags.
    registered: tuple[Any, ...] = field(default=(), compare=False, repr=False)

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
            **({"cost": self.cost.to_dict()} if not self.cost.empty else {}),
            **({"pii": self.pii.to_dict()} if self.pii.enabled else {}),
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
                alerts=rules_from(value.get("alerts"), None),  # checked when written
                cost=cost_from(value.get("cost")),
                pii=policy_from(value.get("pii")),
            )
        except KeyError as e:
            raise MonitorConfigError(
                str(e.args[0]), None, "expected the stored monitor to have this field"
            ) from None

    def __str__(self) -> str:
        """What ``mlflow monitor get`` prints."""
        suite = self.assessments_config
        lines = [
            f"Monitor of experiment {self.experiment_id} (monitor id {self.monitor_id})",
            f"  export_uri:   {self.export_uri}",
            f"  sample:       {suite.default_rate:g}" + ("  (paused)" if suite.paused else ""),
            f"  judge model:  {suite.model or DEFAULT_MODEL_TEXT}",
            f"  created:      {_iso(self.created_at_ms)}   updated: {_iso(self.updated_at_ms)}"
            f"   version: {self.config_version}",
            *describe(suite.strata or (), None, "  "),
            "  assessments:",
        ]
        for judge in suite.assessments or []:
            rate = judge.sample_rate if judge.sample_rate is not None else suite.default_rate
            own = describe(judge.strata or (), rate, "        ")
            if isinstance(judge, GuidelinesJudge):
                for name, texts in judge.guidelines.items():
                    lines.append(f"    - {name} (guidelines, {len(texts)} rule(s)) @ {rate:g}")
                lines += own
                continue
            kind = {CustomJudge: " (custom)", CodeJudge: " (code)"}.get(type(judge), "")
            args = getattr(judge, "args", None) or {}
            extra = f" ({', '.join(f'{k}={v!r}' for k, v in args.items())})" if args else ""
            where = f" where {judge.filter_string}" if judge.filter_string else ""
            lines.append(f"    - {judge.name}{kind}{extra} @ {rate:g}{where}")
            lines += own + (["        strata: none (the monitor's do not apply)"]
                            if judge.strata == () and suite.strata else [])  # fmt: skip
        if suite.shadows:
            apart = "counted in" if suite.shadows_in_budget else "apart from"
            lines.append(f"  shadows (cost {apart} the budget):")
            lines += describe_shadows(suite.shadows)
        names = set(suite.feedback_names)
        theirs = [r for r in self.registered if r.name not in names]
        lines += ["  judges registered in MLflow (the experiment's Judges page):"] if theirs else []
        for r in theirs:
            runs = "run by the daemon" if r.started else "not run"
            lines.append(f"    - {r.name} ({r.describe()}): {runs}")
        lines += ["  alerts:"] if self.alerts else []
        lines += [f"    - {r.name}: {r.describe()}" for r in self.alerts]
        if self.cost.daily_budget_usd is not None:
            lines.append(f"  daily budget: ${self.cost.daily_budget_usd:g}")
        if self.cost.call_cost_usd is not None:
            lines.append(f"  call cost:    ${self.cost.call_cost_usd:g} (stated estimate)")
        for model, price in self.cost.prices.items():
            lines.append(
                f"  price:        {model}: ${price.input_per_token * 1e6:g} in, "
                f"${price.output_per_token * 1e6:g} out per million tokens"
            )
        lines.append(f"  pii:          {self.pii.describe()}")
        return "\n".join(lines)
