"""Run judges on traces concurrently, with retries and jittered backoff.

The rate limit and the adaptive concurrency limit live in the judge proxy (proxy.py), which sees
every HTTP call a judge makes; ``RateLimiter`` and ``backoff_delay`` are shared with it. The
runner keeps as many judge calls going as that limit allows (dispatch.py), or ``--workers``.

MLflow's judge client already retries 429/5xx/timeouts inside one call; this layer retries the
calls that still fail (and replies it cannot parse) a few times more, and turns what remains into
a ``Verdict`` with an error, which the engine logs and retries on a later pass.
"""

from __future__ import annotations

import importlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import mlflow
from mlflow.entities import Feedback, Trace

from mlflow_monitor_plugin.redact import redact
from mlflow_monitor_plugin.scoring import limiter, usage
from mlflow_monitor_plugin.scoring.dispatch import Batch, Dispatcher, Job
from mlflow_monitor_plugin.scoring.judges import JudgeSpec

_logger = logging.getLogger(__name__)


@dataclass
class Verdict:
    """What one judge said about one trace: feedbacks, or the error that remained."""

    trace_id: str
    judge: JudgeSpec
    feedbacks: list[Feedback] = field(default_factory=list)
    error: str | None = None
    error_code: str | None = None
    attempts: int = 0
    seconds: float = 0.0
    skipped: bool = False  # not tried: the judge failed every call before it in this run
    root_span_id: str | None = None  # where feedback without a span of its own is attached
    metadata: dict[str, str] = field(default_factory=dict)  # more metadata for its feedback
    overrides: str | None = None  # the assessment a session's newer verdict supersedes

    @property
    def ok(self) -> bool:
        return self.error is None and not self.skipped


DEFAULT_WORKERS = 8  # concurrent calls when no concurrency gate is active (no judge proxy)


def writers_for(tracking_uri: str) -> int:
    """Writer threads for a store. On SQLite a write is CPU in this process (SQLAlchemy and
    SQLite under the GIL): one writer, which measured 1.25x the verdicts/s of four at 20% less
    CPU per verdict (they only fought over the GIL and the file's lock). Elsewhere (a server,
    PostgreSQL) a write waits on the network: four overlap those waits."""
    return 1 if tracking_uri.startswith("sqlite") else 4


@dataclass(frozen=True)
class ScoringSettings:
    workers: int | None = None  # fixed concurrent judge calls per process; None: adaptive
    max_concurrency: int = 256  # the adaptive limit's ceiling, all processes together
    processes: int = 0  # scoring processes beside the daemon; 0: score in the daemon itself
    writers: int | None = None  # threads logging verdicts; None: by store (``writers_for``)
    attempts: int = 3
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    breaker_after: int = 8  # consecutive failed calls after which a judge is left for later


class RateLimiter:
    """A token bucket shared by the worker threads: at most ``rate`` calls a second."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self._clock = clock
        self._lock = threading.Lock()
        self._next = clock()

    def wait(self, sleep: Callable[[float], None] = time.sleep) -> float:
        """Wait for this call's turn; returns the seconds waited."""
        if not self.rate:
            return 0.0
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + 1.0 / self.rate
        if start > now:
            sleep(start - now)
        return max(0.0, start - now)


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max, base * 2**attempt)]."""
    return rng.uniform(0, min(max_s, base_s * (2**attempt)))


def _as_feedbacks(value: Any, name: str) -> list[Feedback]:
    """A scorer's result as feedbacks; a result no verdict can be made of raises (a code judge
    returning None or an object, or a Feedback carrying an error), so it is retried and then
    logged as error feedback like any other failure."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise TypeError(f"{name} returned an empty list, expected a value or Feedback")
    feedbacks = []
    for item in items:
        if isinstance(item, Feedback):
            if item.error is not None:
                raise ScorerError(item.error.error_code, item.error.error_message)
            if item.value is None:
                raise TypeError(f"{name} returned a Feedback without a value")
            feedbacks.append(item)
        elif isinstance(item, (bool, int, float, str)):  # a scorer returning a bare value
            feedbacks.append(Feedback(name=name, value=item))
        else:
            raise TypeError(
                f"{name} returned {type(item).__name__}, expected int, float, bool, str, "
                "Feedback or a list of Feedback"
            )
    return feedbacks


