"""Machinery of the side-by-side benchmarks (bench_vs_native.py): processes, sampling, stores.

- ``JudgeProcess``: tests.fake_judge.FakeJudge in its own process (it must not share the GIL
  with what is measured), answering instantly or after a fixed latency.
- ``MlflowServer``: an ``mlflow server`` subprocess on a SQLite file, with or without MLflow's job
  execution (huey) and so its online scoring.
- ``TreeSampler``: CPU seconds and peak memory of a process tree, sampled with psutil. CPU time
  of processes that exit between two samples is not lost: a reaped child's time moves into its
  parent's ``children_*`` counters, which are summed too.
- ``VerdictWatcher``: reads the store's SQLite file directly (read-only) every ``period_s`` to
  see when each trace's verdicts become visible, without loading the tracking server.
- ``create_traces``: many traces fast, as bench_export.py does (copies of one real trace's spans
  through ``TracingClient.log_spans``).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MLFLOW_BIN = str(Path(PYTHON).with_name("mlflow"))

# The fake judge, run with `python -c`: prints its URL, then its call counts for every line it
# reads on stdin; exits when stdin closes.
JUDGE_CODE = """
import json, sys
from tests.fake_judge import FakeJudge, JudgeBehaviour
cap = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] else None
behaviour = JudgeBehaviour(latency_s=float(sys.argv[1]), max_concurrent=cap, retry_after_s=1.0)
with FakeJudge(behaviour) as judge:
    print(judge.url, flush=True)
    for _ in sys.stdin:
        print(json.dumps(judge.served), flush=True)
"""


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MLFLOW_MONITOR_DISABLE_CLI_HOOK": "1",
        "MLFLOW_MODEL_CATALOG_URI": "",  # no 7 s fetch of a price catalog from the internet
        "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def latency_stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_s": None, "p95_s": None, "max_s": None}
    return {
        "p50_s": round(percentile(values, 0.5), 2),
        "p95_s": round(percentile(values, 0.95), 2),
        "max_s": round(max(values), 2),
    }


# -- the fake judge ------------------------------------------------------------------------
class JudgeProcess:
    """``max_concurrent``: a judge that answers 429 (Retry-After: 1) beyond that many calls in
    progress, as a rate-limited API does; ``served()`` counts those as ``over_capacity``."""

    def __init__(self, latency_s: float = 0.0, max_concurrent: int | None = None):
        self.latency_s = latency_s
        self.max_concurrent = max_concurrent
        self.proc = subprocess.Popen(
            [PYTHON, "-c", JUDGE_CODE, str(latency_s), str(max_concurrent or "")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=base_env(),
            cwd=REPO,
            stderr=subprocess.DEVNULL,  # resets from clients killed at a cap are expected
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError(f"fake judge did not start: {self.url!r}")

    def served(self) -> dict[str, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- mlflow server -------------------------------------------------------------------------
class MlflowServer:
    """``mlflow server`` on its own SQLite file. ``jobs=True`` runs MLflow's job runner (huey
    consumers) and so its online scoring; ``buffer_s`` sets the trace completion buffer.
    ``backend`` replaces the SQLite file (e.g. a PostgreSQL URI), with ``workers`` workers."""

    def __init__(
        self,
        root: Path,
        jobs: bool,
        buffer_s: int | None = None,
        name: str = "server",
        backend: str | None = None,
        workers: int = 1,
    ):
        self.root = root
        self.backend = backend
        self.workers = workers
        self.name = name
        self.jobs = jobs
        self.buffer_s = buffer_s
        self.port = free_port()
        self.db = root / "server.db"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        extra = {
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if self.jobs else "false",
            "MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS": "true",  # the fake judge is on loopback
            "MLFLOW_GATEWAY_API_BASE_ALLOWED_SCHEMES": "http,https",
            "MLFLOW_CRYPTO_KEK_PASSPHRASE": "benchmark-only-passphrase",
        }
        if self.buffer_s is not None:
            extra["MLFLOW_ONLINE_SCORING_DEFAULT_TRACE_COMPLETION_BUFFER_SECONDS"] = str(
                self.buffer_s
            )
        cmd = [
            MLFLOW_BIN,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            self.backend or f"sqlite:///{self.db}",
            "--default-artifact-root",
            str(self.root / "artifacts"),
            "--workers",
            str(self.workers),
        ]
        self._log = open(self.root / "server.log", "ab")  # noqa: SIM115 - lives with the server
        self.proc = subprocess.Popen(
            cmd,
            env=base_env(**extra),
            cwd=self.root,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout_s: float = 120.0) -> MlflowServer:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.root / 'server.log'}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200 and (not self.jobs or self.job_runner() is not None):
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} did not start within {timeout_s}s")

    def _find(self, marker: str) -> psutil.Process | None:
        assert self.proc is not None
        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                if marker in " ".join(p.cmdline()):
                    return p
        except psutil.Error:
            pass
        return None

    def job_runner(self) -> psutil.Process | None:
        """The root of MLflow's job execution: huey consumers and the job subprocesses."""
        return self._find("mlflow.server.jobs._job_runner")

    def store_process(self) -> psutil.Process | None:
        """The uvicorn process: REST API, AI Gateway proxy, UI."""
        return self._find("uvicorn")

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            tree = [psutil.Process(self.proc.pid)]
            tree += tree[0].children(recursive=True)
        except psutil.Error:
            tree = []
        for p in tree:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=15)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        if self._log:
            self._log.close()
        self.proc = None


