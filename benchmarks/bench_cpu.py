"""CPU per verdict: the daemon against MLflow's own floor, side by side in one run (issue 25).

Prints a JSON summary (progress to stderr), writes benchmarks/results/cpu-latest.json.

    .venv/bin/python benchmarks/bench_cpu.py [--traces 600] [--quick]

The same traces (one-span chat traces) and the same three LLM judges as bench_vs_native
(Safety, RelevanceToQuery, a Guidelines judge), every trace sampled, the fake judge in its own
process answering at once (instant) or in 500 ms:

  floor    MLflow alone, no daemon: one thread of one process runs each judge on each trace
           (``scorer(trace=trace)``, calling the fake judge directly) and writes the verdict
           with ``mlflow.log_feedback``. Counted: that loop's own CPU (the traces are read
           before it). Over REST the server's CPU for its writes is reported apart.
  daemon   ``mlflow monitor run -x ID --once`` (export off, then on), CPU from the kernel when
           it is reaped, minus the CPU of the same command on an experiment with a monitor
           and no traces (its start-up and an empty pass). Over REST the server's CPU apart.

Reported per case: CPU per verdict (ms), the ratio to the floor, verdicts/s (verdicts over the
run's wall time minus the empty run's), the daemon's peak memory (PSS of its process tree).
Each is run ``--repeat`` times, interleaved, on fresh experiments: the median is reported (the
machine is shared; single runs vary by about 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
os.environ["MLFLOW_MODEL_CATALOG_URI"] = ""
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mlflow
import psutil
from bench_vs_native import GUIDELINE, JUDGES, SUITE
from harness import (
    CLI_MODULE,
    PYTHON,
    REPO,
    JudgeProcess,
    MlflowServer,
    TreeSampler,
    VerdictWatcher,
    base_env,
    create_traces,
    progress,
    tmpdir,
)

RESULTS = Path(__file__).resolve().parent / "results"

FLOOR_CODE = """
import json, os, resource, sys, time
import mlflow
from mlflow.entities import AssessmentSource
from mlflow.genai.scorers import Guidelines, RelevanceToQuery, Safety
exp = sys.argv[1]
traces = mlflow.search_traces(locations=[exp], return_type="list")
scorers = [Safety(), RelevanceToQuery(), Guidelines(name="concise", guidelines=[sys.argv[2]])]
source = AssessmentSource("LLM_JUDGE", "openai:/gpt-4.1-mini")
for trace in traces[:2]:  # warm up (lazy imports, connections): not counted
    for scorer in scorers:
        scorer(trace=trace)
started_cpu, started = time.process_time(), time.monotonic()
ru0 = resource.getrusage(resource.RUSAGE_SELF)
n = 0
judging = writing = 0.0
for trace in traces[2:]:
    for scorer in scorers:
        t0 = time.thread_time()
        fb = scorer(trace=trace)
        t1 = time.thread_time()
        mlflow.log_feedback(trace_id=trace.info.trace_id, name=scorer.name, value=fb.value,
                            rationale=fb.rationale, source=source, metadata={"floor": "1"})
        judging, writing = judging + t1 - t0, writing + time.thread_time() - t1
        n += 1
ru1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"verdicts": n, "cpu_s": time.process_time() - started_cpu,
                  "sys_s": ru1.ru_stime - ru0.ru_stime, "wall_s": time.monotonic() - started,
                  "judge_s": judging, "write_s": writing}))
