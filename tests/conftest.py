"""Shared fixtures: a real SQLite tracking store per test, a real `mlflow server` for the REST
path, and the fake OpenAI-compatible judge. Nothing of MLflow is mocked."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.fake_judge import FakeJudge, JudgeBehaviour
from tests.gateway import GATEWAY_ENV, JUDGE_ENVS, create_endpoint
from tests.postgres import PostgresServer, postgres_missing, start_postgres

# Traces are written synchronously in tests, so a test sees what it logged.
os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
os.environ.setdefault("MLFLOW_TRACKING_URI", "sqlite:///:memory:")  # never the user's store
# MLflow fetches a model price catalog from the internet before a judge's first call; not here.
os.environ["MLFLOW_MODEL_CATALOG_URI"] = ""
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # the tests reach no host but loopback


def _reset_active_experiment() -> None:
    import mlflow.tracking.fluent as fluent

    fluent._active_experiment_id = None  # MLflow keeps the active experiment in a global


@pytest.fixture(scope="session")
def _template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite store per session; each test gets its own copy (migrations are slow)."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def sqlite_uri(
    tmp_path: Path, _template_db: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh SQLite tracking store for this test, set as the tracking URI."""
    db = tmp_path / "mlflow.db"
    shutil.copy(_template_db, db)
    uri = f"sqlite:///{db}"
    yield from _use_tracking_uri(uri, tmp_path, monkeypatch)


