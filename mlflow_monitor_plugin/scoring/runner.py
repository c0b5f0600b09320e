"""Run judges on traces concurrently, with retries and jittered backoff.

The rate limit lives in the judge proxy (judge_proxy.py), which sees every HTTP call a judge
makes; ``RateLimiter`` and ``backoff_delay`` are shared with it.

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
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Feedback, Trace

from mlflow_monitor_plugin.redact import redact
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


@dataclass(frozen=True)
class ScoringSettings:
    workers: int = 8  # concurrent judge calls in each scoring process
    processes: int = 0  # scoring processes beside the daemon; 0: score in the daemon itself
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

    def wait(self, sleep: Callable[[float], None] = time.sleep) -> None:
        if not self.rate:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + 1.0 / self.rate
        if start > now:
            sleep(start - now)


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
        self._lock = threading.Lock()
        self._failing: dict[str, int] = {}  # consecutive failures per judge, this run
        _preload_lazy_imports()

    def _scorer(self, judge: JudgeSpec) -> Any:
        with self._lock:
            if judge not in self._scorers:
                self._scorers[judge] = judge.make()
            return self._scorers[judge]

    def score_one(
        self, trace: Trace, judge: JudgeSpec, session: list[Trace] | None = None
    ) -> Verdict:
        """One judge on one trace; a session judge on ``session``, its verdict for ``trace``
        (the session's first, where MLflow's own session scoring attaches it)."""
        started = time.monotonic()
        verdict = Verdict(trace.info.trace_id, judge, root_span_id=root_span_id(trace))
        for attempt in range(self.settings.attempts):
            verdict.attempts = attempt + 1
            try:
                value = judge.call(self._scorer(judge), trace, session)
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
        return verdict

    def run(
        self,
        tasks: Iterable[tuple[Trace, JudgeSpec] | tuple[Trace, JudgeSpec, list[Trace]]],
        then: Callable[[Verdict], Any] | None = None,
    ) -> Iterator[tuple[Verdict, Any]]:
        """Score each task; ``then(verdict)`` runs in the same worker thread (writes are
        round trips too, and a remote tracking server answers concurrent requests faster)."""
        tasks = list(tasks)
        if not tasks:
            return
        self._failing.clear()

        def work(
            trace: Trace, judge: JudgeSpec, session: list[Trace] | None = None
        ) -> tuple[Verdict, Any]:
            if self._failing.get(judge.name, 0) >= self.settings.breaker_after:
                error = (
                    f"not tried: {judge.name} failed {self.settings.breaker_after} calls in a row"
                )
                verdict = Verdict(
                    trace.info.trace_id,
                    judge,
                    error=error,
                    skipped=True,
                    root_span_id=root_span_id(trace),
                )
                return verdict, None
            verdict = self.score_one(trace, judge, session)
            with self._lock:
                failures = 0 if verdict.ok else self._failing.get(judge.name, 0) + 1
                self._failing[judge.name] = failures
            return verdict, then(verdict) if then else None

        workers = max(1, min(self.settings.workers, len(tasks)))
        with ThreadPoolExecutor(workers, thread_name_prefix="mlflow-monitor-judge") as pool:
            futures = [pool.submit(work, *task) for task in tasks]
            for future in as_completed(futures):
                yield future.result()
