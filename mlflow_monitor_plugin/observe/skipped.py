"""Judges the daemon passed over, and why, so ``status`` and ``report`` can tell a skipped judge
from one that did not apply.

A sampled (trace, judge) pair behind the cursor with nothing written reads as *not applicable*
(the judge did not apply to the trace). When the daemon never ran the judge (no judge endpoint
in its environment, a code judge not installed) that is untrue: the judge was *skipped*. Each
pass that skips a judge extends the judge's trace-time ranges in the tag
``mlflow_monitor.skipped`` (one per shard), with the reason; a reader sees those pairs as
skipped, with the reason and what to do. The ranges stay when the judge runs again: its
skipped traces stay unscored until ``mlflow monitor backfill`` scores them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mlflow_monitor_plugin.config.tags import NAMESPACE

SKIPPED_KEY = "skipped"  # under the plugin's tag namespace, then per shard (Shard.key)
MAX_RANGES = 20  # per judge: the oldest ranges are dropped first

NO_ENDPOINT = (
    "no judge endpoint in the daemon's environment: set OPENAI_API_KEY (and OPENAI_API_BASE "
    "for an OpenAI-compatible server) where `mlflow monitor run` runs, or give the judge a "
    "gateway:/<endpoint> model"
)


@dataclass
class Skipped:
    """One judge's skipped trace-time ranges ``[from_ms, to_ms]`` and the latest reason."""

    reason: str
    ranges: list[list[int]] = field(default_factory=list)

    def covers(self, timestamp_ms: int) -> bool:
        return any(low <= timestamp_ms <= high for low, high in self.ranges)

    def extend(self, from_ms: int, to_ms: int) -> bool:
        """Add ``[from_ms, to_ms]``, merged into the last range when they touch; True when
        the ranges changed."""
        if to_ms < from_ms:
            return False
        if self.ranges and from_ms <= self.ranges[-1][1] and to_ms >= self.ranges[-1][0]:
            last = self.ranges[-1]
            merged = [min(last[0], from_ms), max(last[1], to_ms)]
            if merged == last:
                return False
            self.ranges[-1] = merged
            return True
        self.ranges.append([from_ms, to_ms])
        del self.ranges[:-MAX_RANGES]
        return True


@dataclass
class Skips:
    """A monitor's skipped judges (every shard's, for a reader)."""

    monitor_id: str
    judges: dict[str, Skipped] = field(default_factory=dict)

    def reason(self, judge: str, timestamp_ms: int) -> str | None:
        """Why ``judge`` was skipped on a trace of this time, None when it was not."""
        found = self.judges.get(judge)
        return found.reason if found and found.covers(timestamp_ms) else None

    def record(self, reasons: dict[str, str], from_ms: int, to_ms: int) -> bool:
        """A pass walked the traces of ``[from_ms, to_ms]`` without running these judges;
        True when something changed."""
        changed = False
        for name, reason in reasons.items():
            found = self.judges.setdefault(name, Skipped(reason))
            changed |= found.reason != reason or not found.ranges
            found.reason = reason
            changed |= found.extend(from_ms, to_ms)
        return changed

    def to_dict(self) -> dict[str, Any]:
        return {
            "monitor_id": self.monitor_id,
            "judges": {n: {"reason": s.reason, "ranges": s.ranges} for n, s in self.judges.items()},
        }

    @classmethod
    def from_dict(cls, data: Any, monitor_id: str) -> Skips:
        """The stored value if it is this monitor's and well formed, else an empty record."""
        skips = cls(monitor_id)
        if not isinstance(data, dict) or data.get("monitor_id") != monitor_id:
            return skips
        judges = data.get("judges")
        for name, item in (judges if isinstance(judges, dict) else {}).items():
            try:
                ranges = [[int(a), int(b)] for a, b in item["ranges"]]
                skips.judges[str(name)] = Skipped(str(item["reason"]), ranges)
            except (KeyError, TypeError, ValueError):
                continue  # a damaged entry: that judge reads as never skipped
        return skips

    @classmethod
    def union(cls, records: Iterable[Skips], monitor_id: str) -> Skips:
        """Every shard's record as one (a reader's view)."""
        merged = cls(monitor_id)
        for record in records:
            for name, found in record.judges.items():
                mine = merged.judges.setdefault(name, Skipped(found.reason))
                mine.ranges.extend(found.ranges)
        return merged


def read(tags: Any, experiment_id: str, monitor_id: str) -> Skips:
    """Every shard's skipped judges of the monitor, from the experiment's tags."""
    base = NAMESPACE + SKIPPED_KEY
    records = []
    for key, value in tags.experiment_tags(experiment_id).items():
        if key == base or key.startswith(base + "."):
            try:
                records.append(Skips.from_dict(json.loads(value), monitor_id))
            except ValueError:
                continue
    return Skips.union(records, monitor_id)


def advice(experiment_id: str, skips: Skips, judges: Iterable[str]) -> list[str]:
    """One line per reason: which judges were skipped, why, and how to score what they
    missed."""
    by_reason: dict[str, list[str]] = {}
    since: dict[str, int] = {}
    for name in judges:
        if name in skips.judges and skips.judges[name].ranges:
            found = skips.judges[name]
            by_reason.setdefault(found.reason, []).append(name)
            since[found.reason] = min([since.get(found.reason, found.ranges[0][0])]
                                      + [low for low, _ in found.ranges])  # fmt: skip
    lines = []
    for reason, names in by_reason.items():
        day = dt.datetime.fromtimestamp(since[reason] / 1000, dt.timezone.utc).date()
        lines.append(
            f"skipped: {', '.join(names)}: {reason}. The traces they skipped stay unscored until "
            f"a backfill scores them: `mlflow monitor backfill -x {experiment_id} --since {day}`."
        )
    return lines
