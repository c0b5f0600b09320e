"""Judge calls in flight up to the limit, feeding one writer; pages overlapping in a pass; and a
slow judge never asked twice about the same pair."""

import json
import threading
import time
from collections import Counter

import pytest
from click.testing import CliRunner

from mlflow_monitor_plugin import create_external_monitor
from mlflow_monitor_plugin.cli import monitor as monitor_cli
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine
from mlflow_monitor_plugin.scoring.dispatch import Batch, Dispatcher, Job
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.survival import audit, expected_pairs, start_daemon, wait_until
from tests.traces_factory import log_traces


class Ok:
    ok = True

    def __init__(self, n):
        self.n = n


class Recorder:
    """A judge call that takes ``delay_s`` and a writer, both counting who runs at once."""

    def __init__(self, delay_s=0.02):
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.calling = self.peak_calls = 0
        self.writer_threads = set()
        self.written = []

    def call(self, trace, judge, session=None):
        with self.lock:
            self.calling += 1
            self.peak_calls = max(self.peak_calls, self.calling)
        time.sleep(self.delay_s)
        with self.lock:
            self.calling -= 1
        return Ok(trace)

    def write(self, verdict):
        self.writer_threads.add(threading.current_thread().name)
        time.sleep(0.001)
        self.written.append(verdict.n)
        return 1


def test_dispatcher_keeps_the_target_in_flight_and_writes_on_one_thread():
    rec = Recorder()
    dispatcher = Dispatcher(rec.call, target=lambda: 3, max_threads=16, writers=1)
    batches = [Batch(10), Batch(10)]
    try:
        for b, batch in enumerate(batches):
            dispatcher.submit([Job(b * 10 + i, None, batch, rec.write) for i in range(10)])
        results = [r for batch in batches for r in batch]
    finally:
        dispatcher.close()
    assert rec.peak_calls == 3
    assert sorted(v.n for v, _ in results) == list(range(20))
    assert all(logged == 1 for _, logged in results)  # handed back only once written
    assert sorted(rec.written) == list(range(20)) and len(rec.writer_threads) == 1


def test_a_traces_verdicts_are_written_by_one_writer_never_two_at_once():
    """MLflow's file store races when two threads log the first assessments of one trace."""
    rec = Recorder(delay_s=0.001)
    threads_of: dict[int, set[str]] = {}
    writing: Counter = Counter()
    overlaps = []

    def write(verdict):
        with rec.lock:
            writing[verdict.n] += 1
            overlaps.append(writing[verdict.n] > 1)
            threads_of.setdefault(verdict.n, set()).add(threading.current_thread().name)
        time.sleep(0.002)
        with rec.lock:
            writing[verdict.n] -= 1
        return 1

    dispatcher = Dispatcher(rec.call, target=lambda: 16, max_threads=16, writers=4)
    batch = Batch(12 * 5)
    try:  # 12 traces, 5 judges each
        dispatcher.submit([Job(t, None, batch, write) for _ in range(5) for t in range(12)])
        assert len(list(batch)) == 60
    finally:
        dispatcher.close()
    assert all(len(names) == 1 for names in threads_of.values())
    assert len(set().union(*threads_of.values())) > 1  # the traces still spread over writers
    assert not any(overlaps)


def test_settle_drops_calls_not_started_and_waits_for_writes_in_flight():
    rec = Recorder(delay_s=0.2)
    dispatcher = Dispatcher(rec.call, target=lambda: 2, max_threads=4)
    batch = Batch(10)
    dispatcher.submit([Job(i, None, batch, rec.write) for i in range(10)])
    time.sleep(0.05)
    dispatcher.settle()
    assert sorted(rec.written) == [0, 1]  # the two in flight finished, written; the rest dropped
    assert dispatcher.idle
    dispatcher.close()


def test_a_failing_write_fails_its_batch():
    def write(verdict):
        raise OSError("store gone")

    dispatcher = Dispatcher(Recorder().call, target=lambda: 2, max_threads=2)
    batch = Batch(2)
    dispatcher.submit([Job(i, None, batch, write) for i in range(2)])
    with pytest.raises(OSError, match="store gone"):
        list(batch)
    dispatcher.close()


def test_the_next_pages_judges_start_before_this_page_is_finished(sqlite_experiment_id, fake_judge):
    fake_judge.behaviour.latency_s = 1.0
    ids = log_traces(8, retriever=False)
    m = create_external_monitor(
        catalog_name="w", schema_name="d", assessments_config={"assessments": [{"name": "safety"}]}
    )
    scoring = ScoringSettings(workers=8, attempts=1)
    settings = EngineSettings(export=False, sweep_every_s=0, page_size=2, scoring=scoring)
    engine = MonitorEngine.create(sqlite_experiment_id, settings)
    stats = engine.run_pass()
    assert stats.total("scored") == 8
    assert fake_judge.peak_active > 2  # more than a page of two traces at once: pages overlap
    assert audit(sqlite_experiment_id, m.monitor_id).complete == Counter(
        {(t, "safety"): 1 for t in ids}
    )
    checkpoint = engine.tags.read_json(sqlite_experiment_id, "checkpoint")
    assert checkpoint["score"]["trace_id"] == ids[-1]


@pytest.mark.slow
def test_a_5s_judge_at_interval_1_is_asked_once_per_pair(
    sqlite_experiment_id, tmp_path, fake_judge
):
    fake_judge.behaviour.latency_s = 5.0
    suite = {"assessments": [{"name": "safety"}, {"name": "relevance_to_query"}]}
    m = create_external_monitor(catalog_name="w", schema_name="d", assessments_config=suite)
    ids = log_traces(10, retriever=False)
    expected = expected_pairs(ids, m.monitor_id, {"safety": 1.0, "relevance_to_query": 1.0})
    daemon = start_daemon(tmp_path / "daemon.log", "-x", m.experiment_id, "--interval", "1",
                          "--no-export")  # fmt: skip
    try:
        done = lambda: audit(m.experiment_id, m.monitor_id).complete == expected  # noqa: E731
        assert wait_until(done, 60), daemon.log()[-3000:]
        time.sleep(3)  # three more passes at --interval 1: none may ask again
        status = CliRunner().invoke(
            monitor_cli, ["status", "-x", m.experiment_id, "--output", "json"]
        )
        assert daemon.terminate() == 0, daemon.log()[-3000:]
    finally:
        daemon.kill()
    bodies = Counter(json.dumps(r, sort_keys=True) for r in fake_judge.requests)
    assert fake_judge.count("ok") == len(expected) == 20
    assert len(bodies) == 20 and set(bodies.values()) == {1}, "a pair was asked twice"
    assert fake_judge.peak_active > 8  # the limit grew past its start: 20 calls in two rounds
    assert status.exit_code == 0, status.output
    concurrency = json.loads(status.output)["concurrency"]
    assert concurrency["mode"] == "adaptive" and concurrency["limit"] >= 8
    assert concurrency["max"] == 256 and concurrency["calls"] >= 20
