"""A real PostgreSQL server for the tests: Debian's ``postgresql`` binaries (or any ``initdb`` on
PATH), a throwaway cluster in a temporary folder, trust auth on 127.0.0.1 and a free port.

PostgreSQL refuses to run as root, so when the tests run as root (as CI does) the cluster
belongs to the ``postgres`` user and its commands run through ``runuser``. Durability is off
(fsync, synchronous commit): the cluster lives for one test session.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

# SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3; the [postgres] extra ships psycopg2.
DRIVER = "postgresql+psycopg2"
INSTALL_HINT = (
    "install them with `apt-get install -y postgresql` (Debian/Ubuntu) or "
    "`brew install postgresql` (macOS), or set MLFLOW_MONITOR_PG_BINDIR to the folder holding "
    "initdb and pg_ctl"
)


def _version_key(folder: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", folder))


def find_bindir() -> Path | None:
    """The folder of ``initdb``, ``pg_ctl`` and ``postgres``: MLFLOW_MONITOR_PG_BINDIR when set
    (only it), else Debian's newest /usr/lib/postgresql/<version>/bin, else PATH's ``initdb``."""
    override = os.environ.get("MLFLOW_MONITOR_PG_BINDIR")
    if override:
        candidates = [override]
    else:
        debian = (os.path.dirname(p) for p in glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        candidates = sorted(debian, key=_version_key, reverse=True)
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(os.path.dirname(os.path.realpath(on_path)))
    for folder in candidates:
        if all((Path(folder) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


def postgres_missing() -> str | None:
    """Why the PostgreSQL tests cannot run here (with how to fix it), or None when they can."""
    if find_bindir() is None:
        return f"PostgreSQL server binaries not found: {INSTALL_HINT}."
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return 'the PostgreSQL driver is not installed: `pip install ".[postgres]"`.'
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root needs `runuser` to start PostgreSQL as the postgres user."
    return None


class PostgresServer:
    """One throwaway PostgreSQL cluster; ``create_database`` gives each user its own database."""

    def __init__(self, bindir: Path, port: int):
        self.bindir = bindir
        self.port = port
        # Not under pytest's tmp_path: its folders are private to root, and the server may run
        # as the postgres user, who must reach its data folder.
        self.root = Path(tempfile.mkdtemp(prefix="mlflow-monitor-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "server.log"
        self.user = "postgres" if os.geteuid() == 0 else None
        self.started_in_s = 0.0

    def _run(self, tool: str, *args: str, timeout_s: float = 120) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            log = self.log_path.read_text() if self.log_path.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}{log}")

    def start(self) -> None:
        started = time.monotonic()
        if self.user:
            shutil.chown(self.root, self.user)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.root} -c max_connections=200 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log_path),
                  "-w", "-t", "120", "start")  # fmt: skip
        self.started_in_s = time.monotonic() - started

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def uri(self, database: str) -> str:
        return f"{DRIVER}://postgres@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> Any:
        """A psycopg2 connection to ``database``, as the superuser."""
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database)

    def create_database(self, prefix: str = "mlflow", template: str | None = None) -> str:
        """A new database, empty or a copy of the database ``template``; its SQLAlchemy URI."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        connection = self.connect()
        try:
            connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with connection.cursor() as cursor:
                copy = f" TEMPLATE {template}" if template else ""
                cursor.execute(f"CREATE DATABASE {name}{copy}")
        finally:
            connection.close()
        return self.uri(name)

    def create_mlflow_database(self, prefix: str = "mlflow") -> str:
        """A new database with MLflow's tables already migrated; its SQLAlchemy URI."""
        import sqlalchemy
        from mlflow.store.db.utils import _initialize_tables

        uri = self.create_database(prefix)
        engine = sqlalchemy.create_engine(uri)
        try:
            _initialize_tables(engine)
        finally:
            engine.dispose()  # no session left open, so the database can be a template
        return uri


def start_postgres(port: int) -> PostgresServer:
    bindir = find_bindir()
    if bindir is None:
        raise FileNotFoundError(f"PostgreSQL server binaries not found: {INSTALL_HINT}")
    server = PostgresServer(bindir, port)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server
