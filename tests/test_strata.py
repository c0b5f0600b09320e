"""Strata (config/strata.py): the config and its errors, the CLI, and end to end on a real
SQLite store a scripted app whose errors and slow traces fail the judge more often.

The sample is a hash of (monitor id, trace id); the test fixes both (a seeded trace id
generator, a stated monitor id) so its numbers are the same on every run."""

from __future__ import annotations

import dataclasses
import random
import time

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.entities import AssessmentSource

from mlflow_monitor_plugin import (
    AssessmentsSuiteConfig,
    MonitorConfigError,
    create_external_monitor,
    update_external_monitor,
)
from mlflow_monitor_plugin.cli import monitor as monitor_cli
from mlflow_monitor_plugin.config.tags import MonitorTags
from mlflow_monitor_plugin.discovery.sampling import sample_point
from mlflow_monitor_plugin.discovery.traces import TraceSource
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine
from mlflow_monitor_plugin.engine.plan import plan
from mlflow_monitor_plugin.observe import report
from mlflow_monitor_plugin.observe.windows import HOUR_MS, window_start
from mlflow_monitor_plugin.scoring.feedback import INCLUSION_KEY, MONITOR_KEY, STRATUM_KEY
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.traces_factory import feedback_by_trace

SETTINGS = EngineSettings(
    scoring=ScoringSettings(workers=4, attempts=1), sweep_every_s=0, export=False, windows=False
)
JUDGE = {"name": "response_length", "args": {"max_length": 20}}  # long answers fail
STRATA = [
    {"name": "errors", "filter_string": "trace.status = 'ERROR'", "sample_rate": 1.0},
    {"name": "slow", "filter_string": "trace.execution_time_ms > 5000", "sample_rate": 0.5},
]
# (kind, traces, share failing): the scripted app's errors and slow traces fail more often
APP = [("errors", 15, 0.6), ("slow", 30, 0.3), ("default", 255, 0.04)]


# -- config and CLI ------------------------------------------------------------------------
def test_strata_round_trip_inherit_and_opt_out():
    suite = AssessmentsSuiteConfig.from_dict({
        "sample": 0.05,
        "strata": [*STRATA, {"name": "unhappy", "human_feedback": "user_rating=Thumbs_Down",
                             "sample_rate": 1}],
        "assessments": [JUDGE, {"name": "pii_detection", "strata": []},
                        {"name": "safety", "strata": [STRATA[0]]}],
    })  # fmt: skip
    assert AssessmentsSuiteConfig.from_dict(suite.to_dict()) == suite
    assert suite.strata[2].human_feedback.to_dict() == {"name": "user_rating",
                                                        "value": "Thumbs_Down"}  # fmt: skip
    from mlflow_monitor_plugin.scoring.judges import build_judges

    specs = {j.name: j for j in build_judges(suite)}
    assert [s.name for s in specs["response_length"].strata] == ["errors", "slow", "unhappy"]
    assert specs["pii_detection"].strata == ()
    assert [s.name for s in specs["safety"].strata] == ["errors"]


@pytest.mark.parametrize(
    ("strata", "field", "allowed"),
    [
        ([{"filter_string": "x", "sample_rate": 2}], "strata[0]('stratum_1').sample_rate",
         "between 0.0 and 1.0"),
        ([{"name": "a", "sample_rate": 0.5}], "strata[0]('a')", "filter_string, a human_feedback"),
        ([{"name": "default", "filter_string": "x", "sample_rate": 1}], "strata[0].name",
         "not 'default'"),
        ([{"name": "a", "filter_string": "x", "sample_rate": 1}] * 2, "strata", "at most once"),
        ([{"name": "a", "filter_string": "x", "rate": 1}], "strata[0]", "unknown: ['rate']"),
        ([{"name": "a", "human_feedback": {"name": "r", "score": 1}, "sample_rate": 1}],
         "strata[0]('a').human_feedback", "value optional"),
        ("errors", "strata", "a list of strata"),
    ],
)  # fmt: skip
def test_bad_strata_are_refused_naming_the_field(strata, field, allowed):
    with pytest.raises(MonitorConfigError) as e:
        AssessmentsSuiteConfig.from_dict({"strata": strata, "assessments": [JUDGE]})
    assert e.value.field.endswith(field) and allowed in str(e.value), str(e.value)


def test_a_session_judge_takes_no_strata():
    with pytest.raises(MonitorConfigError, match="no strata on a session judge"):
        AssessmentsSuiteConfig.from_dict(
            {"assessments": [{"name": "user_frustration", "strata": STRATA}]}
        )


