"""Judges configured in MLflow (the Judges page's REST calls, ``Scorer.register().start()``) run
in the daemon; the monitor's own judges are listed there; ``gateway:/`` models go through the
tracking server's AI Gateway with no key in the daemon's environment. Real `mlflow server`,
real gateway endpoint, the fake judge behind it."""

from __future__ import annotations

import json
import time

import mlflow
import pytest
from mlflow.genai.judges import make_judge
from mlflow.genai.scorers import ScorerSamplingConfig, list_scorers
from mlflow.tracking import MlflowClient

from mlflow_monitor_plugin import (
    create_external_monitor,
    delete_external_monitor,
    update_external_monitor,
)
from mlflow_monitor_plugin.config.registered import MLFLOW_TRACE_CHECKPOINT
from mlflow_monitor_plugin.discovery.sampling import is_sampled
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine
from mlflow_monitor_plugin.scoring import usage
from mlflow_monitor_plugin.scoring.feedback import MONITOR_KEY
from mlflow_monitor_plugin.scoring.proxy import ProxySettings, judge_proxy
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.gateway import register_ui_judge
from tests.traces_factory import feedback_by_trace, log_traces

FAST = ScoringSettings(workers=4, attempts=2, backoff_s=0.01, backoff_max_s=0.05)
SETTINGS = EngineSettings(export=False, windows=False, scoring=FAST, sweep_every_s=0)
PROXY = ProxySettings(attempts=2, backoff_s=0.01, backoff_max_s=0.02)


def _pass(experiment_id):
    engine = MonitorEngine.create(experiment_id, SETTINGS)
    try:
        with judge_proxy(PROXY):
            return engine.run_pass()
    finally:
        engine.release_lease()


def _verdicts(experiment_id, monitor_id):
    """(trace id, judge) -> the monitor's valid verdicts of it."""
    found = {}
    for trace_id, assessments in feedback_by_trace(experiment_id).items():
        for a in assessments:
            if (a.metadata or {}).get(MONITOR_KEY) == monitor_id and a.error is None:
                found.setdefault((trace_id, a.name), []).append(a)
    return found


@pytest.fixture
def gateway_experiment(rest_uri, gateway_judge):
    experiment_id = mlflow.set_experiment(f"registered-{time.time_ns()}").experiment_id
    judge, endpoint = gateway_judge
    return experiment_id, judge, f"gateway:/{endpoint}"


def test_judges_started_in_mlflow_run_in_the_daemon_through_the_gateway_with_no_key(
    gateway_experiment, mlflow_server
):
    exp, judge, model = gateway_experiment
    ids = log_traces(6, retriever=False)
    # made as the Judges page makes it, and as the Python API does
    register_ui_judge(mlflow_server.url, exp, "polite_ui", "Is {{ outputs }} polite?", model)
    py = make_judge(name="concise", instructions="Is {{ outputs }} concise?",
                    feedback_value_type=bool, model=model)  # fmt: skip
    py.register(name="concise", experiment_id=exp).start(
        sampling_config=ScorerSamplingConfig(sample_rate=0.5)
    )
    m = create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"assessments": [{"name": "safety", "model": model},
                                            {"name": "pii_detection"}]},
    )  # fmt: skip

    stats = _pass(exp)

    found = _verdicts(exp, m.monitor_id)
    half = [t for t in ids if is_sampled(t, m.monitor_id, 0.5)]
    for trace_id in ids:
        for name in ("safety", "pii_detection", "polite_ui"):
            assert len(found[(trace_id, name)]) == 1, (trace_id, name)
        assert ((trace_id, "concise") in found) == (trace_id in half)
    assert stats.judges["polite_ui"]["scored"] == 6
    from click.testing import CliRunner

    from mlflow_monitor_plugin.cli import monitor as cli

    shown = CliRunner().invoke(cli, ["report", "-x", exp, "--output", "json"]).stdout
    assert json.loads(shown)["judges_from_mlflow"] == ["concise", "polite_ui"]
    # every call went through the gateway to the judge behind it; tokens counted per verdict
    assert judge.count("ok") == 6 + 6 + len(half)
    verdict = found[(ids[0], "polite_ui")][0]
    assert verdict.source.source_id == model and usage.TOTAL_TOKENS_KEY in verdict.metadata
    # MLflow's own runner is held off: its checkpoint follows the daemon
    tags = MlflowClient().get_experiment(exp).tags
    held = json.loads(tags[MLFLOW_TRACE_CHECKPOINT])["timestamp_ms"]
    assert abs(held - time.time() * 1000) < 120_000

    # stop() and update() in MLflow take effect on the next pass
    mlflow.genai.scorers.get_scorer(name="polite_ui", experiment_id=exp).stop()
    mlflow.genai.scorers.get_scorer(name="concise", experiment_id=exp).update(
        sampling_config=ScorerSamplingConfig(sample_rate=1.0)
    )
    more = log_traces(3, retriever=False, prefix="more")
    _pass(exp)
    found = _verdicts(exp, m.monitor_id)
    for trace_id in more:
        assert (trace_id, "polite_ui") not in found and len(found[(trace_id, "concise")]) == 1


