"""The shard one engine works: its tags, its lease, the layout fence and the handover.

Replicas started with ``--shard K/N`` split a monitor's traces by a hash of the trace id
(``discovery/shards.py``); each (monitor, shard) has its own cursor, session cursor and lease
(``checkpoint.shard-K-of-N`` ...), so two replicas given the same shard are a pair of active and
standby, as two unsharded daemons are. The daemon without ``--shard`` is shard 0 of 1 and keeps
the tags it always had.

The experiment's ``layout`` tag holds the shard count in force. A replica whose count differs
writes its own at its first pass (the newest start wins: a rolling update), and from then on
every replica of another count stands by, checking at each page, so a replica of the old count
stops after the page in flight. The new layout waits until every lease of the old one is
released or expired (a killed replica's after ``lease_ttl_s``), then reads the old cursors,
final now, and writes the *handover*: every new shard starts at the lowest old position and, up
to the highest, skips the pairs that carry a verdict (as every pass does) and the traces that an
old shard exported. No coordination service: the tags of the experiment are enough.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from mlflow.exceptions import MlflowException

from mlflow_monitor_plugin.config.tags import NAMESPACE, MonitorTags, lost_create_race
from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint
from mlflow_monitor_plugin.discovery.shards import (
    LEGACY,
    NOTHING,
    UNSHARDED,
    Handover,
    Layout,
    Shard,
    handover,
)
from mlflow_monitor_plugin.engine.lease import LEASE_KEY, Lease, holder_alive

_logger = logging.getLogger(__name__)

LAYOUT_KEY = "layout"
ShardCursor = tuple[Shard, Checkpoint | None, Checkpoint | None]  # (shard, score, export)
CHECKPOINT_KEY = "checkpoint"
SESSIONS_KEY = "sessions"


def _cursor_epoch(stored: dict[str, Any]) -> int:
    return int(stored.get("epoch", 0))


class ShardWork:
    """One engine's shard of one experiment's monitor."""

    def __init__(
        self,
        tags: MonitorTags,
        experiment_id: str,
        owner: str,
        ttl_s: float,
        shard: Shard | None = None,
        sleep: Callable[[float], None] | None = None,
    ):
        self.tags = tags
        self.experiment_id = experiment_id
        self.shard = shard or UNSHARDED
        key = self.shard.key(LEASE_KEY)
        self.lease = Lease(tags, experiment_id, owner, ttl_s, sleep or time.sleep, key=key)
        self.layout: Layout = LEGACY
        self._joined: int | None = None  # the layout epoch this replica claimed or joined
        self._fenced_logged = False
        self._overlap_ids: tuple[int, set[str]] | None = None  # (epoch, exported ids)

    # -- tag keys and cursors ----------------------------------------------------------------
    def key(self, base: str) -> str:
        return self.shard.key(base)

    def stamp(self, value: dict[str, Any]) -> dict[str, Any]:
        """A cursor's value, with the layout epoch it belongs to (none for the legacy one)."""
        return {**value, "epoch": self.layout.epoch} if self.layout.epoch else value

    def current(self, stored: dict[str, Any], monitor_id: str) -> bool:
        """Whether a stored cursor is this monitor's, in this layout."""
        return stored.get("monitor_id") == monitor_id and _cursor_epoch(stored) == self.layout.epoch

    @property
    def handed_over(self) -> Handover:
        return self.layout.handover or NOTHING

    def owns(self, key: str) -> bool:
        return self.shard.owns(key)

    def batch_prefix(self) -> str:
        """Export batch keys of this layout's shard; the legacy daemon's have none."""
        if self.layout.epoch == 0:
            return ""
        return f"e{self.layout.epoch}-s{self.shard.index}of{self.shard.count}-"

    # -- admission ---------------------------------------------------------------------------
    def admit(self, monitor_id: str, now_ms: int, exporting: bool) -> str | None:
        """None when this engine may work a pass now, else why it stands by."""
        all_tags = self.tags.experiment_tags(self.experiment_id)
        layout = self._read_layout(all_tags)
        if self._joined is None:  # the first pass: a replica of another count starts a layout
            if layout.count != self.shard.count:
                layout = self._claim(layout)
            self._joined = layout.epoch
        elif self._replaced(layout):
            return self._fenced(layout)
        if layout.handover is None:
            if not self._old_leases_free(all_tags, layout, now_ms):
                old = layout.previous[0] if layout.previous else 1
                return f"waiting for the replicas of the previous layout ({old} shards) to stop"
            layout = self._hand_over(all_tags, layout, monitor_id, exporting)
        self.layout = layout
        if not self.lease.acquire(now_ms):
            return "another daemon holds its lease"
        return None

    def renew(self, now_ms: int) -> bool:
        """Renew the lease between pages; False when it is lost or the layout changed."""
        layout = self._read_layout(self.tags.experiment_tags(self.experiment_id))
        if self._replaced(layout):
            self._fenced(layout, release=False)  # the pages in flight finish first
            return False
        return self.lease.acquire(now_ms)

    def _replaced(self, layout: Layout) -> bool:
        """Whether a newer layout replaced the one this replica joined (even of its count:
        2 -> 3 -> 2 while it was paused)."""
        return layout.count != self.shard.count or layout.epoch != self._joined

    def stand_down(self) -> None:
        """After a pass stopped by a change of layout: let the new layout's replicas start."""
        if self._fenced_logged and self.lease.held:
            self.lease.release()

    def _fenced(self, layout: Layout, release: bool = True) -> str:
        if release and self.lease.held:
            self.lease.release()
        reason = (
            f"the monitor now runs as {layout.count} shard(s) (layout {layout.epoch}) and this "
            f"daemon as shard {self.shard} of layout {self._joined}; {self._restart_as(layout)}"
        )
        if not self._fenced_logged:
            self._fenced_logged = True
            _logger.warning("Experiment %s: %s; standing by", self.experiment_id, reason)
        return reason

    def _restart_as(self, layout: Layout) -> str:
        """How to restart this replica into ``layout``: its own index where the new layout
        has it, else that it is one too many."""
        count, index = layout.count, self.shard.index
        every = f"each replica its own K from 0 to {count - 1}" if count > 1 else "one replica"
        if count == 1:
            return "restart it without --shard (one replica runs the monitor), or stop it"
        if index < count:
            return (
                f"restart it with --shard {index}/{count} ({every}; a StatefulSet: "
                f"--shard-from-hostname --shards {count})"
            )
        return (
            f"the new layout has no shard {index}: stop this replica, or restart it as a shard "
            f"no other replica runs, --shard K/{count} ({every})"
        )

    def _read_layout(self, all_tags: dict[str, str]) -> Layout:
        raw = all_tags.get(NAMESPACE + LAYOUT_KEY)
        return Layout.from_dict(None if raw is None else json.loads(raw), self.experiment_id)

    def _write_layout(self, layout: Layout) -> None:
        try:
            self.tags.write_json(self.experiment_id, LAYOUT_KEY, layout.to_dict())
        except MlflowException as e:
            if not lost_create_race(e):
                raise
            # Another replica of the same start wrote it an instant before: the same value,
            # as long as both saw the same layout before; read back on the next page.
            _logger.debug("Another replica created the layout tag at the same moment")

    def _claim(self, old: Layout) -> Layout:
        layout = old.changed_to(self.shard.count)
        _logger.warning(
            "Experiment %s: the monitor's layout changes from %d to %d shard(s) (epoch %d)",
            self.experiment_id, old.count, layout.count, layout.epoch,
        )  # fmt: skip
        self._write_layout(layout)
        return layout

    def _old_shards(self, layout: Layout) -> list[Shard]:
        count = layout.previous[0] if layout.previous else 1
        return [Shard(k, count) for k in range(count)]

    def _old_leases_free(self, all_tags: dict[str, str], layout: Layout, now_ms: int) -> bool:
        for shard in self._old_shards(layout):
            raw = all_tags.get(NAMESPACE + shard.key(LEASE_KEY))
            lease = json.loads(raw) if raw else {}
            live = lease.get("owner") and int(lease.get("expires_ms", 0)) > now_ms
            if live and holder_alive(lease):
                return False
        return True

    def _hand_over(
        self, all_tags: dict[str, str], layout: Layout, monitor_id: str, exporting: bool
    ) -> Layout:
        """The old layout's final cursors -> where the new one starts; written to the tag."""
        old_epoch = layout.previous[1] if layout.previous else 0
        where = f"of experiment {self.experiment_id}"
        positions, sessions = [], []
        for shard in self._old_shards(layout):
            raw = all_tags.get(NAMESPACE + shard.key(CHECKPOINT_KEY))
            stored = json.loads(raw) if raw else {}
            base = layout.base  # where an old shard that never saved a cursor stood
            if stored.get("monitor_id") == monitor_id and _cursor_epoch(stored) == old_epoch:
                score = Checkpoint.from_dict(stored.get("score"), where)
                export = Checkpoint.from_dict(stored.get("export"), where)
                resume = (
                    score if not exporting else (min(score, export) if score and export else None)
                )
                positions.append((resume, max((c for c in (score, export) if c), default=None)))
            else:
                positions.append((base.start, None))
            raw = all_tags.get(NAMESPACE + shard.key(SESSIONS_KEY))
            stored = json.loads(raw) if raw else {}
            ok = stored.get("monitor_id") == monitor_id and _cursor_epoch(stored) == old_epoch
            sessions.append(
                Checkpoint.from_dict(stored.get("cursor"), where) if ok else base.sessions
            )
        found = handover(positions, sessions, layout.base)
        done = Layout(layout.count, layout.epoch, layout.previous, found, layout.base)
        _logger.info(
            "Experiment %s: layout of %d shard(s) starts at %s; old shards reached %s",
            self.experiment_id, done.count, done.handover.start, done.handover.until,
        )  # fmt: skip
        self._write_layout(done)
        return done

    # -- readers (status, backfill): the layout's cursors, not one shard's ------------------
    @property
    def started(self) -> bool:
        return self._joined is not None

    def shard_cursors(self, monitor_id: str) -> list[ShardCursor]:
        """For a reader that is no replica: every shard of the layout in force, with its score
        and export cursors (a shard that has not started yet: where the layout starts)."""
        all_tags = self.tags.experiment_tags(self.experiment_id)
        self.layout = self._read_layout(all_tags)
        return self._cursors(all_tags, monitor_id)

    def slowest_score(self, monitor_id: str) -> Checkpoint | None:
        """For a replica: the lowest score cursor of its layout's shards, the position every
        shard has passed (the quality windows of shard 0 follow it)."""
        found = self._cursors(self.tags.experiment_tags(self.experiment_id), monitor_id)
        scores = [score for _, score, _ in found]
        return None if None in scores else min(s for s in scores if s is not None)

    def _cursors(self, all_tags: dict[str, str], monitor_id: str) -> list[ShardCursor]:
        where = f"of experiment {self.experiment_id}"
        found = []
        for shard in [Shard(k, self.layout.count) for k in range(self.layout.count)]:
            raw = all_tags.get(NAMESPACE + shard.key(CHECKPOINT_KEY))
            stored = json.loads(raw) if raw else {}
            if self.current(stored, monitor_id):
                score = Checkpoint.from_dict(stored.get("score"), where)
                export = Checkpoint.from_dict(stored.get("export"), where)
            else:
                score = export = self.handed_over.start
            found.append((shard, score, export))
        return found

    # -- the export in the overlap -----------------------------------------------------------
    def exported_by_old(self, export: Any) -> set[str]:
        """Trace ids the old layout exported in the overlap (read once per layout): the files
        of this layout are left out, so a page repeated after a crash rewrites its own batch
        whole."""
        epoch, h = self.layout.epoch, self.handed_over
        if h.until is None:
            return set()
        if self._overlap_ids is None or self._overlap_ids[0] != epoch:
            start_ms = h.start.timestamp_ms if h.start else 0
            prefix = f"part-e{epoch}-"
            ids = export.exported_ids(start_ms, h.until.timestamp_ms + 1, skip_prefix=prefix)
            self._overlap_ids = (epoch, ids)
        return self._overlap_ids[1]
