"""What one pass carries: its counts (``PassStats``), its cursor, its context and the pages
whose judges are in flight. Moved out of pipeline.py, which wires them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import TraceInfo

from mlflow_monitor_plugin.config.model import ExternalMonitor
from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint
from mlflow_monitor_plugin.export.parquet import ParquetExporter
from mlflow_monitor_plugin.scoring.feedback import FeedbackWriter
from mlflow_monitor_plugin.scoring.judges import JudgeSpec
from mlflow_monitor_plugin.scoring.pool import Due, Outcome


@dataclass
class PassStats:
    experiment_id: str
    traces: int = 0
    exported: int = 0
    feedback_logged: int = 0
    duplicates_removed: int = 0
    judges: dict[str, Counter[str]] = field(default_factory=dict)
    export_error: str | None = None
    skipped: str | None = None
    seconds: float = 0.0

    def count(self, judge: str, what: str, n: int = 1) -> None:
        self.judges.setdefault(judge, Counter())[what] += n

    def total(self, what: str) -> int:
        return sum(c[what] for c in self.judges.values())

    def summary(self) -> str:
        if self.skipped:
            return f"experiment {self.experiment_id}: skipped ({self.skipped})"
        # A verdict is one judge's answer on one trace; pairs are the (trace, judge) sampled.
        parts = [
            f"experiment {self.experiment_id}: {self.traces} traces",
            f"{self.total('scored')} verdicts",
            f"{self.total('failed')} failed",
            f"{self.total('sampled')} trace-judge pairs sampled",
            f"{self.exported} exported",
            f"{self.seconds:.2f}s",
        ]
        if self.export_error:
            parts.append(f"export failed: {self.export_error}")
        return ", ".join(parts)


@dataclass
class Cursor:
    score: Checkpoint | None
    export: Checkpoint | None

    def start(self, exporting: bool) -> Checkpoint | None:
        """Where the pass resumes: the score cursor, or the export cursor when it lags."""
        if not exporting:
            return self.score
        if self.score is None or self.export is None:
            return None
        return min(self.score, self.export)

    def advance(self, last: TraceInfo, score: bool, export: bool) -> None:
        key = Checkpoint(last.timestamp_ms, last.trace_id)
        if score and (self.score is None or key > self.score):
            self.score = key
        if export and (self.export is None or key > self.export):
            self.export = key

    def to_dict(self, monitor_id: str) -> dict[str, Any]:
        return {
            "monitor_id": monitor_id,
            "score": self.score.to_dict() if self.score else None,
            "export": self.export.to_dict() if self.export else None,
        }


@dataclass
class PassContext:
    """What one pass works with: the monitor as read at its start, and where it is."""

    monitor: ExternalMonitor
    judges: list[JudgeSpec]
    writer: FeedbackWriter
    cursor: Cursor
    export: ParquetExporter | None
    stats: PassStats
    touched: dict[str, int] = field(default_factory=dict)  # trace id -> request time (observe/)
    lost: bool = False  # the lease was lost, or the layout changed, between pages


@dataclass
class PageInFlight:
    """A page whose judges have started: what remains is to collect, export and checkpoint."""

    page: list[TraceInfo]
    to_export: list[TraceInfo]
    due: Due
    outcomes: Iterator[Outcome]


def lowest(cursors: list[Checkpoint | None]) -> Checkpoint | None:
    return None if None in cursors else min(c for c in cursors if c is not None)


def is_ahead(cp: Checkpoint | None, info: TraceInfo) -> bool:
    return cp is None or cp.is_before(info.timestamp_ms, info.trace_id)
