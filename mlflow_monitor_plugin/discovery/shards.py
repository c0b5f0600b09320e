"""Shards: which replica owns which trace, and where a new layout resumes. Pure.

A shard is a range of a hash of the trace id (of the session id, for session judges): shard
``K`` of ``N`` owns the keys whose point lies in ``[K/N, (K+1)/N)``. The hash is independent of
the sampling hash (it is salted differently and ignores the monitor), so a monitor that samples
20% of its traces still spreads them evenly over its replicas; with the sampling hash, shard 0
would own every sampled trace.

A *layout* is the number of shards and an epoch that grows by one with every change of that
number. When the number changes, the new layout's shards all start at the *handover*: the
lowest position any shard of the old layout had reached (nothing it left undone is skipped);
up to the highest one (``until``) some traces were done by an old shard, and the verdicts on
the trace and the export's ids say which, so nothing is done twice.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint
from mlflow_monitor_plugin.exceptions import MonitorConfigError

_SCALE = float(1 << 64)
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_ORDINAL = re.compile(r"-(\d+)$")
MAX_SHARDS = 1024


def shard_point(key: str) -> float:
    """The key's fixed position in [0, 1) for sharding (not the sampling position)."""
    digest = hashlib.sha256(f"mlflow-monitor-shard\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise MonitorConfigError("shards", self.count, f"an integer from 1 to {MAX_SHARDS}")
        if not 0 <= self.index < self.count:
            allowed = f"K/N with K from 0 to N - 1 = {self.count - 1}"
            raise MonitorConfigError("shard", f"{self.index}/{self.count}", allowed)

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def owns(self, key: str) -> bool:
        return self.count == 1 or int(shard_point(key) * self.count) == self.index

    def key(self, base: str) -> str:
        """The tag key of this shard's state: ``base`` itself for the single shard (the
        unsharded daemon's tags), ``base.shard-K-of-N`` otherwise."""
        return base if self.count == 1 else f"{base}.shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


UNSHARDED = Shard(0, 1)


def parse_shard(text: str) -> Shard:
    """``"K/N"`` -> ``Shard(K, N)``, e.g. ``"2/4"``."""
    match = _SPEC.match(text or "")
    if not match:
        raise MonitorConfigError("shard", text, "K/N, e.g. 0/4 (shard K of N, from 0)")
    return Shard(int(match.group(1)), int(match.group(2)))


def shard_from_hostname(hostname: str, count: int) -> Shard:
    """A StatefulSet pod's shard from its ordinal: ``monitor-3`` -> shard 3 of ``count``."""
    match = _ORDINAL.search(hostname or "")
    if not match:
        raise MonitorConfigError(
            "hostname", hostname, "a name ending in -<ordinal>, as a StatefulSet's pods are"
        )
    return Shard(int(match.group(1)), count)


@dataclass(frozen=True)
class Handover:
    """Where every shard of a layout starts, from the old layout's final cursors."""

    start: Checkpoint | None  # None: the experiment's first trace
    until: Checkpoint | None  # None: the old layout had done nothing
    sessions: Checkpoint | None = None  # the session judges' cursor

    def in_overlap(self, timestamp_ms: int, trace_id: str) -> bool:
        """Whether an old shard may already have handled this trace."""
        return self.until is not None and not self.until.is_before(timestamp_ms, trace_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.to_dict() if self.start else None,
            "until": self.until.to_dict() if self.until else None,
            "sessions": self.sessions.to_dict() if self.sessions else None,
        }

    @classmethod
    def from_dict(cls, value: dict[str, Any], where: str) -> Handover:
        return cls(
            Checkpoint.from_dict(value.get("start"), where),
            Checkpoint.from_dict(value.get("until"), where),
            Checkpoint.from_dict(value.get("sessions"), where),
        )


NOTHING = Handover(None, None, None)


def _lowest(cursors: list[Checkpoint | None]) -> Checkpoint | None:
    """The lowest cursor; None (the beginning) if any is None or there are none."""
    if not cursors or any(c is None for c in cursors):
        return None
    return min(c for c in cursors if c is not None)


def handover(
    positions: Iterable[tuple[Checkpoint | None, Checkpoint | None]],
    sessions: Iterable[Checkpoint | None] = (),
    base: Handover | None = None,
) -> Handover:
    """From each old shard's (resume position, furthest position), the new layout's start (the
    lowest resume position) and the end of the overlap (the furthest position of any, or of
    the old layout's own overlap, ``base``)."""
    pairs = list(positions)
    reached = [c for _, furthest in pairs for c in [furthest] if c is not None]
    if base is not None and base.until is not None:
        reached.append(base.until)
    return Handover(
        _lowest([resume for resume, _ in pairs]),
        max(reached) if reached else None,
        _lowest(list(sessions)),
    )


@dataclass(frozen=True)
class Layout:
    """The experiment's current shard count, its epoch, and the handover once computed."""

    count: int
    epoch: int
    previous: tuple[int, int] | None  # (count, epoch) of the layout before
    handover: Handover | None  # where this layout's shards start; None until computed
    base: Handover = NOTHING  # the layout before's own handover: where its idle shards stood

    def to_dict(self) -> dict[str, Any]:
        return {
            "shards": self.count,
            "epoch": self.epoch,
            "previous": list(self.previous) if self.previous else None,
            "handover": self.handover.to_dict() if self.handover else None,
            "base": self.base.to_dict(),
        }

    @classmethod
    def from_dict(cls, value: Any, where: str) -> Layout:
        if value is None:
            return LEGACY
        try:
            previous = value.get("previous")
            handover_value = value.get("handover")
            return cls(
                int(value["shards"]),
                int(value["epoch"]),
                (int(previous[0]), int(previous[1])) if previous else None,
                Handover.from_dict(handover_value, where) if handover_value else None,
                Handover.from_dict(value.get("base") or {}, where),
            )
        except (KeyError, TypeError, ValueError, IndexError):
            raise MonitorConfigError(
                "layout", value, '{"shards": N, "epoch": E, ...}; delete the tag to reset it'
            ) from None

    def changed_to(self, count: int) -> Layout:
        """The next layout, of ``count`` shards. When this one never finished its handover,
        its own shards did nothing, so the next one hands over from this one's predecessor."""
        if self.handover is None:
            return Layout(count, self.epoch + 1, self.previous, None, self.base)
        return Layout(count, self.epoch + 1, (self.count, self.epoch), None, self.handover)


LEGACY = Layout(1, 0, None, NOTHING)  # no layout tag: one daemon, as before shards existed
