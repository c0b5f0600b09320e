"""Alert latency: seconds from the first failing verdict written to the webhook call.

A temporary SQLite store, a real ``mlflow monitor run --interval 1`` daemon and a webhook
receiver on loopback. Each round creates a monitor (a deterministic ``regex_match`` judge, so
judge latency is out of the measure) with the rule ``regex_match.pass_rate<0.9 min 10``, logs
healthy traces and waits for their verdicts, then logs failing ones. It reports, per round:

- ``from_first_failure_s``: webhook arrival - write time of the first failing verdict;
- ``from_decisive_s``: webhook arrival - write time of the verdict that made the rule breach
  (replaying the rule over the verdicts in write order), i.e. the alerting path itself, whose
  goal is under interval + 2 s.

    .venv/bin/python benchmarks/bench_alerts.py --rounds 3
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

os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark the working tree

import mlflow
from mlflow.tracking import MlflowClient

from mlflow_monitor_plugin import AlertRule, WebhookTarget, create_external_monitor
from mlflow_monitor_plugin.alerts.evaluate import evaluate
from mlflow_monitor_plugin.alerts.stats import WindowStats
from tests.alert_receiver import AlertReceiver

ROOT = Path(__file__).resolve().parents[1]
RULE = AlertRule("drop", "regex_match", below=0.9, min_verdicts=10,
                 targets=(WebhookTarget("BENCH_HOOK_URL"),))  # fmt: skip


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _log(count: int, answer: str) -> None:
    for i in range(count):
        with mlflow.start_span("app") as span:
            span.set_inputs({"question": f"q{i}"})
            span.set_outputs(f"{answer} {i}")


def _verdicts(experiment_id: str) -> list[tuple[int, bool]]:
    """(write time ms, passed) of every regex_match feedback, in write order."""
    found = []
    for trace in MlflowClient().search_traces(locations=[experiment_id], include_spans=False):
        for a in trace.info.assessments or []:
            if a.name == "regex_match" and getattr(a, "value", None) is not None:
                found.append((a.create_time_ms, str(a.value).lower() == "yes"))
    return sorted(found)


def _decisive_ms(verdicts: list[tuple[int, bool]]) -> int | None:
    """Write time of the verdict after which the rule, judged on what was written, breaches."""
    passes = 0
    for n, (at_ms, ok) in enumerate(verdicts, start=1):
        passes += ok
        stats = WindowStats("m", "regex_match", 0, 3_600_000, n, n, n, passes)
        if evaluate(RULE, stats, None).breach:
            return at_ms
    return None


def _wait(condition, timeout_s: float, every_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError("benchmark step timed out")


def _round(receiver: AlertReceiver, n: int, healthy: int, failing: int) -> dict[str, float]:
    mlflow.set_experiment(f"bench-alerts-{n}-{int(time.time())}")
    suite = {"assessments": [{"name": "regex_match", "args": {"pattern": "^Answer"}}]}
    monitor = create_external_monitor(catalog_name="b", schema_name="b",
                                      assessments_config=suite, alerts=[RULE])  # fmt: skip
    exp = monitor.experiment_id
    _log(healthy, "Answer")
    _wait(lambda: len(_verdicts(exp)) >= healthy, 120, 0.2)
    before = len(receiver.received)
    _log(failing, "UNSAFE")
    arrival = _wait(lambda: receiver.received[before:] and receiver.received[before]["at"], 120)
    verdicts = _verdicts(exp)
    first_fail = min(at for at, ok in verdicts if not ok)
    decisive = _decisive_ms(verdicts)
    return {
        "from_first_failure_s": round(arrival - first_fail / 1000, 3),
        "from_decisive_s": round(arrival - decisive / 1000, 3) if decisive else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--healthy", type=int, default=10)
    parser.add_argument("--failing", type=int, default=20)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    MlflowClient().search_experiments()  # migrate the store before the daemon starts
    with AlertReceiver() as receiver:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri,
               "BENCH_HOOK_URL": receiver.url, "MLFLOW_MONITOR_DISABLE_CLI_HOOK": "1",
               "MLFLOW_MONITOR_EXPORT_ROOT": str(workdir / "exports")}  # fmt: skip
        log = open(workdir / "daemon.log", "wb")  # noqa: SIM115 - closed below
        daemon = subprocess.Popen(
            [sys.executable, "-m", "mlflow_monitor_plugin.cli", "run", "--no-export",
             "--interval", str(args.interval)],
            env=env, stdout=log, stderr=log,
        )  # fmt: skip
        rounds = []
        try:
            for n in range(args.rounds):
                rounds.append(_round(receiver, n, args.healthy, args.failing))
                _progress(f"round {n}: {rounds[-1]}")
        finally:
            daemon.terminate()
            daemon.wait(60)
            log.close()
    decisive = sorted(r["from_decisive_s"] for r in rounds if r["from_decisive_s"] is not None)
    first = sorted(r["from_first_failure_s"] for r in rounds)
    print(json.dumps({
        "interval_s": args.interval,
        "rounds": rounds,
        "from_first_failure_s_median": first[len(first) // 2],
        "from_decisive_s_median": decisive[len(decisive) // 2] if decisive else None,
        "from_decisive_s_max": decisive[-1] if decisive else None,
        "load_average": os.getloadavg(),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
