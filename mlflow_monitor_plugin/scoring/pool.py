"""Where judges run: in the daemon's own process, or on a pool of scoring processes.

One judge call through MLflow costs ~5 ms of CPU and logging its verdict ~3 ms more, nearly all
of it Python holding the GIL, so one process tops out near one core (~90-120 verdicts a second
with an instant judge; see BENCHMARKS.md). ``ProcessScorer`` spreads a page's (trace, judge) pairs
over N processes, by trace: each fetches its traces, runs the judges on its own thread pool, logs
the verdicts and hands back what happened. The daemon keeps what must have a single owner:
discovery, the lease, the checkpoint, the export, the judge proxy, and the error feedback of
failed judges (whether a failure counts against a trace depends on every process's results).

Scoring processes are forked from a fork server that has already imported MLflow, so they start
in a fraction of a second and share those pages. They ignore SIGINT and SIGTERM (the daemon
finishes its pass, then stops them) and exit on their own once the daemon is gone, so a killed
daemon leaves no writer behind to race its successor.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from typing import Any, Protocol

import mlflow
from mlflow.entities import Trace

from mlflow_monitor_plugin.exceptions import MonitorError
from mlflow_monitor_plugin.redact import add_secret_url, secret_urls
from mlflow_monitor_plugin.scoring import limiter, transport, usage
from mlflow_monitor_plugin.scoring.feedback import FeedbackWriter, JudgeState
from mlflow_monitor_plugin.scoring.judges import JudgeSpec
from mlflow_monitor_plugin.scoring.runner import LAZY_IMPORTS, JudgeRunner, ScoringSettings, Verdict

_logger = logging.getLogger(__name__)

# What the fork server imports for every worker: MLflow's scorers, and what a judge call would
# otherwise import lazily in each worker (see scoring._preload_lazy_imports). Not this package:
# a worker imports it once it has the daemon's sys.path (Python 3.11's fork server ignores it,
# and could find another copy).
PRELOAD = ["mlflow.genai.scorers", *LAZY_IMPORTS]

# trace id -> the judges due on it, each with what the monitor already wrote for it
Due = dict[str, list[tuple[JudgeSpec, JudgeState | None]]]


@dataclass
class Outcome:
    """What became of one due (trace, judge): a verdict (logged when ok), or not applicable."""

    verdict: Verdict
    logged: int = 0
    applicable: bool = True


class Scorer(Protocol):
    def score(self, writer: FeedbackWriter, due: Due) -> Iterator[Outcome]:
        """Start scoring ``due`` now; iterate for the outcomes as they complete."""
        ...

    def settle(self) -> None:
        """Drop what has not started; wait for what is in flight, writes included."""
        ...

    def close(self) -> None: ...


def score_and_write(
    runner: JudgeRunner,
    fetch: Callable[[list[str]], list[Trace]],
    writer: FeedbackWriter,
    due: Due,
) -> Iterator[Outcome]:
    """Fetch the traces and start the judges that apply (now, not when iterated); good verdicts
    are logged as they arrive. Failed verdicts are yielded unwritten: the engine writes them
    once it knows whether the judge answered anyone in this pass."""
    traces = {t.info.trace_id: t for t in fetch(list(due))}
    tasks, skipped = [], []
    for trace_id, pairs in due.items():
        trace = traces.get(trace_id)
        for judge, state in pairs:
            if trace is None or not judge.applies_to(trace):
                skipped.append(Outcome(Verdict(trace_id, judge), applicable=False))
            else:
                tasks.append((trace, judge, functools.partial(_write, writer, state)))
    batch = runner.submit(tasks)
    return _outcomes(skipped, batch)


def _write(writer: FeedbackWriter, state: JudgeState | None, verdict: Verdict) -> int:
    return writer.write(verdict, state)


def _outcomes(skipped: list[Outcome], batch: Any) -> Iterator[Outcome]:
    yield from skipped
    for verdict, logged in batch:
        yield Outcome(verdict, logged or 0)


class InProcessScorer:
    """Judges run on threads in the calling process."""

    def __init__(self, runner: JudgeRunner, fetch: Callable[[list[str]], list[Trace]]):
        self.runner = runner
        self.fetch = fetch

    def score(self, writer: FeedbackWriter, due: Due) -> Iterator[Outcome]:
        return score_and_write(self.runner, self.fetch, writer, due)

    def settle(self) -> None:
        self.runner.settle()

    def close(self) -> None:
        self.runner.close()


def split(due: Due, parts: int) -> list[Due]:
    """``due`` in up to ``parts`` chunks of whole traces, balanced by (trace, judge) pairs."""
    chunks: list[Due] = [{} for _ in range(max(1, min(parts, len(due))))]
    loads = [0] * len(chunks)
    for trace_id, pairs in sorted(due.items(), key=lambda item: -len(item[1])):
        least = loads.index(min(loads))
        chunks[least][trace_id] = pairs
        loads[least] += len(pairs)
    return [c for c in chunks if c]


class ProcessScorer:
    """Judges run on ``processes`` scoring processes, started on first use."""

    def __init__(self, processes: int, settings: ScoringSettings):
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        self.processes = processes
        self.settings = settings
        self._pool: ProcessPoolExecutor | None = None
        self._lifeline: Connection | None = None  # its other end in every scoring process
        self._lock = threading.Lock()
        self._warm_up: threading.Thread | None = None
        self._futures: list[Future[list[Outcome]]] = []  # this pass's chunks, for settle()
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD)

    def start(self) -> None:
        """Start the fork server now, and the processes in the background (the fork server
        takes ~2 s to import MLflow) while the daemon goes on with its first pass."""
        _start_fork_server()

        def warm_up() -> None:
            try:
                pool = self._ensure_pool()
                for _ in range(self.processes):
                    pool.submit(os.getpid)
            except Exception as e:  # score() will start them, or say why it cannot
                _logger.debug("Could not start the scoring processes early: %s", e)

        self._warm_up = threading.Thread(target=warm_up, name="mlflow-monitor-pool-start")
        self._warm_up.start()

    def _ensure_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            return self._pool or self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        level = logging.getLogger("mlflow_monitor_plugin").getEffectiveLevel()
        lifeline, self._lifeline = self._context.Pipe(duplex=False)
        # The environment as it is now (the judge proxy's address among it), not as the fork
        # server found it when it started; and the secrets this process knows of.
        environ = (dict(os.environ), sorted(secret_urls()))
        board = limiter.board()  # the daemon's concurrency limit, which the workers follow
        initargs = (self.settings, environ, mlflow.get_tracking_uri(), level, lifeline, board)
        self._pool = ProcessPoolExecutor(
            self.processes, mp_context=self._context, initializer=_init_worker, initargs=initargs
        )
        return self._pool

    def score(self, writer: FeedbackWriter, due: Due) -> Iterator[Outcome]:
        """Start scoring ``due`` on the pool; iterate for the outcomes. Each process logs with
        its own ``FeedbackWriter`` for ``writer``'s monitor and config version. Chunks queue
        behind those of the page before, so a process goes on to the next page's chunk as soon
        as it is done with this one."""
        if not due:
            return iter(())
        pool = self._ensure_pool()
        futures = []
        try:
            for chunk in split(due, self.processes):
                futures.append(
                    pool.submit(
                        _score_chunk,
                        writer.monitor_id,
                        writer.config_version,
                        chunk,
                        writer.experiment_id,
                    )  # fmt: skip
                )
        except BrokenProcessPool as e:
            self._broken(e)
        self._futures.extend(futures)
        return self._outcomes(futures)

    def _outcomes(self, futures: list[Future[list[Outcome]]]) -> Iterator[Outcome]:
        try:
            for future in as_completed(futures):
                yield from future.result()
        except BrokenProcessPool as e:
            self._broken(e)
        finally:
            # As with threads: when one chunk fails the pass, let the others finish writing
            # before the daemon retries, so no retry reads a trace a chunk is still writing.
            wait(futures)

    def _broken(self, error: BaseException) -> None:
        self.close(cut_lifeline_first=True)  # a new pool next time
        raise MonitorError(f"A scoring process died; the pass will be retried ({error})") from error

    def settle(self) -> None:
        futures, self._futures = self._futures, []
        for future in futures:
            future.cancel()  # not started yet: the next pass scores it again
        wait(futures)

    def pids(self) -> list[int]:
        """The scoring processes running now."""
        pool = self._pool
        return list(getattr(pool, "_processes", None) or {}) if pool else []

    def close(self, cut_lifeline_first: bool = False) -> None:
        """Stop the processes after their work in hand. ``cut_lifeline_first`` when one died:
        the others then exit at once (they ignore SIGTERM, which is how the pool would stop
        them), instead of finishing a chunk whose pass has already failed."""
        if self._warm_up is not None:
            self._warm_up.join()
            self._warm_up = None
        with self._lock:
            if cut_lifeline_first:
                self._cut_lifeline()
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
            self._cut_lifeline()

    def _cut_lifeline(self) -> None:
        if self._lifeline is not None:
            self._lifeline.close()
            self._lifeline = None


def _start_fork_server() -> None:
    """Start the fork server with SIGTERM ignored, which it and its workers inherit: a service
    manager that sends SIGTERM to every process of the service (systemd does) must leave the
    pass in flight to the daemon, which stops the workers once the pass is done."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal dispositions are the main thread's to change; the pool starts it
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGTERM, previous)


