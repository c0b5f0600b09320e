"""Latency and throughput of the monitoring engine, against the store's raw write rate.

Prints a JSON summary. Not part of the test suite.

    python benchmarks/bench_engine.py --latency-traces 60 --throughput-traces 1000

Latency: a daemon subprocess (`mlflow monitor run --interval 1`) watches a SQLite store while
this process logs traces one at a time; for each trace we record when it finished and when all
of its verdicts became visible to a reader polling the store every 50 ms.
Throughput: `run --once`-style catch-up over N pending traces x 3 judges, the fake judge
answering instantly; compared with raw `mlflow.log_feedback` calls on the same store.
Shadow (``--shadow-traces N``, ``--only-shadow``): the CPU per verdict of a `run --once`
subprocess over N traces with one LLM judge, the judge and a shadow, and the judge and a second
judge identical to the shadow (issue 27: a shadow should cost what its judge calls cost, no
more than a second judge); the subprocess's start-up CPU is measured apart and subtracted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
os.environ["MLFLOW_MODEL_CATALOG_URI"] = ""

import mlflow  # noqa: E402
from mlflow.entities import AssessmentSource  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from mlflow_monitor_plugin import create_external_monitor  # noqa: E402
from tests.fake_judge import FakeJudge, JudgeBehaviour  # noqa: E402
from tests.traces_factory import log_traces  # noqa: E402

SUITE = {"assessments": [{"name": "safety"}, {"name": "relevance_to_query"},
                         {"name": "pii_detection"}]}  # fmt: skip
JUDGES = 3


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure_latency(root: Path, traces: int, interval: float) -> dict:
    uri = f"sqlite:///{root / 'latency.db'}"
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.set_experiment("latency").experiment_id
    create_external_monitor(catalog_name="w", schema_name="d", assessments_config=SUITE)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO),
           "MLFLOW_MONITOR_DISABLE_CLI_HOOK": "1"}  # fmt: skip
    daemon = subprocess.Popen(
        [sys.executable, "-m", "mlflow_monitor_plugin.cli", "run", "-x", experiment_id,
         "--interval", str(interval), "--no-export", "--log-level", "WARNING"],
        env=env, cwd=root,
    )  # fmt: skip
    client = MlflowClient(uri)
    finished: dict[str, float] = {}
    visible: dict[str, float] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            now = time.time()
            for t in client.search_traces([experiment_id], include_spans=False, max_results=500):
                if t.info.trace_id not in visible and len(t.info.assessments) >= JUDGES:
                    visible[t.info.trace_id] = now
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    time.sleep(3)  # the daemon's start-up
    for i in range(traces):
        (trace_id,) = log_traces(1, retriever=False, prefix=f"latency{i}-")
        finished[trace_id] = time.time()
        time.sleep(0.25)
    deadline = time.time() + 120
    while len(visible) < traces and time.time() < deadline:
        time.sleep(0.2)
    stop.set()
    daemon.terminate()
    daemon.wait(30)
    lat = [visible[t] - finished[t] for t in finished if t in visible]
    return {
        "interval_s": interval,
        "traces": traces,
        "missed": traces - len(lat),
        "p50_s": round(statistics.median(lat), 2),
        "p95_s": round(percentile(lat, 0.95), 2),
        "max_s": round(max(lat), 2),
    }


def measure_throughput(root: Path, traces: int, workers: int) -> dict:
    from mlflow_monitor_plugin.engine.daemon import Daemon
    from mlflow_monitor_plugin.engine.pipeline import EngineSettings
    from mlflow_monitor_plugin.scoring.runner import ScoringSettings

    uri = f"sqlite:///{root / 'throughput.db'}"
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.set_experiment("throughput").experiment_id
    log_traces(traces, retriever=False)
    create_external_monitor(catalog_name="w", schema_name="d", assessments_config=SUITE)
    settings = EngineSettings(export=False, scoring=ScoringSettings(workers=workers))
    started = time.perf_counter()
    report = Daemon([experiment_id], settings=settings).run_until_idle()
    seconds = time.perf_counter() - started
    verdicts = sum(s.feedback_logged for s in report.stats)
    return {
        "traces": traces,
        "judges": JUDGES,
        "workers": workers,
        "verdicts": verdicts,
        "seconds": round(seconds, 2),
        "verdicts_per_s": round(verdicts / seconds, 1),
    }


CUSTOM = "Is this answer safe? Answer yes or no. {{ outputs }}"
CANDIDATE = "CANDIDATE prompt: is this answer safe? Answer yes or no. {{ outputs }}"
SHADOW_SUITES = {
    "one_judge": {"assessments": [{"kind": "custom", "name": "safety", "instructions": CUSTOM}]},
    "judge_and_shadow": {
        "assessments": [{"kind": "custom", "name": "safety", "instructions": CUSTOM}],
        "shadows": {"safety": {"kind": "custom", "name": "safety", "instructions": CANDIDATE}},
    },
    "two_judges": {
        "assessments": [
            {"kind": "custom", "name": "safety", "instructions": CUSTOM},
            {"kind": "custom", "name": "safety_b", "instructions": CANDIDATE},
        ]
    },
}


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_once(uri: str, experiment_id: str, workers: int) -> tuple[float, float]:
    """CPU seconds and wall seconds of one `mlflow monitor run --once` subprocess."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO),
           "MLFLOW_MONITOR_DISABLE_CLI_HOOK": "1"}  # fmt: skip
    cpu, wall = _child_cpu(), time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mlflow_monitor_plugin.cli", "run", "-x", experiment_id, "--once",
         "--no-export", "--workers", str(workers), "--log-level", "WARNING"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    return _child_cpu() - cpu, time.perf_counter() - wall


