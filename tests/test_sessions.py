"""Session (conversation) judges: a quiet session judged once per judge, on its first trace as
MLflow's own session scoring does; judged again when it continues, the newer verdict
superseding the older; sampled by session id; exactly once across SIGKILL."""

from __future__ import annotations

import json
import signal
import time

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.entities import AssessmentSource

from mlflow_monitor_plugin import create_external_monitor
from mlflow_monitor_plugin.cli.main import monitor as cli
from mlflow_monitor_plugin.discovery.sampling import is_sampled
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine
from mlflow_monitor_plugin.scoring.feedback import JUDGE_KEY, MONITOR_KEY
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.survival import run_cli, start_daemon, wait_until
from tests.traces_factory import log_agent_traces, log_traces

FAST = ScoringSettings(workers=8, attempts=2, backoff_s=0.01, backoff_max_s=0.05)
SETTINGS = EngineSettings(export=False, scoring=FAST, sweep_every_s=0)
SESSION_JUDGES = [
    "conversation_completeness", "user_frustration", "knowledge_retention",
    "conversational_safety", "conversational_role_adherence",
    "conversational_tool_call_efficiency",
]  # fmt: skip
GUIDELINES = {"name": "conversational_guidelines", "args": {"guidelines": ["Be polite."]}}
QUIET_MS = 300_000


def later(ms=QUIET_MS + 60_000):
    return int(time.time() * 1000) + ms


def session_verdicts(experiment_id, monitor_id, valid_only=True):
    """(session, judge) -> the monitor's session verdicts, on whichever trace they are."""
    found = {}
    for trace in mlflow.search_traces(locations=[experiment_id], return_type="list"):
        for a in trace.info.assessments:
            meta = a.metadata or {}
            if meta.get(MONITOR_KEY) != monitor_id or "mlflow.trace.session" not in meta:
                continue
            if valid_only and (a.valid is False or a.error is not None):
                continue
            key = (meta["mlflow.trace.session"], meta[JUDGE_KEY])
            found.setdefault(key, []).append((trace, a))
    return found


def test_session_judges_judge_each_quiet_session_once_on_its_first_trace(
    experiment_id, tracking_uri, fake_judge
):
    first = log_agent_traces(2, session="s-1")
    other = log_agent_traces(1, session="s-2", prefix="x")
    log_traces(1, retriever=False)  # not in a session: no session verdict
    configs = [*({"name": n} for n in SESSION_JUDGES), GUIDELINES]
    if tracking_uri.startswith("http"):  # REST is slow: one judge shows the path works there
        configs = configs[1:2]
    m = create_external_monitor(
        catalog_name="w", schema_name="d", assessments_config={"assessments": configs}
    )
    engine = MonitorEngine.create(experiment_id, SETTINGS)
    engine.run_pass()  # the sessions are not quiet yet
    assert session_verdicts(experiment_id, m.monitor_id) == {}
    stats = engine.run_pass(now_ms=later())
    judges = [c["name"] for c in configs]
    found = session_verdicts(experiment_id, m.monitor_id)
    assert sorted(found) == sorted((s, j) for s in ("s-1", "s-2") for j in judges)
    assert stats.total("scored") == 2 * len(judges)
    for (session, _), verdicts in found.items():
        ((trace, a),) = verdicts
        assert trace.info.trace_id == (first[0] if session == "s-1" else other[0])
        assert a.metadata["mlflow.assessment.onlineScoringSessionId"] == session
        assert a.span_id == trace.data._get_root_span().span_id
    assert found[("s-1", "user_frustration")][0][1].value == "none"
    engine.run_pass(now_ms=later(QUIET_MS + 70_000))  # nothing twice
    assert {k: len(v) for k, v in session_verdicts(experiment_id, m.monitor_id).items()} == {
        k: 1 for k in found
    }


