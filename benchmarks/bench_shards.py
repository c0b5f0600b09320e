"""Replicas on `mlflow server` + PostgreSQL: verdicts/s with 1, 2, 4 shards, the server's raw
``log_feedback`` ceiling, and a replica killed mid-run followed by a reshard from 2 to 3.

Everything is real and local: a throwaway PostgreSQL cluster (tests/postgres.py), ``mlflow
server --workers 4`` on it, the fake judge in its own process (answering instantly or after a
fixed latency), and each replica a ``mlflow monitor run --shard K/N`` subprocess. Verdicts are
counted in PostgreSQL directly (no load on the tracking server); duplicates and misses are
counted there too, and the export is read with DuckDB. On this 2-core machine every process
shares the same cores: the summary gives the CPU each part used, so the ceiling is visible.

    python benchmarks/bench_shards.py --traces 1000 --replicas 1,2,4 --latencies 0,0.5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"  # a trace is readable once logged
os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")

from benchmarks.harness import (
    PYTHON,
    REPO,
    JudgeProcess,
    MlflowServer,
    TreeSampler,
    base_env,
    create_traces,
    free_port,
    progress,
    tmpdir,
)
from tests.postgres import start_postgres

SUITE = {
    "sample": 1.0,
    "assessments": [
        {"name": "safety"},
        {"name": "relevance_to_query"},
        {"guidelines": {"concise": ["The response must be concise and on topic."]}},
    ],
}
JUDGES = 3


class Store:
    """Counts in the server's PostgreSQL database, read directly."""

    def __init__(self, pg: Any, database_uri: str):
        self.pg = pg
        self.database = database_uri.rsplit("/", 1)[1]
        self._conn = pg.connect(self.database)
        self._conn.autocommit = True

    def _one(self, sql: str, *args: Any) -> Any:
        with self._conn.cursor() as cursor:
            cursor.execute(sql, args)
            return cursor.fetchone()

    def verdicts(self, experiment_id: str) -> tuple[int, int]:
        """(feedback rows without error, distinct (trace, judge) among them)."""
        return self._one(
            "select count(*), count(distinct (trace_id, name)) from assessments "
            "where experiment_id = %s and error is null",
            int(experiment_id),
        )


def replica_cmd(experiment_id: str, shard: str | None, export: bool) -> list[str]:
    cmd = [PYTHON, "-m", "mlflow_monitor_plugin.cli", "run", "-x", experiment_id]
    cmd += ["--interval", "1", "--log-level", "WARNING"]
    if shard:
        cmd += ["--shard", shard]
    if not export:
        cmd.append("--no-export")
    return cmd


