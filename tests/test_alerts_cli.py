"""Alert rules through the CLI: ``--alert`` and the YAML form on create and update, shown by
``get``; bad rules are usage errors (exit 2) naming what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlflow_monitor_plugin.cli import monitor

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def invoke(*args):
    return CliRunner().invoke(monitor, list(args), catch_exceptions=False)


def test_alert_flags_on_create_and_update(sqlite_experiment_id):
    x = sqlite_experiment_id
    out = invoke("create", "-x", x, "--judge", "safety", "--judge", "groundedness",
                 "--alert", "safety.pass_rate<0.95 over 1h to slack:SLACK_URL",
                 "--alert", "lag_seconds>600", "--output", "json")  # fmt: skip
    assert out.exit_code == 0, out.output
    rules = json.loads(out.output)["alerts"]
    assert [r["name"] for r in rules] == ["safety-pass_rate", "lag_seconds"]
    assert rules[0]["targets"] == [{"url_env": "SLACK_URL", "format": "slack"}]
    shown = invoke("get", "-x", x).output
    assert "alerts:" in shown and "safety-pass_rate: safety.pass_rate<0.95 over 1h" in shown

    kept = invoke("update", "-x", x, "--judge", "safety", "--output", "json")
    assert len(json.loads(kept.output)["alerts"]) == 2  # no --alert: the rules stay
    replaced = invoke("update", "-x", x, "--judge", "safety", "--alert",
                      "drop=safety.pass_rate<0.9", "--output", "json")  # fmt: skip
    assert [r["name"] for r in json.loads(replaced.output)["alerts"]] == ["drop"]
    dropped = invoke("update", "-x", x, "--judge", "groundedness")  # drop=safety needs safety
    assert dropped.exit_code == 2 and "AlertRule('drop').judge" in dropped.output


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("relevance.pass_rate<0.9", "expected a judge of this monitor: ['safety']"),
        ("safety.latency<0.9", "expected one of ['pass_rate'"),
        ("safety.pass_rate<1.5", "expected a rate between 0.0 and 1.0"),
        ("safety.pass_rate<0.9 over soon", "expected a duration such as '90s'"),
        ("safety.pass_rate>0.9", "pass_rate alerts below a threshold"),
        ("safety.pass_rate<0.9 to https://hooks.slack.com/x", "NAME of an environment variable"),
    ],
)
def test_bad_alert_is_a_usage_error(sqlite_experiment_id, spec, message):
    result = invoke("create", "-x", sqlite_experiment_id, "--judge", "safety", "--alert", spec)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "has no monitor" in invoke("get", "-x", sqlite_experiment_id).output


def test_alerts_in_the_yaml_file(sqlite_experiment_id):
    out = invoke("create", "-x", sqlite_experiment_id, "-f", str(EXAMPLES / "monitor.yaml"),
                 "--output", "json")  # fmt: skip
    assert out.exit_code == 0, out.output
    rules = json.loads(out.output)["alerts"]
    slack = [{"url_env": "SLACK_WEBHOOK_URL", "format": "slack"}]
    assert rules[0] == {"name": "safety-drop", "judge": "safety", "metric": "pass_rate",
                        "below": 0.95, "window": "1h", "min_verdicts": 30, "confidence": 0.95,
                        "targets": slack}  # fmt: skip
    assert rules[1]["metric"] == "lag_seconds"
    listed = invoke("alerts", "-x", sqlite_experiment_id)
    assert listed.exit_code == 0 and "state:    ok" in listed.output
    assert "not evaluated yet" in listed.output
    missing = invoke("alerts", "test", "-x", sqlite_experiment_id, "--rule", "nope")
    assert (
        missing.exit_code == 2
        and "expected one of ['lag_seconds', 'safety-drop']" in missing.output
    )