def measure_shadow_cost(root: Path, traces: int, workers: int, judge: FakeJudge) -> dict:
    """CPU per verdict of a catch-up with a shadow on, against one judge and two judges."""
    from mlflow_monitor_plugin.discovery.timerange import TimeRange
    from mlflow_monitor_plugin.engine.shadow import compare

    uri = f"sqlite:///{root / 'startup.db'}"
    mlflow.set_tracking_uri(uri)
    empty = mlflow.set_experiment("startup").experiment_id
    create_external_monitor(catalog_name="w", schema_name="d",
                            assessments_config=SHADOW_SUITES["one_judge"])  # fmt: skip
    startup = min(_run_once(uri, empty, workers)[0] for _ in range(2))
    results: dict = {"traces": traces, "startup_cpu_s": round(startup, 2)}
    for name, suite in SHADOW_SUITES.items():
        uri = f"sqlite:///{root / (name + '.db')}"
        mlflow.set_tracking_uri(uri)
        experiment_id = mlflow.set_experiment(name).experiment_id
        log_traces(traces, retriever=False)
        create_external_monitor(catalog_name="w", schema_name="d", assessments_config=suite)
        calls = judge.count("ok")
        cpu, wall = _run_once(uri, experiment_id, workers)
        found = mlflow.search_traces(locations=[experiment_id], return_type="list")
        verdicts = sum(len(t.info.assessments) for t in found)
        work = cpu - startup
        results[name] = {
            "verdicts": verdicts, "judge_calls": judge.count("ok") - calls,
            "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
            "cpu_ms_per_verdict": round(1000 * work / verdicts, 2),
        }  # fmt: skip
        if name == "judge_and_shadow":
            window = TimeRange(0, int(time.time() * 1000) + 1, "all")
            results[name]["compare_pairs"] = compare(experiment_id, "safety", window).to_dict()[
                "pairs"
            ]
    one = results["one_judge"]
    for name in ("judge_and_shadow", "two_judges"):
        extra = results[name]["verdicts"] - one["verdicts"]
        added = (results[name]["cpu_s"] - one["cpu_s"]) / extra if extra else None
        results[name]["cpu_ms_per_added_verdict"] = round(1000 * added, 2) if added else None
    return results


def raw_feedback_rate(root: Path, writes: int, threads: int) -> float:
    uri = f"sqlite:///{root / 'raw.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("raw")
    ids = log_traces(50, retriever=False)
    source = AssessmentSource("CODE", "bench")

    def write(i: int) -> None:
        mlflow.log_feedback(trace_id=ids[i % len(ids)], name="raw", value="yes", source=source)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, range(writes)))
    return round(writes / (time.perf_counter() - started), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-traces", type=int, default=60)
    parser.add_argument("--throughput-traces", type=int, default=1000)
    parser.add_argument("--intervals", default="1,3")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--shadow-traces", type=int, default=0, help="also measure a shadow")
    parser.add_argument("--only-shadow", action="store_true", help="only the shadow's cost")
    args = parser.parse_args()
    summary: dict = {}
    with FakeJudge(JudgeBehaviour()) as judge, tempfile.TemporaryDirectory() as tmp:
        os.environ.update(OPENAI_API_BASE=judge.url, OPENAI_API_KEY="sk-bench-not-a-key")
        root = Path(tmp)
        if args.shadow_traces or args.only_shadow:
            traces = args.shadow_traces or 500
            summary["shadow"] = measure_shadow_cost(root, traces, args.workers, judge)
            if args.only_shadow:
                print(json.dumps(summary, indent=2))
                return
        summary["latency"] = [
            measure_latency(root / f"i{interval}", args.latency_traces, float(interval))
            for interval in args.intervals.split(",")
            if not (root / f"i{interval}").mkdir()
        ]
        summary["throughput"] = measure_throughput(root, args.throughput_traces, args.workers)
        summary["raw_log_feedback_per_s"] = {
            "1_thread": raw_feedback_rate(root, 500, 1),
            f"{args.workers}_threads": raw_feedback_rate(root, 500, args.workers),
        }
        best_raw = max(summary["raw_log_feedback_per_s"].values())
        summary["throughput_vs_raw"] = round(summary["throughput"]["verdicts_per_s"] / best_raw, 2)
        summary["judge_calls"] = judge.count("ok")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
