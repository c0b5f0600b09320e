"""Cost of the session judges on a SQLite store, against a trace judge on the same traces.

Prints a JSON summary. Not part of the test suite.

    python benchmarks/bench_sessions.py --sessions 40 --turns 3

Catch-up: N quiet sessions of T traces each; one pass of ``conversational_safety`` (one judge
call per session) against one pass of ``safety`` (one call per trace), the fake judge answering
instantly. Idle: the cost of a pass when no session is quiet yet (the walk finds nothing to do).
"""

from __future__ import annotations

import argparse
import json
import os
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

from mlflow_monitor_plugin import create_external_monitor  # noqa: E402
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine  # noqa: E402
from mlflow_monitor_plugin.scoring.runner import ScoringSettings  # noqa: E402
from tests.fake_judge import FakeJudge  # noqa: E402
from tests.traces_factory import log_agent_traces  # noqa: E402


def timed_pass(judge: str, sessions: int, turns: int, now_ms: int | None) -> dict[str, float]:
    mlflow.set_experiment(f"bench-{judge}-{time.time_ns()}")
    for s in range(sessions):
        log_agent_traces(turns, session=f"s{s}", prefix=f"s{s}-")
    monitor = create_external_monitor(
        catalog_name="w", schema_name="d", assessments_config={"assessments": [{"name": judge}]}
    )
    settings = EngineSettings(export=False, sweep_every_s=3600, scoring=ScoringSettings(workers=8))
    engine = MonitorEngine.create(monitor.experiment_id, settings)
    started = time.perf_counter()
    stats = engine.run_pass(now_ms=now_ms)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 3), "verdicts": stats.total("scored")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--turns", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    os.environ["MLFLOW_MONITOR_EXPORT_ROOT"] = str(root / "exports")
    later = int(time.time() * 1000) + 3_600_000
    with FakeJudge() as judge:
        os.environ.update(OPENAI_API_BASE=judge.url, OPENAI_API_KEY="sk-bench")
        for warm_up in ("conversational_safety", "safety"):  # MLflow's first-call imports
            timed_pass(warm_up, 1, 1, later)
        session = timed_pass("conversational_safety", args.sessions, args.turns, later)
        trace = timed_pass("safety", args.sessions, args.turns, later)
        idle = timed_pass("conversational_safety", args.sessions, args.turns, None)
    traces = args.sessions * args.turns
    print(json.dumps({
        "sessions": args.sessions, "traces": traces,
        "session_judge_catch_up": session, "trace_judge_catch_up": trace,
        "idle_pass_no_session_quiet": idle,
        "session_seconds_per_session": round(session["seconds"] / args.sessions, 4),
        "trace_seconds_per_trace": round(trace["seconds"] / traces, 4),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
