"""Incidents of one rule: the state machine ``ok -> firing -> resolved`` and its outbox (pure).

An incident is (monitor, rule, first window that fired); its id says so and is the same
whichever daemon opens it. Each state change appends a message to the rule's outbox in the same
state document, which the runner persists *before* sending and updates after each target
answers: a crash in between re-sends a message at most once, and receivers can deduplicate on
its ``event_id``. Messages stay in the outbox until every target took them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlflow_monitor_plugin.alerts.evaluate import Evaluation
from mlflow_monitor_plugin.alerts.stats import window_start_ms
from mlflow_monitor_plugin.config.alerts import AlertRule

STATES = ("ok", "firing", "resolved")
MAX_HISTORY = 20
MAX_OUTBOX = 10

#: builds a message: (event, incident_id, event_id) -> payload
Compose = Callable[[str, str, str], dict[str, Any]]


@dataclass
class RuleState:
    """What a rule's tag holds: its state, open incident, last value, outbox and history."""

    monitor_id: str
    rule: str
    state: str = "ok"
    incident_id: str | None = None
    fired_ms: int | None = None
    notified_ms: int | None = None
    repeats: int = 0
    last: dict[str, Any] | None = None
    outbox: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, value: Any, monitor_id: str, rule: str) -> RuleState:
        """The stored state, or a fresh one when it belongs to another monitor or is unreadable."""
        if not isinstance(value, dict) or value.get("monitor_id") != monitor_id:
            return cls(monitor_id, rule)
        known = {k: value[k] for k in cls.__dataclass_fields__ if k in value}
        state = cls(**known)
        return state if state.state in STATES else cls(monitor_id, rule)

    def record(self, event: str, now_ms: int, **extra: Any) -> None:
        self.history.append({"at_ms": now_ms, "event": event, **extra})
        del self.history[:-MAX_HISTORY]


def fit(state: RuleState, limit: int) -> list[str]:
    """Shrink ``state`` until its JSON fits in ``limit`` characters: history first, then repeat
    messages, then the oldest messages. Returns the event ids of messages dropped."""
    dropped: list[str] = []
    while len(json.dumps(state.to_dict())) > limit:
        if len(state.history) > 1:
            del state.history[0]
            continue
        if not state.outbox:
            break
        repeats = [
            i
            for i, e in enumerate(state.outbox)
            if e["event_id"].rpartition("#")[2].startswith("firing.")
        ]
        dropped.append(state.outbox.pop(repeats[0] if repeats else 0)["event_id"])
    return dropped


def incident_id(monitor_id: str, rule: AlertRule, evaluation: Evaluation, now_ms: int) -> str:
    width_ms = rule.window_s * 1000
    start = evaluation.window.start_ms if evaluation.window else window_start_ms(now_ms, width_ms)
    return f"{monitor_id}/{rule.name}/{start}"


def _enqueue(
    state: RuleState, event: str, compose: Compose, targets: list[str], now_ms: int
) -> None:
    assert state.incident_id is not None
    suffix = f"{event}.{state.repeats}" if event == "firing" and state.repeats else event
    event_id = f"{state.incident_id}#{suffix}"
    state.outbox.append(
        {
            "event_id": event_id,
            "event": event,
            "created_ms": now_ms,
            "targets": list(targets),
            "attempts": 0,
            "next_ms": now_ms,
            "error": None,
            "message": compose(event, state.incident_id, event_id),
        }
    )
    while len(state.outbox) > MAX_OUTBOX:  # repeats go first; firing and resolved stay
        repeats = [
            i
            for i, e in enumerate(state.outbox)
            if e["event_id"].rpartition("#")[2].startswith("firing.")
        ]
        state.outbox.pop(repeats[0] if repeats else 0)
    state.notified_ms = now_ms


def step(
    state: RuleState,
    rule: AlertRule,
    evaluation: Evaluation,
    now_ms: int,
    compose: Compose,
    targets: list[str],
) -> bool:
    """Advance ``state`` on ``evaluation``; True when it changed in a way that must be saved
    before anything is sent (a new incident, a resolution or a repeat)."""
    previous_id = state.incident_id
    if state.state != "firing":
        if not (evaluation.judged and evaluation.breach):
            return False
        new_id = incident_id(state.monitor_id, rule, evaluation, now_ms)
        if new_id == previous_id or any(h.get("incident") == new_id for h in state.history):
            new_id += f".{now_ms}"  # a second incident opened in the same window
        state.state, state.incident_id, state.fired_ms, state.repeats = "firing", new_id, now_ms, 0
        _enqueue(state, "firing", compose, targets, now_ms)
        state.record("firing", now_ms, incident=new_id, value=evaluation.value)
        return True
    if evaluation.judged and evaluation.clear:
        state.state = "resolved"
        _enqueue(state, "resolved", compose, targets, now_ms)
        state.record("resolved", now_ms, incident=state.incident_id, value=evaluation.value)
        return True
    every = rule.repeat_every_s
    if every and state.notified_ms is not None and now_ms - state.notified_ms >= every * 1000:
        state.repeats += 1
        _enqueue(state, "firing", compose, targets, now_ms)
        state.record("repeat", now_ms, incident=state.incident_id, value=evaluation.value)
        return True
    return False


def retry_delay_s(attempts: int, base_s: float, max_s: float, retry_after_s: float | None) -> float:
    """When a message a target refused is tried again: exponential, at least Retry-After."""
    delay = min(max_s, base_s * 2 ** max(0, attempts - 1))
    return max(delay, min(retry_after_s or 0.0, max(max_s, 3600.0)))
