"""Backfill throughput against the daemon's own, on the same traces. Not part of the test suite.

    python benchmarks/bench_backfill.py --traces 5000 --rounds 1

N finished traces, 2-9 days old, are logged once into a SQLite store, which is then copied per
run. Daemon run: a monitor with three judges (two LLM judges answered instantly by the fake judge,
one deterministic) catches up with `run --once` (``Daemon.run_until_idle``). Backfill run: the
same monitor, paused while the daemon walks past the traces (so its checkpoint is at the end and
nothing is scored), then unpaused and backfilled over the whole range (``Backfill.run``). Both
score in-process on 8 threads, judge calls through the judge proxy, no export; runs alternate.
Prints a JSON summary with verdicts per second of each and their ratio.
"""

from __future__ import annotations

import argparse
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

from mlflow_monitor_plugin import create_external_monitor, update_external_monitor  # noqa: E402
from mlflow_monitor_plugin.discovery.timerange import TimeRange  # noqa: E402
from mlflow_monitor_plugin.engine.backfill import Backfill  # noqa: E402
from mlflow_monitor_plugin.engine.daemon import Daemon  # noqa: E402
from mlflow_monitor_plugin.engine.pipeline import EngineSettings  # noqa: E402
from mlflow_monitor_plugin.scoring.proxy import judge_proxy  # noqa: E402
from mlflow_monitor_plugin.scoring.runner import ScoringSettings  # noqa: E402
from tests.fake_judge import FakeJudge, JudgeBehaviour  # noqa: E402
from tests.history import DAY_MS, log_trace_at  # noqa: E402

SUITE = {"assessments": [{"name": "safety"}, {"name": "relevance_to_query"},
                         {"name": "pii_detection"}]}  # fmt: skip
SETTINGS = EngineSettings(export=False, sweep_every_s=0, scoring=ScoringSettings(workers=8))


def make_template(root: Path, traces: int) -> tuple[Path, str]:
    db = root / "template.db"
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    experiment_id = mlflow.set_experiment("backfill-bench").experiment_id
    now_ms = int(time.time() * 1000)
    span_ms = 7 * DAY_MS
    started = time.perf_counter()
    for i in range(traces):
        log_trace_at(now_ms - 2 * DAY_MS - span_ms + i * span_ms // traces, f"question {i}")
    print(f"logged {traces} traces in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return db, experiment_id


def use_copy(template: Path, root: Path, name: str) -> None:
    db = root / f"{name}.db"
    shutil.copy(template, db)
    mlflow.set_tracking_uri(f"sqlite:///{db}")


def daemon_run(template: Path, root: Path, experiment_id: str, n: int) -> dict:
    use_copy(template, root, f"daemon{n}")
    create_external_monitor(
        catalog_name="w", schema_name="d", assessments_config=SUITE, experiment_id=experiment_id
    )
    started = time.perf_counter()
    report = Daemon([experiment_id], settings=SETTINGS).run_until_idle()
    seconds = time.perf_counter() - started
    verdicts = sum(s.total("scored") for s in report.stats)
    return {
        "verdicts": verdicts,
        "seconds": round(seconds, 1),
        "per_s": round(verdicts / seconds, 1),
    }


def backfill_run(template: Path, root: Path, experiment_id: str, n: int) -> dict:
    use_copy(template, root, f"backfill{n}")
    create_external_monitor(
        catalog_name="w", schema_name="d", assessments_config={**SUITE, "paused": True},
        experiment_id=experiment_id,
    )  # fmt: skip
    Daemon([experiment_id], settings=SETTINGS).run_until_idle()  # walks past, scores nothing
    update_external_monitor(assessments_config=SUITE, experiment_id=experiment_id)
    now_ms = int(time.time() * 1000)
    window = TimeRange.parse("10d", None, now_ms)
    started = time.perf_counter()
    stats = Backfill.create(experiment_id, window, engine_settings=SETTINGS).run()
    seconds = time.perf_counter() - started
    left = stats.counts.total("daemon")
    return {"verdicts": stats.verdicts, "seconds": round(seconds, 1),
            "per_s": round(stats.verdicts / seconds, 1), "left_to_daemon": left}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with FakeJudge(JudgeBehaviour()) as judge, tempfile.TemporaryDirectory() as tmp:
        os.environ.update(OPENAI_API_BASE=judge.url, OPENAI_API_KEY="sk-bench-not-a-key")
        root = Path(tmp)
        template, experiment_id = make_template(root, args.traces)
        daemon, backfill = [], []
        with judge_proxy():
            for n in range(args.rounds):
                daemon.append(daemon_run(template, root, experiment_id, n))
                print(f"daemon {daemon[-1]}", file=sys.stderr)
                backfill.append(backfill_run(template, root, experiment_id, n))
                print(f"backfill {backfill[-1]}", file=sys.stderr)
    d = statistics.median(r["per_s"] for r in daemon)
    b = statistics.median(r["per_s"] for r in backfill)
    summary = {
        "traces": args.traces,
        "judges": len(SUITE["assessments"]),
        "rounds": args.rounds,
        "daemon": daemon,
        "backfill": backfill,
        "daemon_verdicts_per_s": d,
        "backfill_verdicts_per_s": b,
        "backfill_vs_daemon": round(b / d, 3),
        "load_average_before_after": [round(load_before[0], 1), round(os.getloadavg()[0], 1)],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