# -- process tree cost ---------------------------------------------------------------------
def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def _memory_mb(procs: list[psutil.Process], pss: bool) -> tuple[float, float, int]:
    rss = pss_total = 0.0
    count = 0
    for p in procs:
        try:
            if pss:
                m = p.memory_full_info()
                pss_total += m.pss
                rss += m.rss
            else:
                rss += p.memory_info().rss
            count += 1
        except psutil.Error:
            pass
    return rss / 1e6, pss_total / 1e6, count


@dataclass
class TreeCost:
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    peak_pss_mb: float = 0.0
    peak_processes: int = 0


class TreeSampler:
    """Samples named process trees every ``period_s`` in a thread until ``stop()``: CPU seconds
    used in between and the peak of the tree's summed RSS and PSS (PSS splits shared pages)."""

    def __init__(self, roots: dict[str, psutil.Process | None], period_s: float = 0.5):
        self.roots = {k: v for k, v in roots.items() if v is not None}
        self.period_s = period_s
        self.costs = {k: TreeCost() for k in self.roots}
        self._start_cpu = {k: _cpu_s(_tree(p)) for k, p in self.roots.items()}
        self._last_cpu = dict(self._start_cpu)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        for name, root in self.roots.items():
            procs = _tree(root)
            if not procs:
                continue
            cpu = _cpu_s(procs)
            self._last_cpu[name] = max(self._last_cpu[name], cpu)
            rss, pss, count = _memory_mb(procs, pss=True)
            cost = self.costs[name]
            cost.peak_rss_mb = max(cost.peak_rss_mb, rss)
            cost.peak_pss_mb = max(cost.peak_pss_mb, pss)
            cost.peak_processes = max(cost.peak_processes, count)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._sample()

    def stop(self) -> dict[str, dict[str, float]]:
        self._stop.set()
        self._thread.join()
        self._sample()
        out = {}
        for name, cost in self.costs.items():
            cost.cpu_s = self._last_cpu[name] - self._start_cpu[name]
            out[name] = {
                "cpu_s": round(cost.cpu_s, 2),
                "peak_rss_mb": round(cost.peak_rss_mb, 1),
                "peak_pss_mb": round(cost.peak_pss_mb, 1),
                "processes": cost.peak_processes,
            }
        return out


# -- our daemon ----------------------------------------------------------------------------
CLI_MODULE = "mlflow_monitor_plugin.cli"
PREIMPORT_ENV = "BENCH_DAEMON_PREIMPORT"
# The daemon started through runpy after importing the modules in $BENCH_DAEMON_PREIMPORT: a
# workaround experiment (see bench_vs_native.py --daemon-preimport), not how it ships.
PREIMPORT_CODE = (
    "import importlib, os, runpy, sys\n"
    "for m in filter(None, os.environ['BENCH_DAEMON_PREIMPORT'].split(',')):\n"
    "    importlib.import_module(m)\n"
    "sys.argv[0] = 'mlflow-monitor'\n"
    "runpy.run_module('mlflow_monitor_plugin.cli', run_name='__main__', alter_sys=True)\n"
)