"""


def _experiment(uri: str, name: str, traces: int, monitor: bool, root: Path) -> str:
    from mlflow_monitor_plugin import create_external_monitor

    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment(f"{name}-{time.time_ns()}")
    if traces:
        create_traces(uri, exp, traces, int(time.time() * 1000) - 3_600_000)
    if monitor:
        export = str(root / f"x-{exp}")
        create_external_monitor(catalog_name="b", schema_name="b", experiment_id=exp,
                                assessments_config=SUITE, export_uri=export)  # fmt: skip
    return exp


def floor(uri: str, judge: JudgeProcess, traces: int, server: Any, root: Path) -> dict[str, Any]:
    exp = _experiment(uri, "floor", traces, False, root)
    env = base_env(MLFLOW_TRACKING_URI=uri, OPENAI_API_BASE=judge.url, OPENAI_API_KEY="sk-bench")
    before = _server_cpu(server)
    done = subprocess.run([PYTHON, "-c", FLOOR_CODE, exp, GUIDELINE], env=env, cwd=root,
                          capture_output=True, text=True, check=True)  # fmt: skip
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "verdicts": out["verdicts"],
        "cpu_ms_per_verdict": round(1000 * out["cpu_s"] / out["verdicts"], 3),
        "of_which_sys_ms": round(1000 * out["sys_s"] / out["verdicts"], 3),
        "judge_call_ms": round(1000 * out["judge_s"] / out["verdicts"], 3),
        "log_feedback_ms": round(1000 * out["write_s"] / out["verdicts"], 3),
        "verdicts_per_s": round(out["verdicts"] / out["wall_s"], 1),
        "server_cpu_ms_per_verdict": _per(_server_cpu(server) - before, out["verdicts"]),
    }


def _server_cpu(server: Any) -> float:
    if server is None:
        return 0.0
    procs = [server.process, *server.process.children(recursive=True)]
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def _per(cpu_s: float, verdicts: int) -> float | None:
    return round(1000 * cpu_s / verdicts, 3) if verdicts else None


EXTRA_ARGS: list[str] = []  # --daemon-args: flags for the daemon, for experiments


def _once(
    uri: str, exp: str, judge: JudgeProcess, root: Path, export: bool, package: Path = REPO
) -> dict[str, Any]:
    """One ``run --once`` of the daemon (``package``: the source tree it runs): its CPU (the
    kernel's, at reaping), wall, peak PSS."""
    env = base_env(MLFLOW_TRACKING_URI=uri, OPENAI_API_BASE=judge.url, OPENAI_API_KEY="sk-bench",
                   PYTHONPATH=str(package))  # fmt: skip
    args = [PYTHON, "-m", CLI_MODULE, "run", "-x", exp, "--once", "--log-level", "WARNING"]
    args += ([] if export else ["--no-export"]) + EXTRA_ARGS
    started = time.monotonic()
    with open(root / "daemon.log", "ab") as log:
        proc = subprocess.Popen(args, env=env, cwd=root, stdout=log, stderr=log)
        sampler = TreeSampler({"daemon": psutil.Process(proc.pid)}, period_s=0.25)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    cost = sampler.stop()["daemon"]
    if proc.returncode:
        raise RuntimeError(f"the daemon exited {proc.returncode}: see {root / 'daemon.log'}")
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "sys_s": usage.ru_stime,
            "wall_s": time.monotonic() - started, "peak_pss_mb": cost["peak_pss_mb"],
            "switches": usage.ru_nvcsw + usage.ru_nivcsw}  # fmt: skip


