import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from mlflow_monitor_plugin import create_external_monitor, delete_external_monitor
from mlflow_monitor_plugin.cli import monitor as monitor_cli
from mlflow_monitor_plugin.config.tags import CONFIG_TAG
from mlflow_monitor_plugin.engine.daemon import Daemon
from mlflow_monitor_plugin.engine.pipeline import EngineSettings
from mlflow_monitor_plugin.scoring.feedback import JUDGE_KEY, MONITOR_KEY, VERDICT_KEY
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.traces_factory import feedback_by_trace, log_traces

REPO = Path(__file__).resolve().parent.parent
SETTINGS = EngineSettings(export=False, scoring=ScoringSettings(workers=4, attempts=1))
PII = {"assessments": [{"name": "pii_detection"}]}


def new_monitored_experiment(name, traces=2, suite=PII):
    experiment_id = mlflow.set_experiment(name).experiment_id
    create_external_monitor(catalog_name="w", schema_name="d", assessments_config=suite)
    ids = log_traces(traces, retriever=False, prefix=name)
    return experiment_id, ids


def verdicts(experiment_id):
    counts = Counter()
    for trace_id, fb in feedback_by_trace(experiment_id).items():
        groups = {
            (a.metadata[JUDGE_KEY], a.metadata[VERDICT_KEY])
            for a in fb
            if MONITOR_KEY in a.metadata
        }
        for judge, _ in groups:
            counts[(trace_id, judge)] += 1
    return counts


def test_one_bad_monitor_never_stops_the_others(sqlite_uri):
    good, ids = new_monitored_experiment("good")
    bad, _ = new_monitored_experiment("bad")
    MlflowClient().set_experiment_tag(bad, CONFIG_TAG, "{broken")
    daemon = Daemon(settings=SETTINGS)
    report = daemon.run_pass()
    assert "not valid JSON" in report.errors[bad]
    assert set(verdicts(good)) == {(t, "pii_detection") for t in ids}
    assert daemon.health[bad].failures == 1
    assert daemon.health[bad].retry_at > time.monotonic()  # backing off
    assert bad not in daemon.run_pass().errors  # skipped while backing off


def test_daemon_picks_up_new_and_deleted_monitors(sqlite_uri):
    first, _ = new_monitored_experiment("first")
    daemon = Daemon(settings=SETTINGS)
    daemon.run_pass()
    second, ids = new_monitored_experiment("second")
    report = daemon.run_pass()
    assert {s.experiment_id for s in report.stats} == {first, second}
    assert set(verdicts(second)) == {(t, "pii_detection") for t in ids}
    mlflow.set_experiment(experiment_id=first)
    delete_external_monitor()
    assert {s.experiment_id for s in daemon.run_pass().stats} == {second}


def test_run_once_exit_codes(sqlite_uri):
    ok, ids = new_monitored_experiment("ok")
    result = CliRunner().invoke(monitor_cli, ["run", "-x", ok, "--once", "--no-export"])
    assert result.exit_code == 0, result.output
    assert "All pending traces processed." in result.output
    assert set(verdicts(ok)) == {(t, "pii_detection") for t in ids}
    bad, _ = new_monitored_experiment("bad")
    MlflowClient().set_experiment_tag(bad, CONFIG_TAG, "[]")
    result = CliRunner().invoke(monitor_cli, ["run", "-x", bad, "--once"])
    assert result.exit_code == 1
    assert f"experiment {bad}" in result.output and "JSON object" in result.output


def _daemon_process(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_MONITOR_DISABLE_CLI_HOOK": "1"}
    log = open(tmp_path / "daemon.log", "ab")  # noqa: SIM115 - closed with the process
    cmd = [sys.executable, "-m", "mlflow_monitor_plugin.cli", "run", *args]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=tmp_path), log


def test_sigterm_finishes_the_pass_and_exits_zero(sqlite_uri, tmp_path):
    experiment_id, ids = new_monitored_experiment("sig", traces=3)
    process, log = _daemon_process(tmp_path, "-x", experiment_id, "--interval", "1", "--no-export")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(verdicts(experiment_id)) < len(ids):
            time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        process.kill()
        log.close()
    text = (tmp_path / "daemon.log").read_text()
    assert "finishing the pass in flight" in text and "daemon stopped" in text
    assert set(verdicts(experiment_id)) == {(t, "pii_detection") for t in ids}


def test_sigkill_mid_scoring_then_restart_writes_no_duplicate(sqlite_uri, tmp_path, fake_judge):
    fake_judge.behaviour.latency_s = 0.05
    suite = {"assessments": [{"name": "safety"}, {"name": "pii_detection"}]}
    experiment_id, ids = new_monitored_experiment("kill", traces=40, suite=suite)
    process, log = _daemon_process(tmp_path, "-x", experiment_id, "--interval", "1", "--no-export")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not 5 < len(verdicts(experiment_id)) < 70:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        process.kill()
        log.close()
    assert len(verdicts(experiment_id)) < 80, "killed too late to test anything"
    result = CliRunner().invoke(monitor_cli, ["run", "-x", experiment_id, "--once", "--no-export"])
    assert result.exit_code == 0, result.output
    counts = verdicts(experiment_id)
    assert counts == Counter({(t, j): 1 for t in ids for j in ("safety", "pii_detection")})


def test_run_once_over_rest_finishes_without_deadlock(rest_uri, tmp_path, fake_judge):
    """MLflow's lazy imports on the first judge call could deadlock two worker threads against a
    REST store; a fresh daemon process, where those imports happen, must finish."""
    experiment_id = mlflow.set_experiment(f"rest-{time.time_ns()}").experiment_id
    suite = {"assessments": [{"name": "safety"}, {"name": "relevance_to_query"}]}
    create_external_monitor(catalog_name="w", schema_name="d", assessments_config=suite)
    ids = log_traces(40, retriever=False)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_MONITOR_DISABLE_CLI_HOOK": "1"}
    env.pop("MLFLOW_DISABLE_TELEMETRY", None)  # the deadlock ran through MLflow's telemetry
    cmd = [sys.executable, "-m", "mlflow_monitor_plugin.cli", "run", "-x", experiment_id,
           "--once", "--no-export", "--workers", "8"]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert verdicts(experiment_id) == Counter(
        {(t, j): 1 for t in ids for j in ("safety", "relevance_to_query")}
    )
