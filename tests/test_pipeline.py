import time
from collections import Counter

import mlflow
import pytest
from mlflow.genai.judges.utils import get_default_model

from mlflow_monitor_plugin import create_external_monitor, update_external_monitor
from mlflow_monitor_plugin.discovery.sampling import is_sampled
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine
from mlflow_monitor_plugin.scoring.feedback import JUDGE_KEY, MONITOR_KEY
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.traces_factory import feedback_by_trace, log_traces

FAST = ScoringSettings(workers=4, attempts=2, backoff_s=0.01, backoff_max_s=0.05)
NO_EXPORT = EngineSettings(export=False, scoring=FAST, sweep_every_s=0)


def monitor(assessments, sample=1.0):
    return create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"sample": sample, "assessments": assessments},
    )  # fmt: skip


def ours(assessments, monitor_id):
    return [a for a in assessments if (a.metadata or {}).get(MONITOR_KEY) == monitor_id]


def verdict_counts(experiment_id, monitor_id):
    """(trace_id, judge) -> number of complete verdicts (feedbacks grouped by verdict id)."""
    counts = Counter()
    for trace_id, assessments in feedback_by_trace(experiment_id).items():
        verdicts = {
            (a.metadata[JUDGE_KEY], a.metadata["mlflow_monitor.verdict_id"])
            for a in ours(assessments, monitor_id)
            if a.error is None
        }
        for judge, _ in verdicts:
            counts[(trace_id, judge)] += 1
    return counts


def test_pass_gives_every_trace_one_verdict_per_judge_and_second_pass_writes_nothing(
    experiment_id, fake_judge
):
    ids = log_traces(6)
    m = monitor([{"name": "safety"}, {"name": "groundedness"}, {"name": "chunk_relevance"},
                 {"guidelines": {"mlflow_only": ["Only answer MLflow questions."]}},
                 {"name": "pii_detection"}])  # fmt: skip
    engine = MonitorEngine.create(experiment_id, NO_EXPORT)
    stats = engine.run_pass()
    assert stats.traces == 6
    counts = verdict_counts(experiment_id, m.monitor_id)
    judges = ["safety", "groundedness", "chunk_relevance", "mlflow_only", "pii_detection"]
    assert counts == Counter({(t, j): 1 for t in ids for j in judges})
    names = {a.name for a in feedback_by_trace(experiment_id)[ids[0]]}
    assert {"safety", "groundedness", "chunk_relevance", "chunk_relevance/precision"} <= names
    safety = next(a for a in feedback_by_trace(experiment_id)[ids[0]] if a.name == "safety")
    assert safety.source.source_type == "LLM_JUDGE"
    assert safety.metadata["mlflow_monitor.config_version"] == "1"
    pii = next(a for a in feedback_by_trace(experiment_id)[ids[0]] if a.name == "pii_detection")
    assert pii.source.source_type == "CODE"

    calls = fake_judge.count("ok")
    again = MonitorEngine.create(experiment_id, NO_EXPORT).run_pass()
    assert again.feedback_logged == 0
    assert fake_judge.count("ok") == calls
    assert verdict_counts(experiment_id, m.monitor_id) == counts


def test_sampling_is_dense_and_deterministic(sqlite_experiment_id):
    ids = log_traces(40, retriever=False)
    length = {"name": "response_length", "sample_rate": 0.5, "args": {"max_length": 100}}
    m = monitor([{"name": "pii_detection", "sample_rate": 0.2}, length])
    MonitorEngine.create(sqlite_experiment_id, NO_EXPORT).run_pass()
    counts = verdict_counts(sqlite_experiment_id, m.monitor_id)
    pii = {t for (t, j) in counts if j == "pii_detection"}
    length = {t for (t, j) in counts if j == "response_length"}
    assert pii == {t for t in ids if is_sampled(t, m.monitor_id, 0.2)}
    assert length == {t for t in ids if is_sampled(t, m.monitor_id, 0.5)}
    assert pii <= length and 0 < len(pii) < len(length) < len(ids)


def test_judge_that_does_not_apply_leaves_no_feedback_and_no_error(
    sqlite_experiment_id, fake_judge
):
    ids = log_traces(3, retriever=False)
    m = monitor([{"name": "groundedness"}, {"name": "safety"}])
    stats = MonitorEngine.create(sqlite_experiment_id, NO_EXPORT).run_pass()
    assert stats.judges["groundedness"]["not_applicable"] == 3
    assert stats.judges["groundedness"]["failed"] == 0
    for trace_id in ids:
        names = [
            a.name for a in ours(feedback_by_trace(sqlite_experiment_id)[trace_id], m.monitor_id)
        ]
        assert names == ["safety"]


