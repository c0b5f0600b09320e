"""Where does our daemon spend its time? py-spy over a `run --once` catch-up, summarised.

Creates N traces in a fresh SQLite store (or behind a fresh `mlflow server` with --rest),
starts the fake judge in its own process, and runs
``py-spy record --format raw`` over ``mlflow monitor run -x <id> --once --no-export``.
Prints the top frames by own time and by inclusive time (file:line), as JSON.

    .venv/bin/python benchmarks/profile_daemon.py --traces 1000 [--rest] [--gil]

--gil samples only the thread holding the GIL: what limits a CPU-bound Python process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
os.environ["MLFLOW_MODEL_CATALOG_URI"] = ""
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_vs_native import make_monitor
from harness import (
    CLI_MODULE,
    PREIMPORT_CODE,
    PREIMPORT_ENV,
    PYTHON,
    JudgeProcess,
    MlflowServer,
    base_env,
    create_traces,
    progress,
    tmpdir,
)

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")

# Where a sample's time goes: the first of these parts that a frame of its stack names. One-time
# costs first (imports, lazy ones included, and store set-up: `bench_cpu.py` subtracts most of
# them as start-up); then the floor's two calls, MLflow's scorer and `log_feedback`; then what
# the daemon adds around them.
CATEGORIES = (
    (
        "one-time: imports and store set-up",
        re.compile(r"^(_find_and_load|MlflowClient\.__init__|_get_store) \("),
    ),
    ("judge call (MLflow's scorer)", re.compile(r"\(mlflow/genai/scorers/base\.py")),
    ("log_feedback", re.compile(r"^log_feedback \(mlflow/")),
    ("trace fetch", re.compile(r"^\w*\.?(batch_get_traces|search_traces|get_trace) \(mlflow/")),
    ("windows and charts", re.compile(r"\(mlflow_monitor_plugin/observe/")),
    ("export", re.compile(r"\(mlflow_monitor_plugin/export/")),
    ("the daemon's own code", re.compile(r"\(mlflow_monitor_plugin/")),
)
# Reported apart: the judge proxy's own work, in the daemon's HTTP server threads (before
# issue 25) or in the adapter MLflow's client calls (after), its upstream HTTP call excluded
# (the floor makes that call too, from the scorer).
PROXY = re.compile(
    r"\((mlflow_monitor_plugin/scoring/(proxy|transport)\.py|socketserver\.py|http/server\.py)"
)
UPSTREAM = re.compile(r"\(urllib3/")


def category(frames: list[str]) -> str:
    for name, pattern in CATEGORIES:
        if any(pattern.search(f) for f in frames):
            return name
    return "other (MLflow's client and Python outside the calls above)"


def _short(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("site-packages/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['func']} ({path}:{m['line']})"


def summarise(raw: Path, top: int) -> dict:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    steady: Counter[str] = Counter()  # own time outside the one-time costs
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [
            f
            for f in stack.split(";")
            if not f.startswith("process ") and not f.startswith("thread ")
        ]
        if not frames:
            continue
        total += n
        short = [_short(f) for f in frames]
        own[short[-1]] += n
        for f in set(short):
            inclusive[f] += n
        part = category(short)
        parts[part] += n
        if part != CATEGORIES[0][0]:
            steady[short[-1]] += n
        if any(PROXY.search(f) for f in short) and not any(UPSTREAM.search(f) for f in short):
            parts["of which the judge proxy's own work"] += n

    def rows(c: Counter[str]) -> list[dict]:
        return [{"frame": f, "share": round(n / total, 3)} for f, n in c.most_common(top)]

    return {
        "samples": total,
        "categories": {k: round(n / total, 3) for k, n in parts.most_common()},
        "own": rows(own),
        "own_after_start_up": rows(steady),
        "inclusive": rows(inclusive),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=1000)
    parser.add_argument("--rest", action="store_true", help="through an mlflow server")
    parser.add_argument("--gil", action="store_true", help="sample only the GIL holder")
    parser.add_argument("--threads", action="store_true", help="name each sample's thread")
    parser.add_argument(
        "--workers", type=int, default=0, help="a fixed number of judge calls; 0: adaptive"
    )
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=None, help="keep the raw py-spy output")
    parser.add_argument(
        "--baseline", default="", help="profile this git commit's package instead (the before)"
    )
    parser.add_argument(
        "--summarise",
        type=Path,
        default=None,
        help="only summarise a raw py-spy output kept with --out (no new run)",
    )
    parser.add_argument(
        "--preimport",
        default="",
        help="modules the daemon imports first (bench_vs_native.py --daemon-preimport)",
    )
    args = parser.parse_args()
    if args.summarise:
        print(json.dumps(summarise(args.summarise, args.top), indent=2))
        return
    root = tmpdir("profile-daemon-")
    judge = JudgeProcess(0.0)
    server = None
    try:
        if args.rest:
            server = MlflowServer(root / "rest", jobs=False).start().wait_ready()
            uri = server.url
        else:
            uri = f"sqlite:///{root / 'mlflow.db'}"
        exp = make_monitor(uri, "profile", root)
        create_traces(uri, exp, args.traces, int(time.time() * 1000) - 600_000)
        raw = args.out or root / "pyspy.txt"
        package = {}
        if args.baseline:
            from bench_vs_native import baseline_package

            package = {"PYTHONPATH": str(baseline_package(args.baseline, root))}
        env = base_env(
            **package,
            MLFLOW_TRACKING_URI=uri,
            OPENAI_API_BASE=judge.url,
            OPENAI_API_KEY="sk-benchmark-not-a-key",
            **({PREIMPORT_ENV: args.preimport} if args.preimport else {}),
        )
        cmd = [
            str(Path(PYTHON).with_name("py-spy")),
            "record",
            "--format",
            "raw",
            "-r",
            "100",
            "-o",
            str(raw),
            *(["--gil"] if args.gil else []),
            *(["--threads"] if args.threads else []),
            "--",
            PYTHON,
            *(["-c", PREIMPORT_CODE] if args.preimport else ["-m", CLI_MODULE]),
            "run",
            "-x",
            exp,
            "--once",
            "--no-export",
            *(["--workers", str(args.workers)] if args.workers else []),
            "--log-level",
            "WARNING",
        ]
        progress(f"profiling {args.traces} traces x 3 judges ({'REST' if args.rest else 'SQLite'})")
        started = time.time()
        subprocess.run(cmd, env=env, cwd=root, check=True, capture_output=True, timeout=900)
        seconds = time.time() - started
        result = {
            "preimport": args.preimport,
            "package": args.baseline or "this checkout",
            "traces": args.traces,
            "store": "rest" if args.rest else "sqlite",
            "gil_only": args.gil,
            "seconds": round(seconds, 1),
            **summarise(raw, args.top),
        }
        print(json.dumps(result, indent=2))
    finally:
        if server:
            server.stop()
        judge.stop()


if __name__ == "__main__":
    main()
