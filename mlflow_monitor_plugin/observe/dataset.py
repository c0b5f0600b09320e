"""The ``quality/`` Parquet dataset: one row per monitor, judge and window, beside the trace copy.

Files are ``<quality>/<monitor_id>-<width>-<YYYY-MM-DD>.parquet``: every window of one monitor,
width and UTC day. A recomputed day is written whole under a hidden temporary name and renamed
over the old file, so a reader sees the old rows or the new ones, never both and never a part.
See docs/export-schema.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlflow_monitor_plugin.exceptions import ExportError

QUALITY_SCHEMA_VERSION = 1
_TS = pa.timestamp("ms", tz="UTC")
_F = pa.float64()
_I = pa.int64()
QUALITY_SCHEMA = pa.schema(
    [
        pa.field("monitor_id", pa.string(), nullable=False),
        pa.field("experiment_id", pa.string(), nullable=False),
        pa.field("judge", pa.string(), nullable=False),
        pa.field("width", pa.string(), nullable=False),
        pa.field("window_start", _TS, nullable=False),
        pa.field("window_end", _TS, nullable=False),
        ("sample_rate", _F),
        ("eligible", _I),
        ("sampled", _I),
        ("verdicts", _I),
        ("passed", _I),
        ("failed", _I),
        ("other", _I),
        ("numeric", _I),
        ("errors", _I),
        ("unscored", _I),
        ("pass_rate", _F),
        ("pass_rate_low95", _F),
        ("pass_rate_high95", _F),
        ("sample_low95", _F),
        ("sample_high95", _F),
        ("estimated_failing", _F),
        ("value_mean", _F),
        ("value_p50", _F),
        ("value_p90", _F),
        ("latency_p50", _F),
        ("latency_p95", _F),
        ("effective_rate", _F),
        ("judge_tokens", _I),
        ("judge_cost_usd", _F),
        ("judge_cost_unknown", _I),
        ("fingerprint", pa.string()),  # the fingerprint of the window's newest verdict
        ("fingerprint_before", pa.string()),  # the one before it, when the judge changed here
        ("fingerprints", _I),  # distinct fingerprints: more than 1, the judge changed in it
        ("judge_fingerprint", _F),  # the fingerprint as a number, charted
        ("human_labels", _I),
        ("human_agreed", _I),
        ("human_agreement", _F),
        ("human_agreement_low95", _F),
        ("human_agreement_high95", _F),
        ("human_kappa", _F),
        ("human_kappa_low95", _F),
        ("human_kappa_high95", _F),
        ("human_overrides", _I),
        ("human_invalid", _I),
        pa.field("computed_at", _TS, nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
    ],
    metadata={"mlflow_monitor.quality_schema_version": str(QUALITY_SCHEMA_VERSION)},
)


def quality_uri(export_uri: str) -> str:
    """Where a monitor's quality rows go: a ``quality`` folder beside its trace export."""
    parent = export_uri.rstrip("/").rpartition("/")[0]
    return f"{parent or '.'}/quality"


class QualityDataset:
    """Writes the windows of one (monitor, width, day) as one Parquet file, replaced whole."""

    def __init__(self, uri: str):
        self.uri = uri
        try:
            if "://" in uri:
                self._fs, path = pafs.FileSystem.from_uri(uri)
                self._root = path.rstrip("/")
            else:
                self._fs = pafs.LocalFileSystem()
                self._root = os.path.abspath(os.path.expanduser(uri))
        except (ValueError, OSError, pa.ArrowException) as e:
            raise ExportError(f"Cannot open quality location {uri!r}: {e}") from e

    def path(self, monitor_id: str, width: str, day: dt.date) -> str:
        return f"{self._root}/{monitor_id}-{width}-{day.isoformat()}.parquet"

    def write_day(
        self, monitor_id: str, width: str, day: dt.date, rows: list[dict[str, Any]]
    ) -> str:
        """Replace the file of (monitor, width, day) with ``rows`` (one per judge and window)."""
        target = self.path(monitor_id, width, day)
        tmp = f"{self._root}/.{os.path.basename(target)}.tmp-{uuid.uuid4().hex}"
        table = pa.Table.from_pylist(
            [{**row, "schema_version": QUALITY_SCHEMA_VERSION} for row in rows], QUALITY_SCHEMA
        )
        try:
            self._fs.create_dir(self._root, recursive=True)
            with self._fs.open_output_stream(tmp) as out:
                pq.write_table(table, out, compression="zstd")
            self._fs.move(tmp, target)  # a rename on local disks: atomic, overwrites
        except (OSError, pa.ArrowException) as e:
            with contextlib.suppress(Exception):
                self._fs.delete_file(tmp)
            raise ExportError(f"Cannot write quality file {target!r}: {e}") from e
        return target

    def read(self) -> pa.Table:
        """Every row of the dataset (for tests and small reports)."""
        infos = self._fs.get_file_info(pafs.FileSelector(self._root, allow_not_found=True))
        paths = sorted(
            i.path
            for i in infos
            if i.type == pafs.FileType.File
            and i.base_name.endswith(".parquet")
            and not i.base_name.startswith(".")
        )
        tables = [pq.read_table(p, filesystem=self._fs, schema=QUALITY_SCHEMA) for p in paths]
        return pa.concat_tables(tables) if tables else QUALITY_SCHEMA.empty_table()
