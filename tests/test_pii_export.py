"""Personal data stays out of the export and the alert messages, by the monitor's policy.

Traces made with MLflow's tracing carry known personal data in their requests, responses, span
attributes and events; the fake judge echoes an e-mail address into its rationale; the
experiment is named as Databricks names a user's experiments (with the user's e-mail). After a
daemon pass (``mlflow monitor run --once``, a real process), DuckDB over the whole export finds
none of the raw values and finds each token where expected, the daemon's log and the alert that
fired hold none of them, and the MLflow store still holds them all.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import duckdb
import mlflow
import pytest
from click.testing import CliRunner
from mlflow.entities import SpanEvent

from mlflow_monitor_plugin import AlertRule, WebhookTarget, create_external_monitor
from mlflow_monitor_plugin.cli.main import monitor as monitor_cli
from mlflow_monitor_plugin.redaction import SECRET_ENV
from tests.alert_receiver import AlertReceiver
from tests.fake_judge import FakeJudge, JudgeBehaviour
from tests.survival import daemon_env, run_cli

KEY = "pii-test-key-" + "x" * 20
ALICE, BOB = "alice.smith@example.com", "bob.jones@example.org"
PHONE, CARD, IBAN = "+1 415-555-2671", "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00"
IP, TICKET = "203.0.113.42", "TCK-123456"
RAW = [ALICE, BOB, PHONE, CARD, IBAN, IP, TICKET, "4111111111111111"]
HASHED = re.compile(r"\[(EMAIL|PHONE|CREDIT_CARD|IBAN|IP_ADDRESS|TICKET):[0-9a-f]{16}\]")


@mlflow.trace(name="lookup")
def _lookup(customer: str) -> dict:
    span = mlflow.get_current_active_span()
    span.set_attribute("client_ip", IP)
    span.add_event(SpanEvent("audit", attributes={"note": f"looked up {customer}"}))
    return {"iban": IBAN, "card": 4111111111111111}


@mlflow.trace(name="support_bot")
def _support_bot(question: str, email: str) -> str:
    _lookup(email)
    return f"UNSAFE answer for {email}: card {CARD} on file, call {PHONE} about {TICKET}"


def log_personal_traces() -> list[str]:
    ids = []
    for i, email in enumerate([ALICE, BOB, ALICE]):  # Alice twice: her hash must repeat
        _support_bot(f"question {i}: I am {email}, my phone is {PHONE}", email)
        ids.append(mlflow.get_last_active_trace_id())
    return ids


def echo_email(prompt: str, verdict: str) -> str:
    """The rationale names the user, as a real judge quoting the request would."""
    found = re.search(r"[\w.]+@example\.(?:com|org)", prompt)
    return f"The reply exposes {found.group() if found else 'nobody'}; verdict {verdict}."


@pytest.fixture
def setup(sqlite_uri, monkeypatch):
    with FakeJudge(JudgeBehaviour(rationale=echo_email)) as judge, AlertReceiver() as receiver:
        env = {
            "OPENAI_API_BASE": judge.url, "OPENAI_BASE_URL": judge.url,
            "OPENAI_API_KEY": "sk-test-unused-key", SECRET_ENV: KEY,
            "ALERT_HOOK_URL": receiver.url,
        }  # fmt: skip
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        mlflow.set_experiment(f"/Users/{ALICE}/support-bot")
        yield judge, receiver


def export_text(export_uri: str) -> list[tuple]:
    return duckdb.sql(
        f"select trace_id, request, response, request_preview, response_preview, spans, "
        f"to_json(assessments)::varchar, to_json(trace_metadata)::varchar "
        f"from read_parquet('{export_uri}/**/*.parquet', hive_partitioning=true) "
        "order by request_time"
    ).fetchall()


def test_a_pass_exports_and_alerts_with_personal_data_masked(setup):
    judge, receiver = setup
    rule = AlertRule("safety-drop", "safety", below=0.9, min_verdicts=1,
                     targets=[WebhookTarget("ALERT_HOOK_URL")])  # fmt: skip
    m = create_external_monitor(
        catalog_name="w", schema_name="d", alerts=[rule],
        assessments_config={"assessments": [{"name": "safety"}]},
        pii={"kinds": "standard", "mode": "hash", "patterns": {"ticket": r"TCK-\d{6}"}},
    )  # fmt: skip
    ids = log_personal_traces()
    result = run_cli("run", "-x", m.experiment_id, "--once", "--log-level", "DEBUG",
                     env=daemon_env())  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr

    rows = export_text(m.export_uri)
    assert [r[0] for r in rows] == ids
    whole = json.dumps(rows, ensure_ascii=False)
    assert [raw for raw in RAW if raw in whole] == []
    assert [raw for raw in RAW if raw in log] == [] and "Exported batch" in log
    for trace_id, request, response, _, _, spans, assessments, _ in rows:
        assert re.search(r"I am \[EMAIL:\w+\], my phone is \[PHONE:\w+\]", request)
        assert {"CREDIT_CARD", "PHONE", "TICKET", "EMAIL"} <= set(HASHED.findall(response))
        span_tokens = set(HASHED.findall(spans))
        assert {"IP_ADDRESS", "IBAN", "CREDIT_CARD", "EMAIL"} <= span_tokens, trace_id
        assert "support_bot" in spans and trace_id in spans  # names and ids stay
        assert re.search(r"The reply exposes \[EMAIL:\w+\]", assessments), assessments
    emails = [HASHED.search(r[1]).group() for r in rows]
    assert emails[0] == emails[2] != emails[1]  # equal values, equal hashes

    # The alert fired, named the experiment without the user's e-mail.
    (alert,) = receiver.delivered()
    assert alert["event"] == "firing" and "/Users/[EMAIL:" in alert["title"]
    assert [raw for raw in RAW if raw in json.dumps(alert)] == []

    # The policy governs copies: the store keeps what was logged.
    traces = mlflow.search_traces(locations=[m.experiment_id], return_type="list")
    stored = json.dumps([t.to_dict() for t in traces], default=str, ensure_ascii=False)
    assert [raw for raw in RAW[:-1] if raw not in stored] == []
    assert any(ALICE in (a.rationale or "") for t in traces for a in t.info.assessments)

    # Re-export applies the current policy; compact keeps the masking.
    cli = CliRunner()
    updated = cli.invoke(monitor_cli, ["update", "-x", m.experiment_id, "--judge", "safety",
                                       "--pii-mode", "placeholder"])  # fmt: skip
    assert updated.exit_code == 0, updated.output
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    again = cli.invoke(monitor_cli, ["export", "-x", m.experiment_id, "--since", today])
    assert again.exit_code == 0, again.output
    rows = export_text(m.export_uri)
    assert "[EMAIL]" in rows[0][1] and not HASHED.search(json.dumps(rows))
    assert cli.invoke(monitor_cli, ["compact", "-x", m.experiment_id]).exit_code == 0
    whole = json.dumps(export_text(m.export_uri), ensure_ascii=False)
    assert [raw for raw in RAW if raw in whole] == [] and "[TICKET]" in whole


def test_a_judges_error_quoting_personal_data_is_logged_masked(setup):
    """MLflow's parse error quotes the model's reply, which may quote the trace: the daemon's
    warning is a copy out of MLflow, so the policy applies to it."""
    judge, _ = setup
    judge.behaviour.malformed_text = f"cannot decide, {ALICE} is not in the answer"
    judge.behaviour.scripted = ["malformed"] * 50
    m = create_external_monitor(
        catalog_name="w", schema_name="d", pii={"kinds": "standard"},
        assessments_config={"assessments": [{"name": "safety"}]},
    )  # fmt: skip
    _support_bot("question: where is my order?", "nobody")
    result = run_cli("run", "-x", m.experiment_id, "--once", "--no-export", env=daemon_env())
    log = result.stdout + result.stderr
    assert judge.count("malformed") >= 1
    assert "Judge safety failed on trace" in log and "cannot decide, [EMAIL]" in log, log[-3000:]
    assert ALICE not in log


def test_status_and_get_show_the_policy(sqlite_experiment_id):
    suite = {"assessments": [{"name": "pii_detection"}]}
    create_external_monitor(
        catalog_name="w", schema_name="d", pii="standard", assessments_config=suite
    )
    got = CliRunner().invoke(monitor_cli, ["get", "-x", sqlite_experiment_id])
    assert "pii:          standard; placeholder; everywhere" in got.output
    status = CliRunner().invoke(monitor_cli, ["status", "-x", sqlite_experiment_id])
    assert status.exit_code == 0, status.output
    assert re.search(r"pii:\s+standard; placeholder; everywhere", status.output)


@pytest.mark.parametrize(
    ("flags", "env", "named"),
    [
        (["--pii", "standard,passport_photo"], {}, "passport_photo"),
        (["--pii", "standard", "--pii-mode", "hash"], {}, SECRET_ENV),
        (["--pii-pattern", "ticket=TCK-(\\d"], {}, "re says"),
        (["--pii", "email", "--pii-where", "request,logs"], {}, "logs"),
    ],
)
def test_bad_policy_on_the_command_line_exits_2_and_stores_nothing(
    sqlite_experiment_id, monkeypatch, flags, env, named
):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    result = CliRunner().invoke(
        monitor_cli, ["create", "-x", sqlite_experiment_id, "--judge", "safety", *flags]
    )
    assert result.exit_code == 2, result.output
    assert named in result.output
    assert "mlflow_monitor.config" not in mlflow.get_experiment(sqlite_experiment_id).tags


def test_policy_from_a_yaml_file_is_stored_and_the_key_never_is(
    sqlite_experiment_id, monkeypatch, tmp_path: Path
):
    monkeypatch.setenv(SECRET_ENV, KEY)
    path = tmp_path / "monitor.yaml"
    path.write_text(
        "assessments_config:\n  assessments: [{name: pii_detection}]\n"
        "pii:\n  kinds: [standard, us_ssn]\n  mode: hash\n  where: [request, response]\n"
    )
    result = CliRunner().invoke(
        monitor_cli, ["create", "-x", sqlite_experiment_id, "-f", str(path), "--output", "json"]
    )
    assert result.exit_code == 0, result.output
    stored = json.loads(result.output)["pii"]
    assert stored["mode"] == "hash" and stored["where"] == ["request", "response"]
    assert "us_ssn" in stored["kinds"]
    tags = json.dumps(mlflow.get_experiment(sqlite_experiment_id).tags)
    assert KEY not in tags and "us_ssn" in tags


def test_daemon_without_the_hash_key_holds_the_export_and_loses_nothing(
    sqlite_experiment_id, monkeypatch
):
    from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine

    monkeypatch.setenv(SECRET_ENV, KEY)
    policy, suite = {"kinds": "email", "mode": "hash"}, {"assessments": []}
    m = create_external_monitor(
        catalog_name="w", schema_name="d", pii=policy, assessments_config=suite
    )
    ids = log_personal_traces()
    monkeypatch.delenv(SECRET_ENV)  # the daemon was started without it
    engine = MonitorEngine.create(sqlite_experiment_id, EngineSettings(sweep_every_s=0))
    stats = engine.run_pass()
    assert SECRET_ENV in stats.export_error and stats.exported == 0
    assert not list(Path(m.export_uri).rglob("*.parquet"))
    monkeypatch.setenv(SECRET_ENV, KEY)
    engine._export_retry_at_ms = 0
    assert engine.run_pass().exported == 3
    assert [r[0] for r in export_text(m.export_uri)] == ids
