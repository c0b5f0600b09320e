"""What the quality windows (observe/) cost a pass: CPU per verdict with windows on vs off, and
pass time with and without a new window. Prints a JSON summary. Not part of the test suite.

    python benchmarks/bench_quality.py --traces 3000 --passes 15 --per-pass 20

One SQLite store holds ``--traces`` finished traces spread over the last six hours of today.
Two deterministic judges (pii_detection, response_length) score every trace, so a verdict is as
cheap as it gets and the windows' share of the work is as large as it gets. For windows on and
off alike, on a fresh copy of the store: a catch-up pass over all traces, then ``--passes``
steady passes of ``--per-pass`` new traces each (the daemon's usual work). CPU is this
process's CPU time (scoring runs in it). Then, windows on: a pass whose traces open a new
hourly window, and a pass after the tracker forgot its days (a restart: today is re-read).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
os.environ["MLFLOW_MODEL_CATALOG_URI"] = ""
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

import mlflow  # noqa: E402
from mlflow.tracing.client import TracingClient  # noqa: E402

from benchmarks.bench_export import _clone_spans, _log_with_tracer  # noqa: E402
from mlflow_monitor_plugin import create_external_monitor  # noqa: E402
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine  # noqa: E402
from mlflow_monitor_plugin.observe.windows import HOUR_MS, window_start  # noqa: E402
from mlflow_monitor_plugin.scoring.runner import ScoringSettings  # noqa: E402

SUITE = {"assessments": [{"name": "pii_detection"},
                         {"name": "response_length", "args": {"max_length": 300}}]}  # fmt: skip
JUDGES = 2


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Traces:
    """Copies of one real trace, stored through the span ingestion path (fast)."""

    def __init__(self, experiment_id: str, first_ms: int):
        template_id = _log_with_tracer(0, first_ms * 1_000_000)
        self.template = [s.to_dict() for s in mlflow.get_trace(template_id).data.spans]
        self.experiment_id = experiment_id
        self.client = TracingClient()
        self.count = 1

    def add(self, stamps_ms: list[int]) -> None:
        spans = []
        for stamp in stamps_ms:
            _, cloned = _clone_spans(self.template, self.count, stamp * 1_000_000)
            spans += cloned
            self.count += 1
        for start in range(0, len(spans), 1000):
            self.client.log_spans(self.experiment_id, spans[start : start + 1000])


def timed_pass(engine: MonitorEngine, now_ms: int) -> dict[str, float]:
    observe = engine._observe
    spent = [0.0, 0.0]

    def timed(ctx, now):  # the windows' own share of the pass
        began, began_cpu = time.perf_counter(), time.process_time()
        observe(ctx, now)
        spent[0] += time.perf_counter() - began
        spent[1] += time.process_time() - began_cpu

    engine._observe = timed
    cpu, wall = time.process_time(), time.perf_counter()
    stats = engine.run_pass(now_ms=now_ms)
    result = {
        "cpu_s": time.process_time() - cpu,
        "wall_s": time.perf_counter() - wall,
        "observe_s": spent[0],
        "observe_cpu_s": spent[1],
        "verdicts": stats.total("scored"),
    }
    engine._observe = observe
    return result


def run_case(db: Path, experiment_id: str, windows: bool, args: argparse.Namespace) -> dict:
    uri = f"sqlite:///{db}"
    mlflow.set_tracking_uri(uri)
    settings = EngineSettings(
        windows=windows,
        sweep_every_s=1e9,  # the first pass sweeps, later ones do not: the same for both cases
        resync_every_s=0,
        scoring=ScoringSettings(workers=4, attempts=1),
    )
    engine = MonitorEngine.create(experiment_id, settings)
    traces = Traces(experiment_id, int(time.time() * 1000) - 60_000)
    now_ms = int(time.time() * 1000)
    catch_up = timed_pass(engine, now_ms)
    progress(f"windows {'on' if windows else 'off'}: catch-up {catch_up}")
    steady = []
    for _ in range(args.passes):
        now_ms = int(time.time() * 1000)
        traces.add([now_ms - 1000 + i for i in range(args.per_pass)])
        steady.append(timed_pass(engine, now_ms))
    result = {
        "catch_up": catch_up,
        "catch_up_cpu_ms_per_verdict": 1000 * catch_up["cpu_s"] / max(1, catch_up["verdicts"]),
        "steady_cpu_ms_per_verdict": 1000
        * sum(p["cpu_s"] for p in steady)
        / max(1, sum(p["verdicts"] for p in steady)),
        "steady_pass_wall_s_median": statistics.median(p["wall_s"] for p in steady),
        "steady_observe_s_median": statistics.median(p["observe_s"] for p in steady),
    }
    if windows:
        # every pass updates the windows (the daemon does so every 30 s, or when idle)
        engine.quality.settings = dataclasses.replace(engine.quality.settings, update_every_s=0)
        forced = []
        for _ in range(args.passes):
            now_ms = int(time.time() * 1000)
            traces.add([now_ms - 1000 + i for i in range(args.per_pass)])
            forced.append(timed_pass(engine, now_ms))
        result["update_cpu_s_median"] = statistics.median(p["observe_cpu_s"] for p in forced)
        result["update_wall_s_median"] = statistics.median(p["observe_s"] for p in forced)
        next_hour = window_start(now_ms, HOUR_MS) + HOUR_MS
        traces.add([next_hour + i for i in range(args.per_pass)])
        engine.quality._updated_ms = None  # this pass updates the windows
        result["pass_opening_a_new_hour"] = timed_pass(engine, next_hour + HOUR_MS // 2)
        engine.quality.days.clear()  # as after a restart: today is read again
        engine.quality._updated_ms = None
        traces.add([next_hour + 100 + i for i in range(args.per_pass)])
        result["pass_rereading_today"] = timed_pass(engine, next_hour + HOUR_MS // 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=3000)
    parser.add_argument("--passes", type=int, default=15)
    parser.add_argument("--per-pass", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    os.environ["MLFLOW_MONITOR_EXPORT_ROOT"] = str(root / "exports")
    template = root / "template.db"
    mlflow.set_tracking_uri(f"sqlite:///{template}")
    experiment_id = mlflow.set_experiment("quality").experiment_id
    now_ms = int(time.time() * 1000)
    first = max(window_start(now_ms, 24 * HOUR_MS), now_ms - 6 * HOUR_MS)
    step = max(1, (now_ms - 120_000 - first) // args.traces)
    Traces(experiment_id, first).add([first + i * step for i in range(args.traces - 1)])
    create_external_monitor(catalog_name="w", schema_name="d", assessments_config=SUITE)
    progress(f"{args.traces} traces from {time.strftime('%H:%M', time.gmtime(first / 1000))} UTC")
    results = {}
    for windows in (False, True, False, True):  # interleaved: the machine's load drifts
        db = root / f"run-{len(results)}.db"
        shutil.copy(template, db)
        shutil.rmtree(root / "exports", ignore_errors=True)
        results[f"{'on' if windows else 'off'}-{len(results)}"] = run_case(
            db, experiment_id, windows, args
        )
    off = [v for k, v in results.items() if k.startswith("off")]
    on = [v for k, v in results.items() if k.startswith("on")]

    def mean(rows: list[dict], key: str) -> float:
        return statistics.mean(r[key] for r in rows)

    summary = {
        "traces": args.traces,
        "passes": args.passes,
        "per_pass": args.per_pass,
        "load_average": os.getloadavg(),
        "steady_cpu_ms_per_verdict": {
            "off": mean(off, "steady_cpu_ms_per_verdict"),
            "on": mean(on, "steady_cpu_ms_per_verdict"),
        },
        "catch_up_cpu_ms_per_verdict": {
            "off": mean(off, "catch_up_cpu_ms_per_verdict"),
            "on": mean(on, "catch_up_cpu_ms_per_verdict"),
        },
        "steady_pass_wall_s_median": {
            "off": mean(off, "steady_pass_wall_s_median"),
            "on": mean(on, "steady_pass_wall_s_median"),
        },
        "steady_observe_s_median": mean(on, "steady_observe_s_median"),
        "update_cpu_s_median": mean(on, "update_cpu_s_median"),
        "update_wall_s_median": mean(on, "update_wall_s_median"),
        "pass_opening_a_new_hour": [r["pass_opening_a_new_hour"] for r in on],
        "pass_rereading_today": [r["pass_rereading_today"] for r in on],
        "runs": results,
    }
    for key in ("steady_cpu_ms_per_verdict", "catch_up_cpu_ms_per_verdict"):
        summary[key]["ratio_on_off"] = summary[key]["on"] / summary[key]["off"]
    print(json.dumps(summary, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