def test_crash_between_verdict_and_checkpoint_writes_no_duplicate(experiment_id, fake_judge):
    log_traces(5)
    m = monitor([{"name": "safety"}, {"name": "chunk_relevance"}])
    engine = MonitorEngine.create(experiment_id, NO_EXPORT)
    before = engine.tags.read_json(experiment_id, "checkpoint")
    engine.run_pass()
    # The state a crash right after the feedback writes leaves: verdicts logged, checkpoint not.
    if before is None:
        engine.tags.client.delete_experiment_tag(experiment_id, "mlflow_monitor.checkpoint")
    restarted = MonitorEngine.create(experiment_id, NO_EXPORT, owner=engine.owner)
    stats = restarted.run_pass()
    assert stats.traces == 5 and stats.feedback_logged == 0
    assert stats.judges["safety"]["already_done"] == 5
    assert set(verdict_counts(experiment_id, m.monitor_id).values()) == {1}


def test_partial_verdict_from_a_crash_is_completed_once(experiment_id, fake_judge):
    (trace_id,) = log_traces(1)
    m = monitor([{"name": "chunk_relevance"}])
    engine = MonitorEngine.create(experiment_id, NO_EXPORT)
    engine.run_pass()
    group = ours(feedback_by_trace(experiment_id)[trace_id], m.monitor_id)
    assert len(group) == 3  # precision + one per chunk
    mlflow.delete_assessment(trace_id=trace_id, assessment_id=group[0].assessment_id)
    engine.tags.client.delete_experiment_tag(experiment_id, "mlflow_monitor.checkpoint")
    MonitorEngine.create(experiment_id, NO_EXPORT, owner=engine.owner).run_pass()
    again = ours(feedback_by_trace(experiment_id)[trace_id], m.monitor_id)
    assert len(again) == 3
    assert len({a.metadata["mlflow_monitor.verdict_id"] for a in again}) == 1


def test_a_crash_before_a_retry_cleans_up_is_tidied_by_the_next_walk(experiment_id, fake_judge):
    """A retry logs the whole verdict, then deletes the partial one it replaces: a crash in
    between leaves both, ahead of the checkpoint. The restarted daemon's walk (not only a
    sweep, which may not reach past its starting cursor) keeps the whole one alone."""
    log_traces(1)
    time.sleep(0.01)
    (trace_id,) = log_traces(1)  # after where the restart's walk begins, so after its sweep
    m = monitor([{"name": "chunk_relevance"}])
    engine = MonitorEngine.create(experiment_id, NO_EXPORT)
    engine.run_pass()
    whole = ours(feedback_by_trace(experiment_id)[trace_id], m.monitor_id)
    part = whole[0]  # what the crashed write of an earlier verdict left: one of its parts
    metadata = {**part.metadata, "mlflow_monitor.verdict_id": "0-crashed"}
    mlflow.log_feedback(
        trace_id=trace_id, name=part.name, value=part.value, source=part.source, metadata=metadata
    )
    engine.tags.client.delete_experiment_tag(experiment_id, "mlflow_monitor.checkpoint")
    restarted = MonitorEngine.create(experiment_id, NO_EXPORT, owner=engine.owner)
    stats = restarted.run_pass()
    assert stats.duplicates_removed == 1 and stats.feedback_logged == 0
    again = ours(feedback_by_trace(experiment_id)[trace_id], m.monitor_id)
    assert sorted(a.assessment_id for a in again) == sorted(a.assessment_id for a in whole)


def test_unparseable_reply_is_error_feedback_then_replaced_by_the_verdict(
    sqlite_experiment_id, fake_judge
):
    (trace_id,) = log_traces(1, retriever=False)
    m = monitor([{"name": "safety"}])
    one_try = EngineSettings(export=False, sweep_every_s=0, scoring=ScoringSettings(attempts=1))
    engine = MonitorEngine.create(sqlite_experiment_id, one_try)
    fake_judge.behaviour.scripted = ["malformed", "malformed"]  # the pass, and its sweep
    assert engine.run_pass().judges["safety"]["failed"] == 2
    (error,) = ours(feedback_by_trace(sqlite_experiment_id)[trace_id], m.monitor_id)
    assert error.error is not None and "parse" in error.error.error_message
    assert error.metadata["mlflow_monitor.failed_passes"] == "1"  # the judge answered no one
    stats = engine.run_pass(now_ms=int(time.time() * 1000) + 1)  # the sweep retries it
    assert stats.judges["safety"]["scored"] == 1
    final = ours(feedback_by_trace(sqlite_experiment_id)[trace_id], m.monitor_id)
    assert [(a.name, a.value, a.error) for a in final] == [("safety", "yes", None)]