def test_cli_stratum_create_get_and_a_filter_mlflow_rejects(sqlite_experiment_id):
    runner = CliRunner()
    args = ["create", "-x", sqlite_experiment_id, "--judge", "pii_detection", "--sample", "0.02",
            "--stratum", "errors=trace.status = 'ERROR'@1",
            "--stratum", "unhappy=human:user_rating=thumbs_down@0.5"]  # fmt: skip
    result = runner.invoke(monitor_cli, args)
    assert result.exit_code == 0, result.output
    got = runner.invoke(monitor_cli, ["get", "-x", sqlite_experiment_id]).output
    assert "errors @ 1 (where trace.status = 'ERROR')" in got
    assert "unhappy @ 0.5 (human user_rating = thumbs_down)" in got
    assert "default @ each judge's rate" in got
    bad = runner.invoke(monitor_cli, ["update", "-x", sqlite_experiment_id, "--judge", "safety",
                                      "--stratum", "x=trace.nope > 1@1"])  # fmt: skip
    assert bad.exit_code == 2 and "strata[0].filter_string" in bad.output, bad.output
    bad = runner.invoke(monitor_cli, ["update", "-x", sqlite_experiment_id, "--judge", "safety",
                                      "--stratum", "errors=trace.status = 'ERROR'"])  # fmt: skip
    assert bad.exit_code == 2 and "NAME=FILTER@RATE" in bad.output, bad.output


# -- end to end ----------------------------------------------------------------------------
def log_app(start_ms: int, rng: random.Random) -> dict[str, tuple[str, bool]]:
    """The scripted app's traces in one hour: trace id -> (kind, fails the judge)."""
    traces = {}
    stamp = start_ms + 1000
    kinds = [(kind, share) for kind, count, share in APP for _ in range(count)]
    rng.shuffle(kinds)
    for kind, share in kinds:
        fails = rng.random() < share
        span = mlflow.start_span_no_context(
            "app", inputs={"q": "question"}, start_time_ns=stamp * 10**6
        )
        span.set_outputs("a long rambling answer, far too long" if fails else "short answer")
        if kind == "errors":
            span.set_status("ERROR")
        duration = 6000 if kind == "slow" else 200
        span.end(end_time_ns=(stamp + duration) * 10**6)
        traces[span.trace_id] = (kind, fails)
        stamp += 100
    return traces


def run_as(experiment_id: str, monitor_id: str, suite: dict) -> object:
    """Give the experiment's monitor ``suite`` under ``monitor_id`` (a fresh monitor to the
    engine: its own cursor and verdicts), run a pass; returns the monitor."""
    update_external_monitor(experiment_id=experiment_id, assessments_config=suite)
    tags = MonitorTags()
    monitor = dataclasses.replace(tags.read_config(experiment_id), monitor_id=monitor_id)
    tags.write_config(monitor)
    engine = MonitorEngine.create(experiment_id, SETTINGS)
    engine.run_pass()
    engine.release_lease()  # the next phase's engine takes the experiment at once
    return tags.read_config(experiment_id)


def verdicts(experiment_id: str, monitor_id: str) -> dict[str, object]:
    """trace id -> this monitor's response_length verdict."""
    return {
        trace_id: a
        for trace_id, assessments in feedback_by_trace(experiment_id).items()
        for a in assessments
        if (a.metadata or {}).get(MONITOR_KEY) == monitor_id and a.error is None
    }


