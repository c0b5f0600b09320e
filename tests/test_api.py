import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from mlflow_monitor_plugin import (
    AssessmentsSuiteConfig,
    BuiltinJudge,
    GuidelinesJudge,
    MonitorConfigError,
    MonitorExistsError,
    MonitorNotFoundError,
    MonitorStorageError,
    create_external_monitor,
    delete_external_monitor,
    get_external_monitor,
    list_external_monitors,
    update_external_monitor,
)
from mlflow_monitor_plugin.config.tags import CONFIG_TAG, NAMESPACE


def databricks_suite():
    return AssessmentsSuiteConfig(
        sample=1.0,
        assessments=[
            BuiltinJudge(name="safety"),
            BuiltinJudge(name="groundedness", sample_rate=0.4),
            BuiltinJudge(name="relevance_to_query"),
            BuiltinJudge(name="chunk_relevance"),
            GuidelinesJudge(
                guidelines={
                    "mlflow_only": [
                        "If the request is unrelated to MLflow, the response must refuse to answer."
                    ]
                }
            ),
        ],
    )


def monitor_tags(experiment_id):
    tags = MlflowClient().get_experiment(experiment_id).tags
    return {k: v for k, v in tags.items() if k.startswith(NAMESPACE)}


def test_create_then_get_returns_what_was_stored(experiment_id, tmp_path):
    created = create_external_monitor(
        catalog_name="workspace", schema_name="default", assessments_config=databricks_suite()
    )
    assert created.experiment_id == experiment_id
    assert created.export_uri == str(
        tmp_path / "exports/workspace/default" / f"trace_logs_{experiment_id}"
    )
    fetched = get_external_monitor()
    assert fetched == created
    assert fetched.assessments_config.assessments[1] == BuiltinJudge("groundedness", 0.4)
    assert fetched.created_at == fetched.updated_at
    assert "groundedness @ 0.4" in str(fetched)
    stored = json.loads(monitor_tags(experiment_id)[CONFIG_TAG])
    assert stored["schema_version"] == 1


def test_create_accepts_dict_config_and_explicit_experiment(experiment_id):
    mlflow.set_experiment("another-" + experiment_id)
    created = create_external_monitor(
        catalog_name="cat",
        schema_name="sch",
        experiment_id=experiment_id,
        assessments_config={
            "sample": 0.5,
            "assessments": [{"name": "groundedness", "sample_rate": 0.4}],
        },
        export_uri="relative/dir",
    )
    assert created.export_uri.endswith("/relative/dir") and created.export_uri.startswith("/")
    assert get_external_monitor(experiment_id=experiment_id).assessments_config.sample == 0.5


def test_update_overwrites_whole_config_and_keeps_export(experiment_id):
    created = create_external_monitor(
        catalog_name="workspace", schema_name="default", assessments_config=databricks_suite()
    )
    updated = update_external_monitor(
        assessments_config={"sample": 0.1, "assessments": [{"name": "safety"}]}
    )
    assert [j.name for j in updated.assessments_config.assessments] == ["safety"]
    assert updated.export_uri == created.export_uri
    assert updated.monitor_id == created.monitor_id
    assert updated.config_version == created.config_version + 1
    assert updated.updated_at >= created.updated_at
    assert get_external_monitor() == updated


def test_rejected_update_changes_nothing(experiment_id):
    create_external_monitor(
        catalog_name="workspace", schema_name="default", assessments_config=databricks_suite()
    )
    before = monitor_tags(experiment_id)
    with pytest.raises(MonitorConfigError, match="sample_rate"):
        update_external_monitor(
            assessments_config={"assessments": [{"name": "safety", "sample_rate": 1.2}]}
        )
    assert monitor_tags(experiment_id) == before


def test_delete_removes_monitor(experiment_id):
    create_external_monitor(
        catalog_name="workspace", schema_name="default", assessments_config=databricks_suite()
    )
    delete_external_monitor()
    assert monitor_tags(experiment_id) == {}
    with pytest.raises(MonitorNotFoundError, match="has no monitor"):
        get_external_monitor()
    with pytest.raises(MonitorNotFoundError):
        delete_external_monitor()


