"""What every export writer shares: the ``Exporter`` interface and its error and date helpers."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa

from mlflow_monitor_plugin.exceptions import ExportError

if TYPE_CHECKING:
    from mlflow.entities import Trace


class Exporter(Protocol):
    def write_batch(
        self, batch_key: str, traces: Sequence[Trace], exported_at_ms: int
    ) -> list[str]: ...

    def replace_partitions(
        self,
        traces_by_date: Iterable[Trace],
        date_from: dt.date,
        date_to: dt.date,
        exported_at_ms: int,
    ) -> int: ...

    def exported_ids(self, from_ms: int, until_ms: int) -> set[str]: ...

    def compact(self, date_from: dt.date | None = None, date_to: dt.date | None = None) -> int: ...


@contextlib.contextmanager
def io_errors(action: str, path: str) -> Iterator[None]:
    try:
        yield
    except (OSError, pa.ArrowException) as e:
        raise ExportError(f"Cannot {action} {path!r}: {e}") from e


def in_range(date: str, date_from: dt.date | None, date_to: dt.date | None) -> bool:
    return (date_from is None or date >= date_from.isoformat()) and (
        date_to is None or date <= date_to.isoformat()
    )
