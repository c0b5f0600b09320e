"""Backfill: a past range scored exactly once, resumable after SIGKILL, beside a running daemon."""

import json
import logging
import signal
import subprocess
import sys
import time

import mlflow
import pytest
from click.testing import CliRunner

from mlflow_monitor_plugin import create_external_monitor, update_external_monitor
from mlflow_monitor_plugin.cli import monitor as cli
from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint
from mlflow_monitor_plugin.discovery.sampling import is_sampled
from mlflow_monitor_plugin.engine.backfill import DAEMON, DONE, OURS, owner
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine
from mlflow_monitor_plugin.observe.dataset import QualityDataset, quality_uri
from mlflow_monitor_plugin.scoring.feedback import JudgeState
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.history import DAY_MS, log_history, log_trace_at
from tests.survival import (
    all_traces,
    audit,
    daemon_env,
    expected_pairs,
    run_cli,
    start_daemon,
    wait_until,
)

FAST = ScoringSettings(workers=4, attempts=2, backoff_s=0.01, backoff_max_s=0.05)
DAEMON_SETTINGS = EngineSettings(export=False, scoring=FAST, sweep_every_s=0)
OLD = {"assessments": [{"name": "pii_detection"}]}
NEW = {"assessments": [{"name": "pii_detection"}, {"name": "safety", "sample_rate": 0.7}]}
RATES = {"pii_detection": 1.0, "safety": 0.7}


def run(*args, code=0):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def with_new_judge(days=3, per_day=6):
    """History scored by the daemon with the old config, then a judge added by ``update``."""
    ids = log_history(days, per_day)
    m = create_external_monitor(catalog_name="w", schema_name="d", assessments_config=OLD)
    MonitorEngine.create(m.experiment_id, DAEMON_SETTINGS).run_pass()
    return update_external_monitor(assessments_config=NEW, experiment_id=m.experiment_id), ids


def safety_pairs(found):
    return {k: n for k, n in found.complete.items() if k[1] == "safety"}


# -- who scores what ---------------------------------------------------------------------------
CURSOR = Checkpoint(10_000, "t")
FLOOR = 5_000


@pytest.mark.parametrize(
    ("ts", "state", "seen", "cursor", "expected"),
    [
        (1_000, JudgeState(complete=[["v"]]), True, CURSOR, DONE),
        (20_000, None, True, CURSOR, DAEMON),  # ahead of the daemon's checkpoint
        (1_000, None, True, None, DAEMON),  # the daemon never ran: its first pass scores all
        (1_000, None, False, CURSOR, OURS),  # older than the daemon's late window
        (1_000, JudgeState(errors=["e"]), True, CURSOR, OURS),
        (7_000, None, True, CURSOR, OURS),  # a judge the daemon never tried on a seen trace
        (7_000, JudgeState(errors=["e"]), True, CURSOR, DAEMON),  # its sweep retries these
        (7_000, JudgeState(partial=[["p"]]), True, CURSOR, DAEMON),
        (7_000, None, False, CURSOR, DAEMON),  # its sweep scores traces it has not seen
    ],
)
def test_owner_never_gives_a_pair_to_both(ts, state, seen, cursor, expected):
    assert owner(ts, "x", state, seen, cursor, FLOOR) == expected


# -- exactly once ------------------------------------------------------------------------------
def test_backfill_of_a_new_judge_writes_each_verdict_once_and_a_rerun_nothing(
    tracking_uri, fake_judge
):
    mlflow.set_experiment("backfill-twice")
    m, ids = with_new_judge(*((3, 6) if "sqlite" in tracking_uri else (2, 3)))
    expected = expected_pairs(ids, m.monitor_id, {"safety": 0.7})
    out = run("backfill", "-x", m.experiment_id, "--since", "4d", "--judge", "safety").output
    assert f"{len(ids)} traces, {len(expected)} verdicts, 0 errors" in out
    found = audit(m.experiment_id, m.monitor_id)
    assert safety_pairs(found) == dict(expected)
    assert not found.partial and not found.errors
    calls = fake_judge.count("ok")
    assert calls == len(expected)
    # The same verdict identity as the daemon's: monitor, judge, config version, verdict id.
    trace = next(t for t in all_traces(m.experiment_id) if (t.info.trace_id, "safety") in expected)
    meta = next(a for a in trace.info.assessments if a.name == "safety").metadata
    assert meta["mlflow_monitor.monitor_id"] == m.monitor_id
    assert meta["mlflow_monitor.config_version"] == "2"
    assert meta["mlflow_monitor.parts"] == "1" and meta["mlflow_monitor.verdict_id"]

    again = json.loads(run("backfill", "-x", m.experiment_id, "--since", "4d", "--output",
                           "json").stdout)  # fmt: skip
    rows = {r["judge"]: r for r in again["judges"]}
    assert rows["safety"]["already_done"] == len(expected) and rows["safety"]["scored"] == 0
    assert rows["pii_detection"]["already_done"] == len(ids)
    assert fake_judge.count("ok") == calls
    assert audit(m.experiment_id, m.monitor_id).complete == found.complete
    tags = mlflow.MlflowClient().get_experiment(m.experiment_id).tags
    assert not [k for k in tags if k.startswith("mlflow_monitor.backfill.")]  # done: no cursor