def test_the_monitors_judges_are_listed_in_mlflow_and_kept_in_step(gateway_experiment):
    exp, _, model = gateway_experiment
    create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"sample": 0.4, "assessments": [
            {"name": "safety", "model": model, "filter_string": "trace.status = 'OK'"},
            {"name": "relevance_to_query"},
            {"name": "response_length", "args": {"max_length": 100}},
            {"kind": "code", "name": "tone_check"}]},
    )  # fmt: skip
    listed = {s.name: s for s in list_scorers(experiment_id=exp)}
    assert set(listed) == {"safety", "relevance_to_query", "response_length"}
    # a gateway judge is started there with its rate and filter; MLflow starts no other model
    assert (listed["safety"].sample_rate, listed["safety"].filter_string) == (
        0.4, "trace.status = 'OK'",
    )  # fmt: skip
    assert listed["relevance_to_query"].sample_rate is None
    status = {r["judge"]: r["role"] for r in _status(exp)["mlflow_judges"]}
    assert status["safety"] == "the monitor's own judge, listed in MLflow"
    assert status["relevance_to_query"].startswith("the monitor's own judge, listed in MLflow (")
    assert "not listed in MLflow: a code judge lives in the daemon's" in status["tone_check"]

    update_external_monitor(
        experiment_id=exp,
        assessments_config={"sample": 0.2, "assessments": [{"name": "safety", "model": model}]},
    )
    listed = {s.name: s for s in list_scorers(experiment_id=exp)}
    assert set(listed) == {"safety"} and listed["safety"].sample_rate == 0.2
    assert listed["safety"].filter_string is None
    delete_external_monitor(experiment_id=exp)
    assert list_scorers(experiment_id=exp) == []


def _status(experiment_id):
    from click.testing import CliRunner

    from mlflow_monitor_plugin.cli import monitor

    out = CliRunner().invoke(monitor, ["status", "-x", experiment_id, "--output", "json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)  # MLflow logs to stderr


def test_a_missing_gateway_endpoint_is_error_feedback_naming_it_and_the_rest_runs(
    gateway_experiment,
):
    exp, _, model = gateway_experiment
    ids = log_traces(3, retriever=False)
    m = create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"assessments": [{"name": "safety", "model": "gateway:/no-such-ep"},
                                            {"name": "fluency", "model": model}]},
    )  # fmt: skip
    stats = _pass(exp)
    assert stats.judges["fluency"]["scored"] == 3 and stats.judges["safety"]["scored"] == 0
    for trace in mlflow.search_traces(locations=[exp], return_type="list", include_spans=False):
        (error,) = [a for a in trace.info.assessments if a.name == "safety"]
        assert "no-such-ep" in error.error.error_message  # names the endpoint
    assert len(_verdicts(exp, m.monitor_id)) == len(ids)  # fluency's, one each