class ScorerError(Exception):
    """A scorer answered with an error feedback instead of raising."""

    def __init__(self, code: str | None, message: str | None):
        super().__init__(message or "the scorer returned an error")
        self.error_code = code or "SCORER_ERROR"


def root_span_id(trace: Trace) -> str | None:
    root = trace.data._get_root_span() if trace.data.spans else None
    return root.span_id if root else None


def _usage_metadata(verdict: Verdict, call_id: str | None) -> dict[str, str]:
    """The tokens of a verdict's judge calls, as the proxy counted them (every attempt), else
    as MLflow's judge recorded them on its feedback; and their cost at the model's price."""
    used = usage.take(call_id) if call_id else None
    if used is None and verdict.feedbacks:
        used = usage.from_metadata(verdict.feedbacks[0].metadata)
    if used is None:
        return {}  # tokens unknown: the endpoint returned no usage
    price = verdict.judge.price
    cost = price.cost(used.prompt, used.completion) if price else None
    return usage.usage_metadata(used, cost, price.source if price else None)


def _error_code(exc: BaseException) -> str:
    code = getattr(exc, "error_code", None)
    return str(code) if code else type(exc).__name__


# What MLflow 3.17's first judge call imports lazily (see _preload_lazy_imports).
LAZY_IMPORTS = ("mlflow.genai.scorers.job", "mlflow.server.jobs.utils")


def _preload_lazy_imports() -> None:
    """Import, in this thread, what MLflow's judge call imports lazily on first use.

    MLflow 3.17's telemetry imports ``mlflow.server.jobs.utils`` inside the first scorer call,
    which takes MLflow's import-hook lock while waiting for Python's import lock; over REST,
    another thread's client call holds Python's import lock (probing for Databricks modules)
    while waiting for the hook lock. Two worker threads can so deadlock for good. Importing
    the module once up front removes the first half of that inversion.
    """
    for module in LAZY_IMPORTS:
        try:
            importlib.import_module(module)
        except Exception as e:  # an optional part of MLflow: nothing to preload
            _logger.debug("Could not preload %s: %s", module, e)