def test_session_that_continues_is_judged_again_and_the_newer_verdict_supersedes(
    sqlite_experiment_id, fake_judge
):
    m = create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"assessments": [{"name": "conversational_safety"},
                                            {"name": "user_frustration", "sample_rate": 0.5}]},
    )  # fmt: skip
    names = (f"chat-{i}" for i in range(1000))  # chat-0 and two of each side of the rate
    ins = [n for n in names if is_sampled(n, m.monitor_id, 0.5)][:2]
    outs = [n for n in (f"chat-{i}" for i in range(1000)) if not is_sampled(n, m.monitor_id, 0.5)]
    sessions = list(dict.fromkeys(["chat-0", *ins, *outs[:2]]))
    for s in sessions:
        log_agent_traces(1, session=s, prefix=s)
    engine = MonitorEngine.create(sqlite_experiment_id, SETTINGS)
    engine.run_pass(now_ms=later())
    found = session_verdicts(sqlite_experiment_id, m.monitor_id)
    sampled = {s for s in sessions if is_sampled(s, m.monitor_id, 0.5)}
    assert 0 < len(sampled) < len(sessions)  # sampled by session id
    assert {s for s, j in found if j == "user_frustration"} == sampled
    old = found[("chat-0", "conversational_safety")][0][1]
    reviewed = found[(sessions[1], "conversational_safety")][0][1]
    mlflow.override_feedback(
        trace_id=reviewed.trace_id, assessment_id=reviewed.assessment_id, value="no",
        source=AssessmentSource(source_type="HUMAN", source_id="reviewer"),
    )  # fmt: skip
    log_agent_traces(1, session="chat-0", prefix="UNSAFE")  # the conversation goes on
    engine.run_pass(now_ms=later(QUIET_MS - 60_000))  # not quiet again yet: nothing new
    now = session_verdicts(sqlite_experiment_id, m.monitor_id)
    assert [a.assessment_id for _, a in now[("chat-0", "conversational_safety")]] == [
        old.assessment_id
    ]
    engine.run_pass(now_ms=later(2 * QUIET_MS))
    every = session_verdicts(sqlite_experiment_id, m.monitor_id, valid_only=False)
    safety = {a.assessment_id: a for _, a in every[("chat-0", "conversational_safety")]}
    assert len(safety) == 2
    assert safety[old.assessment_id].valid is False  # kept, superseded
    (new,) = [a for a in safety.values() if a.valid is not False]
    assert new.overrides == old.assessment_id
    assert new.value == "no"  # the judge saw the new turn
    assert new.metadata["mlflow_monitor.session_version"].startswith("2:")
    others = session_verdicts(sqlite_experiment_id, m.monitor_id)
    assert all(len(v) == 1 for v in others.values())  # the other sessions: untouched
    # a verdict a person overrode is not judged again
    assert [a.assessment_id for _, a in every[(sessions[1], "conversational_safety")]] == [
        reviewed.assessment_id
    ]
    status = CliRunner().invoke(cli, ["status", "-x", sqlite_experiment_id, "--output", "json"])
    rows = {r["judge"]: r for r in json.loads(status.output)["judges"]}
    safety = rows["conversational_safety"]
    assert safety["eligible"] == safety["scored"] == len(sessions)
    assert rows["user_frustration"]["scored"] == len(sampled)
    # the windows of traces leave session judges out: their verdicts are the sessions'
    window_judges = {w["judge"] for w in json.loads(status.output)["windows"]}
    assert not window_judges & {"conversational_safety", "user_frustration"}


@pytest.mark.slow
def test_session_judges_exactly_once_across_sigkill(sqlite_uri, tmp_path, fake_judge):
    fake_judge.behaviour.latency_s = 0.05
    mlflow.set_experiment("session-crash")
    sessions = [f"conv-{i}" for i in range(8)]
    for s in sessions:
        log_agent_traces(2, session=s, prefix=s)
    m = create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"assessments": [{"name": "conversational_safety"},
                                            {"name": "knowledge_retention"}]},
    )  # fmt: skip
    args = ("-x", m.experiment_id, "--interval", "1", "--workers", "2", "--session-quiet", "0",
            "--no-export")  # fmt: skip
    kills = 0
    for _ in range(2):
        daemon = start_daemon(tmp_path / "daemon.log", *args)
        calls = fake_judge.count("ok")
        try:
            wait_until(lambda c=calls: fake_judge.count("ok") > c + 3, 60, every_s=0.02)
            daemon.process.send_signal(signal.SIGKILL)
            kills += 1
        finally:
            daemon.kill()
    result = run_cli("run", "-x", m.experiment_id, "--once", "--session-quiet", "0", "--no-export")
    assert result.returncode == 0, result.stderr[-3000:]
    found = session_verdicts(m.experiment_id, m.monitor_id)
    expected = {(s, j) for s in sessions for j in ("conversational_safety", "knowledge_retention")}
    assert set(found) == expected
    duplicates = {k: len(v) for k, v in found.items() if len(v) > 1}
    assert not duplicates, duplicates
    every = session_verdicts(m.experiment_id, m.monitor_id, valid_only=False)
    assert all(len(v) == 1 for v in every.values())  # no error or superseded copies either
    assert kills == 2


def test_late_trace_behind_the_session_cursor_is_found_by_the_sweep(
    sqlite_experiment_id, fake_judge
):
    first, second = log_agent_traces(2, session="late-1")
    m = create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"assessments": [{"name": "conversational_safety"}]},
    )  # fmt: skip
    engine = MonitorEngine.create(sqlite_experiment_id, SETTINGS)
    engine.run_pass(now_ms=later())
    (old,) = session_verdicts(sqlite_experiment_id, m.monitor_id)[
        ("late-1", "conversational_safety")
    ]
    started = mlflow.get_trace(first).info.timestamp_ms + 1  # between the two: behind the cursor
    assert started < mlflow.get_trace(second).info.timestamp_ms
    span = mlflow.start_span_no_context(
        "late_turn", inputs={"question": "UNSAFE late turn"}, start_time_ns=started * 1_000_000,
        metadata={"mlflow.trace.session": "late-1"},
    )  # fmt: skip
    span.set_outputs("sure")
    span.end(end_time_ns=(started + 5) * 1_000_000)
    engine.run_pass(now_ms=later(QUIET_MS + 120_000))
    every = session_verdicts(sqlite_experiment_id, m.monitor_id, valid_only=False)
    verdicts = {a.assessment_id: a for _, a in every[("late-1", "conversational_safety")]}
    assert len(verdicts) == 2 and verdicts[old[1].assessment_id].valid is False
    (new,) = [a for a in verdicts.values() if a.valid is not False]
    assert new.value == "no" and new.metadata["mlflow_monitor.session_version"].startswith("3:")
    assert new.trace_id == first