def make_scorer(settings: ScoringSettings) -> ProcessScorer | None:
    """The daemon's shared process pool, or None to score in each engine's own process."""
    return ProcessScorer(settings.processes, settings) if settings.processes > 0 else None


# -- in a scoring process ----------------------------------------------------------------------
_runner: JudgeRunner | None = None


def _init_worker(
    settings: ScoringSettings,
    environ: tuple[dict[str, str], list[str]],
    tracking_uri: str,
    log_level: int,
    lifeline: Connection,
    board: Any = None,
) -> None:
    global _runner
    # First of all: a daemon killed while this process starts must not leave it behind.
    threading.Thread(
        target=_exit_with_daemon, args=(lifeline,), name="mlflow-monitor-lifeline", daemon=True
    ).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    variables, urls = environ
    os.environ.clear()
    os.environ.update(variables)
    for url in urls:
        add_secret_url(url)
    mlflow.set_tracking_uri(tracking_uri)
    from mlflow_monitor_plugin.redact import configure_logging

    configure_logging(logging.getLevelName(log_level))
    limiter.attach(board)
    proxy_url = os.environ.get(usage.PROXY_URL_ENV)
    if proxy_url:  # judge calls to the daemon's proxy over keep-alive connections
        timeout = float(os.environ.get("MLFLOW_GATEWAY_ROUTE_TIMEOUT_SECONDS") or 600)
        transport.install(proxy_url, transport.remote(proxy_url, timeout))
    _runner = JudgeRunner(settings)


def _exit_with_daemon(lifeline: Connection) -> None:
    """Stop at once when the daemon is gone: a verdict written after it died could race the
    daemon that replaces it. Only the daemon holds the pipe's other end, so its death (even by
    SIGKILL) is an end of file here. (The pool's own queues cannot tell: every worker holds a
    write end of them, and the fork server's, so the pool would otherwise outlive the daemon.)"""
    with contextlib.suppress(EOFError, OSError):
        lifeline.recv()
    os._exit(1)


def _score_chunk(
    monitor_id: str, config_version: int, due: Due, experiment_id: str = ""
) -> list[Outcome]:
    from mlflow_monitor_plugin.discovery.traces import TraceSource

    if _runner is None:
        raise RuntimeError("_score_chunk runs in a scoring process (see _init_worker)")
    fetch = TraceSource(experiment_id, mlflow.MlflowClient()).fetch
    writer = FeedbackWriter(monitor_id, config_version, experiment_id=experiment_id)
    try:
        outcomes = list(score_and_write(_runner, fetch, writer, due))
    finally:
        _runner.settle()
    for outcome in outcomes:
        outcome.verdict.feedbacks = []  # logged here: the daemon only counts them
    return outcomes
