import datetime as dt
import time

import duckdb
import mlflow
import pandas as pd
from click.testing import CliRunner
from mlflow.entities import AssessmentSource

from mlflow_monitor_plugin import create_external_monitor
from mlflow_monitor_plugin.cli import monitor as monitor_cli
from mlflow_monitor_plugin.discovery.sampling import is_sampled
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.traces_factory import log_traces

SETTINGS = EngineSettings(scoring=ScoringSettings(workers=4, attempts=1), sweep_every_s=0)


def make_monitor(export_uri=None, sample=0.5):
    return create_external_monitor(
        catalog_name="w", schema_name="d", export_uri=export_uri,
        assessments_config={"sample": sample, "assessments": [{"name": "pii_detection"}]},
    )  # fmt: skip


def rows(export_uri):
    return duckdb.sql(
        f"select trace_id, assessments from read_parquet('{export_uri}/**/*.parquet', "
        "hive_partitioning=true)"
    ).fetchall()


def test_every_trace_is_exported_once_with_this_passes_verdicts(experiment_id):
    ids = log_traces(12, retriever=False)
    m = make_monitor()
    stats = MonitorEngine.create(experiment_id, SETTINGS).run_pass()
    assert stats.exported == 12
    exported = rows(m.export_uri)
    assert sorted(r[0] for r in exported) == sorted(ids)
    judged = {r[0] for r in exported if any(a["name"] == "pii_detection" for a in r[1])}
    assert judged == {t for t in ids if is_sampled(t, m.monitor_id, 0.5)}
    assert 0 < len(judged) < 12  # sampled and unsampled traces alike
    frame = pd.read_parquet(m.export_uri)
    assert {"trace_id", "state", "request_time", "spans", "assessments", "date"} <= set(frame)
    again = MonitorEngine.create(experiment_id, SETTINGS).run_pass()
    assert again.exported == 0 and len(rows(m.export_uri)) == 12


def test_crash_between_export_and_checkpoint_leaves_no_duplicate(experiment_id):
    log_traces(5, retriever=False)
    m = make_monitor()
    engine = MonitorEngine.create(experiment_id, SETTINGS)
    engine.run_pass()
    engine.tags.client.delete_experiment_tag(experiment_id, "mlflow_monitor.checkpoint")
    log_traces(3, retriever=False, prefix="more")
    MonitorEngine.create(experiment_id, SETTINGS, owner=engine.owner).run_pass()
    ids = [r[0] for r in rows(m.export_uri)]
    assert len(ids) == len(set(ids)) == 8


def test_unwritable_destination_stops_export_but_not_scoring(sqlite_experiment_id, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the export directory should be")
    ids = log_traces(4, retriever=False)
    m = make_monitor(export_uri=str(blocker / "export"), sample=1.0)
    engine = MonitorEngine.create(sqlite_experiment_id, SETTINGS)
    stats = engine.run_pass()
    assert stats.export_error and str(blocker) in stats.export_error
    assert stats.judges["pii_detection"]["scored"] == 4
    cursor = engine.read_cursor(m)
    assert cursor.export is None and cursor.score is not None
    blocker.unlink()  # the destination comes back
    engine._export_retry_at_ms = 0
    assert engine.run_pass().exported == 4
    assert sorted(r[0] for r in rows(m.export_uri)) == sorted(ids)


def test_resync_picks_up_feedback_added_after_export(sqlite_experiment_id):
    (trace_id, *_) = log_traces(3, retriever=False)
    m = make_monitor(sample=0.0)
    MonitorEngine.create(sqlite_experiment_id, SETTINGS).run_pass()
    mlflow.log_feedback(trace_id=trace_id, name="thumbs", value="up",
                        source=AssessmentSource("HUMAN", "ann"))  # fmt: skip
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    result = CliRunner().invoke(
        monitor_cli, ["export", "-x", sqlite_experiment_id, "--since", today]
    )
    assert result.exit_code == 0, result.output
    assert "Re-synced 3 traces" in result.output
    exported = dict(rows(m.export_uri))
    assert len(exported) == 3
    assert [(a["name"], a["value"]) for a in exported[trace_id]] == [("thumbs", '"up"')]


def test_late_trace_is_exported_once_by_the_sweep(sqlite_experiment_id):
    m = make_monitor()
    log_traces(2, retriever=False)
    engine = MonitorEngine.create(sqlite_experiment_id, SETTINGS)
    engine.run_pass()
    span = mlflow.start_span_no_context(
        "late", inputs={"q": 1}, start_time_ns=time.time_ns() - 60 * 10**9
    )
    span.set_outputs("ok")
    span.end()
    engine.run_pass(now_ms=int(time.time() * 1000) + 1)
    engine.run_pass(now_ms=int(time.time() * 1000) + 2)
    ids = [r[0] for r in rows(m.export_uri)]
    assert len(ids) == len(set(ids)) == 3 and span.trace_id in ids