def test_backfill_publishes_the_windows_it_scored_and_a_running_daemon_reads_them_again(
    sqlite_experiment_id, fake_judge
):
    now_ms = int(time.time() * 1000)
    old = [
        log_trace_at(now_ms - d * DAY_MS - i * 600_000, f"q{d}.{i}")
        for d in (4, 3, 2)
        for i in range(6)
    ]  # fmt: skip  (days 2-4 back: their windows have settled)
    midnight = now_ms - now_ms % DAY_MS  # today's traces on today's UTC day, at any hour
    today = [log_trace_at(max(now_ms - 7_200_000 - i * 300_000, midnight + i), f"t{i}")
             for i in range(4)]  # fmt: skip
    m = create_external_monitor(catalog_name="w", schema_name="d", assessments_config=OLD)
    daemon = MonitorEngine.create(m.experiment_id, DAEMON_SETTINGS)
    daemon.run_pass()  # charts the settled windows, with pii_detection only
    m = update_external_monitor(assessments_config=NEW, experiment_id=m.experiment_id)
    today.append(log_trace_at(int(time.time() * 1000), "new"))
    daemon.run_pass()  # scores safety on the new trace: holds today's windows in memory
    run("backfill", "-x", m.experiment_id, "--since", "5d", "--judge", "safety")

    def expected(ids):
        return len(expected_pairs(ids, m.monitor_id, {"safety": 0.7}))

    # the charts: safety's points on the settled windows, adding up to its verdicts there
    client = mlflow.MlflowClient()
    [metrics_run] = client.search_runs([m.experiment_id])
    points = {k: client.get_metric_history(metrics_run.info.run_id, k)
              for k in ("safety/verdicts", "safety/verdicts_1d")}  # fmt: skip
    assert sum(p.value for p in points["safety/verdicts"]) == expected(old)
    assert sum(p.value for p in points["safety/verdicts_1d"]) == expected(old)
    assert len({p.step for p in points["safety/verdicts"]}) == len(points["safety/verdicts"])
    # the quality dataset: every day it scored in, rewritten from the store
    table = QualityDataset(quality_uri(m.export_uri)).read().to_pylist()
    hourly = [r for r in table if r["judge"] == "safety" and r["width"] == "1h"]
    assert sum(r["verdicts"] for r in hourly) == expected(old + today)
    # the running daemon reads the day it holds again at its next update
    daemon.run_pass(now_ms=int(time.time() * 1000) + 60_000)
    judges = (("pii_detection", 1.0), ("safety", 0.7))
    held = sum(d.day_tallies(judges)["safety"].verdicts for d in daemon.quality.days.values())
    assert held == expected(today) > 0

    # (and may chart today's windows that have settled, safety included); a rerun of the
    # backfill charts nothing twice
    before = client.get_metric_history(metrics_run.info.run_id, "safety/verdicts")
    run("backfill", "-x", m.experiment_id, "--since", "5d", "--judge", "safety")
    again = client.get_metric_history(metrics_run.info.run_id, "safety/verdicts")
    assert len(again) == len(before)


