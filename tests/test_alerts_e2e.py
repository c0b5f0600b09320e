"""Alerts end to end on a real store: the daemon's passes score traces, judge the rules, and a
real receiver on loopback records what arrives. Time is driven through ``run_pass(now_ms)`` and
traces are logged at chosen request times, so windows open and close without waiting."""

from __future__ import annotations

import json
import logging
import time

import mlflow
import pytest
from click.testing import CliRunner

from mlflow_monitor_plugin import AlertRule, WebhookTarget, create_external_monitor
from mlflow_monitor_plugin.alerts import source
from mlflow_monitor_plugin.alerts.notify import DeliverySettings
from mlflow_monitor_plugin.alerts.runner import AlertRunner, AlertSettings
from mlflow_monitor_plugin.alerts.stats import window_start_ms
from mlflow_monitor_plugin.cli.main import monitor as monitor_cli
from mlflow_monitor_plugin.config.tags import MonitorTags
from mlflow_monitor_plugin.engine.daemon import Daemon
from mlflow_monitor_plugin.engine.pipeline import EngineSettings
from mlflow_monitor_plugin.scoring import feedback
from tests.alert_receiver import AlertReceiver

MIN = 60_000
HOUR = 60 * MIN
FAST = DeliverySettings(timeout_s=0.5, attempts=2, backoff_s=0.01, budget_s=1.0, max_backoff_s=20)


@pytest.fixture
def receiver():
    with AlertReceiver() as r:
        yield r


def log_at(ts_ms: int, count: int, answer: str) -> None:
    """``count`` finished traces starting at ``ts_ms`` (one per second), answering ``answer``."""
    for i in range(count):
        start = (ts_ms + i * 1000) * 1_000_000
        span = mlflow.start_span_no_context(
            "app", inputs={"question": f"q{i}"}, start_time_ns=start
        )
        span.end(outputs=f"{answer} {i}", end_time_ns=start + 5_000_000)


def daemon_for(experiment_id: str, delivery: DeliverySettings = FAST) -> Daemon:
    alerts = AlertRunner.create(AlertSettings(delivery=delivery, save_last_every_s=0))
    return Daemon([experiment_id], 1, EngineSettings(export=False), alerts=alerts)


def events(receiver: AlertReceiver) -> list[str]:
    return [body["event"] for body in receiver.delivered()]


def test_metadata_keys_match_what_feedback_writes():
    assert source.MONITOR_KEY == feedback.MONITOR_KEY


def test_safety_drop_fires_once_and_recovery_resolves_once(
    sqlite_experiment_id, fake_judge, receiver, monkeypatch
):
    monkeypatch.setenv("ALERT_HOOK_URL", receiver.url)
    rule = AlertRule("safety-drop", "safety", below=0.8, min_verdicts=10,
                     targets=[WebhookTarget("ALERT_HOOK_URL")])  # fmt: skip
    create_external_monitor(catalog_name="c", schema_name="s", alerts=[rule],
                            assessments_config={"assessments": [{"name": "safety"}]})  # fmt: skip
    daemon = daemon_for(sqlite_experiment_id)
    a = window_start_ms(int(time.time() * 1000), HOUR) - 3 * HOUR  # three windows back
    b = a + HOUR

    log_at(a + MIN, 12, "Answer")  # 100% safe
    daemon.run_pass(a + 20 * MIN)
    assert receiver.received == []
    log_at(a + 30 * MIN, 12, "UNSAFE answer")  # now 50%
    daemon.run_pass(a + 40 * MIN)
    assert events(receiver) == ["firing"]
    for minute in range(41, 45):  # still firing: nothing more
        daemon.run_pass(a + minute * MIN)
    assert events(receiver) == ["firing"]

    log_at(b + 5 * MIN, 20, "Answer")  # recovered
    daemon.run_pass(b + 10 * MIN)  # 20/20 while the window fills: not yet sure
    daemon.run_pass(b + HOUR + MIN)  # the window complete: lower bound 0.839 >= 0.8
    daemon.run_pass(b + HOUR + 2 * MIN)
    assert events(receiver) == ["firing", "resolved"]

    fired, resolved = receiver.delivered()
    assert (
        fired["incident_id"] == resolved["incident_id"] == f"{fired['monitor_id']}/safety-drop/{a}"
    )
    assert fired["event_id"] != resolved["event_id"]
    assert fired["observed"]["value"] == 0.5 and fired["observed"]["verdicts"] == 24
    assert fired["observed"]["high"] < 0.8 and fired["failing_traces"]["count"] == 12
    assert len(fired["failing_traces"]["trace_ids"]) == 5
    assert "FIRING safety-drop" in fired["text"] and "below 80.0%" in fired["text"]
    assert resolved["observed"]["low"] >= 0.8 and "RESOLVED" in resolved["text"]

    cli = CliRunner()
    shown = cli.invoke(monitor_cli, ["alerts", "-x", sqlite_experiment_id])
    assert shown.exit_code == 0, shown.output
    assert "state:    resolved" in shown.output and "firing" in shown.output
    assert "sent" in shown.output and "1.000 [0.839" in shown.output
    as_json = json.loads(cli.invoke(monitor_cli, ["alerts", "-x", sqlite_experiment_id,
                                                  "--output", "json"]).output)  # fmt: skip
    assert as_json[0]["state"]["state"] == "resolved" and as_json[0]["state"]["outbox"] == []
    got = cli.invoke(monitor_cli, ["get", "-x", sqlite_experiment_id, "--output", "json"])
    assert json.loads(got.output)["alerts"][0]["name"] == "safety-drop"

    test = cli.invoke(monitor_cli, ["alerts", "test", "-x", sqlite_experiment_id,
                                    "--rule", "safety-drop"])  # fmt: skip
    assert test.exit_code == 0, test.output
    marked = receiver.delivered()[-1]
    assert marked["test"] is True and marked["text"].startswith("[TEST]")
    assert events(receiver).count("firing") == 1  # the test message is no incident


