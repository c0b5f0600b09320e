"""The judges beyond the original eight: every production built-in, custom prompts, per-judge
filters, and the ``mlflow monitor judges`` listing."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from click.testing import CliRunner

from mlflow_monitor_plugin import (
    AssessmentsSuiteConfig,
    BuiltinJudge,
    CodeJudge,
    CustomJudge,
    MonitorConfigError,
    create_external_monitor,
    update_external_monitor,
)
from mlflow_monitor_plugin.cli.main import monitor as cli
from mlflow_monitor_plugin.config.catalog import CATALOG, REFUSED
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.test_pipeline import verdict_counts
from tests.traces_factory import feedback_by_trace, log_agent_traces, log_traces

FAST = ScoringSettings(workers=4, attempts=2, backoff_s=0.01, backoff_max_s=0.05)
NO_EXPORT = EngineSettings(export=False, scoring=FAST, sweep_every_s=0)

NEW_TRACE_JUDGES = [
    "completeness", "fluency", "summarization", "tool_call_correctness", "tool_call_efficiency",
]  # fmt: skip
POLITE = CustomJudge(
    name="polite",
    instructions="Is the answer {{ outputs }} to {{ inputs }} polite?",
    feedback_value_type=Literal["yes", "no"],
)
SCORE = CustomJudge(
    name="helpfulness_score",
    instructions="Rate 1-5 how helpful {{ outputs }} is.",
    feedback_value_type=int,
)


def _suite(*judges, sample=1.0):
    return {"sample": sample, "assessments": list(judges)}


def test_every_new_trace_judge_custom_and_code_judges_score_each_trace_once(
    experiment_id, tracking_uri, fake_judge, code_judges
):
    ids = log_agent_traces(2)
    plain = log_traces(1, retriever=False)  # no TOOL span: the tool judges do not apply
    rest = tracking_uri.startswith("http")  # slow: fewer built-ins there, every kind still
    judges = [{"name": n} for n in NEW_TRACE_JUDGES[3 if rest else 0 :]]
    code = [CodeJudge("tone_check"), {"kind": "code", "name": "word_count"}]
    m = create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config=_suite(*judges, POLITE, SCORE, *code),
    )  # fmt: skip
    engine = MonitorEngine.create(experiment_id, NO_EXPORT)
    stats = engine.run_pass()
    names = [j["name"] for j in judges]
    names += ["polite", "helpfulness_score", "tone_check", "word_count"]
    expected = {(t, n): 1 for t in ids for n in names}
    expected.update({(plain[0], n): 1 for n in names if not n.startswith("tool_")})
    assert verdict_counts(experiment_id, m.monitor_id) == expected
    assert stats.judges["tool_call_efficiency"]["not_applicable"] == 1
    values = {a.name: a.value for a in feedback_by_trace(experiment_id)[ids[0]]}
    assert values["polite"] == "yes"
    assert values["helpfulness_score"] == 5
    assert values["tool_call_correctness"] == "yes"
    assert values["tone_check"] == "calm"
    assert values["word_count"] == 7  # "Sunny in Paris, as you asked: q0"
    tone = next(a for a in feedback_by_trace(experiment_id)[ids[0]] if a.name == "tone_check")
    assert tone.source.source_type == "CODE"
    engine.run_pass()  # nothing twice
    assert verdict_counts(experiment_id, m.monitor_id) == expected


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_scorers_that_cannot_run_in_production_are_refused_with_the_reason(name):
    with pytest.raises(MonitorConfigError) as info:
        BuiltinJudge(name).validate()
    assert info.value.field == "BuiltinJudge.name"
    assert REFUSED[name] in str(info.value)


def test_unknown_judge_lists_the_valid_names():
    with pytest.raises(MonitorConfigError) as info:
        BuiltinJudge("sentiment").validate()
    assert all(name in str(info.value) for name in CATALOG)


@pytest.mark.parametrize(
    "judge, field, expected",
    [
        (BuiltinJudge("regex_match", args={"pattern": "x", "case_insensitive": "yes"}),
         "BuiltinJudge('regex_match').args.case_insensitive", "expected true or false"),
        (BuiltinJudge("response_length", args={"max_length": "10"}),
         "BuiltinJudge('response_length').args.max_length", "expected an integer >= 0"),
        (BuiltinJudge("conversational_guidelines", args={"guidelines": 3}),
         "BuiltinJudge('conversational_guidelines').args.guidelines", "non-empty string"),
        (BuiltinJudge("conversational_guidelines"),
         "BuiltinJudge('conversational_guidelines').args.guidelines", "(required)"),
        (BuiltinJudge("fluency", args={"model": "x"}), "BuiltinJudge('fluency').args",
         "expected no arguments"),
        (BuiltinJudge("safety", filter_string=""), "BuiltinJudge('safety').filter_string",
         "trace search filter"),
        (CustomJudge("c", "Judge {{ expectations }}"), "CustomJudge('c').instructions",
         "ground truth"),
        (CustomJudge("c", "Judge {{ conversation }} and {{ outputs }}"),
         "CustomJudge('c').instructions", "{{ conversation }} alone"),
        (CustomJudge("c", "Judge {{ outputs }}", feedback_value_type=dict),
         "CustomJudge('c').feedback_value_type", "list of distinct string choices"),
    ],
)  # fmt: skip
def test_bad_options_name_the_option_and_the_expected_type(judge, field, expected):
    with pytest.raises(MonitorConfigError) as info:
        judge.validate()
    assert info.value.field == field
    assert expected in str(info.value)


def test_custom_judge_is_pure_data_in_the_config():
    suite = AssessmentsSuiteConfig.from_dict(_suite(POLITE, SCORE))
    data = json.loads(json.dumps(suite.to_dict()))
    assert data["assessments"][0] == {
        "kind": "custom", "name": "polite", "feedback_value_type": ["yes", "no"],
        "instructions": "Is the answer {{ outputs }} to {{ inputs }} polite?",
    }  # fmt: skip
    assert AssessmentsSuiteConfig.from_dict(data).to_dict() == suite.to_dict()


def test_filter_string_limits_a_judge_to_the_traces_it_matches(sqlite_experiment_id, fake_judge):
    prod = log_agent_traces(3, tags={"env": "prod"})
    dev = log_agent_traces(2, tags={"env": "dev"}, prefix="d")
    m = create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config=_suite(
            {"name": "fluency", "filter_string": "tags.env = 'prod'"},
            {"name": "pii_detection", "filter_string": "span.name = 'get_weather'"},
            {"name": "response_length", "args": {"max_length": 9},
             "filter_string": "tags.env = 'staging'"},
        ),
    )  # fmt: skip
    MonitorEngine.create(sqlite_experiment_id, NO_EXPORT).run_pass()
    counts = verdict_counts(sqlite_experiment_id, m.monitor_id)
    assert counts == {
        **{(t, "fluency"): 1 for t in prod},
        **{(t, "pii_detection"): 1 for t in prod + dev},
    }


def test_filter_string_mlflow_rejects_is_refused_at_create_and_update(sqlite_experiment_id):
    bad = _suite({"name": "safety", "filter_string": "tags.env === 'prod'"})
    with pytest.raises(MonitorConfigError) as info:
        create_external_monitor(catalog_name="w", schema_name="d", assessments_config=bad)
    assert info.value.field == "assessments[0].filter_string"
    assert "MLflow says: " in str(info.value)
    create_external_monitor(catalog_name="w", schema_name="d", assessments_config=_suite())
    with pytest.raises(MonitorConfigError, match="MLflow says"):
        update_external_monitor(assessments_config=bad)


def test_judges_command_lists_every_name_with_llm_needs_and_options():
    result = CliRunner().invoke(cli, ["judges", "--output", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    rows = {r["name"]: r for r in data["judges"]}
    assert set(CATALOG) <= set(rows)
    assert rows["regex_match"]["llm"] is False
    assert "pattern" in rows["regex_match"]["options"]
    assert rows["groundedness"]["needs"] == ["retrieval", "outputs"]
    assert rows["user_frustration"]["level"] == "session"
    assert {r["name"] for r in data["not_available"]} == set(REFUSED)
    table = CliRunner().invoke(cli, ["judges"])
    assert table.exit_code == 0
    assert "tool_call_efficiency" in table.output and "a TOOL span" in table.output


def test_code_judge_not_installed_is_reported_and_the_rest_runs(
    sqlite_experiment_id, code_judges, caplog
):
    ids = log_traces(2, retriever=False)
    m = create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config=_suite(CodeJudge("not_installed"), CodeJudge("tone_check")),
    )  # fmt: skip
    engine = MonitorEngine.create(sqlite_experiment_id, NO_EXPORT)
    with caplog.at_level("WARNING"):
        engine.run_pass()
        engine.run_pass()
    assert verdict_counts(sqlite_experiment_id, m.monitor_id) == {(t, "tone_check"): 1 for t in ids}
    reports = [r for r in caplog.records if "not_installed is unavailable" in r.getMessage()]
    assert len(reports) == 1  # once, not every pass
    assert "mlflow_monitor.scorers" in reports[0].getMessage()
    result = CliRunner().invoke(cli, ["status", "-x", sqlite_experiment_id])
    assert result.exit_code == 0, result.output
    assert "unavailable: not_installed: no entry point 'not_installed'" in result.output


def test_code_judge_that_raises_or_returns_nonsense_becomes_error_feedback_and_is_retried(
    sqlite_experiment_id, code_judges
):
    ids = log_traces(1, retriever=False)
    create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config=_suite(CodeJudge("always_fails"), CodeJudge("returns_nonsense")),
    )  # fmt: skip
    engine = MonitorEngine.create(sqlite_experiment_id, NO_EXPORT)
    assert engine.run_pass().total("failed") >= 2
    errors = {a.name: a for a in feedback_by_trace(sqlite_experiment_id)[ids[0]]}
    message = errors["always_fails"].error.error_message
    assert message == "ValueError: the tone model is not loaded"  # type and message, no traceback
    assert (
        "must return one of int, float, bool, str" in errors["returns_nonsense"].error.error_message
    )
    assert engine.run_pass().total("failed") >= 2  # retried, as other failures are
    again = {a.name: a for a in feedback_by_trace(sqlite_experiment_id)[ids[0]]}
    assert len(again) == 2  # one error feedback per judge: the older one replaced
    assert again["always_fails"].assessment_id != errors["always_fails"].assessment_id


def test_dry_run_covers_every_judge_kind_and_writes_nothing(
    sqlite_experiment_id, fake_judge, code_judges
):
    ids = log_agent_traces(2, session="conv-1", tags={"env": "prod"})
    ids += log_traces(1, retriever=False)
    create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config=_suite(
            {"name": "tool_call_efficiency"},
            {"guidelines": {"polite_rule": ["Be polite."]}},
            POLITE,
            CodeJudge("tone_check", filter_string="tags.env = 'prod'"),
            CodeJudge("not_installed"),
            {"name": "user_frustration"},
            CustomJudge("resolved", "Was the issue in {{ conversation }} resolved?", bool),
        ),
    )  # fmt: skip
    result = CliRunner().invoke(cli, ["test", "-x", sqlite_experiment_id, "--output", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["judge"]: r for r in json.loads(result.output)}
    assert rows["tool_call_efficiency"] | {"example": ""} == {
        "judge": "tool_call_efficiency", "traces": 3, "results": 2, "skipped": 0,
        "not_applicable": 1, "errors": 0, "example": "",
    }  # fmt: skip
    assert (rows["polite_rule"]["results"], rows["polite"]["results"]) == (3, 3)
    assert (rows["tone_check"]["results"], rows["tone_check"]["not_applicable"]) == (2, 1)
    assert rows["not_installed"]["example"].startswith("unavailable: no entry point")
    for session_judge in ("user_frustration", "resolved"):  # one session among the traces
        assert (rows[session_judge]["traces"], rows[session_judge]["results"]) == (1, 1)
    assert rows["resolved"]["example"].startswith("True")
    assert all(not a for a in feedback_by_trace(sqlite_experiment_id).values())
