"""Where a monitor is in an experiment's stream of finished traces. Pure: ``now_ms`` is passed in.

Traces are visited in (request time, trace id) order. The checkpoint is the last key fully
handled; the next pass resumes strictly after it. A late-arrival sweep revisits a trailing window
so a trace that finishes or arrives after the cursor moved past it is still handled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow_monitor_plugin.exceptions import MonitorStorageError


@dataclass(frozen=True, order=True)
class Checkpoint:
    timestamp_ms: int
    trace_id: str = ""

    def is_before(self, timestamp_ms: int, trace_id: str) -> bool:
        """Whether the trace keyed (timestamp_ms, trace_id) is still ahead of this checkpoint."""
        return (timestamp_ms, trace_id) > (self.timestamp_ms, self.trace_id)

    def to_dict(self) -> dict[str, Any]:
        return {"timestamp_ms": self.timestamp_ms, "trace_id": self.trace_id}

    @classmethod
    def from_dict(cls, value: Any, where: str) -> Checkpoint | None:
        if value is None:
            return None
        try:
            return cls(int(value["timestamp_ms"]), str(value.get("trace_id", "")))
        except (KeyError, TypeError, ValueError):
            raise MonitorStorageError(
                f"Checkpoint {where} is malformed: {value!r}; expected "
                '{"timestamp_ms": <int>, "trace_id": <str>}. Delete the tag to start over.'
            ) from None


START = Checkpoint(0, "")


def sweep_floor_ms(now_ms: int, late_window_ms: int) -> int:
    """The oldest request time the late-arrival sweep revisits."""
    return max(0, now_ms - late_window_ms)


def lag_ms(checkpoint: Checkpoint | None, newest_timestamp_ms: int | None) -> int | None:
    """How far the checkpoint trails the newest finished trace (None when there is none)."""
    if newest_timestamp_ms is None:
        return None
    behind = newest_timestamp_ms - (checkpoint.timestamp_ms if checkpoint else 0)
    return max(0, behind)
