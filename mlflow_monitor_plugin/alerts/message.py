"""The alert message: one JSON document per event, and its text and Slack renderings (pure)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from mlflow_monitor_plugin.alerts.evaluate import Evaluation
from mlflow_monitor_plugin.config.alerts import RATE_METRICS, AlertRule
from mlflow_monitor_plugin.redaction import Masker

MESSAGE_TYPE = "mlflow_monitor.alert"
MAX_TRACE_IDS = 5


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _observed(rule: AlertRule, evaluation: Evaluation) -> str:
    if rule.metric in RATE_METRICS:
        level = f"{(evaluation.confidence or rule.confidence) * 100:.4g}%"
        ci = f"{level} CI {_pct(evaluation.low)}-{_pct(evaluation.high)}"
        what = "labels" if rule.metric == "agreement" else "verdicts"
        return f"{_pct(evaluation.value)} ({ci}, {evaluation.n} {what})"
    if rule.metric == "lag_seconds":
        return f"{evaluation.value:.0f}s" if evaluation.value is not None else "n/a"
    if rule.metric == "budget_factor":
        return f"sample rates x{evaluation.value:g}" if evaluation.value is not None else "n/a"
    return f"{evaluation.value:.0f} traces" if evaluation.value is not None else "n/a"


def _threshold(rule: AlertRule) -> str:
    if rule.metric in RATE_METRICS:
        return _pct(rule.threshold)
    if rule.metric == "budget_factor":
        return f"x{rule.threshold:g}"
    return f"{rule.threshold:g}{'s' if rule.metric == 'lag_seconds' else ' traces'}"


def summary(payload: dict[str, Any]) -> str:
    """One line a person reads first."""
    head = {"firing": "FIRING", "resolved": "RESOLVED", "test": "[TEST] not a real alert:"}
    rule = payload["rule"]
    subject = f"{rule['judge']} {payload['metric']}" if rule.get("judge") else payload["metric"]
    verb, side = "is", payload["side"]
    if payload["event"] == "resolved":
        verb, side = "is back", "above" if side == "below" else "below"
    return (
        f"{head[payload['event']]} {rule['name']} on experiment "
        f"'{payload['experiment_name']}' ({payload['experiment_id']}): {subject} "
        f"{payload['observed_text']} {verb} {side} {payload['threshold_text']}"
        f" over {payload['window']['width']}"
    )


def build(
    *,
    event: str,
    rule: AlertRule,
    evaluation: Evaluation,
    monitor_id: str,
    experiment_id: str,
    experiment_name: str,
    incident_id: str,
    event_id: str,
    now_ms: int,
) -> dict[str, Any]:
    """The alert document every target receives (the Slack form is rendered from it)."""
    w = evaluation.window
    failing = list(w.failing_trace_ids[:MAX_TRACE_IDS]) if w is not None else []
    payload: dict[str, Any] = {
        "type": MESSAGE_TYPE,
        "version": 1,
        "event": event,
        "test": event == "test",
        "incident_id": incident_id,
        "event_id": event_id,
        "at": iso(now_ms),
        "monitor_id": monitor_id,
        "experiment_id": experiment_id,
        "experiment_name": experiment_name,
        "rule": {k: v for k, v in rule.to_dict().items() if k != "targets"},
        "rule_text": rule.describe(),
        "metric": rule.metric,
        "side": rule.side,
        "threshold": rule.threshold,
        "threshold_text": _threshold(rule),
        "observed": evaluation.to_dict(),
        "observed_text": _observed(rule, evaluation),
        "window": {"width": rule.window},
        "failing_traces": {"count": 0, "trace_ids": failing},
    }
    if w is not None:
        payload["window"].update(start=iso(w.start_ms), end=iso(w.end_ms), start_ms=w.start_ms)
        payload["observed"].update(
            traces=w.traces,
            sampled=w.sampled,
            verdicts=w.verdicts,
            passes=w.passes,
            errors=w.errors,
            sample_rate=w.sample_rate,
            estimated_failing_traces=round(w.estimated_failing, 1),
        )
        payload["failing_traces"]["count"] = w.failures
    payload["title"] = summary(payload)
    payload["text"] = payload["title"] + _details(payload)
    return payload


def _details(payload: dict[str, Any]) -> str:
    failing = payload["failing_traces"]
    lines = [""]
    if payload["observed"].get("sampled") is not None:
        o = payload["observed"]
        lines.append(
            f"Window {payload['window']['start']} to {payload['window']['end']}: "
            f"{o['traces']} traces, {o['sampled']} sampled at {o['sample_rate']:g}, "
            f"{failing['count']} failing sampled traces (~{o['estimated_failing_traces']:g} "
            "in all traces)."
        )
    if failing["trace_ids"]:
        lines.append("Failing traces: " + ", ".join(failing["trace_ids"]))
    lines.append(f"Monitor {payload['monitor_id']}, incident {payload['incident_id']}.")
    return "\n".join(lines)


_FREE_TEXT = ("experiment_name", "title", "text")  # the rest: ids, numbers, the rule's own words


def redact(payload: dict[str, Any], masker: Masker | None) -> dict[str, Any]:
    """``payload`` with the personal data of the monitor's policy masked in its free text (the
    experiment's name, which the title and text repeat). Without a masker (the policy cannot
    be applied in this process), the experiment's name is left out whole."""
    out = dict(payload)
    if masker is None:
        name = out["experiment_name"]
        for key in _FREE_TEXT:
            out[key] = out[key].replace(name, "[REDACTED]") if name else out[key]
        return out
    for key in _FREE_TEXT:
        if isinstance(out.get(key), str):
            out[key] = masker.mask_text(out[key])[0]
    return out


def to_slack(payload: dict[str, Any]) -> dict[str, Any]:
    """A Slack-compatible body: ``text`` (notifications, other receivers) and ``blocks``."""
    title, _, details = payload["text"].partition("\n")
    return {
        "text": payload["text"],
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": details or " "}},
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"rule `{payload['rule_text']}` · incident "
                        f"`{payload['incident_id']}` · event `{payload['event_id']}`",
                    }
                ],
            },
        ],
    }