def test_second_create_is_refused_and_changes_nothing(experiment_id):
    create_external_monitor(
        catalog_name="workspace", schema_name="default", assessments_config=databricks_suite()
    )
    before = monitor_tags(experiment_id)
    with pytest.raises(MonitorExistsError, match=f"Experiment {experiment_id} already has"):
        create_external_monitor(
            catalog_name="workspace",
            schema_name="default",
            assessments_config={"assessments": [{"name": "safety"}]},
        )
    assert monitor_tags(experiment_id) == before


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"catalog_name": "bad-name"}, "catalog_name"),
        ({"schema_name": "../etc"}, "schema_name"),
        ({"assessments_config": {"assessments": [{"name": "toxicity"}]}}, "BuiltinJudge.name"),
        ({"assessments_config": {"sample": 3, "assessments": []}}, "AssessmentsSuiteConfig.sample"),
    ],
)
def test_create_rejects_bad_input_and_writes_nothing(experiment_id, kwargs, field):
    args = {
        "catalog_name": "workspace",
        "schema_name": "default",
        "assessments_config": databricks_suite(),
        **kwargs,
    }
    with pytest.raises(MonitorConfigError) as info:
        create_external_monitor(**args)
    assert info.value.field == field
    assert monitor_tags(experiment_id) == {}


def test_missing_experiment_is_a_clear_error(tracking_uri):
    with pytest.raises(MonitorNotFoundError, match="'987654' does not exist"):
        create_external_monitor(
            catalog_name="w", schema_name="d", experiment_id="987654",
            assessments_config=databricks_suite(),
        )  # fmt: skip
    with pytest.raises(MonitorNotFoundError, match="named 'nope-nope' does not exist"):
        get_external_monitor(experiment_name="nope-nope")


def test_large_config_is_split_across_tags_and_read_back_whole(experiment_id):
    rules = [f"Rule {i}: " + "x" * 900 for i in range(60)]  # ~55,000 characters of JSON
    create_external_monitor(
        catalog_name="workspace",
        schema_name="default",
        assessments_config={"assessments": [{"guidelines": {"long": rules}}]},
    )
    tags = monitor_tags(experiment_id)
    assert len(tags) >= 4 and all(len(v) <= 20_000 for v in tags.values())
    assert get_external_monitor().assessments_config.assessments[0].guidelines["long"] == rules
    updated = update_external_monitor(
        assessments_config={"assessments": [{"guidelines": {"long": rules[:30]}}]}
    )
    assert get_external_monitor() == updated
    assert len(monitor_tags(experiment_id)) < len(tags)  # the old version's parts are gone


def test_oversized_config_is_refused_not_truncated(sqlite_experiment_id):
    rules = ["y" * 5000 for _ in range(250)]  # 1.25 MB
    with pytest.raises(MonitorConfigError, match="at most"):
        create_external_monitor(
            catalog_name="workspace",
            schema_name="default",
            assessments_config={"assessments": [{"guidelines": {"huge": rules}}]},
        )
    assert monitor_tags(sqlite_experiment_id) == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"schema_version": 42}), "reads schema version 1"),
        (
            json.dumps({"schema_version": 1, "split": {"version": 1, "parts": 2, "sha256": "0"}}),
            "2 are missing",
        ),
    ],
)
def test_hand_edited_tag_gives_clear_error_on_get(sqlite_experiment_id, value, message):
    MlflowClient().set_experiment_tag(sqlite_experiment_id, CONFIG_TAG, value)
    with pytest.raises(MonitorStorageError, match=message):
        get_external_monitor()
    delete_external_monitor()  # a broken monitor can still be deleted
    assert monitor_tags(sqlite_experiment_id) == {}


def test_list_returns_every_monitor_and_skips_broken(sqlite_uri):
    ids = []
    for name in ("a", "b", "broken"):
        ids.append(mlflow.set_experiment(name).experiment_id)
        create_external_monitor(
            catalog_name="w", schema_name="d", assessments_config=databricks_suite()
        )
    MlflowClient().set_experiment_tag(ids[2], CONFIG_TAG, "{oops")
    mlflow.set_experiment("unmonitored")
    assert sorted(m.experiment_id for m in list_external_monitors()) == sorted(ids[:2])


def test_secret_in_config_is_refused(sqlite_experiment_id, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-0123456789abcdef")
    with pytest.raises(MonitorConfigError, match="secrets never go into MLflow tags"):
        create_external_monitor(
            catalog_name="w",
            schema_name="d",
            assessments_config={
                "assessments": [{"guidelines": {"g": ["sk-live-0123456789abcdef"]}}]
            },
        )
    assert monitor_tags(sqlite_experiment_id) == {}