@pytest.mark.parametrize("fault", ["500", "429"])
def test_transient_judge_faults_end_in_one_verdict(sqlite_experiment_id, fake_judge, fault):
    fake_judge.behaviour.retry_after_s = 0.1
    ids = log_traces(2, retriever=False)
    m = monitor([{"name": "safety"}])
    fake_judge.behaviour.scripted = [fault, fault]
    stats = MonitorEngine.create(sqlite_experiment_id, NO_EXPORT).run_pass()
    assert stats.judges["safety"]["scored"] == 2
    assert fake_judge.count(fault) == 2
    counts = verdict_counts(sqlite_experiment_id, m.monitor_id)
    assert counts == Counter({(t, "safety"): 1 for t in ids})


def test_second_engine_skips_while_the_first_holds_the_lease(experiment_id):
    log_traces(3, retriever=False)
    monitor([{"name": "pii_detection"}])
    first = MonitorEngine.create(experiment_id, NO_EXPORT)
    second = MonitorEngine.create(experiment_id, NO_EXPORT)
    assert first.run_pass().traces == 3
    assert second.run_pass().skipped == "another daemon holds its lease"
    first.release_lease()
    assert second.run_pass().skipped is None


def test_duplicates_from_a_race_are_reconciled_to_one(sqlite_experiment_id):
    (trace_id,) = log_traces(1, retriever=False)
    m = monitor([{"name": "pii_detection"}])
    lease_free = EngineSettings(export=False, scoring=FAST, sweep_every_s=0, lease_ttl_s=0)
    a = MonitorEngine.create(sqlite_experiment_id, lease_free)
    b = MonitorEngine.create(sqlite_experiment_id, lease_free)
    a.run_pass()
    b.tags.client.delete_experiment_tag(sqlite_experiment_id, "mlflow_monitor.checkpoint")
    # b races a: it read the trace before a's verdict landed, so it writes one too
    info = b.source.client.search_traces([sqlite_experiment_id], include_spans=False)[0].info
    info.assessments = []
    spec = b.judges_for(b.tags.read_config(sqlite_experiment_id))[0]
    from mlflow_monitor_plugin.scoring.feedback import FeedbackWriter

    writer = FeedbackWriter(m.monitor_id, 1)
    ((verdict, _),) = b.scorer.runner.run([(b.source.fetch([trace_id])[0], spec)])
    writer.write(verdict, None)
    assert verdict_counts(sqlite_experiment_id, m.monitor_id)[(trace_id, "pii_detection")] == 2
    stats = b.run_pass(now_ms=int(time.time() * 1000) + 1)
    assert stats.duplicates_removed == 1
    assert verdict_counts(sqlite_experiment_id, m.monitor_id)[(trace_id, "pii_detection")] == 1


def test_in_progress_trace_is_scored_once_it_finishes(sqlite_experiment_id):
    monitor([{"name": "pii_detection"}])
    root = mlflow.start_span_no_context("slow_agent", inputs={"q": "hi"})
    child = mlflow.start_span_no_context("step", parent_span=root)
    child.end()
    log_traces(2, retriever=False)
    engine = MonitorEngine.create(sqlite_experiment_id, NO_EXPORT)
    first = engine.run_pass()
    assert first.traces == 2  # the running trace is not scored yet
    root.set_outputs("contact me at a@b.com")
    root.end()
    engine.run_pass(now_ms=int(time.time() * 1000) + 1)
    fb = feedback_by_trace(sqlite_experiment_id)[root.trace_id]
    assert [(a.name, a.value) for a in fb] == [("pii_detection", "no")]


def test_late_arriving_trace_is_picked_up_by_the_sweep(sqlite_experiment_id):
    m = monitor([{"name": "pii_detection"}])
    log_traces(2, retriever=False)
    engine = MonitorEngine.create(sqlite_experiment_id, NO_EXPORT)
    engine.run_pass()
    old = time.time_ns() - 600 * 10**9  # started 10 minutes ago, arrives now
    span = mlflow.start_span_no_context("late", inputs={"q": "x"}, start_time_ns=old)
    span.set_outputs("fine")
    span.end()
    engine.run_pass(now_ms=int(time.time() * 1000) + 1)
    assert verdict_counts(sqlite_experiment_id, m.monitor_id)[(span.trace_id, "pii_detection")] == 1


