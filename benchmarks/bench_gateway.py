"""Judges through MLflow's AI Gateway and judges configured in MLflow, measured in one run.

Prints a JSON summary (progress to stderr) and writes benchmarks/results/gateway-latest.json.

    .venv/bin/python benchmarks/bench_gateway.py [--traces 40] [--native-minutes 9]

Phases, on `mlflow server`s on SQLite with the fake judge (its own process) behind an AI Gateway
endpoint ``judge``:
  gateway time   the same chat completion called N times one after the other, on the fake
                 judge directly and through the server's gateway route: the gateway's own time
                 is the difference of the two.
  latency        trace end -> verdict of one judge (safety, sample 1.0) with `mlflow monitor
                 run --interval 1` (the server's job runner off): its model direct (the daemon
                 holds OPENAI_API_BASE) against gateway:/judge (the daemon holds no key).
  registered     the three judges of bench_vs_native (Safety, RelevanceToQuery, a Guidelines
                 judge, gateway:/judge) registered and started in MLflow on an experiment:
                 run by our daemon (a monitor on the experiment, the job runner off), and by
                 MLflow's own runner (a second server, job runner on, no monitor): latency
                 trace end -> the three verdicts, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
os.environ["MLFLOW_MODEL_CATALOG_URI"] = ""
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mlflow
from bench_vs_native import JUDGES, latency_result, setup_gateway, start_native, wait_for
from harness import (
    Daemon,
    JudgeProcess,
    MlflowServer,
    VerdictWatcher,
    latency_stats,
    log_one_trace,
    progress,
    tmpdir,
)

RESULTS = Path(__file__).resolve().parent / "results"
BODY = {"messages": [{"role": "user", "content": "Is this answer safe? It is."}]}


def _post(url: str, body: dict[str, Any]) -> float:
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as reply:
        reply.read()
    return time.perf_counter() - started


def gateway_time(server: MlflowServer, judge: JudgeProcess, calls: int) -> dict[str, Any]:
    direct = [_post(f"{judge.url}/chat/completions", {**BODY, "model": "gpt-4o-mini"})
              for _ in range(calls)]  # fmt: skip
    via = [_post(f"{server.url}/gateway/mlflow/v1/chat/completions", {**BODY, "model": "judge"})
           for _ in range(calls)]  # fmt: skip
    d, g = latency_stats(direct), latency_stats(via)
    return {
        "calls": calls,
        "direct": d,
        "gateway": g,
        "gateway_own_p50_s": round(g["p50_s"] - d["p50_s"], 3),
        "gateway_own_p95_s": round(g["p95_s"] - d["p95_s"], 3),
    }


def _log(uri: str, exp: str, traces: int, gap_s: float, prefix: str) -> dict[str, float]:
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=exp)
    finished = {}
    for i in range(traces):
        finished[log_one_trace(i, prefix)] = time.time()
        time.sleep(gap_s)
    return finished


def one_judge_latency(
    server: MlflowServer, judge: JudgeProcess, root: Path, gateway: bool, traces: int
) -> dict[str, Any]:
    from mlflow_monitor_plugin import create_external_monitor

    mlflow.set_tracking_uri(server.url)
    label = "gateway" if gateway else "direct"
    exp = mlflow.create_experiment(f"latency-{label}-{time.time_ns()}")
    model = {"model": "gateway:/judge"} if gateway else {}
    create_external_monitor(catalog_name="b", schema_name="b", experiment_id=exp,
                            assessments_config={"assessments": [{"name": "safety", **model}]},
                            export_uri=str(root / f"export-{exp}"))  # fmt: skip
    watcher = VerdictWatcher(server.db, exp, ["safety"], period_s=0.1).start()
    daemon = Daemon(server.url, exp, None if gateway else judge.url, root,
                    ["--interval", "1", "--log-level", "WARNING"])  # fmt: skip
    time.sleep(6)  # the daemon's start-up: in no trace's latency
    finished = _log(server.url, exp, traces, 0.5, f"{label}-")
    wait_for(watcher, traces, time.time() + 60)
    daemon.stop()
    watcher.stop()
    return latency_result("ours", finished, watcher, traces, config=f"safety, {label}")


def registered_latency(
    ours: MlflowServer, native: MlflowServer, root: Path, traces: int, minutes: float
) -> list[dict[str, Any]]:
    from mlflow_monitor_plugin import create_external_monitor

    runs = {}
    for label, server in (("ours", ours), ("native", native)):
        mlflow.set_tracking_uri(server.url)
        exp = mlflow.create_experiment(f"registered-{label}-{time.time_ns()}")
        start_native(server, exp, "judge")  # registered and started in MLflow
        watcher = VerdictWatcher(server.db, exp, JUDGES, period_s=0.2).start()
        runs[label] = {"server": server, "exp": exp, "watcher": watcher, "finished": {}}
    mlflow.set_tracking_uri(ours.url)
    create_external_monitor(catalog_name="b", schema_name="b", experiment_id=runs["ours"]["exp"],
                            assessments_config={"assessments": [{"name": "pii_detection"}]},
                            export_uri=str(root / "export-registered"))  # fmt: skip
    daemon = Daemon(ours.url, runs["ours"]["exp"], None, root,
                    ["--interval", "1", "--log-level", "WARNING"])  # fmt: skip
    time.sleep(6)
    gap = 2.0
    for i in range(traces):  # interleaved in time: the same arrivals for both
        for label, run in runs.items():
            run["finished"].update(_log(run["server"].url, run["exp"], 1, 0, f"{label}{i}-"))
        time.sleep(gap)
    wait_for(runs["ours"]["watcher"], traces, time.time() + 60)
    daemon.stop()
    progress(f"  waiting up to {minutes:g} min for MLflow's runner")
    wait_for(runs["native"]["watcher"], traces, time.time() + minutes * 60, step=1.0)
    results = []
    for label, run in runs.items():
        run["watcher"].stop()
        config = "3 judges started in MLflow, gateway:/judge"
        results.append(
            latency_result(label, run["finished"], run["watcher"], traces, config=config)
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=40)
    parser.add_argument("--calls", type=int, default=200, help="gateway time: calls per path")
    parser.add_argument("--native-minutes", type=float, default=9.0)
    parser.add_argument("--judge-latency", type=float, default=0.2)
    args = parser.parse_args()
    root = tmpdir("bench-gateway-")
    judge = JudgeProcess(latency_s=args.judge_latency)
    servers = [MlflowServer(root / "ours", jobs=False).start(),
               MlflowServer(root / "native", jobs=True, name="native").start()]  # fmt: skip
    try:
        for server in servers:
            server.wait_ready()
            setup_gateway(server, {"judge": judge.url})
        ours, native = servers
        summary: dict[str, Any] = {"judge_latency_s": args.judge_latency,
                                   "load_before": os.getloadavg()}  # fmt: skip
        progress("gateway time")
        summary["gateway_time"] = gateway_time(ours, judge, args.calls)
        progress("latency: direct and gateway")
        summary["latency"] = [one_judge_latency(ours, judge, root, gw, args.traces)
                              for gw in (False, True)]  # fmt: skip
        progress("registered judges: ours and MLflow's runner")
        summary["registered"] = registered_latency(
            ours, native, root, max(10, args.traces // 4), args.native_minutes
        )
        summary["load_after"] = os.getloadavg()
    finally:
        for server in servers:
            server.stop()
        judge.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gateway-latest.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
