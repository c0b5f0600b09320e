"""Scoring on a pool of processes: the same verdicts, written once, as scoring in the daemon."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections import Counter

import mlflow
import pytest

from mlflow_monitor_plugin import create_external_monitor
from mlflow_monitor_plugin.engine.daemon import Daemon
from mlflow_monitor_plugin.engine.pipeline import EngineSettings
from mlflow_monitor_plugin.scoring.judges import JudgeSpec, ScorerFactory
from mlflow_monitor_plugin.scoring.pool import ProcessScorer, split
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.survival import alive, audit, daemon_env, wait_until
from tests.traces_factory import log_traces

RATES = {"safety": 1.0, "groundedness": 1.0, "pii_detection": 1.0}
SUITE = {"assessments": [{"name": name} for name in RATES]}


def spec(name):
    return JudgeSpec(
        name, 1.0, False, None, frozenset(), ScorerFactory.of("builtin", name, "PIIDetection")
    )


def test_split_keeps_traces_whole_balances_pairs_and_loses_nothing():
    due = {f"t{i}": [(spec(f"j{k}"), None) for k in range(1 + i % 3)] for i in range(10)}
    chunks = split(due, 3)
    assert len(chunks) == 3
    assert sorted(t for c in chunks for t in c) == sorted(due)
    assert all(c[t] == due[t] for c in chunks for t in c)
    loads = [sum(len(p) for p in c.values()) for c in chunks]
    assert max(loads) - min(loads) <= 1, loads
    assert split({"only": due["t0"]}, 4) == [{"only": due["t0"]}]
    assert split({}, 2) == []


def test_a_judge_spec_survives_the_trip_to_a_scoring_process():
    import pickle

    made = spec("pii").make
    assert pickle.loads(pickle.dumps(made)) == made
    assert type(made()).__name__ == "PIIDetection"


def test_rejects_zero_processes():
    with pytest.raises(ValueError, match="at least 1"):
        ProcessScorer(0, ScoringSettings())


def test_pool_pass_writes_each_verdict_once_and_retries_failures(sqlite_experiment_id, fake_judge):
    retrieval = log_traces(6, retriever=True)
    plain = log_traces(6, retriever=False)
    monitor = create_external_monitor(catalog_name="w", schema_name="d", assessments_config=SUITE)
    fake_judge.behaviour.scripted = ["malformed", "malformed"]  # two calls fail, once
    scoring = ScoringSettings(workers=3, attempts=1, processes=2)
    daemon = Daemon([sqlite_experiment_id], settings=EngineSettings(export=False, scoring=scoring))
    try:
        report = daemon.run_pass()
        workers = daemon.scorer.pids()
        assert len(workers) == 2 and all(alive(pid) for pid in workers)
    finally:
        daemon.release()
    assert not report.errors
    (stats,) = report.stats
    # The pass: 2 failed; its sweep (every pass here) retried them on the pool.
    assert stats.judges["safety"]["failed"] + stats.judges["groundedness"]["failed"] == 2
    assert stats.judges["groundedness"]["not_applicable"] == len(plain)
    assert fake_judge.count("malformed") == 2
    found = audit(sqlite_experiment_id, monitor.monitor_id)
    expected = Counter({(t, j): 1 for t in retrieval + plain for j in RATES})
    expected -= Counter({(t, "groundedness"): 1 for t in plain})  # no retrieval: not applicable
    assert found.complete == expected
    assert not found.partial and not found.errors  # the error feedback was replaced
    assert not any(alive(pid) for pid in workers)  # release() stopped them


def test_a_killed_scoring_process_fails_the_pass_and_the_next_pass_completes(
    sqlite_experiment_id, fake_judge
):
    fake_judge.behaviour.latency_s = 0.05
    ids = log_traces(30, retriever=False)
    monitor = create_external_monitor(
        catalog_name="w", schema_name="d", assessments_config={"assessments": [{"name": "safety"}]}
    )
    scoring = ScoringSettings(workers=2, attempts=1, processes=2)
    daemon = Daemon([sqlite_experiment_id], settings=EngineSettings(export=False, scoring=scoring))
    reports = []
    try:
        calls = threading.Thread(target=lambda: reports.append(daemon.run_pass()))
        calls.start()
        assert wait_until(lambda: fake_judge.count("ok") >= 4, 30)
        victim, survivor = daemon.scorer.pids()
        os.kill(victim, signal.SIGKILL)
        calls.join(60)
        assert not calls.is_alive(), "the pass hung on the broken pool"
        assert "scoring process died" in reports[0].errors[sqlite_experiment_id]
        assert wait_until(lambda: not alive(survivor), 5)  # cut off, not left writing
        daemon.health.clear()  # no backoff: retry now
        assert not daemon.run_pass().errors
    finally:
        daemon.release()
    found = audit(sqlite_experiment_id, monitor.monitor_id)
    assert found.complete == Counter({(t, "safety"): 1 for t in ids})
    assert not found.partial and not found.errors


def test_sigterm_to_the_whole_service_lets_the_pass_finish(sqlite_uri, tmp_path, fake_judge):
    """systemd stops a service by sending SIGTERM to all of its processes, workers included."""
    fake_judge.behaviour.latency_s = 0.05
    mlflow.set_experiment("sigterm-all")
    monitor = create_external_monitor(
        catalog_name="w", schema_name="d", assessments_config={"assessments": [{"name": "safety"}]}
    )
    ids = log_traces(40, retriever=False)
    cmd = [sys.executable, "-m", "mlflow_monitor_plugin.cli", "run", "-x", monitor.experiment_id,
           "--processes", "2", "--workers", "2"]  # fmt: skip
    with open(tmp_path / "daemon.log", "wb") as log:
        daemon = subprocess.Popen(
            cmd, env=daemon_env(), stdout=log, stderr=log, start_new_session=True
        )
        try:
            assert wait_until(lambda: fake_judge.count("ok") >= 4, 60)
            os.killpg(daemon.pid, signal.SIGTERM)
            assert daemon.wait(60) == 0, (tmp_path / "daemon.log").read_text()[-3000:]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGKILL)
    text = (tmp_path / "daemon.log").read_text()
    assert "scoring process died" not in text and "Traceback" not in text, text[-3000:]
    found = audit(monitor.experiment_id, monitor.monitor_id)
    assert not found.partial and not found.errors and found.duplicates() == 0
    assert set(found.complete) <= {(t, "safety") for t in ids}
    assert found.complete, "the pass in flight was finished"