def test_stratified_finds_more_failures_at_equal_calls_and_its_interval_holds_the_truth(
    sqlite_experiment_id, capsys
):
    exp = sqlite_experiment_id
    now_ms = int(time.time() * 1000)
    start = window_start(now_ms, HOUR_MS) - 2 * HOUR_MS
    random.seed(20261206)  # MLflow draws trace ids from `random`: the same ids on every run
    traces = log_app(start, random.Random(7))
    create_external_monitor(
        catalog_name="w", schema_name="d", assessments_config={"assessments": [JUDGE]}
    )
    strat = {"sample": 0.05, "strata": STRATA, "assessments": [JUDGE]}
    monitor = run_as(exp, "strata-e2e-stratified", strat)
    found = verdicts(exp, "strata-e2e-stratified")
    calls = len(found)
    failing = sum(
        a.value is False or str(a.value).lower() in ("no", "false") for a in found.values()
    )
    for trace_id, a in found.items():  # each verdict records its stratum and probability
        kind = traces[trace_id][0]
        assert a.metadata[STRATUM_KEY] == kind
        assert float(a.metadata[INCLUSION_KEY]) == {"errors": 1.0, "slow": 0.5}.get(kind, 0.05)
    assert {traces[t][0] for t in found} == {"errors", "slow", "default"}

    rows = report.windows(monitor, start, now_ms, "1h", by_stratum=True)
    window = next(r for r in rows if r["judge"] == "response_length")
    own = {r["stratum"]: r for r in rows if r.get("stratum")}
    assert set(own) == {"errors", "slow", "default"} and own["errors"]["eligible"] == 15
    projected = plan(monitor, TraceSource(exp), now_ms, 3 * HOUR_MS)
    (judge_plan,) = projected.to_dict()["judges"]

    # the truth: every trace scored
    every = run_as(exp, "strata-e2e-every", {"sample": 1.0, "assessments": [JUDGE]})
    truth = next(r for r in report.windows(every, start, now_ms, "1h"))
    assert truth["verdicts"] == len(traces) and truth["pass_rate_low95"] == truth["pass_rate"]
    true_failing = sum(fails for _, fails in traces.values())
    assert truth["failed"] == true_failing

    # uniform at exactly the same number of judge calls: the rate between the calls-th and
    # the next trace's sample point picks exactly that many
    points = sorted(sample_point(t, "strata-e2e-uniform") for t in traces)
    rate = (points[calls - 1] + points[calls]) / 2
    run_as(exp, "strata-e2e-uniform", {"sample": rate, "assessments": [JUDGE]})
    uniform = verdicts(exp, "strata-e2e-uniform")
    uniform_failing = sum(str(a.value).lower() in ("no", "false") for a in uniform.values())

    with capsys.disabled():
        print(
            f"\n{len(traces)} traces, {true_failing} failing: stratified found {failing} "
            f"failing in {calls} judge calls, uniform (rate {rate:.4f}) {uniform_failing} in "
            f"{len(uniform)}; window pass rate {window['pass_rate']:.4f} "
            f"[{window['pass_rate_low95']:.4f}, {window['pass_rate_high95']:.4f}] vs true "
            f"{truth['pass_rate']:.4f} (unweighted sample {window['passed'] / calls:.4f}); "
            f"plan: {judge_plan['failures_found_per_day']:.0f} vs uniform "
            f"{judge_plan['uniform_failures_found_per_day']:.0f} failing/day"
        )
    assert len(uniform) == calls
    assert failing >= 2 * uniform_failing
    assert window["pass_rate_low95"] <= truth["pass_rate"] <= window["pass_rate_high95"]
    unweighted = window["passed"] / window["verdicts"]
    assert not window["pass_rate_low95"] <= unweighted <= window["pass_rate_high95"]
    assert window["estimated_failing"] == pytest.approx(true_failing, rel=0.5)
    # plan: each stratum's traces (per day), its failure rate from these verdicts, and more
    # failing traces found per day than uniform sampling at the same calls
    by_name = {s["stratum"]: s for s in judge_plan["strata"]}
    scale = 24 / 3
    assert by_name["errors"]["traces_per_day"] == pytest.approx(15 * scale)
    assert by_name["errors"]["scored_per_day"] == pytest.approx(15 * scale)
    assert by_name["default"]["fail_rate"] < by_name["slow"]["fail_rate"] < 1
    assert by_name["errors"]["fail_rate"] == pytest.approx(
        sum(fails for kind, fails in traces.values() if kind == "errors") / 15
    )  # every error judged: the stratum's own rate, exactly
    assert judge_plan["failures_found_per_day"] > 2 * judge_plan["uniform_failures_found_per_day"]


def test_a_human_thumbs_down_gets_its_trace_judged_late_through_the_sweep(sqlite_experiment_id):
    exp = sqlite_experiment_id
    start = window_start(int(time.time() * 1000), HOUR_MS) - HOUR_MS
    traces = []
    for i in range(12):
        span = mlflow.start_span_no_context(
            "app", inputs={"q": i}, start_time_ns=(start + i) * 10**6
        )
        span.set_outputs("short answer")
        span.end(end_time_ns=(start + i + 100) * 10**6)
        traces.append(span.trace_id)
    create_external_monitor(catalog_name="w", schema_name="d", assessments_config={
        "sample": 0.0, "assessments": [JUDGE],
        "strata": [{"name": "unhappy", "human_feedback": {"name": "user_rating",
                                                          "value": "thumbs_down"},
                    "sample_rate": 1.0}],
    })  # fmt: skip
    settings = dataclasses.replace(SETTINGS, export=True)  # the sweep knows what it exported
    engine = MonitorEngine.create(exp, settings)
    engine.run_pass()
    assert not verdicts(exp, MonitorTags().read_config(exp).monitor_id)  # rate 0: nothing yet
    person = AssessmentSource("HUMAN", "reviewer")
    for trace_id in traces[:3]:
        mlflow.log_feedback(trace_id=trace_id, name="user_rating", value="Thumbs_Down",
                            source=person)  # fmt: skip
    mlflow.log_feedback(trace_id=traces[3], name="user_rating", value="thumbs_up", source=person)
    mlflow.log_feedback(trace_id=traces[4], name="user_rating", value="thumbs_down")  # not human
    engine.run_pass()  # the sweep revisits the late window: the feedback put 3 in the sample
    found = verdicts(exp, MonitorTags().read_config(exp).monitor_id)
    assert set(found) == set(traces[:3])
    assert {a.metadata[STRATUM_KEY] for a in found.values()} == {"unhappy"}
    engine.run_pass()
    assert len(verdicts(exp, MonitorTags().read_config(exp).monitor_id)) == 3  # once each