class Daemon:
    """``python -m mlflow_monitor_plugin.cli run`` as a subprocess. Its exact CPU time comes
    from the kernel when it is reaped (wait4); memory is sampled (TreeSampler)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        judge_url: str | None,
        cwd: Path,
        args: list[str],
        package: Path = REPO,
    ):
        """``package``: the source tree whose ``mlflow_monitor_plugin`` runs (another commit's
        copy for a baseline); ``judge_url`` None: no judge key at all (gateway:/ judges)."""
        judge = (
            {"OPENAI_API_BASE": judge_url, "OPENAI_API_KEY": "sk-benchmark-not-a-key"}
            if judge_url
            else {}
        )  # the URL already ends in /v1
        env = base_env(PYTHONPATH=str(package), MLFLOW_TRACKING_URI=tracking_uri, **judge)
        if not judge_url:
            for name in ("OPENAI_API_BASE", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
                env.pop(name, None)
        self.started = time.time()
        self._log = open(cwd / "daemon.log", "ab")  # noqa: SIM115 - lives with the daemon
        start = ["-c", PREIMPORT_CODE] if os.environ.get(PREIMPORT_ENV) else ["-m", CLI_MODULE]
        self.proc = subprocess.Popen(
            [PYTHON, *start, "run", "-x", experiment_id, *args],
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=self._log,
        )
        self.process = psutil.Process(self.proc.pid)
        self.rusage: dict[str, float] = {}
        self.exit_code: int | None = None

    def running(self) -> bool:
        if self.exit_code is not None:
            return False
        pid, status, ru = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0:
            return True
        self._reaped(status, ru)
        return False

    def _reaped(self, status: int, ru: Any) -> None:
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.rusage = {"cpu_s": round(ru.ru_utime + ru.ru_stime, 2)}
        self.proc.returncode = self.exit_code  # Popen must not wait for it again
        self._log.close()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> None:
        if self.exit_code is not None:
            return
        self.proc.send_signal(sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                return
            time.sleep(0.1)
        self.proc.kill()
        _, status, ru = os.wait4(self.proc.pid, 0)
        self._reaped(status, ru)


# -- what is in the store ------------------------------------------------------------------
@dataclass
class StoreCounts:
    traces: int = 0
    verdicts: int = 0  # valid, non-error assessments with an expected judge name
    errors: int = 0  # error assessments (judge failures) with an expected name
    traces_complete: int = 0  # traces with every expected judge's verdict
    duplicates: int = 0  # valid verdicts beyond the first per (trace, judge)
    traces_with_duplicates: int = 0
    missed: int = 0  # traces without every expected verdict

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class VerdictWatcher:
    """Polls the store's SQLite file (read-only) for verdicts of the expected judges on the
    experiment's traces; records when each trace first carries all of them."""

    def __init__(self, db: Path, experiment_id: str, judges: list[str], period_s: float = 0.2):
        self.db = db
        self.experiment_id = int(experiment_id)
        self.judges = judges
        self.period_s = period_s
        self.complete_at: dict[str, float] = {}
        self._names: dict[str, set[str]] = {}
        self._last_rowid = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)

    def poll(self, attempts: int = 5) -> None:
        """Read what is new; a read-only reader of a WAL database can meet a transient
        "attempt to write a readonly database" while a writer closes: try again."""
        for attempt in range(attempts):
            try:
                return self._poll_once()
            except sqlite3.OperationalError:
                if attempt + 1 == attempts:
                    raise
                time.sleep(0.5)

    def _poll_once(self) -> None:
        marks = ",".join("?" * len(self.judges))
        now = time.time()
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT rowid, trace_id, name FROM assessments WHERE rowid > ? "
                f"AND experiment_id = ? AND error IS NULL AND valid AND name IN ({marks}) "
                "ORDER BY rowid",
                (self._last_rowid, self.experiment_id, *self.judges),
            ).fetchall()
        conn.close()
        with self._lock:
            for rowid, trace_id, name in rows:
                self._last_rowid = max(self._last_rowid, rowid)
                names = self._names.setdefault(trace_id, set())
                names.add(name)
                if len(names) == len(self.judges) and trace_id not in self.complete_at:
                    self.complete_at[trace_id] = now

    def start(self) -> VerdictWatcher:
        def run() -> None:
            while not self._stop.is_set():
                with contextlib.suppress(sqlite3.Error):  # mid-write, or not created yet
                    self.poll()
                self._stop.wait(self.period_s)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def complete(self) -> int:
        with self._lock:
            return len(self.complete_at)

    def verdicts(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._names.values())

    def counts(self, trace_ids: list[str] | None = None) -> StoreCounts:
        """Everything in the store for the experiment, read in full."""
        marks = ",".join("?" * len(self.judges))
        with self._connect() as conn:
            stored = [
                r[0]
                for r in conn.execute(
                    "SELECT request_id FROM trace_info WHERE experiment_id = ?",
                    (self.experiment_id,),
                )
            ]
            rows = conn.execute(
                f"SELECT trace_id, name, error IS NOT NULL, COUNT(*) FROM assessments "
                f"WHERE experiment_id = ? AND valid AND name IN ({marks}) "
                "GROUP BY trace_id, name, error IS NOT NULL",
                (self.experiment_id, *self.judges),
            ).fetchall()
        conn.close()
        wanted = set(trace_ids) if trace_ids is not None else set(stored)
        c = StoreCounts(traces=len(set(stored) & wanted))
        done: dict[str, set[str]] = {}
        dup_traces = set()
        for trace_id, name, is_error, n in rows:
            if trace_id not in wanted:
                continue
            if is_error:
                c.errors += n
                continue
            c.verdicts += n
            done.setdefault(trace_id, set()).add(name)
            if n > 1:
                c.duplicates += n - 1
                dup_traces.add(trace_id)
        c.traces_with_duplicates = len(dup_traces)
        c.traces_complete = sum(1 for t in wanted if len(done.get(t, ())) == len(self.judges))
        c.missed = len(wanted) - c.traces_complete
        return c


