"""One daemon at a time works a monitor: a lease in the experiment's tags.

Acquiring writes our lease, lets a racing writer land, and reads it back: whoever's lease is
there works the pass. When two daemons create the lease tag in the same instant, the store
refuses the second insert: that daemon lost the race and stands by, as if it had read the other's
lease. The holder renews it as it goes; a daemon restarted on the same host takes back at once
the lease of a predecessor whose process is gone. Should two daemons still overlap (a pause
longer than the settle time), the feedback reconcile keeps their verdicts single.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from mlflow.exceptions import MlflowException

from mlflow_monitor_plugin.config.tags import MonitorTags, lost_create_race

_logger = logging.getLogger(__name__)

LEASE_KEY = "lease"
SETTLE_S = 0.3


def _started(pid: int) -> str:
    """When the process started (clock ticks since boot, Linux), or "" where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def new_owner() -> str:
    """``host:pid:nonce:start``; the start time tells a restarted container's daemon, which has
    the same host name and often the same pid (1) as its dead predecessor, from that one."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}:{_started(pid)}"


def holder_alive(lease: dict[str, Any]) -> bool:
    """False only when the holder is a process of this host that no longer runs."""
    host, pid, _, started = ([*str(lease.get("owner", "")).split(":"), "", "", ""])[:4]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, under another user
    now = _started(int(pid))
    return not (started and now and started != now)  # the pid is another process's now


class Lease:
    def __init__(
        self,
        tags: MonitorTags,
        experiment_id: str,
        owner: str,
        ttl_s: float,
        sleep: Callable[[float], None] = time.sleep,
        key: str = LEASE_KEY,
    ):
        self.tags = tags
        self.experiment_id = experiment_id
        self.owner = owner
        self.ttl_ms = int(ttl_s * 1000)
        self._sleep = sleep
        self.key = key  # the daemons' lease, or another job's (one backfill per monitor)
        self.held = False

    def _read(self) -> dict[str, Any]:
        return self.tags.read_json(self.experiment_id, self.key) or {}

    def acquire(self, now_ms: int) -> bool:
        """Take or renew the lease; False when another live daemon holds it."""
        current = self._read()
        theirs = current.get("owner") not in (None, "", self.owner)
        if theirs and int(current.get("expires_ms", 0)) > now_ms and holder_alive(current):
            self.held = False
            return False
        lease = {"owner": self.owner, "expires_ms": now_ms + self.ttl_ms}
        if not self._write(lease):
            self.held = False
            return False
        if not self.held or theirs:
            self._sleep(SETTLE_S)
            self.held = self._read().get("owner") == self.owner
        return self.held

    def _write(self, lease: dict[str, Any]) -> bool:
        """Write our lease; False when another daemon created the tag in the same instant."""
        try:
            self.tags.write_json(self.experiment_id, self.key, lease)
        except MlflowException as e:
            if not lost_create_race(e):
                raise
            _logger.info(
                "Experiment %s: another daemon created the lease at the same moment; standing by",
                self.experiment_id,
            )
            _logger.debug("The store refused the second lease: %s", e.message)
            return False
        return True

    def release(self) -> None:
        if self.held:
            self.tags.write_json(self.experiment_id, self.key, {"owner": "", "expires_ms": 0})
            self.held = False
