"""Judge faults (429 with Retry-After, 500, hangs past the timeout, malformed JSON) and a tracking
server that goes away: the daemon keeps going, shows what failed, and ends with one real verdict
per sampled pair once the fault is gone."""

import contextlib
import json
import time

import mlflow
import pytest
from click.testing import CliRunner

from mlflow_monitor_plugin import create_external_monitor
from mlflow_monitor_plugin.cli import monitor as monitor_cli
from tests.conftest import MlflowServer, _use_tracking_uri, free_port
from tests.fake_judge import JudgeBehaviour
from tests.survival import (
    MIXED_SUITE,
    FaultyJudge,
    audit,
    daemon_env,
    expected_pairs,
    export_counts,
    export_ids,
    start_daemon,
    wait_until,
)
from tests.traces_factory import log_traces

LLM_RATES = {"safety": 1.0, "polite": 1.0}
RATES = {**LLM_RATES, "pii_detection": 1.0}


@pytest.fixture
def judge(monkeypatch):
    with FaultyJudge(JudgeBehaviour()) as j:
        monkeypatch.setenv("OPENAI_API_BASE", j.url)
        monkeypatch.setenv("OPENAI_BASE_URL", j.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-faults-0123456789")
        yield j


def make_monitor(suite=MIXED_SUITE):
    return create_external_monitor(catalog_name="w", schema_name="d", assessments_config=suite)


def status_failed(experiment_id):
    result = CliRunner().invoke(monitor_cli, ["status", "-x", experiment_id, "--output", "json"])
    assert result.exit_code == 0, result.output
    return {row["judge"]: row["failed"] for row in json.loads(result.output)["judges"]}


def poisoned(body: str) -> str | None:
    return "malformed" if "POISON" in body else None


@pytest.mark.slow
def test_faulty_judge_never_stops_the_daemon_and_recovery_leaves_only_real_verdicts(
    sqlite_uri, tmp_path, judge
):
    b = judge.behaviour
    b.fault_rate, b.retry_after_s, b.hang_s = 1 / 3, 1.0, 4.0
    judge.poison = poisoned  # these traces fail for as long as the fault lasts
    mlflow.set_experiment("faults")
    m = make_monitor()
    ids = log_traces(15, retriever=False) + log_traces(3, retriever=False, prefix="POISON")
    bad = {(t, j) for t in ids[-3:] for j in LLM_RATES}
    env = daemon_env(MLFLOW_GATEWAY_ROUTE_TIMEOUT_SECONDS="2")
    args = ("-x", m.experiment_id, "--interval", "1", "--attempts", "2")
    daemon = start_daemon(tmp_path / "daemon.log", *args, env=env)
    try:
        expected = expected_pairs(ids, m.monitor_id, RATES)

        def settled():
            found = audit(m.experiment_id, m.monitor_id)
            return all(p in found.complete or p in found.errors for p in expected)

        assert wait_until(settled, 90), daemon.log()[-3000:]
        assert daemon.process.poll() is None, "the daemon died of judge faults"
        for fault in ("429", "500", "hang"):
            assert judge.count(fault) > 0, f"no {fault} was served: {judge.served}"
        found = audit(m.experiment_id, m.monitor_id)
        assert bad <= set(found.errors), "a persisting failure must stay visible as error feedback"
        assert set(found.errors) & set(found.complete) == set()

        def status_counts_the_stores_errors():  # read together: a retry may replace an error
            failed, errors = status_failed(m.experiment_id), audit(m.experiment_id, m.monitor_id)
            return all(
                failed[name] == sum(1 for (_, j) in errors.errors if j == name)
                for name in LLM_RATES
            )

        assert wait_until(status_counts_the_stores_errors, 30), status_failed(m.experiment_id)
        assert "Judge safety failed" in daemon.log() or "Judge polite failed" in daemon.log()

        # The judge recovers: the running daemon keeps scoring new traces...
        judge.poison, b.fault_rate = None, 0.0
        ids += log_traces(2, retriever=False, prefix="after")
        expected = expected_pairs(ids, m.monitor_id, RATES)
        new = {p for p in expected if p[0] in ids[-2:]}
        assert wait_until(lambda: new <= set(audit(m.experiment_id, m.monitor_id).complete), 60)
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
    # ...and the failed pairs are retried (a restarted daemon sweeps at once).
    result = CliRunner().invoke(monitor_cli, ["run", "-x", m.experiment_id, "--once"])
    assert result.exit_code == 0, result.output
    final = audit(m.experiment_id, m.monitor_id)
    assert not final.errors, final.error_messages
    assert final.complete == expected
    assert set(status_failed(m.experiment_id).values()) == {0}


def test_persistent_malformed_replies_are_error_feedback_until_the_judge_recovers(
    sqlite_uri, judge
):
    judge.poison = lambda body: "malformed"
    mlflow.set_experiment("malformed")
    m = make_monitor()
    ids = log_traces(4, retriever=False)
    result = CliRunner().invoke(
        monitor_cli, ["run", "-x", m.experiment_id, "--once", "--attempts", "1", "--no-export"]
    )
    assert result.exit_code == 0, result.output
    assert " failed" in result.output and " 0 failed" not in result.output  # says what failed
    found = audit(m.experiment_id, m.monitor_id)
    assert set(found.errors) == {(t, j) for t in ids for j in LLM_RATES}
    assert all("pars" in message.lower() for message in found.error_messages), found.error_messages
    assert {(t, "pii_detection") for t in ids} == set(found.complete)
    assert status_failed(m.experiment_id) == {"safety": 4, "polite": 4, "pii_detection": 0}

    judge.poison = None
    result = CliRunner().invoke(monitor_cli, ["run", "-x", m.experiment_id, "--once"])
    assert result.exit_code == 0, result.output
    final = audit(m.experiment_id, m.monitor_id)
    assert not final.errors and final.complete == expected_pairs(ids, m.monitor_id, RATES)


def test_pairs_failed_through_a_long_outage_are_scored_once_the_judge_recovers(sqlite_uri, judge):
    """An outage outlasting --max-failed-passes (default 5: about ten minutes of two-minute
    sweeps) must not leave the traces of that window without a verdict forever."""
    judge.poison = lambda body: "malformed"  # the judge answers nothing usable, for anyone
    mlflow.set_experiment("outage")
    m = make_monitor({"assessments": [{"name": "safety"}]})
    ids = log_traces(2, retriever=False)
    once = ["run", "-x", m.experiment_id, "--once", "--attempts", "1", "--no-export"]
    for _ in range(6):  # six restarts during the outage: a sweep of the failed pairs each
        assert CliRunner().invoke(monitor_cli, once).exit_code == 0
    assert set(audit(m.experiment_id, m.monitor_id).errors) == {(t, "safety") for t in ids}
    judge.poison = None
    calls = judge.count("ok")
    assert CliRunner().invoke(monitor_cli, once).exit_code == 0
    final = audit(m.experiment_id, m.monitor_id)
    assert judge.count("ok") > calls, "the recovered judge was never asked again"
    assert final.complete == expected_pairs(ids, m.monitor_id, {"safety": 1.0})
    assert not final.errors


def test_retry_after_is_respected(sqlite_uri, judge):
    """A 429 with Retry-After: N means the next request may come N seconds later, not sooner."""
    judge.behaviour.retry_after_s = 3.0
    judge.behaviour.scripted = ["429"]
    mlflow.set_experiment("retry-after")
    m = make_monitor({"assessments": [{"name": "safety"}]})
    (trace_id,) = log_traces(1, retriever=False)
    once = ["run", "-x", m.experiment_id, "--once", "--no-export"]
    result = CliRunner().invoke(monitor_cli, once)
    assert result.exit_code == 0, result.output
    (first, first_outcome), (second, _) = judge.arrivals[:2]
    assert first_outcome == "429"
    waited = second - first
    assert waited >= 3.0 - 0.05, f"the next request came {waited:.2f}s after a Retry-After: 3"
    assert audit(m.experiment_id, m.monitor_id).complete == {(trace_id, "safety"): 1}


@pytest.fixture
def own_server(tmp_path, monkeypatch):
    """A `mlflow server` of this test's own, on a fixed port, so it can be restarted in place."""
    server = MlflowServer(tmp_path / "server", free_port())
    server.start()
    uri = _use_tracking_uri(server.url, tmp_path, monkeypatch)
    next(uri)
    try:
        yield server
    finally:
        server.stop()
        with contextlib.suppress(StopIteration):
            next(uri)


@pytest.mark.slow
@pytest.mark.server
def test_tracking_server_down_then_back_loses_and_duplicates_nothing(own_server, tmp_path, judge):
    mlflow.set_experiment("server-down")
    m = make_monitor()
    ids = log_traces(10, retriever=False)
    # MLflow's REST client retries a refused connection for minutes by default; keep it short.
    env = daemon_env(
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
        MLFLOW_HTTP_REQUEST_TIMEOUT="5",
    )
    daemon = start_daemon(tmp_path / "daemon.log", "-x", m.experiment_id, "--interval", "1",
                          env=env)  # fmt: skip

    def caught_up():
        found = audit(m.experiment_id, m.monitor_id)
        expected = expected_pairs(ids, m.monitor_id, RATES)
        return found.complete == expected and export_counts(m.export_uri)[0] >= len(ids)

    try:
        assert wait_until(caught_up, 60), daemon.log()[-3000:]
        judge.behaviour.latency_s = 0.5  # so the outage hits a pass in flight
        ids += log_traces(10, retriever=False, prefix="while-down")
        up_log = daemon.log()
        assert not caught_up(), "the daemon finished before the outage: nothing to test"
        own_server.stop()
        time.sleep(15)
        assert daemon.process.poll() is None, "the daemon died while the server was down"
        down_log = daemon.log()[len(up_log) :]
        own_server.start()
        back = time.monotonic()
        assert wait_until(caught_up, 60), daemon.log()[-3000:]
        print(f"\ncaught up {time.monotonic() - back:.1f}s after the server came back")
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
    final = audit(m.experiment_id, m.monitor_id)
    assert final.complete == expected_pairs(ids, m.monitor_id, RATES)
    assert final.duplicates() == 0 and not final.errors and not final.partial
    assert export_counts(m.export_uri) == (len(ids), len(ids))
    assert sorted(export_ids(m.export_uri)) == sorted(ids)
    ours = [line for line in down_log.splitlines() if "mlflow_monitor_plugin" in line]
    backing_off = any("retry in" in line for line in ours)
    misreported = [line for line in ours if "does not exist" in line]
    assert backing_off and not misreported, (
        "an unreachable server must be logged as failed passes backing off, not as a missing "
        "experiment:\n" + "\n".join(ours[-8:])
    )
