"""Curate: the traces a judge failed become records of an MLflow evaluation dataset, once."""

import json

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.entities import AssessmentSource
from mlflow.genai.datasets import get_dataset

from mlflow_monitor_plugin import create_external_monitor
from mlflow_monitor_plugin.cli import monitor as cli
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.history import log_history

SETTINGS = EngineSettings(export=False, scoring=ScoringSettings(workers=4), sweep_every_s=0)
SUITE = {"assessments": [{"name": "safety"}, {"name": "pii_detection"}]}


def run(*args, code=0):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def scored_history(days=2, per_day=4):
    """Traces of the last days, every third one UNSAFE (the fake judge says 'no' to those),
    scored by the daemon."""
    ids = log_history(days, per_day, unsafe_every=3)
    m = create_external_monitor(catalog_name="w", schema_name="d", assessments_config=SUITE)
    MonitorEngine.create(m.experiment_id, SETTINGS).run_pass()
    unsafe = {
        t.info.trace_id
        for t in mlflow.search_traces(locations=[m.experiment_id], return_type="list")
        if "UNSAFE" in t.data.request
    }
    return m, ids, unsafe


def test_curate_twice_adds_each_failed_trace_once_readable_by_get_dataset(tracking_uri, fake_judge):
    mlflow.set_experiment("curate")
    m, ids, unsafe = scored_history(*((2, 4) if "sqlite" in tracking_uri else (1, 4)))
    args = ("curate", "-x", m.experiment_id, "--judge", "safety", "--value", "no",
            "--since", "3d", "--dataset", "unsafe-answers")  # fmt: skip
    out = run(*args).output
    assert f"{len(unsafe)} of {len(ids)} traces have a 'safety' verdict of 'no'" in out
    assert f"{len(unsafe)} added, 0 already there" in out
    again = json.loads(run(*args, "--output", "json").stdout)
    assert (again["matched"], again["added"], again["already_there"]) == (
        len(unsafe),
        0,
        len(unsafe),
    )
    dataset = get_dataset(name="unsafe-answers")
    records = dataset.to_df()
    assert len(records) == len(unsafe)
    assert {r.source_data["trace_id"] for r in records["source"]} == unsafe
    assert all("UNSAFE" in r["question"] for r in records["inputs"])
    tags = records["tags"].iloc[0]
    assert tags["mlflow_monitor.judge"] == "safety" and tags["mlflow_monitor.value"] == "no"
    assert tags["mlflow_monitor.monitor_id"] == m.monitor_id
    assert "fake judge says no" in tags["mlflow_monitor.rationale"]


def test_curated_dataset_runs_in_genai_evaluate_and_limit_takes_the_newest(
    sqlite_experiment_id, fake_judge
):
    m, ids, unsafe = scored_history(days=3, per_day=3)
    out = run("curate", "-x", m.experiment_id, "--judge", "safety", "--since", "4d",
              "--limit", "2", "--dataset", "newest").output  # fmt: skip
    assert "2 added" in out
    traces = mlflow.search_traces(locations=[m.experiment_id], return_type="list")
    newest = sorted((t for t in traces if t.info.trace_id in unsafe),
                    key=lambda t: -t.info.timestamp_ms)[:2]  # fmt: skip
    dataset = get_dataset(name="newest")
    assert {r.source_data["trace_id"] for r in dataset.to_df()["source"]} == {
        t.info.trace_id for t in newest
    }

    @mlflow.genai.scorer
    def answered(outputs) -> bool:
        return str(outputs).startswith("Answer about")

    result = mlflow.genai.evaluate(data=dataset, scorers=[answered])
    assert result.metrics["answered/mean"] == 1.0


def test_curate_skips_a_verdict_a_human_overrode(sqlite_experiment_id, fake_judge):
    m, _, unsafe = scored_history(days=1, per_day=3)
    trace_id = sorted(unsafe)[0]
    ours = next(a for a in mlflow.get_trace(trace_id).info.assessments if a.name == "safety")
    mlflow.override_feedback(trace_id=trace_id, assessment_id=ours.assessment_id, value="yes",
                             source=AssessmentSource("HUMAN", "reviewer"))  # fmt: skip
    data = json.loads(run("curate", "-x", m.experiment_id, "--judge", "safety", "--since", "2d",
                          "--dataset", "d", "--output", "json").stdout)  # fmt: skip
    assert data["matched"] == len(unsafe) - 1
    assert trace_id not in data["trace_ids"]


def test_curate_on_a_store_without_datasets_writes_jsonl_once(tmp_path, monkeypatch, fake_judge):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("file-store")
        m, _, unsafe = scored_history(days=1, per_day=3)
        args = ("curate", "-x", m.experiment_id, "--judge", "safety", "--since", "2d",
                "--dataset", "unsafe answers")  # fmt: skip
        out = run(*args).output
        assert "This tracking store cannot hold evaluation datasets" in out
        path = tmp_path / "mlflow_monitor_datasets" / "unsafe_answers.jsonl"
        assert str(path.relative_to(tmp_path)) in out
        assert f"{len(unsafe)} added, 0 already there" in out
        rows = pd.read_json(path, lines=True)
        assert len(rows) == len(unsafe)
        assert {s["source_data"]["trace_id"] for s in rows["source"]} == unsafe
        assert f"0 added, {len(unsafe)} already there" in run(*args).output
    finally:
        mlflow.set_tracking_uri(None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", ""], "Invalid dataset: got ''; expected 1-255 characters"),
        (["--dataset", "x" * 256], "expected 1-255 characters, not blank"),
        (["--dataset", "d", "--judge", "toxicity"], "Invalid judge: got 'toxicity'"),
        (["--dataset", "d", "--since", "2099-01-01"], "it is in the future"),
    ],
)
def test_curate_bad_input_exits_2_with_the_reason(sqlite_experiment_id, args, message):
    m = create_external_monitor(catalog_name="w", schema_name="d", assessments_config=SUITE)
    judge = [] if "--judge" in args else ["--judge", "safety"]
    result = run("curate", "-x", m.experiment_id, *judge, *args, code=2)
    assert message in result.output
    assert "Traceback" not in result.output
