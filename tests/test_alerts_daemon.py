"""Alerts across daemon processes: two daemons at once on one experiment, and SIGKILL of the one
working it between a firing saved and its delivery: the receiver gets the message once."""

from __future__ import annotations

import time

import mlflow
import pytest

from mlflow_monitor_plugin import AlertRule, WebhookTarget, create_external_monitor
from mlflow_monitor_plugin.config.tags import MonitorTags
from tests.alert_receiver import AlertReceiver
from tests.survival import daemon_env, start_daemon, wait_until
from tests.test_alerts_e2e import log_at

ARGS = ("--interval", "1", "--no-export", "--alert-timeout", "0.5", "--alert-max-backoff", "1")


@pytest.fixture
def receiver():
    with AlertReceiver() as r:
        yield r


def test_two_daemons_and_sigkill_before_delivery_deliver_once(sqlite_uri, tmp_path, receiver):
    mlflow.set_experiment("alerts-kill")
    suite = {"assessments": [{"name": "regex_match", "args": {"pattern": "^Answer"}}]}
    rule = AlertRule("regex-drop", "regex_match", below=0.9, min_verdicts=10,
                     targets=[WebhookTarget("ALERT_HOOK_URL")])  # fmt: skip
    monitor = create_external_monitor(catalog_name="c", schema_name="s",
                                      assessments_config=suite, alerts=[rule])  # fmt: skip
    exp = monitor.experiment_id
    log_at(int(time.time() * 1000) - 30_000, 20, "UNSAFE")
    tags = MonitorTags()

    def state():
        return tags.read_json(exp, "alert.regex-drop") or {}

    receiver.default = 503  # the receiver is down
    env = daemon_env(ALERT_HOOK_URL=receiver.url)
    daemons = {}
    for i in (1, 2):  # two daemons at once on the same experiment
        daemon = start_daemon(tmp_path / f"d{i}.log", "-x", exp, *ARGS, env=env)
        daemons[daemon.process.pid] = daemon
    try:
        saved = wait_until(lambda: state().get("outbox") and len(receiver.received) >= 1, 90)
        assert saved, "\n".join(d.log()[-2000:] for d in daemons.values())
        holder = int(tags.read_json(exp, "lease")["owner"].split(":")[1])
        daemons.pop(holder).kill()  # SIGKILL: the firing is saved, not delivered
        assert state()["state"] == "firing" and receiver.delivered() == []
        receiver.default = 200  # back up: the other daemon takes over and delivers
        survivor = next(iter(daemons.values()))
        assert wait_until(lambda: receiver.delivered(), 90), survivor.log()[-3000:]
        time.sleep(3)  # more passes: nothing more may arrive
    finally:
        for daemon in daemons.values():
            daemon.terminate()
    assert [body["event"] for body in receiver.delivered()] == ["firing"]
    ids = {r["body"]["event_id"] for r in receiver.received}
    assert len(ids) == 1  # every attempt carried the same id, for receivers that deduplicate
    final = state()
    assert final["outbox"] == [] and [h["event"] for h in final["history"]] == ["firing", "sent"]
