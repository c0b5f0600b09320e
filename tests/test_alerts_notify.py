"""Alert delivery against a real receiver on loopback: retries, Retry-After, garbage and hanging
receivers, the Slack form, the command target, and URLs that never reach a log."""

from __future__ import annotations

import json
import sys
import time

import pytest

from mlflow_monitor_plugin import AlertRule, WebhookTarget
from mlflow_monitor_plugin.alerts.notify import COMMAND, DeliverySettings, Notifier
from tests.alert_receiver import AlertReceiver

PAYLOAD = {"event": "firing", "event_id": "m/r/1#firing", "incident_id": "m/r/1",
           "text": "FIRING r", "rule_text": "safety.pass_rate<0.95"}  # fmt: skip
FAST = DeliverySettings(timeout_s=0.5, attempts=3, backoff_s=0.01, budget_s=3.0)


@pytest.fixture
def receiver():
    with AlertReceiver() as r:
        yield r


def make(receiver, fmt="json", settings=FAST, sleeps=None):
    rule = AlertRule("r", "safety", below=0.95, targets=(WebhookTarget("HOOK_URL", fmt),))
    sleep = sleeps.append if sleeps is not None else time.sleep
    return rule, Notifier(settings, environ={"HOOK_URL": receiver.url}, sleep=sleep)


def test_5xx_is_retried_until_delivered_once(receiver):
    receiver.statuses = [500, 502]
    rule, notifier = make(receiver)
    assert notifier.send(rule, "webhook:0", PAYLOAD).ok
    assert [r["status"] for r in receiver.received] == [500, 502, 200]
    assert receiver.delivered() == [PAYLOAD]


def test_retry_after_is_honoured(receiver):
    receiver.statuses, receiver.retry_after = [503], "2"
    sleeps: list[float] = []
    rule, notifier = make(receiver, sleeps=sleeps)
    assert notifier.send(rule, "webhook:0", PAYLOAD).ok
    assert sleeps == [2.0]
    # a Retry-After beyond this pass's budget is left for a later pass, with the wait asked
    receiver.statuses, receiver.retry_after = [429], "120"
    result = notifier.send(rule, "webhook:0", PAYLOAD)
    assert not result.ok and result.retry_after_s == 120.0 and "429" in result.error


def test_garbage_200_is_a_delivery_and_a_hanging_receiver_is_bounded(receiver):
    receiver.statuses = ["garbage"]
    rule, notifier = make(receiver)
    assert notifier.send(rule, "webhook:0", PAYLOAD).ok
    receiver.default, receiver.hang_s = "hang", 10
    started = time.monotonic()
    result = notifier.send(rule, "webhook:0", PAYLOAD)
    assert not result.ok and "Timeout" in result.error
    assert time.monotonic() - started < FAST.budget_s + 2  # bounded by the budget, not the hang


def test_4xx_is_not_retried_within_the_pass(receiver):
    receiver.statuses = [404]
    rule, notifier = make(receiver)
    result = notifier.send(rule, "webhook:0", PAYLOAD)
    assert not result.ok and "HTTP 404" in result.error and len(receiver.received) == 1


def test_slack_form(receiver):
    rule, notifier = make(receiver, "slack")
    payload = {**PAYLOAD, "text": "FIRING r on experiment 'e' (1): x\nmore"}
    assert notifier.send(rule, "webhook:0", payload).ok
    body = receiver.delivered()[0]
    assert body["text"] == payload["text"] and [b["type"] for b in body["blocks"]] == [
        "section", "section", "context"]  # fmt: skip
    assert "m/r/1" in json.dumps(body["blocks"])


def test_unset_variable_and_refused_connection_never_show_the_url(receiver, caplog):
    rule = AlertRule("r", "safety", below=0.95, targets=(WebhookTarget("HOOK_URL"),))
    unset = Notifier(FAST, environ={}).send(rule, "webhook:0", PAYLOAD)
    assert unset.unset and "$HOOK_URL is not set" in unset.error
    secret = receiver.url + "/T000/B000/sEcReTpAtH"
    receiver.stop()
    refused = Notifier(FAST, environ={"HOOK_URL": secret}, sleep=lambda s: None)
    result = refused.send(rule, "webhook:0", PAYLOAD)
    assert not result.ok and "sEcReTpAtH" not in result.error and "127.0.0.1" not in result.error
    assert refused.describe(rule, "webhook:0") == "json webhook $HOOK_URL"


def test_command_target_gets_the_message_on_stdin(tmp_path):
    out = tmp_path / "got.json"
    script = tmp_path / "hook.py"
    script.write_text(
        "import os, sys, pathlib\n"
        f"pathlib.Path({str(out)!r}).write_text(sys.stdin.read())\n"
        "sys.exit(0 if os.environ['MLFLOW_MONITOR_ALERT_EVENT'] == 'firing' else 3)\n"
    )
    rule = AlertRule("r", "safety", below=0.95)
    notifier = Notifier(DeliverySettings(command=f"{sys.executable} {script}"))
    assert notifier.send(rule, COMMAND, PAYLOAD).ok
    assert json.loads(out.read_text())["event_id"] == PAYLOAD["event_id"]
    failed = notifier.send(rule, COMMAND, {**PAYLOAD, "event": "resolved"})
    assert not failed.ok and "exited 3" in failed.error
