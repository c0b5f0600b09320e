"""Deterministic, dense sampling of traces.

Each (trace, monitor) pair gets a number ``u`` in [0, 1) from a hash; a judge with rate ``r``
runs iff ``u < r``. So the traces picked at 0.2 are a subset of those picked at 0.4 (the dense
property Databricks documents), and the choice survives restarts and is the same on every host.
"""

from __future__ import annotations

import hashlib

_SCALE = float(1 << 64)


def sample_point(trace_id: str, monitor_id: str) -> float:
    """The trace's fixed position in [0, 1) for this monitor."""
    digest = hashlib.sha256(f"{monitor_id}\x00{trace_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def is_sampled(trace_id: str, monitor_id: str, rate: float) -> bool:
    return rate > 0 and sample_point(trace_id, monitor_id) < rate
