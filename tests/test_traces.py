import mlflow

from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint
from mlflow_monitor_plugin.discovery.traces import TraceSource
from tests.traces_factory import log_traces


def test_infos_after_pages_through_everything_after_the_checkpoint(sqlite_experiment_id):
    ids = log_traces(25, retriever=False)
    source = TraceSource(sqlite_experiment_id)
    fifth = mlflow.get_trace(ids[4]).info
    pages = list(source.infos_after(Checkpoint(fifth.timestamp_ms, fifth.trace_id), page_size=7))
    seen = [i.trace_id for page in pages for i in page]
    assert sorted(seen) == sorted(ids[5:]) and len(seen) == len(set(seen))
    assert all(len(page) <= 7 for page in pages)


def test_infos_after_skips_running_and_evaluation_traces(sqlite_experiment_id):
    running = mlflow.start_span_no_context("running")
    mlflow.start_span_no_context("child", parent_span=running).end()
    with mlflow.start_run():
        log_traces(2, retriever=False)
    done = log_traces(2, retriever=False)
    source = TraceSource(sqlite_experiment_id)
    assert [i.trace_id for page in source.infos_after(None) for i in page] == done
    running.end()
    found = [i.trace_id for page in source.infos_after(None) for i in page]
    assert running.trace_id in found


def test_fetch_returns_full_traces_in_the_order_asked(sqlite_experiment_id):
    ids = log_traces(3)
    traces = TraceSource(sqlite_experiment_id).fetch([ids[2], "tr-missing", ids[0]])
    assert [t.info.trace_id for t in traces] == [ids[2], ids[0]]
    assert all(len(t.data.spans) == 2 for t in traces)
