"""``python -m tests.together BARRIER_DIR PARTIES run ...``: the daemon CLI, with a barrier before
each experiment's first lease write, so that daemons started side by side write their leases in
the same instant and the store sees a real race (the daemon itself runs unchanged).

Each daemon touches ``BARRIER_DIR/<experiment>/<pid>`` and waits until ``PARTIES`` have, at most
``WAIT_S``: a daemon that finds the lease already held never writes, and must not stall the rest.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from mlflow_monitor_plugin.cli.main import main
from mlflow_monitor_plugin.engine.lease import Lease

WAIT_S = 20.0


def synchronised(barrier_dir: Path, parties: int) -> Any:
    original = Lease._write
    seen: set[str] = set()

    def write(self: Lease, lease: dict[str, Any]) -> bool:
        if self.experiment_id not in seen:
            seen.add(self.experiment_id)
            folder = barrier_dir / self.experiment_id
            folder.mkdir(parents=True, exist_ok=True)
            (folder / str(os.getpid())).touch()
            deadline = time.monotonic() + WAIT_S
            while len(os.listdir(folder)) < parties and time.monotonic() < deadline:
                time.sleep(0.0005)
        return original(self, lease)

    return write


if __name__ == "__main__":
    Lease._write = synchronised(Path(sys.argv[1]), int(sys.argv[2]))  # type: ignore[method-assign]
    sys.argv = ["mlflow-monitor", *sys.argv[3:]]
    main()
