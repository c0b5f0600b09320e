"""Helpers for the survival tests (crash, faults, bad input, secrets): a daemon subprocess, an
independent audit of the verdicts on a store, and the rows of an export read by DuckDB.

The audit deliberately does not reuse ``feedback.judge_states``: it re-derives "one complete
verdict" from the raw assessments, so a bug in the package's own bookkeeping cannot hide itself.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import duckdb
import mlflow

from mlflow_monitor_plugin.discovery.sampling import is_sampled
from tests.fake_judge import FakeJudge, JudgeBehaviour

REPO = Path(__file__).resolve().parent.parent
MONITOR_KEY = "mlflow_monitor.monitor_id"
JUDGE_KEY = "mlflow_monitor.judge"
VERDICT_KEY = "mlflow_monitor.verdict_id"
PARTS_KEY = "mlflow_monitor.parts"

# Two LLM judges and a deterministic one: what the fault and secret tests run.
MIXED_SUITE = {
    "assessments": [
        {"name": "safety"},
        {"guidelines": {"polite": ["The response is polite."]}},
        {"name": "pii_detection"},
    ]
}


@dataclass
class Daemon:
    """A ``mlflow monitor run`` subprocess whose stdout and stderr go to ``log_path``."""

    process: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes]

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        self._log.close()

    def terminate(self, timeout_s: float = 60) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout_s)
        finally:
            self.kill()


def daemon_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_MONITOR_DISABLE_CLI_HOOK": "1"}
    env.update(extra)
    return env


def start_daemon(log_path: Path, *args: str, env: dict[str, str] | None = None) -> Daemon:
    """``python -m mlflow_monitor_plugin.cli run ARGS`` against this test's tracking URI."""
    log = open(log_path, "ab")  # noqa: SIM115 - closed by Daemon.kill
    cmd = [sys.executable, "-m", "mlflow_monitor_plugin.cli", "run", *args]
    process = subprocess.Popen(
        cmd, env=env or daemon_env(), stdout=log, stderr=log, cwd=log_path.parent
    )
    return Daemon(process, log_path, log)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout_s: float = 120) -> Any:
    """``python -m mlflow_monitor_plugin.cli ARGS`` to completion; the CompletedProcess."""
    cmd = [sys.executable, "-m", "mlflow_monitor_plugin.cli", *args]
    return subprocess.run(
        cmd, env=env or daemon_env(), capture_output=True, text=True, timeout=timeout_s
    )


def _children_by_parent() -> dict[int, list[int]]:
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return parents


def children(pid: int) -> list[int]:
    """The processes ``pid`` started itself (Linux /proc)."""
    return _children_by_parent().get(pid, [])


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (Linux /proc), children first."""
    parents = _children_by_parent()
    found, todo = [], [pid]
    while todo:
        below = parents.get(todo.pop(), [])
        found += below
        todo += below
    return found


def alive(pid: int) -> bool:
    """Running, i.e. neither gone nor a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(condition: Callable[[], bool], timeout_s: float, every_s: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every_s)
    return condition()


@dataclass
class Audit:
    """What one monitor left on an experiment's traces, per (trace_id, judge)."""

    complete: Counter[tuple[str, str]] = field(default_factory=Counter)
    partial: Counter[tuple[str, str]] = field(default_factory=Counter)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    error_messages: list[str] = field(default_factory=list)

    def duplicates(self) -> int:
        return sum(n - 1 for n in self.complete.values() if n > 1)


def all_traces(experiment_id: str) -> list[Any]:
    return mlflow.search_traces(locations=[experiment_id], return_type="list", include_spans=False)


def audit(experiment_id: str, monitor_id: str) -> Audit:
    """Group the monitor's feedbacks by verdict id; a group is complete when it has as many
    feedbacks as its ``parts`` metadata says."""
    result = Audit()
    for trace in all_traces(experiment_id):
        groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for a in trace.info.assessments or []:
            meta = a.metadata or {}
            if meta.get(MONITOR_KEY) != monitor_id:
                continue
            key = (trace.info.trace_id, meta.get(JUDGE_KEY, a.name))
            if getattr(a, "error", None) is not None:
                result.errors[key] += 1
                result.error_messages.append(a.error.error_message or "")
            else:
                groups[(*key, meta.get(VERDICT_KEY, ""))].append(a)
        for (trace_id, judge, _), group in groups.items():
            parts = int(group[0].metadata.get(PARTS_KEY, 1))
            target = result.complete if len(group) >= parts else result.partial
            target[(trace_id, judge)] += 1
    return result


def expected_pairs(
    trace_ids: list[str], monitor_id: str, rates: dict[str, float]
) -> Counter[tuple[str, str]]:
    """One verdict for every sampled (trace, judge): the sampling contract of DESIGN.md."""
    return Counter(
        {
            (t, judge): 1
            for t in trace_ids
            for judge, rate in rates.items()
            if is_sampled(t, monitor_id, rate)
        }
    )


def export_ids(export_uri: str) -> list[str]:
    """Every trace_id row in the export (one entry per row, duplicates kept)."""
    if not any(Path(export_uri).rglob("*.parquet")):
        return []
    return [
        r[0]
        for r in duckdb.sql(
            f"select trace_id from read_parquet('{export_uri}/**/*.parquet', "
            "hive_partitioning=true)"
        ).fetchall()
    ]


def export_counts(export_uri: str) -> tuple[int, int]:
    """(count(*), count(distinct trace_id)) over the export, by DuckDB."""
    if not any(Path(export_uri).rglob("*.parquet")):
        return 0, 0
    ((rows, distinct),) = duckdb.sql(
        f"select count(*), count(distinct trace_id) from read_parquet('{export_uri}/**/*.parquet',"
        " hive_partitioning=true)"
    ).fetchall()
    return int(rows), int(distinct)


Answer = tuple[int, dict[str, Any]]


class FaultyJudge(FakeJudge):
    """The fake judge, plus the arrival time of every request and answers chosen by content:
    ``poison(body)`` returning a fault name forces that fault; ``intercept(path, headers, body)``
    returning ``(status, payload)`` answers the request with it instead."""

    def __init__(self, behaviour: JudgeBehaviour | None = None):
        self.poison: Callable[[str], str | None] | None = None
        self.intercept: Callable[[str, dict[str, str], str], Answer | None] | None = None
        self.arrivals: list[tuple[float, str]] = []
        self._current = threading.local()
        super().__init__(behaviour)

    def _next_fault(self) -> str | None:
        forced = self.poison(getattr(self._current, "body", "")) if self.poison else None
        return forced or super()._next_fault()

    def _record(
        self, outcome: str, body: dict[str, Any], headers: dict[str, str], peer: Any = None
    ) -> None:
        super()._record(outcome, body, headers, peer)
        with self._lock:
            self.arrivals.append((time.monotonic(), outcome))

    def _handler(self) -> Any:
        base = super()._handler()
        judge = self

        class Handler(base):  # type: ignore[valid-type, misc]
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                text = raw.decode("utf-8", "replace")
                answer = (
                    judge.intercept(self.path, dict(self.headers), text)
                    if judge.intercept
                    else None
                )
                if answer is not None:
                    judge._record(f"intercepted {answer[0]}", {}, dict(self.headers))
                    self._send(*answer)
                    return
                judge._current.body = text
                self.path = urlsplit(self.path).path  # route on the path, as servers do
                original, self.rfile = self.rfile, io.BytesIO(raw)
                try:
                    super().do_POST()
                finally:
                    self.rfile = original

        return Handler