def test_receiver_down_delays_then_delivers_once(
    sqlite_experiment_id, receiver, monkeypatch, caplog
):
    secret_url = receiver.url + "/T0001/B0001/sEcReTpAtH"
    monkeypatch.setenv("ALERT_HOOK_URL", secret_url)
    monkeypatch.delenv("MISSING_HOOK_URL", raising=False)
    suite = {"assessments": [{"name": "regex_match", "args": {"pattern": "^Answer"}}]}
    rules = [
        AlertRule("regex-drop", "regex_match", below=0.9, min_verdicts=10,
                  targets=[WebhookTarget("ALERT_HOOK_URL", "slack")]),
        AlertRule("unset-target", "regex_match", below=0.9, min_verdicts=10,
                  targets=[WebhookTarget("MISSING_HOOK_URL")]),
    ]  # fmt: skip
    create_external_monitor(catalog_name="c", schema_name="s", assessments_config=suite,
                            alerts=rules)  # fmt: skip
    daemon = daemon_for(sqlite_experiment_id, FAST)
    a = window_start_ms(int(time.time() * 1000), HOUR) - 2 * HOUR
    log_at(a + MIN, 20, "UNSAFE")
    receiver.stop()  # down: connections refused
    caplog.set_level(logging.INFO, logger="mlflow_monitor_plugin")
    for step_s in range(0, 30, 3):  # 30 s of passes while the receiver is down
        daemon.run_pass(a + 30 * MIN + step_s * 1000)
    state = MonitorTags().read_json(sqlite_experiment_id, "alert.regex-drop")
    assert state["state"] == "firing" and state["outbox"][0]["attempts"] >= 3
    assert "ConnectionRefusedError" in state["outbox"][0]["error"]
    receiver.start()  # back, on the same port
    for step_s in range(30, 90, 3):
        daemon.run_pass(a + 30 * MIN + step_s * 1000)
    slack = receiver.delivered()
    assert [body["text"].split()[0] for body in slack] == ["FIRING"]
    assert slack[0]["blocks"]  # the Slack form
    state = MonitorTags().read_json(sqlite_experiment_id, "alert.regex-drop")
    assert state["outbox"] == [] and state["history"][-1]["event"] == "sent"
    # the rule whose variable is unset: said once, its message kept for a daemon that has it
    unset = [r for r in caplog.records if "MISSING_HOOK_URL is not set" in r.getMessage()]
    assert len(unset) == 1
    kept = MonitorTags().read_json(sqlite_experiment_id, "alert.unset-target")
    assert kept["state"] == "firing" and kept["outbox"][0]["targets"] == ["webhook:0"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "sEcReTpAtH" not in logged and receiver.url not in logged