# -- traces --------------------------------------------------------------------------------
def log_one_trace(i: int, prefix: str) -> str:
    """One small chat trace through the fluent API, to the current tracking URI/experiment."""
    sys.path.insert(0, str(REPO))
    from tests.traces_factory import log_traces

    (trace_id,) = log_traces(1, retriever=False, prefix=f"{prefix}{i}-")
    return trace_id


def _template_spans(experiment_id: str, start_ns: int) -> list[dict[str, Any]]:
    import mlflow

    question = "how do I export traces from MLflow? " * 4
    root = mlflow.start_span_no_context(
        "app", inputs={"question": question}, start_time_ns=start_ns, experiment_id=experiment_id
    )
    root.set_outputs({"answer": "Use the exporter. " * 20})
    root.end(end_time_ns=start_ns + 5_000_000)
    return [s.to_dict() for s in mlflow.get_trace(root.trace_id).data.spans]


def _clone(template: list[dict[str, Any]], i: int, start_ns: int) -> tuple[str, list[Any]]:
    from mlflow.entities import Span

    otel_id = secrets.token_bytes(16)
    trace_id = "tr-" + otel_id.hex()
    span_ids = [base64.b64encode(secrets.token_bytes(8)).decode() for _ in template]
    spans = []
    for k, span in enumerate(template):
        d = copy.deepcopy(span)
        d.update(
            trace_id=base64.b64encode(otel_id).decode(),
            span_id=span_ids[k],
            parent_span_id=None if k == 0 else span_ids[0],
            start_time_unix_nano=start_ns + k * 1_000,
            end_time_unix_nano=start_ns + 5_000_000 - k,
        )
        d["attributes"]["mlflow.traceRequestId"] = json.dumps(trace_id)
        inputs = json.loads(d["attributes"]["mlflow.spanInputs"])
        d["attributes"]["mlflow.spanInputs"] = json.dumps(
            {"question": f"{inputs['question']} #{i}"}
        )
        spans.append(Span.from_dict(d))
    return trace_id, spans


def create_traces(tracking_uri: str, experiment_id: str, count: int, start_ms: int) -> list[str]:
    """``count`` one-span traces, 1 ms apart from ``start_ms``: one through the tracer, the rest
    copies of its spans stored in batches with ``TracingClient.log_spans`` (bench_export.py's
    method: ~1,000+ traces/s instead of ~30/s). Returns the trace ids."""
    import mlflow
    from mlflow.tracing.client import TracingClient

    mlflow.set_tracking_uri(tracking_uri)
    template = _template_spans(experiment_id, start_ms * 1_000_000)
    ids = [json.loads(template[0]["attributes"]["mlflow.traceRequestId"])]
    client = TracingClient(tracking_uri)
    pending: list[Any] = []
    for i in range(1, count):
        trace_id, spans = _clone(template, i, (start_ms + i) * 1_000_000)
        ids.append(trace_id)
        pending.extend(spans)
        if len(pending) >= 500 or i + 1 == count:
            client.log_spans(experiment_id, pending)
            pending = []
    return ids


def tmpdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


@dataclass
class Phase:
    """Wall-clock bookkeeping of the run, printed in the summary."""

    started: float = field(default_factory=time.time)
    marks: dict[str, Any] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        """Seconds since the start, and the 1-minute load average (other work on the machine
        shows up here: the measurements share its 2 cores)."""
        self.marks[name] = {
            "s": round(time.time() - self.started, 1),
            "load1": round(os.getloadavg()[0], 2),
        }