class JudgeRunner:
    """Runs (trace, judge) tasks, or (first trace, judge, session) for session judges, on a
    thread pool; yields verdicts as they complete."""

    def __init__(
        self,
        settings: ScoringSettings | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        self.settings = settings or ScoringSettings()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._scorers: dict[JudgeSpec, Any] = {}
        self._local = threading.local()  # each thread's own LLM scorers (see usage.py)
        self._lock = threading.Lock()
        self._failing: dict[str, int] = {}  # consecutive failures per judge, this run
        self._dispatch: Dispatcher | None = None
        _preload_lazy_imports()

    def _scorer(self, judge: JudgeSpec) -> tuple[Any, str | None]:
        """The scorer to run ``judge`` with, and the id naming its calls to the proxy (None when
        they are not counted). An LLM judge's scorer is the thread's own, so the id in its
        headers names this thread's call alone."""
        if judge.is_llm and usage.enabled():
            scorers = self._local.__dict__.setdefault("scorers", {})
            if judge not in scorers:
                scorers[judge] = judge.make()
            call_id = usage.new_call_id()
            if usage.set_call_header(scorers[judge], call_id):
                return scorers[judge], call_id
            return scorers[judge], None
        with self._lock:
            if judge not in self._scorers:
                self._scorers[judge] = judge.make()
            return self._scorers[judge], None

    def score_one(
        self, trace: Trace, judge: JudgeSpec, session: list[Trace] | None = None
    ) -> Verdict:
        """One judge on one trace; a session judge on ``session``, its verdict for ``trace``
        (the session's first, where MLflow's own session scoring attaches it)."""
        started = time.monotonic()
        verdict = Verdict(trace.info.trace_id, judge, root_span_id=root_span_id(trace))
        scorer, call_id = self._scorer(judge)
        for attempt in range(self.settings.attempts):
            verdict.attempts = attempt + 1
            try:
                value = judge.call(scorer, trace, session)
                verdict.feedbacks = _as_feedbacks(value, judge.name)
                verdict.error = verdict.error_code = None
                break
            except Exception as e:
                verdict.error = redact(f"{type(e).__name__}: {e}")[:2000]
                verdict.error_code = _error_code(e)
                _logger.debug(
                    "Judge %s on trace %s failed (attempt %d): %s",
                    judge.name, verdict.trace_id, attempt + 1, verdict.error,
                )  # fmt: skip
                if attempt + 1 < self.settings.attempts:
                    s = self.settings
                    self._sleep(backoff_delay(attempt, s.backoff_s, s.backoff_max_s, self._rng))
        verdict.seconds = time.monotonic() - started
        if judge.is_llm:
            verdict.metadata.update(_usage_metadata(verdict, call_id))
        else:
            verdict.metadata.update(usage.free_metadata())
        return verdict

    def call(self, trace: Trace, judge: JudgeSpec, session: list[Trace] | None = None) -> Verdict:
        """One judge on one trace (a session judge on ``session``), unless the judge's breaker
        is open (it failed ``breaker_after`` calls in a row since the runner was last idle)."""
        if self._failing.get(judge.name, 0) >= self.settings.breaker_after:
            error = f"not tried: {judge.name} failed {self.settings.breaker_after} calls in a row"
            return Verdict(
                trace.info.trace_id,
                judge,
                error=error,
                skipped=True,
                root_span_id=root_span_id(trace),
            )
        verdict = self.score_one(trace, judge, session)
        with self._lock:
            failures = 0 if verdict.ok else self._failing.get(judge.name, 0) + 1
            self._failing[judge.name] = failures
        return verdict

    def target(self) -> int:
        """Judge calls to keep in flight in this process now."""
        s = self.settings
        if s.workers:
            return s.workers
        limit = limiter.current_limit()
        if limit is None:
            return DEFAULT_WORKERS
        share = -(-limit // max(1, s.processes))  # this process's part of the global limit
        return share + max(2, share // 4)  # a few more, waiting at the gate, keep it fed

    def submit(
        self,
        tasks: Iterable[tuple[Trace, JudgeSpec, Callable[[Verdict], int] | None]],
        sessions: dict[tuple[str, str], list[Trace]] | None = None,
    ) -> Batch:
        """Start scoring; each good verdict is written with its task's callable, on the writer
        threads. Iterate the batch for ``(verdict, feedbacks logged)`` as they complete."""
        tasks = list(tasks)
        batch = Batch(len(tasks))
        if tasks:
            dispatcher = self._dispatcher()
            if dispatcher.idle:
                self._failing.clear()  # a new run starts with every breaker closed
            sessions = sessions or {}
            jobs = [
                Job(t, j, batch, write, sessions.get((t.info.trace_id, j.name)))
                for t, j, write in tasks
            ]
            dispatcher.submit(jobs)
        return batch

    def run(
        self, tasks: Iterable[tuple[Trace, JudgeSpec] | tuple[Trace, JudgeSpec, list[Trace]]]
    ) -> Iterator[tuple[Verdict, int]]:
        """Score each (trace, judge) task, or (first trace, judge, session) for a session
        judge, writing nothing; yields the verdicts as they complete."""
        tasks = list(tasks)
        sessions = {(t[0].info.trace_id, t[1].name): t[2] for t in tasks if len(t) > 2}
        yield from self.submit(((t[0], t[1], None) for t in tasks), sessions)

    def settle(self) -> None:
        """Drop the calls not started; wait for those in flight and their writes."""
        if self._dispatch is not None:
            self._dispatch.settle()

    def close(self) -> None:
        if self._dispatch is not None:
            self._dispatch.close()
            self._dispatch = None

    def _dispatcher(self) -> Dispatcher:
        with self._lock:
            if self._dispatch is None:
                s = self.settings
                threads = s.workers or s.max_concurrency // max(1, s.processes) + 8
                writers = s.writers or writers_for(mlflow.get_tracking_uri())
                self._dispatch = Dispatcher(self.call, self.target, threads, writers)
            return self._dispatch
