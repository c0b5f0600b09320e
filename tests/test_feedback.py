"""Every verdict names who made it, alike in the store, the export and ``status``."""

import json

import duckdb
import mlflow
import pytest
from click.testing import CliRunner
from mlflow.genai.judges.utils import get_default_model

from mlflow_monitor_plugin import create_external_monitor
from mlflow_monitor_plugin.cli import monitor as monitor_cli
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine
from mlflow_monitor_plugin.scoring.feedback import JUDGE_KEY, FeedbackWriter
from mlflow_monitor_plugin.scoring.runner import ScoringSettings, Verdict
from tests.traces_factory import log_traces

SETTINGS = EngineSettings(scoring=ScoringSettings(workers=4, attempts=1), sweep_every_s=0)
GUIDELINE = {"mlflow_only": ["Refuse questions unrelated to MLflow."], "polite": ["Be polite."]}
SUITE = [
    {"name": "safety"},
    {"name": "chunk_relevance"},
    {"name": "relevance_to_query", "model": "openai:/gpt-4o-mini"},
    {"guidelines": GUIDELINE, "model": "openai:/gpt-4o"},
    {"name": "pii_detection"},
    {"name": "response_length", "args": {"max_length": 500}},
]


@pytest.fixture(autouse=True)
def _no_default_model_override(monkeypatch):
    monkeypatch.delenv("MLFLOW_GENAI_JUDGE_DEFAULT_MODEL", raising=False)


def _monitor(assessments):
    return create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"sample": 1.0, "assessments": assessments},
    )  # fmt: skip


def _stored(experiment_id, trace_id=None):
    """(feedback name, judge, source type, source id, is error) of every verdict we logged."""
    traces = mlflow.search_traces(
        locations=[experiment_id], return_type="list", include_spans=False
    )
    return sorted(
        (a.name, a.metadata[JUDGE_KEY], a.source.source_type, a.source.source_id, bool(a.error))
        for t in traces
        if trace_id in (None, t.info.trace_id)
        for a in t.info.assessments
        if JUDGE_KEY in (a.metadata or {})
    )  # fmt: skip


def _status_sources(experiment_id):
    out = CliRunner().invoke(monitor_cli, ["status", "-x", experiment_id, "--output", "json"])
    assert out.exit_code == 0, out.output
    return {
        r["judge"]: (r["source_type"], r["source_id"]) for r in json.loads(out.output)["judges"]
    }


def test_each_judge_kind_names_itself_in_store_export_and_status(experiment_id, fake_judge):
    (trace_id,) = log_traces(1)
    m = _monitor(SUITE)
    stats = MonitorEngine.create(experiment_id, SETTINGS).run_pass()
    assert stats.total("scored") == 7 and stats.total("failed") == 0

    default = ("LLM_JUDGE", get_default_model())  # MLflow's own label when no model is set
    expected = {
        "safety": default,
        "chunk_relevance": default,
        "relevance_to_query": ("LLM_JUDGE", "openai:/gpt-4o-mini"),
        "mlflow_only": ("LLM_JUDGE", "openai:/gpt-4o"),
        "polite": ("LLM_JUDGE", "openai:/gpt-4o"),
        "pii_detection": ("CODE", "mlflow_monitor/pii_detection"),
        "response_length": ("CODE", "mlflow_monitor/response_length"),
    }
    stored = _stored(experiment_id)
    # chunk_relevance logs one feedback per retrieved chunk (2) and its precision
    assert [name for name, *_ in stored].count("chunk_relevance") == 2
    assert {name for name, *_ in stored} == set(expected) | {"chunk_relevance/precision"}
    for name, judge, source_type, source_id, error in stored:
        assert (source_type, source_id) == expected[judge], name
        assert not error
    assert _status_sources(experiment_id) == expected

    ((row,),) = duckdb.sql(
        f"select assessments from read_parquet('{m.export_uri}/**/*.parquet')"
    ).fetchall()
    exported = sorted(
        (a["name"], a["metadata"][JUDGE_KEY], a["source_type"], a["source_id"], False) for a in row
    )
    assert exported == stored


def test_error_feedback_names_the_judge_that_failed(experiment_id, fake_judge):
    fake_judge.behaviour.fault_rate = 1.0
    fake_judge.behaviour.faults = ("malformed",)
    (trace_id,) = log_traces(1, retriever=False)
    suite = [{"name": "safety"}, {"guidelines": {"mlflow_only": ["Be polite."]},
              "model": "openai:/gpt-4o"}, {"name": "pii_detection"}]  # fmt: skip
    m = _monitor(suite)
    engine = MonitorEngine.create(experiment_id, SETTINGS)
    stats = engine.run_pass()
    assert stats.total("scored") == 1 and stats.total("failed") >= 2  # the pass and its sweep
    # A code judge that raises: its error is written the same way as an LLM judge's.
    pii = next(j for j in engine.judges_for(m) if j.name == "pii_detection")
    verdict = Verdict(trace_id, pii, error="scorer raised ValueError", error_code="JUDGE_ERROR")
    FeedbackWriter(m.monitor_id, m.config_version).write(verdict, None)

    assert _stored(experiment_id, trace_id) == [
        ("mlflow_only", "mlflow_only", "LLM_JUDGE", "openai:/gpt-4o", True),
        ("pii_detection", "pii_detection", "CODE", "mlflow_monitor/pii_detection", False),
        ("pii_detection", "pii_detection", "CODE", "mlflow_monitor/pii_detection", True),
        ("safety", "safety", "LLM_JUDGE", get_default_model(), True),
    ]
