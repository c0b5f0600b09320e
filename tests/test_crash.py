"""The daemon survives SIGKILL at random moments and a second daemon on the same experiment, on
a SQLite store and on `mlflow server` + PostgreSQL: every sampled (trace, judge) pair ends with
exactly one complete verdict, every trace is exported once.
"""

import random
import signal
import time
import uuid

import mlflow
import pytest

from mlflow_monitor_plugin import create_external_monitor
from tests.conftest import TRACKING_URI_FIXTURES
from tests.survival import (
    alive,
    audit,
    children,
    descendants,
    expected_pairs,
    export_counts,
    export_ids,
    run_cli,
    start_daemon,
    wait_until,
)
from tests.traces_factory import log_traces

# chunk_relevance logs three feedbacks per verdict (precision + one per chunk): a kill between
# them leaves a partial verdict that the restart must complete exactly once.
RATES = {"safety": 1.0, "chunk_relevance": 0.5, "pii_detection": 1.0}
SUITE = {"assessments": [{"name": name, "sample_rate": rate} for name, rate in RATES.items()]}


def make_monitor():
    return create_external_monitor(catalog_name="w", schema_name="d", assessments_config=SUITE)


def assert_exactly_once(experiment_id, monitor, trace_ids):
    found = audit(experiment_id, monitor.monitor_id)
    expected = expected_pairs(trace_ids, monitor.monitor_id, RATES)
    missing = set(expected) - set(found.complete)
    duplicated = {k: n for k, n in found.complete.items() if n > 1}
    assert not missing, f"{len(missing)} sampled pairs have no verdict, e.g. {sorted(missing)[:3]}"
    assert not duplicated, f"{len(duplicated)} pairs have several verdicts: {duplicated}"
    assert found.complete == expected
    assert not found.partial, f"partial verdicts left: {dict(found.partial)}"
    assert not found.errors, f"error feedback left: {found.error_messages[:3]}"
    rows, distinct = export_counts(monitor.export_uri)
    assert (rows, distinct) == (len(trace_ids), len(trace_ids)), (
        f"export has {rows} rows for {distinct} distinct traces; {len(trace_ids)} logged"
    )
    assert sorted(export_ids(monitor.export_uri)) == sorted(trace_ids)
    return found


