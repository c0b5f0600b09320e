"""Evaluate a monitor's alert rules after a pass, persist incidents, deliver their messages.

One ``after_pass`` per monitor and pass, from the daemon, by the daemon that holds the monitor's
lease. Per rule: count its windows (``source``), judge them (``evaluate``), advance the incident
(``incidents.step``), save the rule's state tag if that made a message, then send what is due
and save again. A failure here is logged and never fails the pass.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from mlflow_monitor_plugin.alerts import message as msg
from mlflow_monitor_plugin.alerts.evaluate import Evaluation, evaluate
from mlflow_monitor_plugin.alerts.incidents import RuleState, fit, retry_delay_s, step
from mlflow_monitor_plugin.alerts.notify import DeliverySettings, Notifier, target_keys
from mlflow_monitor_plugin.alerts.stats import window_start_ms
from mlflow_monitor_plugin.config.alerts import AlertRule
from mlflow_monitor_plugin.config.model import ExternalMonitor
from mlflow_monitor_plugin.config.tags import (
    MAX_TAG_VALUE,
    NAMESPACE,
    MonitorTags,
    join_document,
    parse_monitor,
)
from mlflow_monitor_plugin.exceptions import MonitorConfigError
from mlflow_monitor_plugin.observe.spend import budget_factor
from mlflow_monitor_plugin.redaction import Masker, masker_for

_logger = logging.getLogger(__name__)

STATE_PREFIX = "alert."


def state_key(rule_name: str) -> str:
    """The rule's state tag, under the plugin's namespace (removed with the monitor)."""
    return STATE_PREFIX + rule_name


@dataclass(frozen=True)
class AlertSettings:
    delivery: DeliverySettings = DeliverySettings()
    save_last_every_s: float = 30.0  # the last value is saved this often when nothing changes
    source_cache_s: float = 60.0


class AlertRunner:
    """Alert rules of the monitors one daemon serves. ``create`` wires the real collaborators."""

    def __init__(
        self,
        tags: MonitorTags,
        source_factory: Callable[[str], Any],
        notifier: Notifier,
        settings: AlertSettings | None = None,
    ):
        self.tags = tags
        self.settings = settings or AlertSettings()
        self.notifier = notifier
        self._source_factory = source_factory
        self._sources: dict[str, Any] = {}
        self._warned: set[tuple[str, str, str]] = set()
        self._saved_ms: dict[tuple[str, str], int] = {}

    @classmethod
    def create(cls, settings: AlertSettings | None = None) -> AlertRunner:
        from mlflow_monitor_plugin.alerts.source import StoreWindows

        settings = settings or AlertSettings()
        tags = MonitorTags()
        return cls(
            tags,
            lambda exp: StoreWindows(exp, tags.client, settings.source_cache_s),
            Notifier(settings.delivery),
            settings,
        )

    def source(self, experiment_id: str) -> Any:
        """The window counter of one experiment (kept, for its cache of complete windows)."""
        if experiment_id not in self._sources:
            self._sources[experiment_id] = self._source_factory(experiment_id)
        return self._sources[experiment_id]

    def after_pass(self, experiment_id: str, now_ms: int | None = None) -> None:
        """Evaluate and deliver; never raises."""
        try:
            self.run(experiment_id, int(time.time() * 1000) if now_ms is None else now_ms)
        except Exception:
            _logger.exception("Alerts of experiment %s could not be evaluated", experiment_id)

    def run(self, experiment_id: str, now_ms: int) -> None:
        experiment = self.tags.client.get_experiment(experiment_id)
        tags = dict(experiment.tags)
        document = join_document(tags, experiment_id)
        if document is None:
            return
        monitor = parse_monitor(document, experiment_id)
        if not monitor.alerts:
            return
        source = self.source(experiment_id)
        for rule in monitor.alerts:
            for key, env in self.notifier.unset_targets(rule):
                self._warn_unset(experiment_id, rule, key, f"${env} is not set")
            raw = tags.get(NAMESPACE + state_key(rule.name))
            state = RuleState.from_dict(_loads(raw), monitor.monitor_id, rule.name)
            evaluation = self.evaluate(source, monitor, rule, tags, now_ms)
            self._advance(monitor, experiment.name, rule, state, evaluation, now_ms)

    def evaluate(
        self,
        source: Any,
        monitor: ExternalMonitor,
        rule: AlertRule,
        tags: dict[str, str],
        now_ms: int,
    ) -> Evaluation:
        if rule.metric == "lag_seconds":
            return evaluate(rule, None, None, source.lag_seconds(monitor, tags))
        if rule.metric == "budget_factor":
            return evaluate(rule, None, None, budget_factor=budget_factor(monitor, tags, now_ms))
        width = rule.window_s * 1000
        start = window_start_ms(now_ms, width)
        current = source.window(monitor, rule.judge, start, width, now_ms)
        previous = source.window(monitor, rule.judge, start - width, width, now_ms)
        return evaluate(rule, current, previous, not_before_ms=monitor.created_at_ms)

    def _advance(
        self,
        monitor: ExternalMonitor,
        experiment_name: str,
        rule: AlertRule,
        state: RuleState,
        evaluation: Evaluation,
        now_ms: int,
    ) -> None:
        def compose(event: str, incident: str, event_id: str) -> dict[str, Any]:
            payload = msg.build(
                event=event, rule=rule, evaluation=evaluation, monitor_id=monitor.monitor_id,
                experiment_id=monitor.experiment_id, experiment_name=experiment_name,
                incident_id=incident, event_id=event_id, now_ms=now_ms,
            )  # fmt: skip
            if not monitor.pii.covers("alerts"):
                return payload
            return msg.redact(payload, self._masker(monitor))

        state.last = evaluation.to_dict() | {"at_ms": now_ms}
        targets = target_keys(rule, self.notifier.settings)
        changed = step(state, rule, evaluation, now_ms, compose, targets)
        key = (monitor.experiment_id, rule.name)
        if changed:
            _logger.warning("Alert %s: %s", rule.name, state.outbox[-1]["message"]["text"])
            self._save(monitor.experiment_id, state, now_ms)  # before anything is sent
        elif now_ms - self._saved_ms.get(key, 0) >= self.settings.save_last_every_s * 1000:
            self._save(monitor.experiment_id, state, now_ms)
        if self._deliver(monitor.experiment_id, rule, state, now_ms):
            self._save(monitor.experiment_id, state, now_ms)

    def _masker(self, monitor: ExternalMonitor) -> Masker | None:
        """The monitor's masker; when the daemon cannot apply the policy as written (no hash
        key), placeholders; when not at all (no ``pii`` extra), None: see ``msg.redact``."""
        try:
            return masker_for(monitor.pii)
        except MonitorConfigError as first:
            try:
                return masker_for(replace(monitor.pii, mode="placeholder"))
            except MonitorConfigError:
                _logger.warning("Alert messages of experiment %s: %s", monitor.experiment_id, first)
                return None

    def _deliver(self, experiment_id: str, rule: AlertRule, state: RuleState, now_ms: int) -> bool:
        """Send the due messages, in order per target; True when the outbox changed."""
        changed = False
        blocked: set[str] = set()  # a target that refused one message gets no later one now
        for entry in list(state.outbox):
            if entry["next_ms"] > now_ms:
                blocked.update(entry["targets"])
                continue
            failed: list[tuple[str, Any]] = []
            for key in list(entry["targets"]):
                if key in blocked:
                    continue
                result = self.notifier.send(rule, key, entry["message"])
                if result.ok:
                    entry["targets"].remove(key)
                    changed = True
                    if result.error:
                        _logger.info("Alert %s: %s", rule.name, result.error)
                    continue
                blocked.add(key)
                if result.unset:
                    self._warn_unset(experiment_id, rule, key, result.error or "")
                else:
                    failed.append((key, result))
            if not entry["targets"]:
                state.outbox.remove(entry)
                state.record("sent", now_ms, event_id=entry["event_id"])
                _logger.info("Alert %s: delivered %s", rule.name, entry["event_id"])
            elif failed:
                entry["attempts"] += 1
                retry_after = max((r.retry_after_s or 0.0) for _, r in failed) or None
                s = self.notifier.settings
                delay = retry_delay_s(entry["attempts"], s.backoff_s, s.max_backoff_s, retry_after)
                entry["next_ms"] = now_ms + int(delay * 1000)
                entry["error"] = "; ".join(
                    f"{self.notifier.describe(rule, k)}: {r.error}" for k, r in failed
                )
                _logger.warning(
                    "Alert %s: %s not delivered (%s); retry in %.0fs",
                    rule.name, entry["event_id"], entry["error"], delay,
                )  # fmt: skip
                changed = True
        return changed

    def _warn_unset(self, experiment_id: str, rule: AlertRule, key: str, error: str) -> None:
        if (experiment_id, rule.name, key) in self._warned:
            return
        self._warned.add((experiment_id, rule.name, key))
        _logger.error(
            "Alert rule %s of experiment %s: %s; its messages wait until the daemon runs with it "
            "set. The rest of the monitor keeps working.",
            rule.name, experiment_id, error,
        )  # fmt: skip

    def _save(self, experiment_id: str, state: RuleState, now_ms: int) -> None:
        for event_id in fit(state, MAX_TAG_VALUE):
            _logger.error(
                "Alert %s of experiment %s: the state tag is full; dropped the undelivered "
                "message %s", state.rule, experiment_id, event_id,
            )  # fmt: skip
        self.tags.write_json(experiment_id, state_key(state.rule), state.to_dict())
        self._saved_ms[(experiment_id, state.rule)] = now_ms


def _loads(raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        _logger.warning("An alert state tag is not valid JSON; starting it over")
        return None


def send_test(
    experiment_id: str, rule_name: str, settings: AlertSettings | None = None
) -> list[tuple[str, Any]]:
    """Send a clearly marked test message for one rule to its targets (and the command, if
    ``settings`` name one); returns (target, ``Delivery``) pairs. Nothing is saved."""
    import uuid

    from mlflow_monitor_plugin.exceptions import MonitorNotFoundError

    runner = AlertRunner.create(settings)
    experiment = runner.tags.client.get_experiment(experiment_id)
    tags = dict(experiment.tags)
    document = join_document(tags, experiment_id)
    if document is None:
        raise MonitorNotFoundError(f"Experiment {experiment_id} has no monitor.")
    monitor = parse_monitor(document, experiment_id)
    rules = {r.name: r for r in monitor.alerts}
    if rule_name not in rules:
        raise MonitorConfigError("--rule", rule_name, f"expected one of {sorted(rules)}")
    rule = rules[rule_name]
    now_ms = int(time.time() * 1000)
    evaluation = runner.evaluate(runner.source(experiment_id), monitor, rule, tags, now_ms)
    test_id = f"test-{uuid.uuid4().hex[:12]}"
    payload = msg.build(
        event="test", rule=rule, evaluation=evaluation, monitor_id=monitor.monitor_id,
        experiment_id=experiment_id, experiment_name=experiment.name,
        incident_id=test_id, event_id=f"{test_id}#test", now_ms=now_ms,
    )  # fmt: skip
    if monitor.pii.covers("alerts"):
        payload = msg.redact(payload, runner._masker(monitor))
    keys = target_keys(rule, runner.notifier.settings)
    return [
        (runner.notifier.describe(rule, k), runner.notifier.send(rule, k, payload)) for k in keys
    ]
