"""Re-sync an export period from MLflow, so assessments added after a trace was exported (human
feedback, later verdicts) reach the copy. Partitions are replaced whole, atomically per file.

Only traces the monitor's export cursor has passed are re-synced: newer ones are still the
daemon's to export, and writing them here would copy them twice.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator

from mlflow.entities import Trace

from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint
from mlflow_monitor_plugin.discovery.traces import TraceSource
from mlflow_monitor_plugin.export.parquet import ParquetExporter

DAY_MS = 86_400_000


def day_start_ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp() * 1000)


def traces_in_period(
    source: TraceSource,
    date_from: dt.date,
    date_to: dt.date,
    upto: Checkpoint,
    on_page: Callable[[int], None] | None = None,
    page_size: int = 200,
) -> Iterator[Trace]:
    """Full traces requested in [date_from, date_to] (UTC) and not after ``upto``, page by page."""
    start = Checkpoint(day_start_ms(date_from) - 1, "\uffff")
    until = min(day_start_ms(date_to) + DAY_MS, upto.timestamp_ms + 1)
    for page in source.infos_after(start, page_size, until_ms=until):
        ids = [i.trace_id for i in page if not upto.is_before(i.timestamp_ms, i.trace_id)]
        yield from source.fetch(ids)
        if on_page:
            on_page(len(page))


def resync(
    source: TraceSource,
    exporter: ParquetExporter,
    date_from: dt.date,
    date_to: dt.date,
    upto: Checkpoint,
    on_page: Callable[[int], None] | None = None,
) -> int:
    """Replace the partitions of [date_from, date_to] with the traces as MLflow has them now."""
    traces = traces_in_period(source, date_from, date_to, upto, on_page)
    return exporter.replace_partitions(traces, date_from, date_to, int(time.time() * 1000))