def daemon(
    uri: str,
    judge: JudgeProcess,
    traces: int,
    export: bool,
    server: Any,
    root: Path,
    db: Path,
    package: Path = REPO,
) -> dict[str, Any]:
    empty = _experiment(uri, "empty", 0, True, root)
    base = _once(uri, empty, judge, root, export, package)
    exp = _experiment(uri, "daemon", traces, True, root)
    before = _server_cpu(server)
    run = _once(uri, exp, judge, root, export, package)
    server_cpu = _server_cpu(server) - before
    counts = VerdictWatcher(db, exp, JUDGES).counts()
    verdicts = counts.verdicts
    return {
        "verdicts": verdicts,
        "missed": counts.missed,
        "duplicates": counts.duplicates,
        "cpu_ms_per_verdict": _per(run["cpu_s"] - base["cpu_s"], verdicts),
        "of_which_sys_ms": _per(run["sys_s"] - base["sys_s"], verdicts),
        "context_switches_per_verdict": round(
            (run["switches"] - base["switches"]) / max(1, verdicts), 1
        ),
        "startup_cpu_s": round(base["cpu_s"], 2),
        "verdicts_per_s": round(verdicts / max(0.001, run["wall_s"] - base["wall_s"]), 1),
        "peak_pss_mb": run["peak_pss_mb"],
        "server_cpu_ms_per_verdict": _per(server_cpu, verdicts),
    }


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose CPU per verdict is the median, with every run's CPU per verdict."""
    ordered = sorted(runs, key=lambda r: r["cpu_ms_per_verdict"])
    middle = dict(ordered[len(ordered) // 2])
    if len(runs) > 1:
        middle["cpu_ms_per_verdict_runs"] = [r["cpu_ms_per_verdict"] for r in runs]
    return middle


BASELINE: list[Path] = []  # --baseline: the package of an earlier commit, run beside


def case(store: str, latency: float, traces: int, root: Path, repeat: int) -> dict[str, Any]:
    judge = JudgeProcess(latency_s=latency)
    server = None
    try:
        if store == "rest":
            server_obj = MlflowServer(root / f"server-{latency}", jobs=False).start().wait_ready()
            uri, db = server_obj.url, server_obj.db
            server = type("S", (), {"process": psutil.Process(server_obj.proc.pid)})()
        else:
            db = root / f"store-{latency}.db"
            uri = f"sqlite:///{db}"
        result: dict[str, Any] = {"store": store, "judge_latency_s": latency}
        runs: dict[str, list[dict[str, Any]]] = {
            "floor": [], "off": [], "on": [], "baseline_off": [], "baseline_on": []
        }  # fmt: skip
        for n in range(repeat):  # interleaved: the machine's drift touches every system alike
            progress(f"{store}, judge {latency:g}s, round {n + 1}/{repeat}: floor")
            # the floor's CPU per verdict does not depend on the judge's latency, its time does:
            # a slow judge's floor is measured on fewer traces
            runs["floor"].append(floor(uri, judge, traces if not latency else 60, server, root))
            for export in (False, True):
                label = "on" if export else "off"
                progress(f"{store}, judge {latency:g}s, round {n + 1}/{repeat}: export {label}")
                runs[label].append(daemon(uri, judge, traces, export, server, root, db))
                for package in BASELINE:
                    runs[f"baseline_{label}"].append(
                        daemon(uri, judge, traces, export, server, root, db, package)
                    )
        result["floor"] = _median_of(runs["floor"])
        for label in ("off", "on", "baseline_off", "baseline_on"):
            if not runs[label]:
                continue
            d = _median_of(runs[label])
            d["ratio_to_floor"] = round(
                d["cpu_ms_per_verdict"] / result["floor"]["cpu_ms_per_verdict"], 2
            )
            result[f"daemon_export_{label}" if label in ("off", "on") else label] = d
        return result
    finally:
        if store == "rest":
            server_obj.stop()
        judge.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=600)
    parser.add_argument("--latencies", default="0,0.5", help="judge latencies, seconds")
    parser.add_argument("--stores", default="sqlite,rest")
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu-latest.json")
    parser.add_argument("--daemon-args", default="", help="extra flags of `run` (experiments)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, medians reported")
    parser.add_argument("--baseline", default="", help="also run this git commit's daemon")
    args = parser.parse_args()
    EXTRA_ARGS.extend(args.daemon_args.split())
    root = tmpdir("bench-cpu-")
    if args.baseline:
        from bench_vs_native import baseline_package

        BASELINE.append(baseline_package(args.baseline, root))
    summary: dict[str, Any] = {"traces": args.traces, "judges": JUDGES,
                               "load_before": os.getloadavg(), "cases": []}  # fmt: skip
    for store in args.stores.split(","):
        for latency in (float(x) for x in args.latencies.split(",")):
            summary["cases"].append(case(store, latency, args.traces, root, args.repeat))
            args.out.parent.mkdir(exist_ok=True)
            args.out.write_text(json.dumps(summary, indent=2))
    summary["load_after"] = os.getloadavg()
    args.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