def _use_tracking_uri(uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_MONITOR_EXPORT_ROOT", str(tmp_path / "exports"))
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    _reset_active_experiment()
    yield uri
    _reset_active_experiment()
    mlflow.set_tracking_uri(None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` subprocess on 127.0.0.1, on its own SQLite store or on the given
    ``backend_store_uri``."""

    def __init__(
        self,
        root: Path,
        port: int | None = None,
        backend_store_uri: str | None = None,
        workers: int = 1,
        env: dict[str, str] | None = None,
    ):
        self.root = root
        self.port = port or free_port()
        self.backend_store_uri = backend_store_uri or f"sqlite:///{root / 'server.db'}"
        self.workers = workers
        self.env = {**GATEWAY_ENV, **(env or {})}  # its AI Gateway may call the fake judge
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 90.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        cmd = [
            str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", self.backend_store_uri,
            "--default-artifact-root", str(self.root / "artifacts"),
            "--workers", str(self.workers),
        ]  # fmt: skip
        env = {
            **os.environ,
            "MLFLOW_MONITOR_DISABLE_CLI_HOOK": "1",
            # MLflow's own job runner (its online scoring: huey consumers, ~240 MB and seconds
            # of CPU each at start) is not what the tests exercise
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            **self.env,
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        self._log = open(self.root / "server.log", "ab")  # noqa: SIM115 - lives with the server
        self.process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited: {(self.root / 'server.log').read_text()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"mlflow server did not start within {timeout_s}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process:
            self._log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def rest_uri(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The session's `mlflow server` as the tracking URI (tests isolate by their own experiment)."""
    yield from _use_tracking_uri(mlflow_server.url, tmp_path, monkeypatch)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session; each user creates its own database in it."""
    missing = postgres_missing()
    if missing:
        if os.environ.get("MLFLOW_MONITOR_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"MLFLOW_MONITOR_REQUIRE_POSTGRES=1 but {missing}")
        pytest.skip(missing)
    server = start_postgres(free_port())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _postgres_template(postgres: PostgresServer) -> str:
    """One migrated MLflow database per session; each test gets its own copy."""
    return postgres.create_mlflow_database("template").rsplit("/", 1)[1]


@pytest.fixture
def postgres_uri(
    postgres: PostgresServer,
    _postgres_template: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    """A fresh PostgreSQL tracking store (MLflow's SQL store, no server) for this test."""
    uri = postgres.create_database("test", template=_postgres_template)
    yield from _use_tracking_uri(uri, tmp_path, monkeypatch)


@pytest.fixture(scope="session")
def postgres_mlflow_server(
    postgres: PostgresServer, _postgres_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    """`mlflow server --workers 4` on its own PostgreSQL database, as teams deploy it."""
    server = MlflowServer(
        tmp_path_factory.mktemp("pg-server"),
        backend_store_uri=postgres.create_database("server", template=_postgres_template),
        workers=4,
    )
    server.start(timeout_s=300)  # minutes on a busy 2-core machine
    yield server
    server.stop()


@pytest.fixture
def postgres_rest_uri(
    postgres_mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The PostgreSQL-backed `mlflow server` as the tracking URI (isolate by experiment)."""
    yield from _use_tracking_uri(postgres_mlflow_server.url, tmp_path, monkeypatch)


TRACKING_URI_FIXTURES = {
    "sqlite": "sqlite_uri",
    "rest": "rest_uri",
    "postgres": "postgres_rest_uri",
}


@pytest.fixture(params=["sqlite", "rest", pytest.param("postgres", marks=pytest.mark.postgres)])
def tracking_uri(request: pytest.FixtureRequest) -> str:
    """Runs the test against a SQLite store, a real `mlflow server` on SQLite, and one on
    PostgreSQL with four workers."""
    return request.getfixturevalue(TRACKING_URI_FIXTURES[request.param])


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_uri(request: pytest.FixtureRequest) -> str:
    """A SQLite store, or `mlflow server` on PostgreSQL: for the suites of processes (crash,
    shards) that the REST path on SQLite adds little to."""
    return request.getfixturevalue(TRACKING_URI_FIXTURES[request.param])


@pytest.fixture
def experiment_id(tracking_uri: str) -> str:
    """A new experiment, set active, in whichever store the test runs against."""
    return mlflow.set_experiment(f"exp-{uuid.uuid4().hex[:12]}").experiment_id


@pytest.fixture
def sqlite_experiment_id(sqlite_uri: str) -> str:
    return mlflow.set_experiment(f"exp-{uuid.uuid4().hex[:12]}").experiment_id


@pytest.fixture
def fake_judge(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeJudge]:
    """The fake OpenAI-compatible judge, wired through OPENAI_API_BASE."""
    with FakeJudge(JudgeBehaviour()) as judge:
        monkeypatch.setenv("OPENAI_API_BASE", judge.url)
        monkeypatch.setenv("OPENAI_BASE_URL", judge.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-" + uuid.uuid4().hex)
        yield judge


@pytest.fixture
def gateway_judge(
    rest_uri: str, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FakeJudge, str]]:
    """The fake judge behind an AI Gateway endpoint of the session's `mlflow server`, and the
    endpoint's name; the daemon's environment has no judge key or endpoint of its own."""
    for name in JUDGE_ENVS:
        monkeypatch.delenv(name, raising=False)
    with FakeJudge(JudgeBehaviour()) as judge:
        yield judge, create_endpoint(mlflow_server.url, judge.url)


CODE_JUDGES = {
    "tone_check": "mm_test_scorers:tone_check",
    "always_fails": "mm_test_scorers:always_fails",
    "returns_nonsense": "mm_test_scorers:returns_nonsense",
    "word_count": "mm_test_scorers:WordCount",
}


@pytest.fixture(scope="session")
def _scorer_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny installed distribution: tests/scorers/mm_test_scorers.py and a ``.dist-info``
    whose entry_points.txt exposes its scorers in group ``mlflow_monitor.scorers``."""
    root = tmp_path_factory.mktemp("site")
    shutil.copy(Path(__file__).parent / "scorers" / "mm_test_scorers.py", root)
    info = root / "mm_test_scorers-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mm-test-scorers\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in CODE_JUDGES.items())
    (info / "entry_points.txt").write_text(f"[mlflow_monitor.scorers]\n{lines}")
    return root


@pytest.fixture
def code_judges(_scorer_package: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The scorer package installed for this process and the subprocesses it starts."""
    import importlib

    monkeypatch.syspath_prepend(str(_scorer_package))
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(_scorer_package), *([path] if path else [])])
    )
    importlib.invalidate_caches()
    return _scorer_package