def test_dry_run_counts_per_judge_and_judge_calls_and_writes_nothing(
    sqlite_experiment_id, fake_judge
):
    m, ids = with_new_judge(days=2, per_day=5)
    expected = expected_pairs(ids, m.monitor_id, {"safety": 0.7})
    out = run("backfill", "-x", m.experiment_id, "--since", "3d", "--dry-run").output
    assert f"estimated judge calls: {len(expected)} at most" in out
    data = json.loads(run("backfill", "-x", m.experiment_id, "--since", "3d", "--dry-run",
                          "--output", "json").stdout)  # fmt: skip
    rows = {r["judge"]: r for r in data["judges"]}
    assert rows["safety"]["due"] == len(expected) and rows["safety"]["judge_calls"] == len(expected)
    assert rows["pii_detection"]["already_done"] == len(ids)
    assert rows["pii_detection"]["judge_calls"] == 0  # deterministic: no judge call
    assert fake_judge.count("ok") == 0
    assert not safety_pairs(audit(m.experiment_id, m.monitor_id))


def test_range_bounds_are_respected_and_traces_ahead_of_the_daemon_are_left_to_it(
    sqlite_experiment_id, fake_judge
):
    m, ids = with_new_judge(days=3, per_day=4)
    ahead = log_trace_at(int(time.time() * 1000) - 3_600_000, "after the daemon pass")
    while not is_sampled(ahead, m.monitor_id, RATES["safety"]):  # a pair the daemon must keep
        ahead = log_trace_at(int(time.time() * 1000) - 3_600_000, "after the daemon pass")
    out = run("backfill", "-x", m.experiment_id, "--since", "2d", "--judge", "safety").output
    assert "the daemon's" in out
    scored = {t for (t, _) in safety_pairs(audit(m.experiment_id, m.monitor_id))}
    days_ago = {t.info.trace_id: t.info.timestamp_ms for t in all_traces(m.experiment_id)}
    cutoff = int(time.time() * 1000) - 2 * DAY_MS
    assert scored and all(days_ago[t] >= cutoff for t in scored)
    assert ahead not in scored
    older = [t for t in ids if days_ago[t] < cutoff]
    assert older and not scored & set(older)


def test_update_that_adds_a_judge_prints_the_backfill_command_that_works(
    sqlite_experiment_id, fake_judge, caplog
):
    log_history(1, 3)
    m = create_external_monitor(catalog_name="w", schema_name="d", assessments_config=OLD)
    MonitorEngine.create(m.experiment_id, DAEMON_SETTINGS).run_pass()
    result = CliRunner().invoke(
        cli, ["update", "-x", m.experiment_id, "--judge", "pii_detection", "--judge", "safety"]
    )
    assert result.exit_code == 0, result.output
    day = time.strftime("%Y-%m-%d", time.gmtime(m.created_at_ms / 1000))
    command = f"mlflow monitor backfill -x {m.experiment_id} --since {day} --judge safety"
    assert command in result.output
    assert "scored on new traces from now on" in result.output
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mlflow_monitor_plugin"):
        update_external_monitor(experiment_id=m.experiment_id, assessments_config=NEW | {
            "assessments": NEW["assessments"] + [{"name": "relevance_to_query"}]})  # fmt: skip
    assert "--judge relevance_to_query" in caplog.text
    assert "--judge safety" not in caplog.text
    # The printed command runs (the traces are older than the monitor: nothing in its range).
    out = run(*command.split()[2:]).output
    assert "0 traces, 0 verdicts, 0 errors" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "2026-11-20", "--until", "2026-11-10"], "must be before until"),
        (["--since", "2099-01-01"], "Invalid since: got '2099-01-01'; it is in the future"),
        (["--since", "1d", "--until", "2099-01-01"], "Invalid until: got '2099-01-01'"),
        (["--since", "last week"], "expected a date (2026-11-01)"),
        (["--since", "7d", "--judge", "toxicity"], "Invalid judge: got 'toxicity'; the monitor"),
    ],
)
def test_backfill_bad_input_exits_2_with_the_reason(sqlite_experiment_id, args, message):
    m = create_external_monitor(catalog_name="w", schema_name="d", assessments_config=NEW)
    result = run("backfill", "-x", m.experiment_id, *args, "--dry-run", code=2)
    assert message in result.output
    assert "Traceback" not in result.output


