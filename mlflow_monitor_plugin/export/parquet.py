"""Every trace becomes one row of a versioned Arrow schema (pure), written as a Parquet dataset
partitioned hive-style by request date (I/O). See docs/export-schema.md for the contract.

Files appear atomically (written under a dot-prefixed temporary name that does not end in
``.parquet``, then renamed), so readers never see a partial file. A batch's files are named after
its key, so re-running a batch replaces them instead of adding duplicates.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlflow_monitor_plugin.exceptions import ExportError, MonitorConfigError
from mlflow_monitor_plugin.export.base import in_range, io_errors

if TYPE_CHECKING:
    from mlflow.entities import Trace

    from mlflow_monitor_plugin.redaction import Masker

from mlflow_monitor_plugin.export.rows import (
    ARROW_SCHEMA,
    MAX_BUFFER_BYTES,
    PARTITION_COLUMN,
    ROWS_PER_ROW_GROUP,
    _row_bytes,
    _unique,
    partition_date,
    trace_to_row,
)

logger = logging.getLogger(__name__)


_BATCH_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,199}$")
_RESERVED_PREFIXES = ("resync-", "compact-")


class _AtomicParquetFile:
    """A Parquet file written under a hidden temporary name and renamed into place on commit."""

    def __init__(self, fs: pafs.FileSystem, directory: str, name: str, row_group_rows: int):
        self._fs, self._dir, self._rows = fs, directory, row_group_rows
        self.path = f"{directory}/{name}"
        self._tmp = f"{directory}/.{name}.tmp-{uuid.uuid4().hex}"
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        try:
            with io_errors("write export file", self.path):
                if self._writer is None:
                    self._fs.create_dir(self._dir, recursive=True)
                    self._writer = pq.ParquetWriter(
                        self._tmp, ARROW_SCHEMA, filesystem=self._fs, compression="zstd"
                    )
                table = table.select(ARROW_SCHEMA.names).cast(ARROW_SCHEMA)
                self._writer.write_table(table, row_group_size=self._rows)
        except ExportError:
            self.abort()
            raise

    def commit(self) -> str:
        try:
            with io_errors("write export file", self.path):
                if self._writer is None:
                    raise ExportError(f"Nothing was written to {self.path!r}")
                self._writer.close()
                self._writer = None
                self._fs.move(self._tmp, self.path)  # a rename on local disks: atomic, overwrites
        except ExportError:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            if self._writer is not None:
                self._writer.close()
        self._writer = None
        with contextlib.suppress(Exception):
            self._fs.delete_file(self._tmp)


def _resolve(export_uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in export_uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(export_uri))
    fs, path = pafs.FileSystem.from_uri(export_uri)
    return fs, path.rstrip("/")


def _check_batch_key(batch_key: str) -> None:
    if not _BATCH_KEY.match(batch_key) or batch_key.startswith(_RESERVED_PREFIXES):
        raise MonitorConfigError(
            "batch_key",
            batch_key,
            "use 1-200 letters, digits, '.', '_', '=' or '-', starting with a letter or digit, "
            "and not starting with 'resync-' or 'compact-'",
        )


class ParquetExporter:
    """Writes traces as a Parquet dataset under ``export_uri``: ``date=YYYY-MM-DD/part-*.parquet``.

    One writer per export location at a time. ``export_uri`` is a local path or any URI that
    ``pyarrow.fs.FileSystem.from_uri`` understands (``s3://``, ``gs://``, ``file://`` ...).
    With a ``masker``, rows are written with the personal data of its policy masked; ``compact``
    copies rows as they are, so what was masked stays masked.
    """

    def __init__(
        self,
        export_uri: str,
        *,
        row_group_rows: int = ROWS_PER_ROW_GROUP,
        max_buffer_bytes: int = MAX_BUFFER_BYTES,
        masker: Masker | None = None,
    ):
        self.export_uri = export_uri
        self.masker = masker
        self._rows = row_group_rows
        self._max_buffer = max_buffer_bytes
        try:
            self._fs, self._root = _resolve(export_uri)
        except (ValueError, OSError, pa.ArrowException) as e:
            raise ExportError(f"Cannot open export location {export_uri!r}: {e}") from e

    def _dir(self, date: str) -> str:
        return f"{self._root}/{PARTITION_COLUMN}={date}"

    def _new_file(self, date: str, name: str) -> _AtomicParquetFile:
        return _AtomicParquetFile(self._fs, self._dir(date), name, self._rows)

    def _partitions(self) -> dict[str, str]:
        """Partition date -> directory, for the partitions that exist."""
        with io_errors("list export location", self._root):
            infos = self._fs.get_file_info(pafs.FileSelector(self._root, allow_not_found=True))
        prefix = f"{PARTITION_COLUMN}="
        return {
            i.base_name[len(prefix) :]: i.path
            for i in infos
            if i.type == pafs.FileType.Directory and i.base_name.startswith(prefix)
        }

    def _data_files(self, directory: str) -> list[str]:
        with io_errors("list export partition", directory):
            infos = self._fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        return sorted(
            i.path
            for i in infos
            if i.type == pafs.FileType.File
            and i.base_name.endswith(".parquet")
            and not i.base_name.startswith((".", "_"))
        )

    def _delete(self, paths: Iterable[str]) -> int:
        count = 0
        for path in paths:
            with io_errors("delete export file", path):
                self._fs.delete_file(path)
            count += 1
        return count

    def write_batch(
        self, batch_key: str, traces: Sequence[Trace], exported_at_ms: int
    ) -> list[str]:
        """Write ``traces`` as one ``date=D/part-<batch_key>.parquet`` file per request date.

        Idempotent per ``batch_key``: a rerun replaces the batch's files and deletes the files of
        the same key in partitions it no longer writes. Returns the paths written."""
        _check_batch_key(batch_key)
        name = f"part-{batch_key}.parquet"
        rows_by_date: dict[str, list[dict[str, Any]]] = {}
        for trace in _unique(traces):
            row = trace_to_row(trace, exported_at_ms, self.masker)
            rows_by_date.setdefault(row[PARTITION_COLUMN], []).append(row)
        written = []
        for date in sorted(rows_by_date):
            out = self._new_file(date, name)
            out.write(pa.Table.from_pylist(rows_by_date.pop(date), ARROW_SCHEMA))
            written.append(out.commit())
        dates_written = {p.rsplit("/", 2)[-2] for p in written}
        candidates = [
            f"{directory}/{name}"
            for directory in self._partitions().values()
            if directory.rsplit("/", 1)[-1] not in dates_written
        ]
        with io_errors("list export files", self._root):
            infos = self._fs.get_file_info(candidates)
        stale = self._delete(i.path for i in infos if i.type == pafs.FileType.File)
        logger.info(
            "Exported batch %s: %s file(s) written, %s stale file(s) removed under %s",
            batch_key,
            len(written),
            stale,
            self._root,
        )
        return written

    def replace_partitions(
        self,
        traces_by_date: Iterable[Trace],
        date_from: dt.date,
        date_to: dt.date,
        exported_at_ms: int,
    ) -> int:
        """Rewrite every partition in ``[date_from, date_to]`` whole from ``traces_by_date`` (any
        order, streamed with bounded memory). New files land first, then the older files of those
        partitions are deleted; traces outside the range are skipped. Returns rows written."""
        if date_to < date_from:
            raise MonitorConfigError("date_to", date_to, f"must not be before {date_from}")
        name = f"part-resync-{uuid.uuid4().hex[:16]}.parquet"
        # Only files present now are replaced: a batch a daemon writes meanwhile stays.
        before = self._files_in(date_from, date_to)
        files: dict[str, _AtomicParquetFile] = {}
        buffers: dict[str, list[dict[str, Any]]] = {}
        seen: set[str] = set()
        buffered = written = skipped = 0

        def flush(date: str) -> None:
            nonlocal buffered
            rows = buffers.pop(date, [])
            if rows:
                files.setdefault(date, self._new_file(date, name))
                files[date].write(pa.Table.from_pylist(rows, ARROW_SCHEMA))
                buffered -= sum(_row_bytes(r) for r in rows)

        committed: list[str] = []
        try:
            for trace in traces_by_date:
                row = trace_to_row(trace, exported_at_ms, self.masker)
                date = row[PARTITION_COLUMN]
                if not in_range(date, date_from, date_to) or row["trace_id"] in seen:
                    skipped += 1
                    continue
                seen.add(row["trace_id"])
                buffers.setdefault(date, []).append(row)
                buffered += _row_bytes(row)
                written += 1
                if len(buffers[date]) >= self._rows:
                    flush(date)
                while buffered > self._max_buffer and buffers:
                    flush(max(buffers, key=lambda d: len(buffers[d])))
            for date in list(buffers):
                flush(date)
            committed = [files[date].commit() for date in sorted(files)]
        except BaseException:
            for out in files.values():
                out.abort()
            with contextlib.suppress(ExportError):
                self._delete(committed)  # roll back: the old files are still in place
            raise
        self._delete(before)
        logger.info(
            "Re-synced partitions %s..%s under %s: %s row(s) written, %s trace(s) skipped",
            date_from,
            date_to,
            self._root,
            written,
            skipped,
        )
        return written

    def _files_in(self, date_from: dt.date, date_to: dt.date) -> list[str]:
        return [
            path
            for date, directory in self._partitions().items()
            if in_range(date, date_from, date_to)
            for path in self._data_files(directory)
        ]

    def exported_ids(self, from_ms: int, until_ms: int, skip_prefix: str = "") -> set[str]:
        """The trace ids already exported in the partitions of request times [from_ms, until_ms),
        leaving out the files whose name starts with ``skip_prefix`` (when given)."""
        first, last = partition_date(from_ms), partition_date(max(from_ms, until_ms - 1))
        ids: set[str] = set()
        for date, directory in self._partitions().items():
            if first <= date <= last:
                for path in self._data_files(directory):
                    if skip_prefix and path.rsplit("/", 1)[-1].startswith(skip_prefix):
                        continue
                    for table in self._read(path, ["trace_id"]):
                        ids.update(table.column(0).to_pylist())
        return ids

    def compact(self, date_from: dt.date | None = None, date_to: dt.date | None = None) -> int:
        """Merge the files of each partition in range into one file (written first, then the old
        ones deleted). If a trace occurs more than once, only its latest export is kept.
        Returns the number of files removed."""
        removed = 0
        for date, directory in sorted(self._partitions().items()):
            paths = self._data_files(directory) if in_range(date, date_from, date_to) else []
            if len(paths) < 2:
                continue
            out = self._new_file(date, f"part-compact-{uuid.uuid4().hex[:16]}.parquet")
            try:
                for table in self._deduplicated(paths):
                    out.write(table)
                out.commit()
            except BaseException:
                out.abort()
                raise
            removed += self._delete(paths)
        logger.info("Compacted %s: %s file(s) merged and removed", self._root, removed)
        return removed

    def _read(self, path: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
        with io_errors("read export file", path), self._fs.open_input_file(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(self._rows, columns=columns):
                yield pa.Table.from_batches([batch])

    def _deduplicated(self, paths: list[str]) -> Iterator[pa.Table]:
        """The rows of ``paths``, each trace_id once: the row with the latest ``exported_at``."""
        best: dict[str, tuple[int, int]] = {}
        for index, path in enumerate(paths):
            for t in self._read(path, ["trace_id", "exported_at"]):
                stamps = t.column(1).cast(pa.int64()).to_pylist()
                for trace_id, stamp in zip(t.column(0).to_pylist(), stamps, strict=True):
                    best[trace_id] = max(best.get(trace_id, (stamp, index)), (stamp, index))
        emitted: set[str] = set()
        for index, path in enumerate(paths):
            for table in self._read(path):
                ids = table.column("trace_id").to_pylist()
                keep = []
                for trace_id in ids:
                    keep.append(best[trace_id][1] == index and trace_id not in emitted)
                    if keep[-1]:
                        emitted.add(trace_id)
                yield table.filter(pa.array(keep, pa.bool_()))