@pytest.mark.slow
@pytest.mark.parametrize(
    ("store", "processes"),
    [("sqlite", 0), ("sqlite", 2), pytest.param("postgres", 0, marks=pytest.mark.postgres)],
    ids=["sqlite-in-process", "sqlite-2-scoring-processes", "postgres-in-process"],
)
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    request, store, tmp_path, fake_judge, processes
):
    request.getfixturevalue(TRACKING_URI_FIXTURES[store])
    rounds, rng = (6 if processes or store != "sqlite" else 10), random.Random(20240605 + processes)
    fake_judge.behaviour.latency_s = 0.02
    mlflow.set_experiment(f"crash-{uuid.uuid4().hex[:8]}")
    monitor = make_monitor()
    trace_ids = log_traces(200, retriever=True, prefix="base")
    experiment_id = monitor.experiment_id
    expected = expected_pairs(trace_ids, monitor.monitor_id, RATES)
    killed_mid_work = scoring_processes_killed = 0
    history = []
    for n in range(rounds):
        # Traces keep arriving between restarts, so every round has work to be killed in.
        trace_ids += log_traces(10, retriever=True, prefix=f"round{n}-")
        daemon = start_daemon(tmp_path / "daemon.log", "-x", experiment_id, "--interval", "1",
                              "--workers", "8", "--processes", str(processes))  # fmt: skip
        calls = fake_judge.count("ok")
        try:
            if rng.random() < 0.5:  # any moment: start-up, lease, scoring, export, idle
                time.sleep(rng.uniform(1.0, 6.0))
            else:  # a moment after the judge calls of this round began
                wait_until(lambda c=calls: fake_judge.count("ok") > c, 15, every_s=0.02)
                time.sleep(rng.uniform(0.0, 1.5))
            assert daemon.process.poll() is None, daemon.log()[-3000:]
            left = descendants(daemon.process.pid)
            # The daemon's children are the fork server and multiprocessing's resource
            # tracker; the scoring processes are the fork server's children.
            helpers = children(daemon.process.pid)
            workers = [pid for pid in left if pid not in helpers]
            scoring_processes_killed += bool(workers)
            daemon.process.send_signal(signal.SIGKILL)
        finally:
            daemon.kill()
        # Scoring processes must not outlive the daemon: they would race its successor.
        assert wait_until(lambda p=workers: not any(alive(pid) for pid in p), 5), workers
        # The fork server goes once it is done importing MLflow (seconds on a loaded machine,
        # when the kill comes at start-up), and the resource tracker after it.
        assert wait_until(lambda p=helpers: not any(alive(pid) for pid in p), 30), helpers
        found = audit(experiment_id, monitor.monitor_id)
        pending = len(expected_pairs(trace_ids, monitor.monitor_id, RATES)) - len(found.complete)
        rows, _ = export_counts(monitor.export_uri)
        killed_mid_work += pending > 0 or rows < len(trace_ids) or bool(found.partial)
        history.append((n, len(found.complete), pending, len(found.partial), rows))
    expected = expected_pairs(trace_ids, monitor.monitor_id, RATES)
    before_final = audit(experiment_id, monitor.monitor_id)
    result = run_cli("run", "-x", experiment_id, "--once")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    found = assert_exactly_once(experiment_id, monitor, trace_ids)
    print(
        f"\nSIGKILL rounds: {rounds}, killed with work pending: {killed_mid_work}, "
        f"traces: {len(trace_ids)}, sampled pairs: {len(expected)}, "
        f"partial verdicts seen before the final pass: {len(before_final.partial)}, "
        f"duplicates before the final pass: {before_final.duplicates()}, "
        f"verdicts lost: {len(set(expected) - set(found.complete))}, "
        f"duplicates: {found.duplicates()}, export rows: {export_counts(monitor.export_uri)}"
        f"\n(round, complete verdicts, pending pairs, partial, export rows): {history}"
    )
    assert killed_mid_work >= 3, f"too few kills landed mid-work: {history}"
    assert scoring_processes_killed >= (3 if processes else 0)
    assert before_final.duplicates() == 0, "a restart wrote a second verdict"


@pytest.mark.slow
def test_two_daemons_on_one_experiment_write_nothing_twice(store_uri, tmp_path, fake_judge):
    fake_judge.behaviour.latency_s = 0.02
    mlflow.set_experiment(f"two-daemons-{uuid.uuid4().hex[:8]}")
    monitor = make_monitor()
    experiment_id = monitor.experiment_id
    trace_ids = log_traces(80, retriever=True, prefix="first")
    args = ("-x", experiment_id, "--interval", "1", "--workers", "4")
    a = start_daemon(tmp_path / "a.log", *args)
    b = start_daemon(tmp_path / "b.log", *args)
    try:

        def done():
            expected = expected_pairs(trace_ids, monitor.monitor_id, RATES)
            complete = audit(experiment_id, monitor.monitor_id).complete
            rows, _ = export_counts(monitor.export_uri)
            return set(expected) <= set(complete) and rows >= len(trace_ids)

        assert wait_until(done, 90), a.log()[-2000:] + b.log()[-2000:]
        trace_ids += log_traces(20, retriever=True, prefix="second")  # while both run
        assert wait_until(done, 60), a.log()[-2000:] + b.log()[-2000:]
        time.sleep(2)  # a racing daemon would write its copy now
        assert a.process.poll() is None and b.process.poll() is None
    finally:
        codes = (a.terminate(), b.terminate())
    worked = [d.log().count("pass: experiment") for d in (a, b)]
    found = audit(experiment_id, monitor.monitor_id)
    rows, distinct = export_counts(monitor.export_uri)
    print(
        f"\ntwo daemons: traces {len(trace_ids)}, passes with work (a, b): {worked}, "
        f"verdict duplicates: {found.duplicates()}, export rows {rows}, distinct {distinct}"
    )
    assert codes == (0, 0)
    assert found.duplicates() == 0, {k: n for k, n in found.complete.items() if n > 1}
    assert_exactly_once(experiment_id, monitor, trace_ids)
