"""Alert rules of a monitor: ``AlertRule``, ``WebhookTarget``, their validation and short form.

Pure. A rule names a judge of the monitor's suite (its feedback name), a metric, a threshold on
one side, and a window. Webhook targets name the environment variable that holds the URL, never
the URL itself: URLs are secrets (a Slack webhook's path is its key) and never go in a tag.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow_monitor_plugin.exceptions import MonitorConfigError

#: metric -> (the side its threshold is on, whether it is a rate in [0, 1], needs a judge)
METRICS: dict[str, tuple[str, bool, bool]] = {
    "pass_rate": ("below", True, True),
    "error_rate": ("above", True, True),
    "lag_seconds": ("above", False, False),
    "volume": ("below", False, False),
    "budget_factor": ("below", True, False),  # the daily budget's factor on the sample rates
    "agreement": ("below", True, True),  # people's labels agreeing with the judge (labels.py)
    "human_overrides": ("above", True, True),  # the judge's verdicts people corrected
}
RATE_METRICS = ("pass_rate", "error_rate", "agreement", "human_overrides")
FORMATS = ("json", "slack")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_RULE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_SPEC = re.compile(
    r"^\s*(?:(?P<name>[A-Za-z0-9_][A-Za-z0-9_.\-]*)\s*=\s*)?"
    r"(?:(?P<judge>[A-Za-z0-9_][A-Za-z0-9_.\-]*?)\.)?(?P<metric>[a-z_]+)\s*"
    r"(?P<op>[<>])\s*(?P<threshold>[0-9.eE+\-]+)"
    r"(?:\s+over\s+(?P<window>\S+))?"
    r"(?:\s+min\s+(?P<min>\d+))?"
    r"(?:\s+to\s+(?P<targets>\S+))?\s*$"
)
SPEC_FORM = (
    "expected '[NAME=][JUDGE.]METRIC<|>THRESHOLD [over WINDOW] [min N] [to FORMAT:ENV,...]', "
    "e.g. 'safety.pass_rate<0.95 over 1h to slack:SLACK_WEBHOOK_URL'"
)


def parse_duration(field_name: str, value: Any) -> int:
    """Seconds in '90s', '15m', '1h', '1d' (or a positive number of seconds)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(value) if isinstance(value, str) else None
        if not match:
            raise MonitorConfigError(
                field_name, value, "expected a duration such as '90s', '15m', '1h' or '1d'"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds < 1 or seconds != int(seconds):
        raise MonitorConfigError(field_name, value, "expected a whole number of seconds >= 1")
    return int(seconds)


def format_duration(seconds: int) -> str:
    for unit in ("d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class WebhookTarget:
    """POST the alert to the URL held by the environment variable ``url_env``.

    ``format="json"`` sends the plain alert document; ``"slack"`` a Slack-compatible
    ``{"text": ..., "blocks": [...]}`` (Slack, Mattermost, Google Chat and Teams workflows read it).
    """

    url_env: str
    format: str = "json"

    def validate(self, where: str = "WebhookTarget") -> WebhookTarget:
        if not isinstance(self.url_env, str) or not _ENV_NAME.match(self.url_env):
            raise MonitorConfigError(
                f"{where}.url_env",
                "<a URL>"
                if isinstance(self.url_env, str) and "://" in self.url_env
                else self.url_env,
                "expected the NAME of an environment variable holding the webhook URL "
                "(the URL itself is a secret and never goes in a tag)",
            )
        if self.format not in FORMATS:
            raise MonitorConfigError(f"{where}.format", self.format, f"expected one of {FORMATS}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"url_env": self.url_env, "format": self.format}

    @classmethod
    def from_dict(cls, value: Any, where: str = "WebhookTarget") -> WebhookTarget:
        if isinstance(value, WebhookTarget):
            return value.validate(where)
        if not isinstance(value, Mapping) or set(value) - {"url_env", "format"}:
            raise MonitorConfigError(where, value, "expected {url_env: NAME, format: json|slack}")
        return cls(value.get("url_env"), value.get("format", "json")).validate(where)


@dataclass(frozen=True)
class AlertRule:
    """Alert when ``metric`` of ``judge`` crosses a threshold (``below=`` or ``above=``).

    ``pass_rate`` (below) and ``error_rate`` (above) fire only when the whole interval of the
    population rate, at ``confidence``, is past the threshold, and only from ``min_verdicts``
    verdicts in the window; they resolve when the interval is wholly back on the good side.
    ``lag_seconds`` (above) is the daemon's lag behind the newest trace; ``volume`` (below) is the
    traces of the last complete window. ``budget_factor`` (below) is the factor by which the
    daily budget scales the sample rates now (``budget_factor<1``: the budget binds).
    ``agreement`` (below) is the share of people's labels (feedback under the judge's name
    from a HUMAN source) that agree with the judge's verdict, from ``min_verdicts`` labels;
    ``human_overrides`` (above) the share of the judge's verdicts a person labelled otherwise.
    ``repeat_every`` re-sends a firing incident's message.
    """

    name: str
    judge: str | None = None
    metric: str = "pass_rate"
    below: float | None = None
    above: float | None = None
    window: str = "1h"
    min_verdicts: int = 30
    confidence: float = 0.95
    repeat_every: str | None = None
    targets: tuple[WebhookTarget, ...] = field(default_factory=tuple)

    @property
    def threshold(self) -> float:
        return self.below if self.below is not None else self.above  # type: ignore[return-value]

    @property
    def side(self) -> str:
        return "below" if self.below is not None else "above"

    @property
    def window_s(self) -> int:
        return parse_duration(f"AlertRule({self.name!r}).window", self.window)

    @property
    def repeat_every_s(self) -> int | None:
        if self.repeat_every is None:
            return None
        return parse_duration(f"AlertRule({self.name!r}).repeat_every", self.repeat_every)

    def validate(self, judges: Iterable[str] | None = None) -> AlertRule:
        """Check every field; with ``judges`` (the suite's feedback names), the judge too."""
        if not isinstance(self.name, str) or not _RULE_NAME.match(self.name):
            raise MonitorConfigError(
                "AlertRule.name",
                self.name,
                "expected 1-64 letters, digits, '_', '-' or '.', not starting with '-' or '.'",
            )
        where = f"AlertRule({self.name!r})"
        if self.metric not in METRICS:
            raise MonitorConfigError(
                f"{where}.metric", self.metric, f"expected one of {list(METRICS)}"
            )
        side, is_rate, needs_judge = METRICS[self.metric]
        self._check_judge(where, needs_judge, judges)
        self._check_threshold(where, side, is_rate)
        parse_duration(f"{where}.window", self.window)
        if self.repeat_every is not None:
            parse_duration(f"{where}.repeat_every", self.repeat_every)
        if isinstance(self.min_verdicts, bool) or not isinstance(self.min_verdicts, int):
            raise MonitorConfigError(
                f"{where}.min_verdicts", self.min_verdicts, "expected an integer >= 1"
            )
        if self.min_verdicts < 1:
            raise MonitorConfigError(
                f"{where}.min_verdicts", self.min_verdicts, "expected an integer >= 1"
            )
        c = self.confidence
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.5 <= c < 1:
            raise MonitorConfigError(f"{where}.confidence", c, "expected a number in [0.5, 1)")
        targets = self.targets
        if isinstance(targets, (str, bytes, Mapping)) or not isinstance(targets, Iterable):
            raise MonitorConfigError(
                f"{where}.targets", targets, "expected a list of WebhookTarget"
            )
        checked = tuple(
            WebhookTarget.from_dict(t, f"{where}.targets[{i}]") for i, t in enumerate(targets)
        )
        return AlertRule(
            self.name, self.judge, self.metric, self.below, self.above, self.window,
            self.min_verdicts, float(c), self.repeat_every, checked,
        )  # fmt: skip

    def _check_judge(self, where: str, needs_judge: bool, judges: Iterable[str] | None) -> None:
        if not needs_judge:
            if self.judge is not None:
                raise MonitorConfigError(
                    f"{where}.judge", self.judge, f"expected none: {self.metric} is per monitor"
                )
            return
        if not isinstance(self.judge, str) or not self.judge:
            raise MonitorConfigError(f"{where}.judge", self.judge, "expected a judge name")
        names = list(judges) if judges is not None else None
        if names is not None and self.judge not in names:
            raise MonitorConfigError(
                f"{where}.judge", self.judge, f"expected a judge of this monitor: {names}"
            )

    def _check_threshold(self, where: str, side: str, is_rate: bool) -> None:
        other = "above" if side == "below" else "below"
        if getattr(self, other) is not None:
            raise MonitorConfigError(
                f"{where}.{other}", getattr(self, other), f"{self.metric} alerts {side} a threshold"
            )
        value = getattr(self, side)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise MonitorConfigError(f"{where}.{side}", value, "expected a number")
        if is_rate and not 0.0 <= value <= 1.0:
            raise MonitorConfigError(
                f"{where}.{side}", value, f"expected a rate between 0.0 and 1.0 for {self.metric}"
            )
        if not is_rate and value < 0:
            raise MonitorConfigError(f"{where}.{side}", value, "expected a number >= 0")

    def describe(self) -> str:
        """The short form, e.g. ``safety.pass_rate<0.95 over 1h min 30``."""
        subject = f"{self.judge}.{self.metric}" if self.judge else self.metric
        op = "<" if self.side == "below" else ">"
        text = f"{subject}{op}{self.threshold:g}"
        if self.metric not in ("lag_seconds", "budget_factor"):
            text += f" over {self.window}"
        if METRICS[self.metric][2]:
            text += f" min {self.min_verdicts}"
        return text

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "metric": self.metric, self.side: self.threshold}
        if self.judge is not None:
            out["judge"] = self.judge
        out.update(window=self.window, min_verdicts=self.min_verdicts, confidence=self.confidence)
        if self.repeat_every is not None:
            out["repeat_every"] = self.repeat_every
        out["targets"] = [t.to_dict() for t in self.targets]
        return out

    @classmethod
    def from_dict(cls, value: Any, index: int = 0) -> AlertRule:
        if isinstance(value, AlertRule):
            return value.validate()
        where = f"alerts[{index}]"
        if isinstance(value, str):
            return parse_alert_spec(value, where)
        if not isinstance(value, Mapping):
            raise MonitorConfigError(
                where, value, "expected AlertRule, a dict or a short form ('safety.pass_rate<0.95')"
            )
        allowed = {f for f in cls.__dataclass_fields__}
        extra = sorted(set(value) - allowed)
        if extra:
            raise MonitorConfigError(where, extra, f"expected only {sorted(allowed)}")
        if "name" not in value:
            raise MonitorConfigError(f"{where}.name", None, "expected a rule name")
        kwargs = dict(value)
        kwargs["targets"] = tuple(kwargs.get("targets") or ())
        return cls(**kwargs).validate()


def _parse_targets(text: str, where: str) -> tuple[WebhookTarget, ...]:
    targets = []
    for item in text.split(","):
        fmt, sep, env = item.partition(":")
        if not sep:
            fmt, env = "json", item
        targets.append(WebhookTarget(env, fmt).validate(f"{where}.targets"))
    return tuple(targets)


def parse_alert_spec(spec: str, where: str = "--alert") -> AlertRule:
    """A rule from its short form, e.g. ``safety.pass_rate<0.95 over 1h``."""
    match = _SPEC.match(spec)
    if not match:
        raise MonitorConfigError(where, spec, SPEC_FORM)
    metric, op, judge = match["metric"], match["op"], match["judge"]
    if metric not in METRICS:
        raise MonitorConfigError(f"{where} metric", metric, f"expected one of {list(METRICS)}")
    try:
        threshold = float(match["threshold"])
    except ValueError:
        raise MonitorConfigError(
            f"{where} threshold", match["threshold"], "expected a number"
        ) from None
    side = METRICS[metric][0]
    if (op == "<") != (side == "below"):
        raise MonitorConfigError(
            f"{where} operator",
            op,
            f"{metric} alerts {side} a threshold ('{'<' if side == 'below' else '>'}')",
        )
    name = match["name"] or (f"{judge}-{metric}" if judge else metric)
    rule = AlertRule(
        name=name,
        judge=judge,
        metric=metric,
        below=threshold if side == "below" else None,
        above=threshold if side == "above" else None,
        window=match["window"] or "1h",
        min_verdicts=int(match["min"]) if match["min"] else 30,
        targets=_parse_targets(match["targets"], where) if match["targets"] else (),
    )
    return rule.validate()


def rules_from(value: Any, judges: Iterable[str] | None) -> list[AlertRule]:
    """Validated rules from a list of ``AlertRule``, dicts or short forms, against the suite's
    judges (``None``: rules read back from the store, checked when they were written; a judge
    started in MLflow's registry may come and go)."""
    if value is None:
        return []
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise MonitorConfigError("alerts", value, "expected a list of alert rules")
    names = None if judges is None else list(judges)
    rules = [AlertRule.from_dict(v, i).validate(names) for i, v in enumerate(value)]
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise MonitorConfigError("alerts", rule.name, "expected each rule name at most once")
        seen.add(rule.name)
    return rules
