import json

import pytest

from mlflow_monitor_plugin import (
    AssessmentsSuiteConfig,
    BuiltinJudge,
    GuidelinesJudge,
    MonitorConfigError,
)
from mlflow_monitor_plugin.config.model import ExternalMonitor, check_identifier, judge_from_dict


def suite(*assessments, **kwargs):
    return AssessmentsSuiteConfig(assessments=list(assessments), **kwargs)


def test_suite_validate_accepts_databricks_example():
    config = suite(
        BuiltinJudge(name="safety"),
        BuiltinJudge(name="groundedness", sample_rate=0.4),
        BuiltinJudge(name="relevance_to_query"),
        BuiltinJudge(name="chunk_relevance"),
        GuidelinesJudge(guidelines={"mlflow_only": ["Refuse questions unrelated to MLflow."]}),
        sample=1.0,
    ).validate()
    names = [n for j in config.assessments for n in j.feedback_names]
    assert names == [
        "safety",
        "groundedness",
        "relevance_to_query",
        "chunk_relevance",
        "mlflow_only",
    ]
    assert config.assessments[1].sample_rate == 0.4


def test_judge_from_dict_reads_databricks_dict_forms():
    assert judge_from_dict({"name": "groundedness", "sample_rate": 0.4}) == BuiltinJudge(
        "groundedness", 0.4
    )
    assert judge_from_dict({"guidelines": {"g": ["be kind"]}}) == GuidelinesJudge(
        {"g": ["be kind"]}
    )


@pytest.mark.parametrize(
    ("config", "field", "value"),
    [
        (suite(BuiltinJudge("safety"), sample=1.5), "AssessmentsSuiteConfig.sample", 1.5),
        (suite(BuiltinJudge("safety"), sample=-0.1), "AssessmentsSuiteConfig.sample", -0.1),
        (suite(BuiltinJudge("safety", sample_rate=2)), "BuiltinJudge('safety').sample_rate", 2),
        (suite(BuiltinJudge("safety", sample_rate="x")), "BuiltinJudge('safety').sample_rate", "x"),
        (suite(BuiltinJudge("toxicity")), "BuiltinJudge.name", "toxicity"),
        (suite(GuidelinesJudge({})), "GuidelinesJudge.guidelines", {}),
        (suite(GuidelinesJudge({"": ["x"]})), "GuidelinesJudge.guidelines name", ""),
        (suite(GuidelinesJudge({"g": []})), "GuidelinesJudge.guidelines['g']", []),
        (suite(GuidelinesJudge({"g": "be kind"})), "GuidelinesJudge.guidelines['g']", "be kind"),
        (suite(GuidelinesJudge({"g": [3]})), "GuidelinesJudge.guidelines['g']", [3]),
        (
            suite(GuidelinesJudge({"g": ["a"]}), GuidelinesJudge({"g": ["b"]})),
            "AssessmentsSuiteConfig.assessments",
            "g",
        ),
        (
            suite(BuiltinJudge("safety"), GuidelinesJudge({"safety": ["b"]})),
            "AssessmentsSuiteConfig.assessments",
            "safety",
        ),
        (suite(BuiltinJudge("safety", model="gpt-4")), "BuiltinJudge('safety').model", "gpt-4"),
        (suite(BuiltinJudge("regex_match")), "BuiltinJudge('regex_match').args.pattern", None),
        (
            suite(BuiltinJudge("regex_match", args={"pattern": "("})),
            "BuiltinJudge('regex_match').args.pattern",
            "(",
        ),
        (
            suite(BuiltinJudge("response_length", args={"min_length": -1})),
            "BuiltinJudge('response_length').args.min_length",
            -1,
        ),
        (
            suite(BuiltinJudge("pii_detection", args={"pii_types": ["dna"]})),
            "BuiltinJudge('pii_detection').args.pii_types",
            ["dna"],
        ),
        (
            suite(BuiltinJudge("safety", args={"pattern": "x"})),
            "BuiltinJudge('safety').args",
            {"pattern": "x"},
        ),
    ],
)
def test_suite_validate_names_field_value_and_allowed(config, field, value):
    with pytest.raises(MonitorConfigError) as info:
        config.validate()
    assert info.value.field == field
    assert info.value.value == value
    assert repr(value) in str(info.value)
    assert "expected" in str(info.value)


def test_suite_from_dict_rejects_unknown_keys():
    with pytest.raises(MonitorConfigError, match="expected only sample"):
        AssessmentsSuiteConfig.from_dict({"assessments": [], "sampel": 0.3})


def test_deterministic_judges_accept_their_arguments():
    config = suite(
        BuiltinJudge("regex_match", args={"pattern": "^Answer:", "match_type": "fullmatch"}),
        BuiltinJudge("response_length", args={"max_length": 500, "unit": "words"}),
        BuiltinJudge("pii_detection", args={"pii_types": ["email"]}),
    ).validate()
    assert config.assessments[0].args == {"pattern": "^Answer:", "match_type": "fullmatch"}


@pytest.mark.parametrize("bad", ["", "1abc", "a-b", "a/b", "../x", "a b", None, 3])
def test_check_identifier_rejects_bad_names(bad):
    with pytest.raises(MonitorConfigError, match="catalog_name"):
        check_identifier("catalog_name", bad)


def test_external_monitor_round_trips_through_json():
    monitor = ExternalMonitor(
        experiment_id="7",
        assessments_config=suite(
            BuiltinJudge("safety", sample_rate=0.2, model="openai:/gpt-4o-mini"),
            GuidelinesJudge({"polite": ["Be polite.", "No slang."]}),
            sample=0.5,
        ).validate(),
        catalog_name="workspace",
        schema_name="default",
        export_uri="/tmp/x",
        monitor_id="abc",
        config_version=3,
        created_at_ms=1_700_000_000_000,
        updated_at_ms=1_700_000_100_000,
    )
    again = ExternalMonitor.from_dict(json.loads(json.dumps(monitor.to_dict())))
    assert again == monitor
    text = str(monitor)
    assert "polite" in text and "safety" in text and "/tmp/x" in text


def test_external_monitor_rejects_unknown_schema_version():
    with pytest.raises(MonitorConfigError, match="schema_version"):
        ExternalMonitor.from_dict({"schema_version": 99})
