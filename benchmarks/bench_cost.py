"""What MLflow's price-catalog fetch costs a daemon's first pass, with no network.

MLflow 3.17's judges look up their model's price at the first call in each process, fetching
the catalog from GitHub (``MLFLOW_MODEL_CATALOG_URI``: three retries with backoff). Without a
network that call waits seconds. This runs ``mlflow-monitor run --once`` (a daemon's first
pass) on N traces against the fake judge, with ``MLFLOW_MODEL_CATALOG_URI`` unset as a user's
environment has it, for this checkout and, given ``--baseline PATH`` (a checkout of an older
commit), for that one; it prints the wall time of each and the warnings they logged.

    python benchmarks/bench_cost.py --traces 20 --baseline /tmp/cost-base
    python benchmarks/bench_cost.py --traces 20 --baseline /tmp/cost-base --processes 2
    python benchmarks/bench_cost.py --traces 400 --baseline /tmp/cost-base --catalog-off

The machine's network decides what "no network" is: here, a sandbox whose DNS fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.harness import PYTHON, JudgeProcess, base_env, progress  # noqa: E402


def prepare(root: Path, traces: int) -> tuple[str, str]:
    """A SQLite store with ``traces`` traces and a monitor running safety on all of them."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    code = f"""
import mlflow, sys
sys.path.insert(0, {str(REPO)!r})
mlflow.set_tracking_uri({uri!r})
exp = mlflow.set_experiment("bench-cost").experiment_id
from tests.traces_factory import log_traces
log_traces({traces}, retriever=False)
from mlflow_monitor_plugin import create_external_monitor
create_external_monitor(catalog_name="w", schema_name="d", experiment_id=exp,
    export_uri={str(root / "export")!r},
    assessments_config={{"sample": 1.0, "assessments": [{{"name": "safety"}}]}})
print(exp)
"""
    env = base_env(MLFLOW_TRACKING_URI=uri)
    out = subprocess.run(
        [PYTHON, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True
    )
    return uri, out.stdout.strip().splitlines()[-1]


def first_pass(
    checkout: Path, uri: str, experiment_id: str, judge_url: str, processes: int, catalog_off: bool
) -> dict:
    env = base_env(
        MLFLOW_TRACKING_URI=uri,
        PYTHONPATH=str(checkout),
        OPENAI_API_BASE=judge_url,
        OPENAI_BASE_URL=judge_url,
        OPENAI_API_KEY="sk-bench",
    )
    if not catalog_off:
        env.pop("MLFLOW_MODEL_CATALOG_URI", None)  # as a user's environment has it
    command = [PYTHON, "-m", "mlflow_monitor_plugin.cli", "run", "--once", "-x", experiment_id,
               "--processes", str(processes)]  # fmt: skip
    started = time.monotonic()
    out = subprocess.run(command, env=env, cwd=checkout, capture_output=True, text=True)
    seconds = time.monotonic() - started
    lines = out.stderr.splitlines()
    return {
        "checkout": str(checkout),
        "exit": out.returncode,
        "seconds": round(seconds, 2),
        "warnings": sum("WARNING" in line or "Retrying" in line for line in lines),
        "summary": next((line for line in reversed(lines) if "verdicts" in line), None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=20)
    parser.add_argument("--baseline", type=Path, help="a checkout of the commit to compare with")
    parser.add_argument("--processes", type=int, default=0, help="the daemon's --processes")
    parser.add_argument(
        "--catalog-off",
        action="store_true",
        help="set MLFLOW_MODEL_CATALOG_URI='' for both: what the cost accounting itself costs",
    )
    args = parser.parse_args()
    results = []
    judge = JudgeProcess()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for checkout in [args.baseline, REPO] if args.baseline else [REPO]:
                root = Path(tmp) / checkout.name
                root.mkdir()
                uri, experiment_id = prepare(root, args.traces)
                progress(f"first pass of {checkout} on {args.traces} traces")
                results.append(
                    first_pass(
                        checkout, uri, experiment_id, judge.url, args.processes, args.catalog_off
                    )
                )
    finally:
        judge.stop()
    print(json.dumps({**vars(args), "baseline": str(args.baseline), "results": results}, indent=2))


if __name__ == "__main__":
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    main()
