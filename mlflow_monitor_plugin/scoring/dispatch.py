"""Judge calls in flight, as many as the concurrency limit allows, feeding the writer threads.

A judge call is I/O: many can wait at little CPU. Logging a verdict is CPU and store work.
``Dispatcher`` keeps up to ``target()`` calls in flight on threads (started as needed, so a low
limit costs few threads) and hands each good verdict to a small, fixed set of writer threads,
which log it as it completes. A trace's verdicts all go to the same writer, so no two threads
write to one trace at once (MLflow's file store races on creating a trace's assessments folder).
How many writers depends on the store (runner.py: ``writers_for``): one on SQLite, whose
writes are CPU in this process (with the judge calls in the calling thread, one writer scored
1.25x faster than four, at less CPU per verdict: four only fought over the GIL and the file's
lock), four where a write waits on the network. No new call starts while more than
``max(8, target() / 2)`` verdicts wait for a writer: the judges never outrun the store, and a
crash loses few answered verdicts. Submissions queue behind each other, so the calls of the next
page start while the last calls of this one are still out: the judge never waits for the engine
to read a page or save its checkpoint.

Each submission is a ``Batch`` whose results arrive as its calls finish and their verdicts are
written: a result is only handed back once its verdict is in the store, which is what lets the
engine advance its checkpoint past a page once all of the page's results are in.
"""

from __future__ import annotations

import logging
import queue
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Trace

from mlflow_monitor_plugin.scoring.judges import JudgeSpec

_logger = logging.getLogger(__name__)


class Batch:
    """The results of one submission, ``(verdict, feedbacks logged)``, as they complete."""

    def __init__(self, expected: int):
        self.expected = expected
        self._results: queue.SimpleQueue[tuple[Any, int, BaseException | None]] = (
            queue.SimpleQueue()
        )

    def put(self, verdict: Any, logged: int = 0) -> None:
        self._results.put((verdict, logged, None))

    def fail(self, error: BaseException) -> None:
        self._results.put((None, 0, error))

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        for _ in range(self.expected):
            verdict, logged, error = self._results.get()
            if error is not None:
                raise error
            yield verdict, logged


@dataclass
class Job:
    trace: Trace
    judge: JudgeSpec
    batch: Batch
    write: Callable[[Any], int] | None = None  # logs a good verdict; None: a dry run
    session: list[Trace] | None = None  # a session judge's traces

    @property
    def trace_id(self) -> str:
        info = getattr(self.trace, "info", None)
        return info.trace_id if info is not None else str(self.trace)


class Dispatcher:
    """Runs jobs: ``call`` on up to ``target()`` threads at once, then ``job.write`` on the
    writer threads for the verdicts that are ``ok``."""

    def __init__(
        self,
        call: Callable[[Trace, JudgeSpec, list[Trace] | None], Any],
        target: Callable[[], int],
        max_threads: int,
        writers: int = 1,
    ):
        self._call = call
        self._target = target
        self._max_threads = max(1, max_threads)
        self._writers = max(1, writers)
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._calling = 0
        self._writing = 0
        self._pool: ThreadPoolExecutor | None = None
        self._writes: list[queue.SimpleQueue[tuple[Job, Any] | None]] = [
            queue.SimpleQueue() for _ in range(self._writers)
        ]
        self._writer_threads: list[threading.Thread] = []

    @property
    def idle(self) -> bool:
        with self._cond:
            return not (self._pending or self._calling or self._writing)

    def submit(self, jobs: list[Job]) -> None:
        with self._cond:
            self._pending.extend(jobs)
            self._top_up()

    def settle(self) -> None:
        """Drop the jobs not started yet; wait for the calls in flight and their writes (a
        failed pass must not leave a write in flight for the next pass to race)."""
        with self._cond:
            dropped = len(self._pending)
            self._pending.clear()
            while self._calling or self._writing:
                self._cond.wait()
        if dropped:
            _logger.debug("Dropped %d judge calls not started yet", dropped)

    def close(self) -> None:
        self.settle()
        for writes in self._writes[: len(self._writer_threads)]:
            writes.put(None)
        for thread in self._writer_threads:
            thread.join()
        self._writer_threads = []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _top_up(self) -> None:
        """Start pending jobs while fewer than the target are in flight (lock held)."""
        if not self._pending:
            return
        target = max(1, min(self._max_threads, self._target()))
        backlog = max(8, target // 2)  # answered verdicts waiting for a writer, at most
        while self._pending and self._calling < target and self._writing < backlog:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self._max_threads, thread_name_prefix="mlflow-monitor-judge"
                )
            job = self._pending.popleft()
            self._calling += 1
            self._pool.submit(self._run, job)

    def _run(self, job: Job) -> None:
        try:
            verdict = self._call(job.trace, job.judge, job.session)
        except BaseException as e:
            job.batch.fail(e)
            verdict = None
        with self._cond:
            self._calling -= 1
            to_write = verdict is not None and job.write is not None and verdict.ok
            self._writing += to_write
            self._top_up()
            self._cond.notify_all()
        if verdict is None:
            return
        if to_write:
            self._start_writers()
            writer = zlib.crc32(job.trace_id.encode()) % self._writers
            self._writes[writer].put((job, verdict))
        else:
            job.batch.put(verdict)

    def _start_writers(self) -> None:
        with self._cond:
            while len(self._writer_threads) < self._writers:
                writes = self._writes[len(self._writer_threads)]
                thread = threading.Thread(
                    target=self._write_loop,
                    args=(writes,),
                    name=f"mlflow-monitor-writer-{len(self._writer_threads)}",
                    daemon=True,
                )
                thread.start()
                self._writer_threads.append(thread)

    def _write_loop(self, writes: queue.SimpleQueue[tuple[Job, Any] | None]) -> None:
        while (item := writes.get()) is not None:
            job, verdict = item
            try:
                assert job.write is not None
                job.batch.put(verdict, job.write(verdict))
            except BaseException as e:
                job.batch.fail(e)
            finally:
                with self._cond:
                    self._writing -= 1
                    self._top_up()
                    self._cond.notify_all()
