"""Export: real traces from a real SQLite store -> rows -> Parquet, read back by pyarrow, pandas
and DuckDB. Nothing of MLflow is mocked; some tests alter a fetched trace entity in memory to
reach content the store itself would refuse (lone surrogates, 5000-deep values)."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import duckdb
import mlflow
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from mlflow.entities import AssessmentSource, Feedback, SpanType, Trace
from mlflow.entities.trace_data import TraceData

from mlflow_monitor_plugin.exceptions import ExportError, MonitorConfigError
from mlflow_monitor_plugin.export import make_exporter
from mlflow_monitor_plugin.export.parquet import ParquetExporter
from mlflow_monitor_plugin.export.rows import (
    ARROW_SCHEMA,
    EXPORT_SCHEMA_VERSION,
    TABLE_SCHEMA,
    partition_date,
    to_json_text,
    trace_to_row,
    traces_to_table,
)

EXPORTED_AT = 1_800_000_000_000
DAY_MS = 86_400_000
DAY1_MS = 1_767_268_800_000  # 2026-01-01T12:00:00Z
DAY1, DAY2, DAY3 = "2026-01-01", "2026-01-02", "2026-01-03"


@mlflow.trace(span_type=SpanType.RETRIEVER)
def _retrieve(question: str) -> list[dict[str, object]]:
    return [{"page_content": f"doc about {question}", "metadata": {"doc_uri": "kb/1"}}]


@mlflow.trace
def _app(question: str) -> str:
    _retrieve(question)
    return f"answer to {question}"


def _log_trace_at(request_time_ms: int, question: str, answer: object = "ok") -> str:
    """A two-span trace (root + RETRIEVER) whose request time is ``request_time_ms``."""
    start = request_time_ms * 1_000_000
    root = mlflow.start_span_no_context("app", inputs={"question": question}, start_time_ns=start)
    child = mlflow.start_span_no_context(
        "retrieve",
        span_type=SpanType.RETRIEVER,
        parent_span=root,
        inputs={"query": question},
        start_time_ns=start + 1_000,
    )
    child.set_outputs([{"page_content": "doc", "metadata": {"doc_uri": "kb/1"}}])
    child.end(end_time_ns=start + 2_000_000)
    root.set_outputs(answer)
    root.end(end_time_ns=start + 5_000_000)
    return root.trace_id


def _traces() -> list[Trace]:
    return mlflow.search_traces(return_type="list", order_by=["timestamp_ms ASC"])


def _judge(trace_id: str, value: object = "yes", name: str = "relevance") -> None:
    mlflow.log_feedback(
        trace_id=trace_id,
        name=name,
        value=value,
        rationale="because",
        source=AssessmentSource(source_type="LLM_JUDGE", source_id="judge-model"),
    )


def _data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _duckdb_rows(root: Path, query: str) -> list[tuple]:
    source = f"read_parquet('{root}/**/*.parquet', hive_partitioning=true)"
    return duckdb.sql(query.replace("DATASET", source)).fetchall()


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    return tmp_path / "export"


# --------------------------------------------------------------------------------- trace -> row
def test_trace_to_row_content(sqlite_experiment_id: str) -> None:
    _app("what is mlflow? 😀")
    trace_id = mlflow.get_last_active_trace_id()
    _judge(trace_id)
    mlflow.log_feedback(trace_id=trace_id, name="is_safe", value=True)
    mlflow.log_feedback(trace_id=trace_id, name="score", value=0.5)
    mlflow.log_feedback(trace_id=trace_id, name="broken", error=ValueError("judge down"))

    trace = mlflow.get_trace(trace_id)
    row = trace_to_row(trace, EXPORTED_AT)

    assert set(row) == set(TABLE_SCHEMA.names)
    assert row["trace_id"] == trace_id
    assert row["experiment_id"] == sqlite_experiment_id
    assert row["state"] == "OK"
    assert row["request_time"] == trace.info.request_time
    assert row["date"] == partition_date(trace.info.request_time)
    assert row["execution_duration_ms"] == trace.info.execution_duration
    assert json.loads(row["request"]) == {"question": "what is mlflow? 😀"}
    assert json.loads(row["response"]) == "answer to what is mlflow? 😀"
    assert row["exported_at"] == EXPORTED_AT
    assert row["schema_version"] == EXPORT_SCHEMA_VERSION
    assert dict(row["trace_metadata"])["mlflow.trace_schema.version"] == "3"
    spans = json.loads(row["spans"])
    assert [s["name"] for s in spans] == ["_app", "_retrieve"]
    assert json.loads(spans[1]["attributes"]["mlflow.spanType"]) == "RETRIEVER"

    by_name = {a["name"]: a for a in row["assessments"]}
    assert [by_name[n]["value"] for n in ("relevance", "is_safe", "score")] == [
        '"yes"',
        "true",
        "0.5",
    ]
    relevance = by_name["relevance"]
    assert (relevance["rationale"], relevance["source_type"], relevance["source_id"]) == (
        "because",
        "LLM_JUDGE",
        "judge-model",
    )
    assert relevance["kind"] == "feedback" and relevance["valid"] is True
    assert relevance["assessment_id"].startswith("a-") and relevance["error"] is None
    assert relevance["create_time"] > 0
    broken = by_name["broken"]
    assert broken["value"] is None
    assert json.loads(broken["error"])["error_code"] == "ValueError"
    assert json.loads(broken["error"])["error_message"] == "judge down"


def test_trace_to_row_without_inputs_outputs_or_spans(sqlite_experiment_id: str) -> None:
    @mlflow.trace
    def nothing() -> None:
        return None

    @mlflow.trace
    def fails() -> None:
        raise RuntimeError("boom")

    nothing()
    with pytest.raises(RuntimeError):
        fails()
    ok, error = _traces()
    ok_row, error_row = trace_to_row(ok, EXPORTED_AT), trace_to_row(error, EXPORTED_AT)
    assert (ok_row["request"], ok_row["response"]) == ("{}", "null")
    assert error_row["state"] == "ERROR" and error_row["response"] is None

    bare = Trace(info=ok.info, data=TraceData(spans=[]))
    bare_row = trace_to_row(bare, EXPORTED_AT)
    assert (bare_row["request"], bare_row["response"], bare_row["spans"]) == (None, None, "[]")
    assert traces_to_table([ok, error, bare], EXPORTED_AT).num_rows == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("yes", '"yes"'),
        (True, "true"),
        (0.5, "0.5"),
        (3, "3"),
        ({"a": [1, "é"]}, '{"a": [1, "é"]}'),
        (dt.date(2026, 1, 2), '"2026-01-02"'),
        ("lone \ud800 surrogate 😀", '"lone \ufffd surrogate 😀"'),
    ],
)
def test_to_json_text_encodes_values(value: object, expected: str | None) -> None:
    assert to_json_text(value) == expected


def test_to_json_text_degrades_on_deep_and_circular_values() -> None:
    deep: dict[str, object] = {}
    node = deep
    for _ in range(5000):
        node["a"] = {}
        node = node["a"]  # type: ignore[assignment]
    circular: list[object] = []
    circular.append(circular)
    assert isinstance(json.loads(to_json_text(deep) or ""), str)
    assert json.loads(to_json_text(circular) or "") == "[[...]]"


def test_trace_to_row_survives_surrogates_emoji_and_deep_values(
    sqlite_experiment_id: str, export_dir: Path
) -> None:
    _app("emoji 😀🎉")
    stored = mlflow.get_trace(mlflow.get_last_active_trace_id())
    # The store refuses lone surrogates and 5000-deep values, so alter the fetched trace.
    as_dict = stored.to_dict()
    root = as_dict["data"]["spans"][0]
    root["attributes"]["mlflow.spanInputs"] = json.dumps({"q": "bad \ud800 😀"}, ensure_ascii=False)
    trace = Trace.from_dict(as_dict)
    trace.info.tags["weird\udfff"] = "value \ud83d"
    trace.info.request_preview = "preview \udc00"
    deep: dict[str, object] = {}
    node = deep
    for _ in range(5000):
        node["k"] = {}
        node = node["k"]  # type: ignore[assignment]
    trace.info.assessments.append(Feedback(name="deep", value=deep, rationale="r \ud800"))

    row = trace_to_row(trace, EXPORTED_AT)

    assert json.loads(row["request"]) == {"q": "bad \ufffd 😀"}
    assert dict(row["tags"])["weird\ufffd"] == "value \ufffd"
    assert row["request_preview"] == "preview \ufffd"
    deep_entry = next(a for a in row["assessments"] if a["name"] == "deep")
    assert isinstance(json.loads(deep_entry["value"]), str)
    assert "😀🎉" in row["response"]
    ParquetExporter(str(export_dir)).write_batch("b1", [trace], EXPORTED_AT)
    (request,) = _duckdb_rows(export_dir, "select request from DATASET")[0]
    assert request == row["request"]


def test_write_batch_round_trips_a_5mb_response(sqlite_experiment_id: str, export_dir: Path):
    big = "x" * 5_000_000 + "😀"
    _log_trace_at(DAY1_MS, "big", answer=big)
    ParquetExporter(str(export_dir)).write_batch("big", _traces(), EXPORTED_AT)
    table = ds.dataset(export_dir, format="parquet", partitioning="hive").to_table()
    assert json.loads(table.column("response")[0].as_py()) == big


# ----------------------------------------------------------------------------- Parquet dataset
def test_write_batch_layout_schema_and_readers(sqlite_experiment_id: str, export_dir: Path) -> None:
    ids = [_log_trace_at(DAY1_MS + i * DAY_MS, f"q{i}") for i in range(3)]
    ids.append(_log_trace_at(DAY1_MS + 60_000, "q-late"))
    for trace_id, verdict in zip(ids, ["yes", "no", "yes", "yes"], strict=True):
        _judge(trace_id, verdict)

    written = ParquetExporter(str(export_dir)).write_batch("w-0001", _traces(), EXPORTED_AT)

    names = [p.relative_to(export_dir).as_posix() for p in _data_files(export_dir)]
    assert names == [f"date={d}/part-w-0001.parquet" for d in (DAY1, DAY2, DAY3)]
    assert sorted(written) == [str(export_dir / n) for n in names]
    parquet_file = pq.ParquetFile(export_dir / names[0])
    assert parquet_file.schema_arrow.equals(ARROW_SCHEMA)  # no date column inside the files
    assert parquet_file.metadata.row_group(0).column(0).compression == "ZSTD"

    dataset = ds.dataset(export_dir, format="parquet", partitioning="hive")
    table = dataset.to_table()
    assert table.num_rows == 4
    assert table.schema.field("date").type == "string"
    for field in ARROW_SCHEMA:
        assert table.schema.field(field.name).type == field.type

    frame = pd.read_parquet(export_dir)
    assert sorted(frame["trace_id"]) == sorted(ids)
    assert set(frame["date"].astype(str)) == {DAY1, DAY2, DAY3}

    rates = _duckdb_rows(
        export_dir,
        """select date::varchar, avg((a.value = '"yes"')::int), count(*)
           from DATASET, unnest(assessments) t(a)
           where a.name = 'relevance' and a.valid group by date order by date""",
    )
    assert rates == [(DAY1, 1.0, 2), (DAY2, 0.0, 1), (DAY3, 1.0, 1)]
    (typed,) = _duckdb_rows(
        export_dir,
        """select typeof(request_time), typeof(trace_metadata), typeof(date),
                  max(schema_version) from DATASET group by all""",
    )
    assert typed == ("TIMESTAMP WITH TIME ZONE", "MAP(VARCHAR, VARCHAR)", "DATE", 1)


def test_write_batch_rerun_with_same_key_replaces_the_batch(
    sqlite_experiment_id: str, export_dir: Path
) -> None:
    a, b, c = (_log_trace_at(DAY1_MS + i * DAY_MS, f"q{i}") for i in range(3))
    d = _log_trace_at(DAY1_MS + 1000, "q-new")
    by_id = {t.info.trace_id: t for t in _traces()}
    exporter = ParquetExporter(str(export_dir))
    exporter.write_batch("k1", [by_id[a], by_id[b], by_id[c]], EXPORTED_AT)
    exporter.write_batch("k2", [by_id[c]], EXPORTED_AT)

    # Rerun of k1 after a crash, with a different set of traces: the DAY2 file must go.
    exporter.write_batch("k1", [by_id[a], by_id[d], by_id[a]], EXPORTED_AT + 1)

    names = [p.relative_to(export_dir).as_posix() for p in _data_files(export_dir)]
    assert names == [f"date={DAY1}/part-k1.parquet", f"date={DAY3}/part-k2.parquet"]
    ((total, distinct),) = _duckdb_rows(
        export_dir, "select count(*), count(distinct trace_id) from DATASET"
    )
    assert (total, distinct) == (3, 3)


def test_write_batch_with_no_traces_removes_the_batch(
    sqlite_experiment_id: str, export_dir: Path
) -> None:
    _log_trace_at(DAY1_MS, "q")
    exporter = ParquetExporter(str(export_dir))
    exporter.write_batch("k1", _traces(), EXPORTED_AT)
    assert exporter.write_batch("k1", [], EXPORTED_AT) == []
    assert _data_files(export_dir) == []
    assert ParquetExporter(str(export_dir / "never-written")).write_batch("k", [], 1) == []


def test_readers_ignore_leftover_temporary_files(
    sqlite_experiment_id: str, export_dir: Path
) -> None:
    _log_trace_at(DAY1_MS, "q")
    ParquetExporter(str(export_dir)).write_batch("k1", _traces(), EXPORTED_AT)
    partition = export_dir / f"date={DAY1}"
    assert [p.name for p in partition.iterdir()] == ["part-k1.parquet"]  # no temp file left
    (partition / ".part-k2.parquet.tmp-0123abcd").write_bytes(b"PAR1 half a file")

    assert _duckdb_rows(export_dir, "select count(*) from DATASET") == [(1,)]
    assert ds.dataset(export_dir, format="parquet", partitioning="hive").count_rows() == 1
    assert len(pd.read_parquet(export_dir)) == 1


def test_replace_partitions_picks_up_later_feedback(
    sqlite_experiment_id: str, export_dir: Path
) -> None:
    first, second = (_log_trace_at(DAY1_MS + i * 1000, f"q{i}") for i in range(2))
    _log_trace_at(DAY1_MS + DAY_MS, "other day")
    exporter = ParquetExporter(str(export_dir))
    exporter.write_batch("k1", _traces(), EXPORTED_AT)
    _judge(first, "no")

    day1 = dt.date(2026, 1, 1)
    written = exporter.replace_partitions(iter(_traces()), day1, day1, EXPORTED_AT + 1)

    assert written == 2
    names = [p.relative_to(export_dir).as_posix() for p in _data_files(export_dir)]
    assert names[1] == f"date={DAY2}/part-k1.parquet"  # outside the range: untouched
    assert names[0].startswith(f"date={DAY1}/part-resync-") and len(names) == 2
    rows = _duckdb_rows(
        export_dir,
        """select trace_id, len(assessments), [a.value for a in assessments]
           from DATASET where date = DATE '2026-01-01' order by trace_id""",
    )
    assert sorted(rows) == sorted([(first, 1, ['"no"']), (second, 0, [])])


def test_replace_partitions_streams_and_empties_dates_without_traces(
    sqlite_experiment_id: str, export_dir: Path
) -> None:
    for i in range(7):
        _log_trace_at(DAY1_MS + i * 1000, f"q{i}")
    _log_trace_at(DAY1_MS + DAY_MS, "day two")
    exporter = ParquetExporter(str(export_dir), row_group_rows=3, max_buffer_bytes=1)
    exporter.write_batch("k1", _traces(), EXPORTED_AT)
    day1_traces = [t for t in _traces() if partition_date(t.info.request_time) == DAY1]
    consumed: list[str] = []

    def stream() -> Iterator[Trace]:
        for t in day1_traces + day1_traces[:2]:  # duplicates are written once
            consumed.append(t.info.trace_id)
            yield t

    day1, day2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
    assert exporter.replace_partitions(stream(), day1, day2, EXPORTED_AT + 1) == 7

    (day1_file,) = _data_files(export_dir)
    assert day1_file.parent.name == f"date={DAY1}"  # DAY2 got no trace: its partition is empty
    assert pq.ParquetFile(day1_file).metadata.num_row_groups == 7  # flushed row by row
    assert len(consumed) == 9


def test_replace_partitions_failure_keeps_old_files(
    sqlite_experiment_id: str, export_dir: Path
) -> None:
    _log_trace_at(DAY1_MS, "q")
    exporter = ParquetExporter(str(export_dir), max_buffer_bytes=1)
    exporter.write_batch("k1", _traces(), EXPORTED_AT)
    before = _data_files(export_dir)

    def failing() -> Iterator[Trace]:
        yield from _traces()
        raise ConnectionError("tracking server went away")

    day1 = dt.date(2026, 1, 1)
    with pytest.raises(ConnectionError):
        exporter.replace_partitions(failing(), day1, day1, EXPORTED_AT + 1)
    assert _data_files(export_dir) == before
    with pytest.raises(MonitorConfigError):
        exporter.replace_partitions([], day1, dt.date(2025, 12, 31), EXPORTED_AT)


def test_compact_keeps_every_row_once(sqlite_experiment_id: str, export_dir: Path) -> None:
    ids = [_log_trace_at(DAY1_MS + (i % 2) * DAY_MS + i * 1000, f"q{i}") for i in range(9)]
    traces = _traces()
    exporter = ParquetExporter(str(export_dir), row_group_rows=2)
    for n in range(0, 9, 3):
        exporter.write_batch(f"k{n}", traces[n : n + 3], EXPORTED_AT + n)
    _judge(ids[0], "no")
    # The same trace exported again under another key, later and with its new feedback.
    exporter.write_batch("late", [mlflow.get_trace(ids[0])], EXPORTED_AT + 100)
    before = len(_data_files(export_dir))

    removed = exporter.compact()

    files = _data_files(export_dir)
    assert removed == before and len(files) == 2
    assert all(f.name.startswith("part-compact-") for f in files)
    rows = _duckdb_rows(
        export_dir, "select trace_id, epoch_ms(exported_at), len(assessments) from DATASET"
    )
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert (ids[0], EXPORTED_AT + 100, 1) in rows
    assert exporter.compact() == 0  # already one file per partition


def test_compact_respects_the_date_range(sqlite_experiment_id: str, export_dir: Path) -> None:
    for i in range(4):
        _log_trace_at(DAY1_MS + (i % 2) * DAY_MS, f"q{i}")
    exporter = ParquetExporter(str(export_dir))
    for i, trace in enumerate(_traces()):
        exporter.write_batch(f"k{i}", [trace], EXPORTED_AT)
    day2 = dt.date(2026, 1, 2)
    assert exporter.compact(date_from=day2, date_to=day2) == 2
    assert len(list((export_dir / f"date={DAY1}").iterdir())) == 2
    assert _duckdb_rows(export_dir, "select count(distinct trace_id) from DATASET") == [(4,)]


# ------------------------------------------------------------------------------------- errors
def _unwritable_destinations(tmp_path: Path) -> list[Path]:
    blocker = tmp_path / "a-regular-file"
    blocker.write_text("not a directory")
    destinations = [blocker / "sub"]
    if os.geteuid() != 0:  # root writes through chmod, so only a non-root run tests it
        read_only = tmp_path / "read-only"
        read_only.mkdir()
        read_only.chmod(stat.S_IRUSR | stat.S_IXUSR)
        destinations.append(read_only)
    return destinations


def test_unwritable_destination_raises_export_error(
    sqlite_experiment_id: str, tmp_path: Path
) -> None:
    _log_trace_at(DAY1_MS, "q")
    traces = _traces()
    for destination in _unwritable_destinations(tmp_path):
        exporter = ParquetExporter(str(destination))
        with pytest.raises(ExportError) as caught:
            exporter.write_batch("k1", traces, EXPORTED_AT)
        assert str(destination) in str(caught.value)
        assert "directory" in str(caught.value) or "ermission" in str(caught.value)
        day1 = dt.date(2026, 1, 1)
        with pytest.raises(ExportError):
            exporter.replace_partitions(traces, day1, day1, EXPORTED_AT)
    assert not [p for p in tmp_path.rglob("*") if ".parquet" in p.name]


def test_write_batch_rejects_unsafe_batch_keys(tmp_path: Path) -> None:
    exporter = ParquetExporter(str(tmp_path))
    for key in ["", "../escape", "a/b", "resync-1", "compact-x", "x" * 201]:
        with pytest.raises(MonitorConfigError, match="batch_key"):
            exporter.write_batch(key, [], EXPORTED_AT)


def test_make_exporter_picks_the_format(tmp_path: Path) -> None:
    assert isinstance(make_exporter(str(tmp_path)), ParquetExporter)
    assert isinstance(make_exporter(f"file://{tmp_path}"), ParquetExporter)
    with pytest.raises(MonitorConfigError, match="parquet"):
        make_exporter(str(tmp_path), format="csv")
    with pytest.raises(ExportError, match="nosuchscheme"):
        ParquetExporter("nosuchscheme://bucket/x")


# -------------------------------------------------------------------------------------- Delta
def test_delta_exporter_upserts_on_trace_id(sqlite_experiment_id: str, tmp_path: Path) -> None:
    deltalake = pytest.importorskip("deltalake", reason="deltalake (the [delta] extra) is absent")
    first, second = (_log_trace_at(DAY1_MS + i * DAY_MS, f"q{i}") for i in range(2))
    location = tmp_path / "delta"
    exporter = make_exporter(str(location), format="delta")
    assert exporter.write_batch("k1", _traces(), EXPORTED_AT) == [str(location)]
    _judge(first, "yes")
    exporter.write_batch("k1", [mlflow.get_trace(first)], EXPORTED_AT + 1)  # rerun: an upsert

    table = deltalake.DeltaTable(str(location)).to_pyarrow_table()
    assert sorted(table.column("trace_id").to_pylist()) == sorted([first, second])
    rows = {r["trace_id"]: r for r in table.to_pylist()}
    assert [a["value"] for a in rows[first]["assessments"]] == ['"yes"']
    assert [a["value"] for a in rows[second]["assessments"]] == []

    day2 = dt.date(2026, 1, 2)
    assert exporter.replace_partitions(iter(_traces()), day2, day2, EXPORTED_AT + 2) == 1
    assert exporter.replace_partitions(iter([]), day2, day2, EXPORTED_AT + 3) == 0
    assert exporter.compact() >= 0
    table = deltalake.DeltaTable(str(location)).to_pyarrow_table()
    assert table.column("trace_id").to_pylist() == [first]

    blocker = tmp_path / "a-regular-file"
    blocker.write_text("not a directory")
    with pytest.raises(ExportError, match="a-regular-file"):
        make_exporter(str(blocker / "sub"), format="delta").write_batch("k", _traces(), 1)