def test_a_registered_judge_that_cannot_be_loaded_is_listed_unavailable_never_a_crash(
    gateway_experiment, mlflow_server
):
    exp, _, model = gateway_experiment
    log_traces(2, retriever=False)
    future = {"name": "future_judge", "mlflow_version": "9.0.0", "serialization_version": 2,
              "builtin_scorer_class": "FutureJudge", "new_field": 1,
              "builtin_scorer_pydantic_data": {"name": "future_judge", "model": model}}  # fmt: skip
    ajax = "/ajax-api/3.0/mlflow/scorers"
    from tests.gateway import call

    call(
        mlflow_server.url,
        "POST",
        f"{ajax}/register",
        {"experiment_id": exp, "name": "future_judge", "serialized_scorer": json.dumps(future)},
    )
    call(mlflow_server.url, "PUT", f"{ajax}/online-config",
         {"experiment_id": exp, "name": "future_judge", "sample_rate": 1.0})  # fmt: skip
    m = create_external_monitor(
        catalog_name="w",
        schema_name="d",
        assessments_config={"assessments": [{"name": "pii_detection"}]},
    )
    stats = _pass(exp)
    assert stats.judges["pii_detection"]["scored"] == 2 and "future_judge" not in stats.judges
    roles = {r["judge"]: r["role"] for r in _status(exp)["mlflow_judges"]}
    assert roles["future_judge"].startswith("unavailable: MLflow cannot load its definition")
    assert "FutureJudge" in roles["future_judge"]
    judges = {r["judge"]: r for r in _status(exp)["judges"]}
    assert judges["future_judge"]["unavailable"] and judges["future_judge"]["origin"] == "mlflow"
    assert m.monitor_id


def test_a_judge_deleted_in_mlflow_while_its_calls_are_in_flight_loses_and_doubles_nothing(
    gateway_experiment, mlflow_server
):
    import threading

    exp, judge, model = gateway_experiment
    judge.behaviour.latency_s = 0.3
    ids = log_traces(12, retriever=False)
    register_ui_judge(mlflow_server.url, exp, "polite_ui", "Is {{ outputs }} polite?", model)
    m = create_external_monitor(
        catalog_name="w",
        schema_name="d",
        assessments_config={"assessments": [{"name": "pii_detection"}]},
    )
    running = threading.Thread(target=_pass, args=(exp,))
    running.start()
    assert _wait(lambda: judge.count("ok") > 0, 60)
    mlflow.genai.scorers.delete_scorer(name="polite_ui", experiment_id=exp, version="all")
    running.join(120)
    more = log_traces(3, retriever=False, prefix="after")
    _pass(exp)  # the judge is gone: not run again; what was in flight was written once
    found = _verdicts(exp, m.monitor_id)
    polite = [t for t in ids if (t, "polite_ui") in found]
    assert all(len(found[(t, "polite_ui")]) == 1 for t in polite)
    assert len(polite) == judge.count("ok")  # every answered call has its verdict, once
    assert not any((t, "polite_ui") in found for t in more)
    assert all(len(found[(t, "pii_detection")]) == 1 for t in ids + more)


def _wait(condition, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow
def test_sigkill_at_random_moments_never_loses_or_doubles_a_registered_judges_verdict(
    gateway_experiment, mlflow_server, tmp_path
):
    import random
    import signal

    from tests.survival import audit, expected_pairs, run_cli, start_daemon, wait_until

    exp, judge, model = gateway_experiment
    judge.behaviour.latency_s = 0.05
    register_ui_judge(mlflow_server.url, exp, "polite_ui", "Is {{ outputs }} polite?", model,
                      sample_rate=0.5)  # fmt: skip
    m = create_external_monitor(
        catalog_name="w",
        schema_name="d",
        export_uri=str(tmp_path / "x"),
        assessments_config={"assessments": [{"name": "pii_detection"}]},
    )
    rates = {"polite_ui": 0.5, "pii_detection": 1.0}
    ids = log_traces(60, retriever=False, prefix="base")
    rng, killed = random.Random(24), 0
    for n in range(4):
        ids += log_traces(25, retriever=False, prefix=f"r{n}-")  # work for the kill to land in
        daemon = start_daemon(tmp_path / "daemon.log", "-x", exp, "--interval", "1")
        try:
            calls = judge.count("ok")
            wait_until(lambda c=calls: judge.count("ok") > c, 30, every_s=0.02)
            time.sleep(rng.uniform(0.0, 0.4))
            assert daemon.process.poll() is None, daemon.log()[-3000:]
            daemon.process.send_signal(signal.SIGKILL)
        finally:
            daemon.kill()
        pending = set(expected_pairs(ids, m.monitor_id, rates)) - set(
            audit(exp, m.monitor_id).complete
        )
        killed += bool(pending)
    result = run_cli("run", "-x", exp, "--once")
    assert result.returncode == 0, result.stderr[-3000:]
    found = audit(exp, m.monitor_id)
    assert found.complete == expected_pairs(ids, m.monitor_id, rates)
    assert not found.partial and not found.errors and killed >= 2