def test_evaluation_traces_are_skipped(sqlite_experiment_id):
    monitor([{"name": "pii_detection"}])
    with mlflow.start_run():
        log_traces(2, retriever=False)
    (prod,) = log_traces(1, retriever=False)
    stats = MonitorEngine.create(sqlite_experiment_id, NO_EXPORT).run_pass()
    assert stats.traces == 1
    assert {t for t, fb in feedback_by_trace(sqlite_experiment_id).items() if fb} == {prod}


def test_update_applies_to_new_traces_and_paused_scores_nothing(sqlite_experiment_id):
    m = monitor([{"name": "pii_detection"}])
    engine = MonitorEngine.create(sqlite_experiment_id, NO_EXPORT)
    update_external_monitor(
        assessments_config={"paused": True, "assessments": [{"name": "pii_detection"}]}
    )
    log_traces(2, retriever=False)
    assert engine.run_pass().feedback_logged == 0
    update_external_monitor(
        assessments_config={"assessments": [{"name": "response_length", "args": {"max_length": 5}}]}
    )
    (new,) = log_traces(1, retriever=False)
    engine.run_pass()
    fb = ours(feedback_by_trace(sqlite_experiment_id)[new], m.monitor_id)
    assert [(a.name, a.value, a.metadata["mlflow_monitor.config_version"]) for a in fb] == [
        ("response_length", "no", "3")
    ]


def test_status_counts_and_dry_run_test_command(sqlite_experiment_id, fake_judge):
    import json

    from click.testing import CliRunner

    from mlflow_monitor_plugin.cli import monitor as monitor_cli

    log_traces(3, retriever=False)
    monitor([{"name": "groundedness"}, {"name": "safety", "sample_rate": 1.0}])
    dry = CliRunner().invoke(
        monitor_cli, ["test", "-x", sqlite_experiment_id, "--max-traces", "2", "--output", "json"]
    )
    assert dry.exit_code == 0, dry.output
    rows = {r["judge"]: r for r in json.loads(dry.output)}
    assert rows["safety"]["results"] == 2 and rows["groundedness"]["not_applicable"] == 2
    assert feedback_by_trace(sqlite_experiment_id) == {
        t: [] for t in feedback_by_trace(sqlite_experiment_id)
    }

    MonitorEngine.create(sqlite_experiment_id, NO_EXPORT).run_pass()
    log_traces(1, retriever=False, prefix="new")
    out = CliRunner().invoke(
        monitor_cli, ["status", "-x", sqlite_experiment_id, "--output", "json"]
    )
    assert out.exit_code == 0, out.output
    status = json.loads(out.output)
    judges = {r["judge"]: r for r in status["judges"]}
    assert judges["safety"] == {
        "judge": "safety", "source_type": "LLM_JUDGE", "source_id": get_default_model(),
        "eligible": 4, "sampled": 4, "scored": 3, "skipped": 0, "not_applicable": 0, "failed": 0,
        "pending": 1, "origin": "monitor",
    }  # fmt: skip
    assert judges["groundedness"]["not_applicable"] == 3
    assert status["lag_seconds"] >= 0 and status["checkpoint"] is not None
    table = CliRunner().invoke(monitor_cli, ["status", "-x", sqlite_experiment_id])
    assert "checkpoint" in table.output and "safety" in table.output


def test_dead_judge_trips_the_breaker_and_leaves_error_feedback_on_every_pair(
    sqlite_experiment_id, fake_judge
):
    fake_judge.behaviour.fault_rate = 1.0
    fake_judge.behaviour.faults = ("malformed",)
    ids = log_traces(12, retriever=False)
    m = monitor([{"name": "safety"}])
    scoring = ScoringSettings(workers=2, attempts=1, breaker_after=3)
    engine = MonitorEngine.create(
        sqlite_experiment_id, EngineSettings(export=False, scoring=scoring)
    )
    stats = engine.run_pass()
    assert stats.judges["safety"]["failed"] >= 12  # the pass, and its sweep retrying them
    assert fake_judge.count("malformed") < 12  # the breaker stopped calling it, twice
    for trace_id in ids:
        (error,) = ours(feedback_by_trace(sqlite_experiment_id)[trace_id], m.monitor_id)
        assert error.error is not None
        assert error.metadata["mlflow_monitor.failed_passes"] == "1"  # an outage is not charged