def test_backfill_of_an_llm_judge_without_endpoint_says_how_to_configure(
    sqlite_experiment_id, monkeypatch
):
    for name in ("OPENAI_API_KEY", "OPENAI_API_BASE", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    m = create_external_monitor(catalog_name="w", schema_name="d", assessments_config=NEW)
    result = run("backfill", "-x", m.experiment_id, "--since", "1d", code=1)
    assert "No judge endpoint for safety: no judge endpoint in the daemon's" in result.output
    assert "set OPENAI_API_KEY" in result.output


# -- crash and concurrency ---------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_mid_backfill_then_rerun_loses_and_duplicates_nothing(
    sqlite_uri, tmp_path, fake_judge
):
    fake_judge.behaviour.latency_s = 0.05
    mlflow.set_experiment("backfill-kill")
    m, ids = with_new_judge(days=4, per_day=30)
    expected = expected_pairs(ids, m.monitor_id, {"safety": 0.7})
    args = ("-x", m.experiment_id, "--since", "5d", "--judge", "safety", "--workers", "2",
            "--page-size", "20")  # fmt: skip
    cmd = [sys.executable, "-m", "mlflow_monitor_plugin.cli", "backfill", *args]
    log = open(tmp_path / "backfill.log", "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen(cmd, env=daemon_env(), stdout=log, stderr=log)
    try:
        # Kill once a few pages' worth of verdicts are in: the cursor tag is past the start.
        def some_written():
            return len(safety_pairs(audit(m.experiment_id, m.monitor_id))) >= 35

        assert wait_until(some_written, 60, every_s=0.1), (tmp_path / "backfill.log").read_text()
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    before = safety_pairs(audit(m.experiment_id, m.monitor_id))
    calls_before = fake_judge.count("ok")
    assert 0 < len(before) < len(expected)
    tags = mlflow.MlflowClient().get_experiment(m.experiment_id).tags
    assert [k for k in tags if k.startswith("mlflow_monitor.backfill.")], "no cursor saved"
    result = run_cli("backfill", *args)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "Backfill (resumed)" in result.stdout
    found = audit(m.experiment_id, m.monitor_id)
    assert safety_pairs(found) == dict(expected), "lost or duplicated"
    assert not found.partial and not found.errors
    # Resumed, not rescored: the rerun asked the judge only what had no verdict yet.
    assert fake_judge.count("ok") - calls_before == len(expected) - len(before)


@pytest.mark.slow
def test_backfill_beside_a_running_daemon_duplicates_nothing(sqlite_uri, tmp_path, fake_judge):
    fake_judge.behaviour.latency_s = 0.01
    mlflow.set_experiment("backfill-beside")
    history = log_history(2, 12)
    m = create_external_monitor(catalog_name="w", schema_name="d", assessments_config=OLD)
    daemon = start_daemon(tmp_path / "daemon.log", "-x", m.experiment_id, "--interval", "1",
                          "--workers", "4", "--no-export")  # fmt: skip
    try:
        recent = [log_trace_at(int(time.time() * 1000), f"recent{i}") for i in range(10)]
        assert wait_until(lambda: len(audit(m.experiment_id, m.monitor_id).complete) >= 34, 60), (
            daemon.log()[-2000:]
        )
        update_external_monitor(assessments_config=NEW, experiment_id=m.experiment_id)
        later = []
        backfill = start_backfill(tmp_path, m.experiment_id)
        for i in range(15):  # traces keep arriving while both work
            later.append(log_trace_at(int(time.time() * 1000), f"later{i}"))
            time.sleep(0.1)
        assert backfill.wait(120) == 0, (tmp_path / "bf.log").read_text()[-3000:]
        everything = history + recent + later
        expected = expected_pairs(everything, m.monitor_id, RATES)

        def done():
            return set(expected) <= set(audit(m.experiment_id, m.monitor_id).complete)

        assert wait_until(done, 60), daemon.log()[-2000:]
        time.sleep(2)  # a racing writer would land its copy now
    finally:
        code = daemon.terminate()
    found = audit(m.experiment_id, m.monitor_id)
    assert code == 0
    assert found.duplicates() == 0, {k: n for k, n in found.complete.items() if n > 1}
    assert found.complete == expected
    out = (tmp_path / "bf.log").read_text()
    summary = next(line for line in out.splitlines() if line.startswith("Backfill, "))
    print(f"\nbeside the daemon: {summary}; duplicates {found.duplicates()}")
    assert " 0 errors" in summary and " 0 verdicts" not in summary  # it did its share


def start_backfill(tmp_path, experiment_id):
    log = open(tmp_path / "bf.log", "ab")  # noqa: SIM115 - the process outlives this call
    cmd = [sys.executable, "-m", "mlflow_monitor_plugin.cli", "backfill", "-x", experiment_id,
           "--since", "3d", "--workers", "4"]  # fmt: skip
    return subprocess.Popen(cmd, env=daemon_env(), stdout=log, stderr=log)
