"""Trace -> row of the export's versioned Arrow schema. Pure: see docs/export-schema.md."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from mlflow_monitor_plugin.export.masking import RowMasking, mask_row, mask_span

if TYPE_CHECKING:
    from mlflow.entities import Trace

    from mlflow_monitor_plugin.redaction import Masker

logger = logging.getLogger(__name__)


EXPORT_SCHEMA_VERSION = 1
PARTITION_COLUMN = "date"
ROWS_PER_ROW_GROUP = 10_000
MAX_BUFFER_BYTES = 64 * 1024 * 1024

_TS = pa.timestamp("ms", tz="UTC")
_MAP = pa.map_(pa.string(), pa.string())
ASSESSMENT_TYPE = pa.struct(
    [
        ("assessment_id", pa.string()),
        ("name", pa.string()),
        ("value", pa.string()),  # JSON text: '"yes"', 'true', '0.5'; NULL when there is no value
        ("rationale", pa.string()),
        ("source_type", pa.string()),
        ("source_id", pa.string()),
        ("error", pa.string()),  # JSON text {"error_code", "error_message", "stack_trace"} or NULL
        ("create_time", _TS),
        ("metadata", _MAP),
        ("kind", pa.string()),  # feedback | expectation | issue
        ("span_id", pa.string()),
        ("valid", pa.bool_()),  # False once another assessment overrides this one
    ]
)
ARROW_SCHEMA = pa.schema(
    [
        pa.field("trace_id", pa.string(), nullable=False),
        ("client_request_id", pa.string()),
        ("experiment_id", pa.string()),
        ("state", pa.string()),
        pa.field("request_time", _TS, nullable=False),
        ("execution_duration_ms", pa.int64()),
        ("request", pa.string()),
        ("response", pa.string()),
        ("request_preview", pa.string()),
        ("response_preview", pa.string()),
        ("trace_metadata", _MAP),
        ("tags", _MAP),
        ("assessments", pa.list_(ASSESSMENT_TYPE)),
        ("spans", pa.string()),
        pa.field("exported_at", _TS, nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
    ],
    metadata={"mlflow_monitor.export_schema_version": str(EXPORT_SCHEMA_VERSION)},
)
TABLE_SCHEMA = ARROW_SCHEMA.append(pa.field(PARTITION_COLUMN, pa.string(), nullable=False))

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def clean_text(text: str) -> str:
    """``text`` as valid UTF-8: surrogate pairs are joined, lone surrogates become U+FFFD."""
    if text.isascii():  # the common case, checked without copying
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _opt_text(value: Any) -> str | None:
    return None if value is None else clean_text(value if isinstance(value, str) else str(value))


def to_json_text(value: Any) -> str | None:
    """JSON text of ``value``; never raises. Too deep or circular values degrade to a JSON
    string holding their ``str()``; ``None`` stays ``None`` (SQL NULL)."""
    if value is None:
        return None
    try:
        return clean_text(json.dumps(value, ensure_ascii=False, default=str))
    except (RecursionError, ValueError, TypeError):
        try:
            fallback = str(value)
        except RecursionError:
            fallback = f"<{type(value).__name__} nested too deeply to serialize>"
        return clean_text(json.dumps(fallback, ensure_ascii=False))


def _map(mapping: dict[Any, Any] | None) -> list[tuple[str, str]]:
    cleaned = {clean_text(str(k)): clean_text(str(v)) for k, v in (mapping or {}).items()}
    return sorted(cleaned.items())


def partition_date(request_time_ms: int) -> str:
    """The ``YYYY-MM-DD`` partition (UTC) of a trace's request time in milliseconds."""
    return (_EPOCH + dt.timedelta(milliseconds=request_time_ms)).strftime("%Y-%m-%d")


def _assessment_entry(assessment: Any) -> dict[str, Any]:
    value, error, kind = None, None, "feedback"
    if getattr(assessment, "feedback", None) is not None:
        value, error = assessment.feedback.value, assessment.feedback.error
    elif getattr(assessment, "expectation", None) is not None:
        value, kind = assessment.expectation.value, "expectation"
    elif getattr(assessment, "issue", None) is not None:
        value, kind = assessment.issue.issue_name, "issue"
    source = assessment.source
    if error is not None and hasattr(error, "to_dictionary"):
        error_text = to_json_text(error.to_dictionary())
    else:
        error_text = _opt_text(error)
    return {
        "assessment_id": _opt_text(assessment.assessment_id),
        "name": _opt_text(assessment.name),
        "value": to_json_text(value),
        "rationale": _opt_text(assessment.rationale),
        "source_type": _opt_text(source.source_type) if source else None,
        "source_id": _opt_text(source.source_id) if source else None,
        "error": error_text,
        "create_time": assessment.create_time_ms,
        "metadata": _map(assessment.metadata),
        "kind": kind,
        "span_id": _opt_text(assessment.span_id),
        "valid": assessment.valid,
    }


def _span_json(span: Any) -> str:
    export = getattr(span, "json_for_export", None)  # MLflow's stored JSON, without a re-dump
    if export is not None:
        with contextlib.suppress(Exception):
            return clean_text(export())
    return to_json_text(span.to_dict()) or "null"


def _root_io_text(value: Any) -> str | None:
    return _opt_text(value) if isinstance(value, str) or value is None else to_json_text(value)


def trace_to_row(trace: Trace, exported_at_ms: int, masker: Masker | None = None) -> dict[str, Any]:
    """One export row (the columns of ``TABLE_SCHEMA``) from a full trace. Pure; never raises on
    odd content: invalid text is replaced, unserializable values degrade to text. With a
    ``masker``, the personal data its policy names is masked (export/masking.py)."""
    info = trace.info
    spans = trace.data.spans if trace.data is not None else []
    texts = [_span_json(s) for s in spans]  # before anything else
    masking = RowMasking(masker) if masker is not None else None
    if masking is not None and masking.covers("spans"):
        texts = [mask_span(masking, text) for text in texts]
    row = {
        "trace_id": info.trace_id,
        "client_request_id": _opt_text(info.client_request_id),
        "experiment_id": _opt_text(info.experiment_id),
        "state": _opt_text(getattr(info.state, "value", info.state)),
        "request_time": info.request_time,
        "execution_duration_ms": info.execution_duration,
        "request": _root_io_text(trace.data.request) if spans else None,
        "response": _root_io_text(trace.data.response) if spans else None,
        "request_preview": _opt_text(info.request_preview),
        "response_preview": _opt_text(info.response_preview),
        "trace_metadata": _map(info.trace_metadata),
        "tags": _map(info.tags),
        "assessments": [_assessment_entry(a) for a in info.assessments or []],
        "spans": "[" + ",".join(texts) + "]",
        "exported_at": exported_at_ms,
        "schema_version": EXPORT_SCHEMA_VERSION,
        PARTITION_COLUMN: partition_date(info.request_time),
    }
    return row if masking is None else mask_row(masking, row)


def traces_to_table(
    traces: Iterable[Trace], exported_at_ms: int, masker: Masker | None = None
) -> pa.Table:
    """The traces as a table of ``TABLE_SCHEMA`` (``ARROW_SCHEMA`` plus the ``date`` column)."""
    rows = [trace_to_row(t, exported_at_ms, masker) for t in traces]
    return pa.Table.from_pylist(rows, TABLE_SCHEMA)


def _unique(traces: Iterable[Trace]) -> list[Trace]:
    return list({t.info.trace_id: t for t in traces}.values())  # the last copy of a trace wins


def _row_bytes(row: dict[str, Any]) -> int:
    return sum(len(row[c] or "") for c in ("request", "response", "spans")) + 1024