class Replicas:
    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, experiment_id: str, shard: str | None, export: bool) -> None:
        name = shard.replace("/", "of") if shard else "single"
        log = open(self.root / f"replica-{name}.log", "ab")  # noqa: SIM115 - closed at exit
        self.procs[shard or "single"] = subprocess.Popen(
            replica_cmd(experiment_id, shard, export), env=self.env, cwd=REPO,
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip

    def kill(self, shard: str) -> None:
        proc = self.procs.pop(shard)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()


def export_counts(export_uri: str) -> tuple[int, int]:
    import duckdb

    if not any(Path(export_uri).rglob("*.parquet")):
        return 0, 0
    ((rows, distinct),) = duckdb.sql(
        f"select count(*), count(distinct trace_id) from read_parquet('{export_uri}/**/*.parquet',"
        " hive_partitioning=true)"
    ).fetchall()
    return int(rows), int(distinct)


def new_experiment(server: MlflowServer, name: str, traces: int, export_uri: str) -> str:
    import mlflow

    from mlflow_monitor_plugin import create_external_monitor

    mlflow.set_tracking_uri(server.url)
    experiment_id = mlflow.create_experiment(name)
    mlflow.set_experiment(experiment_id=experiment_id)
    create_traces(server.url, experiment_id, traces, int(time.time() * 1000) - traces - 60_000)
    create_external_monitor(
        catalog_name="w", schema_name="d", export_uri=export_uri, assessments_config=SUITE
    )
    return experiment_id


def wait_for(
    store: Store, experiment_id: str, want: int, timeout_s: float, on_tick: Any = None
) -> dict[str, Any]:
    """Poll the store until ``want`` distinct verdicts; when 10% and 90% were reached."""
    started = time.monotonic()
    marks: dict[str, float] = {}
    distinct = 0
    while time.monotonic() - started < timeout_s:
        _, distinct = store.verdicts(experiment_id)
        elapsed = time.monotonic() - started
        for frac in (0.1, 0.9):
            if distinct >= frac * want and f"{frac}" not in marks:
                marks[f"{frac}"] = elapsed
        if on_tick is not None:
            on_tick(distinct)
        if distinct >= want:
            marks["done"] = elapsed
            break
        time.sleep(0.5)
    rate = None
    if "0.1" in marks and "0.9" in marks and marks["0.9"] > marks["0.1"]:
        rate = round(0.8 * want / (marks["0.9"] - marks["0.1"]), 1)
    return {"seconds": round(marks.get("done", time.monotonic() - started), 1), "rate": rate}


def run_layout(ctx: dict[str, Any], latency: float, n: int, traces: int) -> dict[str, Any]:
    server, store, root = ctx["server"], ctx["store"], ctx["root"]
    name = f"l{latency}-n{n}-{int(time.time())}"
    export_uri = str(root / name / "export")
    experiment_id = new_experiment(server, name, traces, export_uri)
    want = traces * JUDGES
    calls_before = ctx["judge"].served().get("ok", 0)
    replicas = Replicas(root, ctx["env"])
    progress(f"latency {latency}s, {n} replica(s): {traces} traces x {JUDGES} judges")
    for k in range(n):
        replicas.start(experiment_id, f"{k}/{n}" if n > 1 else None, export=True)
    sampler = TreeSampler(
        {"server": ctx["server_proc"], **{f"replica {k}": psutil.Process(p.pid)
                                          for k, p in replicas.procs.items()}}
    )  # fmt: skip
    timing = wait_for(store, experiment_id, want, ctx["timeout_s"])
    time.sleep(3)  # the exports of the last pages
    cpu = sampler.stop()
    replicas.stop_all()
    rows, distinct = store.verdicts(experiment_id)
    exported, exported_distinct = export_counts(export_uri)
    return {
        "judge_latency_s": latency,
        "replicas": n,
        "traces": traces,
        "verdicts_per_s_10_to_90": timing["rate"],
        "seconds_to_all": timing["seconds"],
        "duplicates": rows - distinct,
        "missed": want - distinct,
        "judge_calls_beyond_one_per_pair": ctx["judge"].served().get("ok", 0) - calls_before - want,
        "export_rows": exported,
        "export_distinct": exported_distinct,
        "cpu_s": {k: v["cpu_s"] for k, v in cpu.items()},
    }


RAW_WORKER = """
import sys, time, threading, mlflow
from mlflow.entities import AssessmentSource
mlflow.set_tracking_uri(sys.argv[1])
ids, seconds, threads = sys.argv[2].split(","), float(sys.argv[3]), int(sys.argv[4])
source = AssessmentSource("CODE", "bench")
done = [0] * threads
deadline = time.monotonic() + seconds
def work(t):
    i = t
    while time.monotonic() < deadline:
        mlflow.log_feedback(trace_id=ids[i % len(ids)], name="raw", value="yes", source=source)
        done[t] += 1
        i += threads
ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
[t.start() for t in ts]
[t.join() for t in ts]
print(sum(done))
"""


def raw_log_feedback(ctx: dict[str, Any], processes: int, threads: int, seconds: float) -> dict:
    """The server's raw ``log_feedback`` rate: ``processes`` clients of ``threads`` threads."""
    import mlflow

    server = ctx["server"]
    mlflow.set_tracking_uri(server.url)
    experiment_id = mlflow.create_experiment(f"raw-{int(time.time())}")
    ids = create_traces(server.url, experiment_id, 200, int(time.time() * 1000) - 10_000)
    cmd = [PYTHON, "-c", RAW_WORKER, server.url, ",".join(ids), str(seconds), str(threads)]
    procs = [
        subprocess.Popen(cmd, env=ctx["env"], stdout=subprocess.PIPE, text=True, cwd=REPO)
        for _ in range(processes)
    ]
    outs = [p.communicate()[0].strip().splitlines() for p in procs]
    writes = sum(int(o[-1]) for o in outs if o)
    return {
        "processes": processes,
        "threads_each": threads,
        "seconds": seconds,
        "log_feedback_per_s": round(writes / seconds, 1),
    }


def kill_and_reshard(ctx: dict[str, Any], latency: float, traces: int) -> dict[str, Any]:
    """2 replicas; one SIGKILLed at 30%; at 50% three replicas of a 3-shard layout start (the
    survivor is fenced by them, as in a rolling update); all done, every pair once?"""
    server, store, root = ctx["server"], ctx["store"], ctx["root"]
    name = f"reshard-l{latency}-{int(time.time())}"
    export_uri = str(root / name / "export")
    experiment_id = new_experiment(server, name, traces, export_uri)
    want = traces * JUDGES
    calls_before = ctx["judge"].served().get("ok", 0)
    replicas = Replicas(root, ctx["env"])
    progress(f"kill and reshard: {traces} traces, judge {latency}s")
    for k in range(2):
        replicas.start(experiment_id, f"{k}/2", export=True)
    events: dict[str, float] = {}
    started = time.monotonic()

    def tick(distinct: int) -> None:
        if "killed" not in events and distinct >= 0.3 * want:
            replicas.kill("1/2")
            events["killed"] = round(time.monotonic() - started, 1)
            progress(f"killed replica 1/2 at {distinct} verdicts")
        if "resharded" not in events and distinct >= 0.5 * want:
            for k in range(3):
                replicas.start(experiment_id, f"{k}/3", export=True)
            events["resharded"] = round(time.monotonic() - started, 1)
            progress(f"started 3 replicas of 3 shards at {distinct} verdicts")

    timing = wait_for(store, experiment_id, want, ctx["timeout_s"] + 120, tick)
    time.sleep(5)
    replicas.stop_all()
    rows, distinct = store.verdicts(experiment_id)
    exported, exported_distinct = export_counts(export_uri)
    return {
        "judge_latency_s": latency,
        "traces": traces,
        "events_s": events,
        "seconds_to_all": timing["seconds"],
        "duplicates": rows - distinct,
        "missed": want - distinct,
        "judge_calls_beyond_one_per_pair": ctx["judge"].served().get("ok", 0) - calls_before - want,
        "export_rows": exported,
        "export_distinct": exported_distinct,
        "export_missed": traces - exported_distinct,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=1000)
    parser.add_argument("--replicas", default="1,2,4")
    parser.add_argument("--latencies", default="0,0.5")
    parser.add_argument("--server-workers", type=int, default=4)
    parser.add_argument("--raw-seconds", type=float, default=15)
    parser.add_argument("--raw-clients", default="1x8,4x8")
    parser.add_argument("--reshard-traces", type=int, default=0, help="0: same as --traces")
    parser.add_argument("--no-reshard", action="store_true")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    root = tmpdir("bench-shards-")
    pg = start_postgres(free_port())
    summary: dict[str, Any] = {"cores": os.cpu_count(), "server_workers": args.server_workers}
    server = None
    try:
        database_uri = pg.create_mlflow_database("bench")
        server = MlflowServer(
            root / "server", jobs=False, backend=database_uri, workers=args.server_workers
        ).start()
        server.wait_ready(300)
        ctx: dict[str, Any] = {
            "server": server,
            "server_proc": psutil.Process(server.proc.pid),
            "store": Store(pg, database_uri),
            "root": root,
            "timeout_s": args.timeout,
            "env": base_env(MLFLOW_TRACKING_URI=server.url),
        }
        summary["raw"] = [
            raw_log_feedback(ctx, int(p), int(t), args.raw_seconds)
            for p, t in (c.split("x") for c in args.raw_clients.split(","))
        ]
        progress(f"raw log_feedback: {summary['raw']}")
        summary["runs"] = []
        for latency in [float(x) for x in args.latencies.split(",")]:
            judge = JudgeProcess(latency)
            ctx["judge"] = judge
            ctx["env"] = base_env(
                MLFLOW_TRACKING_URI=server.url,
                OPENAI_API_BASE=judge.url,
                OPENAI_BASE_URL=judge.url,
                OPENAI_API_KEY="sk-bench-not-a-key",
            )
            try:
                for n in [int(x) for x in args.replicas.split(",")]:
                    summary["runs"].append(run_layout(ctx, latency, n, args.traces))
                    progress(json.dumps(summary["runs"][-1]))
                if not args.no_reshard and latency == max(
                    float(x) for x in args.latencies.split(",")
                ):
                    summary["reshard"] = kill_and_reshard(
                        ctx, latency, args.reshard_traces or args.traces
                    )
                    progress(json.dumps(summary["reshard"]))
            finally:
                judge.stop()
        summary["load1_end"] = round(os.getloadavg()[0], 2)
    finally:
        if server is not None:
            server.stop()
        pg.stop()
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    threading.excepthook = lambda a: progress(f"thread failed: {a.exc_value}")
    main()
