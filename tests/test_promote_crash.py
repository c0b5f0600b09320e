"""Promote a shadow while the daemon is SIGKILLed at random moments, and the promote itself
too: every trace ends with exactly one verdict of the judge (none lost, none doubled), the
shadow's verdicts are never doubled either, and the judge's windows are continuous, with one
change of fingerprint where the candidate took over."""

import random
import signal
import subprocess
import sys
import time
import uuid

import mlflow
import pytest

from mlflow_monitor_plugin import create_external_monitor, get_external_monitor
from mlflow_monitor_plugin.observe import report
from tests.survival import audit, daemon_env, run_cli, start_daemon, wait_until
from tests.test_trust import CANDIDATE, log, verdict

ROUNDS = 6


def promote(experiment_id: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlflow_monitor_plugin.cli", "promote", "-x", experiment_id,
           "--judge", "safety"]  # fmt: skip
    return subprocess.Popen(cmd, env=daemon_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_promote_under_sigkill_loses_and_doubles_nothing(sqlite_uri, tmp_path, fake_judge):
    fake_judge.behaviour.verdict = verdict
    fake_judge.behaviour.latency_s = 0.2  # a pass judges for seconds: kills land mid-work
    mlflow.set_experiment(f"promote-{uuid.uuid4().hex[:8]}")
    monitor = create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"assessments": [{"name": "safety"}],
                            "shadows": {"safety": CANDIDATE}},
    )  # fmt: skip
    exp = monitor.experiment_id
    rng = random.Random(20261206)
    promote_round = rng.randint(1, ROUNDS - 3)
    trace_ids = log(40, "base")
    after_promote: list[str] = []
    history: list = []
    killed_mid_work = 0
    for n in range(ROUNDS):
        batch = log(16, f"r{n}-")
        trace_ids += batch
        promoted = get_external_monitor(experiment_id=exp).assessments_config.shadows is None
        if promoted:
            after_promote += batch
        daemon = start_daemon(tmp_path / "daemon.log", "-x", exp, "--interval", "1",
                              "--workers", "4")  # fmt: skip
        calls = fake_judge.count("ok")

        def judging(c=calls):
            return wait_until(lambda: fake_judge.count("ok") > c, 20, every_s=0.02)

        try:
            if n == promote_round:  # while the daemon judges; the first promote SIGKILLed
                judging()
                time.sleep(rng.uniform(0.0, 1.0))
                cli = promote(exp)
                time.sleep(rng.uniform(0.5, 4.0))
                cli.send_signal(signal.SIGKILL)
                history.append(("promote killed", cli.wait(60)))
                if get_external_monitor(experiment_id=exp).assessments_config.shadows:
                    history.append(("promote", promote(exp).wait(60)))
            if rng.random() < 0.5:  # any moment: start-up, scoring, export, idle
                time.sleep(rng.uniform(1.0, 6.0))
            else:  # a moment after the judge calls of this round began
                judging()
                time.sleep(rng.uniform(0.0, 1.5))
            assert daemon.process.poll() is None, daemon.log()[-3000:]
            daemon.process.send_signal(signal.SIGKILL)
        finally:
            daemon.kill()
        pending = len(trace_ids) - sum(
            1 for (t, j) in audit(exp, monitor.monitor_id).complete if j == "safety"
        )
        killed_mid_work += pending > 0
        history.append((n, len(audit(exp, monitor.monitor_id).complete)))
        if (
            n >= promote_round
            and get_external_monitor(experiment_id=exp).assessments_config.shadows
        ):
            result = run_cli("promote", "-x", exp, "--judge", "safety")  # finish what was cut
            assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli("run", "-x", exp, "--once")
    assert result.returncode == 0, result.stderr[-3000:]

    found = audit(exp, monitor.monitor_id)
    live = {t: found.complete[(t, "safety")] for t in trace_ids}
    assert set(live.values()) == {1}, {t: k for t, k in live.items() if k != 1}
    assert all(k == 1 for (_, judge), k in found.complete.items() if judge == "shadow/safety")
    assert killed_mid_work >= 2, f"too few kills landed mid-work: {history}"
    assert not found.partial and not found.errors, (found.partial, found.error_messages[:3])

    fingerprints = {}
    for trace in mlflow.search_traces(locations=[exp], return_type="list"):
        for a in trace.info.assessments:
            if a.name == "safety" and a.source.source_type == "LLM_JUDGE":
                fingerprints[trace.info.trace_id] = a.metadata["mlflow_monitor.fingerprint"]
    old, new = fingerprints[trace_ids[0]], fingerprints[trace_ids[-1]]
    assert old != new and set(fingerprints.values()) == {old, new}
    assert after_promote and {fingerprints[t] for t in after_promote} == {new}
    now = int(time.time() * 1000)
    rows = report.windows(get_external_monitor(experiment_id=exp), now - 86_400_000, now, "1h")
    assert sum(r["verdicts"] for r in rows) == len(trace_ids)
    assert all(r["unscored"] == 0 for r in rows), "a gap in the judge's windows"
    changes = report.judge_changes(rows)
    assert [(c["before"], c["after"]) for c in changes] == [(old, new)]
    print(f"\npromote under SIGKILL: {len(trace_ids)} traces, promoted in round {promote_round}, "
          f"shadow verdicts {sum(1 for (_, j) in found.complete if j == 'shadow/safety')}, "
          f"kills mid-work {killed_mid_work}, (round, complete verdicts): {history}")  # fmt: skip
