"""Optional Delta Lake export (``pip install mlflow-monitor[delta]``): rows upserted on trace_id."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from mlflow_monitor_plugin.exceptions import ExportError, MonitorConfigError

if TYPE_CHECKING:
    from mlflow.entities import Trace

    from mlflow_monitor_plugin.redaction import Masker

from mlflow_monitor_plugin.export.base import in_range, io_errors
from mlflow_monitor_plugin.export.rows import (
    PARTITION_COLUMN,
    ROWS_PER_ROW_GROUP,
    TABLE_SCHEMA,
    _unique,
    partition_date,
    trace_to_row,
    traces_to_table,
)

logger = logging.getLogger(__name__)


def _import_deltalake() -> Any:
    try:
        import deltalake
    except ImportError as e:
        raise ExportError(
            "The delta export format needs the deltalake package: "
            "pip install 'mlflow-monitor[delta]'"
        ) from e
    return deltalake


class DeltaExporter:
    """Upserts traces (merge on ``trace_id``) into a Delta table partitioned by ``date``.
    Delta stores the timestamps as microseconds (its only timestamp type)."""

    def __init__(
        self,
        export_uri: str,
        storage_options: dict[str, str] | None = None,
        *,
        rows_per_batch: int = ROWS_PER_ROW_GROUP,
        masker: Masker | None = None,
    ):
        self._delta = _import_deltalake()
        self.masker = masker
        self.export_uri = export_uri if "://" in export_uri else os.path.abspath(export_uri)
        self._options = storage_options
        self._rows = rows_per_batch

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        with io_errors(action, self.export_uri):
            try:
                yield
            except self._delta.exceptions.DeltaError as e:
                raise ExportError(f"Cannot {action} {self.export_uri!r}: {e}") from e

    def _table(self) -> Any | None:
        try:
            return self._delta.DeltaTable(self.export_uri, storage_options=self._options)
        except self._delta.exceptions.TableNotFoundError:
            return None

    def _write(self, data: Any, **kwargs: Any) -> None:
        self._delta.write_deltalake(
            self.export_uri,
            data,
            partition_by=[PARTITION_COLUMN],
            storage_options=self._options,
            **kwargs,
        )

    def write_batch(
        self, batch_key: str, traces: Sequence[Trace], exported_at_ms: int
    ) -> list[str]:
        """Upsert ``traces``; idempotent by trace_id, so ``batch_key`` only names the batch in
        logs. Returns ``[export_uri]``, or ``[]`` for no traces."""
        table = traces_to_table(_unique(traces), exported_at_ms, self.masker)
        if table.num_rows == 0:
            return []
        with self._errors("write Delta table"):
            target = self._table()
            if target is None:
                self._write(table)
            else:
                target.merge(
                    table,
                    "t.date = s.date AND t.trace_id = s.trace_id",
                    source_alias="s",
                    target_alias="t",
                ).when_matched_update_all().when_not_matched_insert_all().execute()
        logger.info(
            "Upserted batch %s: %s row(s) into %s", batch_key, table.num_rows, self.export_uri
        )
        return [self.export_uri]

    def replace_partitions(
        self,
        traces_by_date: Iterable[Trace],
        date_from: dt.date,
        date_to: dt.date,
        exported_at_ms: int,
    ) -> int:
        """Overwrite the dates ``[date_from, date_to]`` in one Delta commit, streaming the traces
        in record batches. Returns the number of rows written."""
        if date_to < date_from:
            raise MonitorConfigError("date_to", date_to, f"must not be before {date_from}")
        written = 0

        def batches() -> Iterator[pa.RecordBatch]:
            nonlocal written
            rows: list[dict[str, Any]] = []
            seen: set[str] = set()
            for row in (trace_to_row(t, exported_at_ms, self.masker) for t in traces_by_date):
                if in_range(row[PARTITION_COLUMN], date_from, date_to) and (
                    row["trace_id"] not in seen
                ):
                    seen.add(row["trace_id"])
                    rows.append(row)
                if len(rows) >= self._rows:
                    written += len(rows)
                    yield pa.RecordBatch.from_pylist(rows, TABLE_SCHEMA)
                    rows = []
            written += len(rows)
            yield pa.RecordBatch.from_pylist(rows, TABLE_SCHEMA)

        reader = pa.RecordBatchReader.from_batches(TABLE_SCHEMA, batches())
        predicate = f"date >= '{date_from.isoformat()}' AND date <= '{date_to.isoformat()}'"
        with self._errors("write Delta table"):
            if self._table() is None:
                self._write(reader)
            else:
                self._write(reader, mode="overwrite", predicate=predicate)
        return written

    def exported_ids(self, from_ms: int, until_ms: int) -> set[str]:
        """The trace ids in the table's partitions of request times [from_ms, until_ms)."""
        import pyarrow.dataset as ds

        first, last = partition_date(from_ms), partition_date(max(from_ms, until_ms - 1))
        with self._errors("read Delta table"):
            target = self._table()
            if target is None:
                return set()
            field = ds.field(PARTITION_COLUMN)
            table = target.to_pyarrow_dataset().to_table(
                columns=["trace_id"], filter=(field >= first) & (field <= last)
            )
        return set(table.column(0).to_pylist())

    def compact(self, date_from: dt.date | None = None, date_to: dt.date | None = None) -> int:
        """Delta's own ``optimize.compact()``; returns the number of files removed."""
        with self._errors("compact Delta table"):
            target = self._table()
            if target is None:
                return 0
            filters = [(PARTITION_COLUMN, ">=", date_from.isoformat())] if date_from else []
            filters += [(PARTITION_COLUMN, "<=", date_to.isoformat())] if date_to else []
            metrics = target.optimize.compact(partition_filters=filters or None)
        return int(metrics.get("numFilesRemoved", 0))
