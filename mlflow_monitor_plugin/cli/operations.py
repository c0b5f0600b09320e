"""What ``mlflow monitor test | status | demo`` do, as library functions that return data."""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from mlflow_monitor_plugin.config import api, mirrors
from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint, lag_ms
from mlflow_monitor_plugin.discovery.sampling import is_sampled
from mlflow_monitor_plugin.discovery.sessions import SessionSource, session_ids
from mlflow_monitor_plugin.discovery.traces import TraceSource
from mlflow_monitor_plugin.engine.pipeline import MonitorEngine
from mlflow_monitor_plugin.exceptions import MonitorError
from mlflow_monitor_plugin.observe import coverage, skipped
from mlflow_monitor_plugin.observe.mlflow_run import MetricsRun
from mlflow_monitor_plugin.observe.report import last_windows
from mlflow_monitor_plugin.observe.spend import (
    BUDGET_TAG,
    RateSchedule,
    budget_rates,
    schedule_of,
)
from mlflow_monitor_plugin.observe.windows import HOUR_MS, window_start
from mlflow_monitor_plugin.scoring.feedback import judge_source, judge_states, session_states
from mlflow_monitor_plugin.scoring.judges import (
    NO_ENDPOINT,
    JudgeSpec,
    endpoint_missing,
    monitor_judges,
)
from mlflow_monitor_plugin.scoring.proxy import judge_proxy
from mlflow_monitor_plugin.scoring.runner import JudgeRunner, ScoringSettings

DEMO_EXPERIMENT = "mlflow-monitor-demo"


def test_judges(
    experiment_id: str | None, experiment_name: str | None, max_traces: int
) -> list[dict[str, Any]]:
    """Run every configured judge on the latest traces (a session judge on the sessions they
    belong to, whole); write nothing; one row per judge."""
    monitor = api.get_external_monitor(experiment_id=experiment_id, experiment_name=experiment_name)
    source = TraceSource(monitor.experiment_id)
    traces = source.latest(max_traces)
    runner = JudgeRunner(ScoringSettings(attempts=1))
    judges = monitor_judges(monitor)
    rows = {j.name: Counter(traces=len(traces)) for j in judges}
    examples = {j.name: f"unavailable: {j.unavailable}" for j in judges if j.unavailable}
    for judge in judges:  # as the daemon does: said, not tried
        if not judge.unavailable and (missing := endpoint_missing(judge)):
            short = "no judge endpoint (set OPENAI_API_KEY)" if missing == NO_ENDPOINT else missing
            examples[judge.name] = f"skipped: {short}"
            rows[judge.name]["skipped"] = rows[judge.name]["traces"]
    judges = [j for j in judges if j.name not in examples]
    infos = [t.info for t in traces]
    filters = {j.filter_string for j in judges if j.filter_string}
    matching = {f: source.matching(infos, f) for f in filters}
    sessions = _sessions_of(monitor.experiment_id, infos) if any(j.session for j in judges) else []
    tasks: list[Any] = []
    for judge in judges:
        wanted = matching.get(judge.filter_string) if judge.filter_string else None
        if judge.session:
            rows[judge.name]["traces"] = len(sessions)  # sessions, for a session judge
            for first, session in sessions:
                if wanted is not None and first.info.trace_id not in wanted:
                    rows[judge.name]["not_applicable"] += 1
                elif judge.applies_to_session(session):
                    tasks.append((first, judge, session))
                else:
                    rows[judge.name]["not_applicable"] += 1
            continue
        for trace in traces:
            if wanted is not None and trace.info.trace_id not in wanted:
                rows[judge.name]["not_applicable"] += 1
            elif judge.applies_to(trace):
                tasks.append((trace, judge))
            else:
                rows[judge.name]["not_applicable"] += 1
    for verdict, _ in runner.run(tasks):
        name = verdict.judge.name
        if verdict.ok:
            rows[name]["results"] += 1
            first = verdict.feedbacks[0] if verdict.feedbacks else None
            examples.setdefault(
                name, f"{first.value!s}: {first.rationale or ''}"[:60] if first else ""
            )
        else:
            rows[name]["errors"] += 1
            examples.setdefault(name, (verdict.error or "")[:60])
    return [
        {"judge": name,
         **{k: c[k] for k in ("traces", "results", "skipped", "not_applicable", "errors")},
         "example": examples.get(name, "")}
        for name, c in rows.items()
    ]  # fmt: skip


def _sessions_of(experiment_id: str, infos: list[Any]) -> list[tuple[Any, list[Any]]]:
    """The sessions the traces belong to, whole: (first trace, every trace), full traces."""
    source = SessionSource(experiment_id)
    found = []
    for session_id in session_ids(infos):
        session = source.session(session_id)
        if session is None:
            continue
        traces = source.traces.fetch([i.trace_id for i in session.infos])
        if traces:
            found.append((traces[0], traces))
    return found


def status(experiment_id: str | None, experiment_name: str | None) -> dict[str, Any]:
    """The checkpoint, the lag behind the newest trace, the judge calls' concurrency as the
    daemon last saved it, and per judge the source its verdicts carry and counts over all
    traces."""
    monitor = api.get_external_monitor(experiment_id=experiment_id, experiment_name=experiment_name)
    engine = MonitorEngine.create(monitor.experiment_id)
    cursor = engine.read_cursor(monitor)
    source = engine.source
    all_judges = monitor_judges(monitor)
    unavailable = {j.name: j.unavailable for j in all_judges if j.unavailable}
    judges = [j for j in all_judges if not j.session]
    counts = {j.name: Counter() for j in all_judges}
    try:
        budget = engine.tags.read_json(monitor.experiment_id, BUDGET_TAG)
    except MonitorError:  # a damaged tag: the daemon rewrites it on its next save
        budget = None
    rate_of = budget_rates(
        schedule_of(engine.tags, monitor.experiment_id, monitor.monitor_id),
        frozenset(j.name for j in all_judges if j.is_llm),
    )
    skips = skipped.read(engine.tags, monitor.experiment_id, monitor.monitor_id)
    ledger = coverage.collect(
        source.infos_after(None, 500), judges, monitor.monitor_id, cursor.score, source.matching,
        rate_of, skips,
    )  # fmt: skip
    for by_judge in ledger.values():
        for name, window in by_judge.items():
            counts[name].update(window.counts)
    session_judges = [j for j in all_judges if j.session and not j.unavailable]
    if session_judges:
        _count_sessions(monitor, session_judges, counts, skips)
    newest = source.newest_timestamp_ms()
    lag = lag_ms(cursor.score, newest)
    windows = last_windows(monitor, int(time.time() * 1000), source)
    return {
        "experiment_id": monitor.experiment_id,
        "checkpoint": cursor.score.to_dict() if cursor.score else None,
        "export_checkpoint": cursor.export.to_dict() if cursor.export else None,
        "lag_seconds": None if lag is None else round(lag / 1000, 3),
        "export_uri": monitor.export_uri,
        "pii": monitor.pii.describe(),
        "concurrency": engine.tags.read_json(monitor.experiment_id, "concurrency"),
        "shards": _shards(engine, monitor.monitor_id),
        "judges": [
            {"judge": j.name, **_source_fields(j), **{k: counts[j.name][k] for k in
             ("sampled", "scored", "skipped", "not_applicable", "failed", "pending")},
             "eligible": counts[j.name]["seen"],
             "origin": j.origin,
             **({"skipped_reason": skips.judges[j.name].reason} if j.name in skips.judges else {}),
             **({"unavailable": unavailable[j.name]} if j.name in unavailable else {})}
            for j in all_judges
        ],
        "skipped": skipped.advice(
            monitor.experiment_id, skips, [j.name for j in all_judges if counts[j.name]["skipped"]]
        ),
        "windows": windows,
        "budget": _budget_fields(monitor, budget),
        "mlflow_judges": mlflow_judges(monitor, engine.tags),
    }  # fmt: skip


def coverage_ledger(
    experiment_id: str | None, experiment_name: str | None, since_ms: int, now_ms: int
) -> dict[str, Any]:
    """The monitor's coverage ledger from ``since_ms``: per hourly window and judge, traces
    seen, sampled, scored, failed, not applicable and pending, the delay to the verdict, the
    minutes the daemon was running and the window's state (see observe/coverage.py)."""
    monitor = api.get_external_monitor(experiment_id=experiment_id, experiment_name=experiment_name)
    engine = MonitorEngine.create(monitor.experiment_id)
    cursor = engine.read_cursor(monitor)
    source = engine.source
    judges = [j for j in monitor_judges(monitor) if not j.session]
    pages = source.infos_after(Checkpoint(window_start(since_ms, HOUR_MS) - 1, ""), 500)
    rate_of = budget_rates(
        schedule_of(engine.tags, monitor.experiment_id, monitor.monitor_id),
        frozenset(j.name for j in judges if j.is_llm),
    )
    skips = skipped.read(engine.tags, monitor.experiment_id, monitor.monitor_id)
    windows = coverage.collect(
        pages, judges, monitor.monitor_id, cursor.score, source.matching, rate_of, skips
    )
    beats = MetricsRun(MlflowClient(), monitor.experiment_id, monitor.monitor_id).heartbeats(
        since_ms - 3_600_000
    )
    rates = {j.name: j.rate for j in judges}
    rows = coverage.ledger_rows(windows, rates, now_ms, beats)
    for row in rows:
        row["window"] = dt.datetime.fromtimestamp(
            row["window_start_ms"] / 1000, dt.timezone.utc
        ).strftime("%Y-%m-%d %H:%M")
    return {
        "experiment_id": monitor.experiment_id,
        "checkpoint": cursor.score.to_dict() if cursor.score else None,
        "heartbeat": beats is not None,
        "windows": rows,
        "skipped": skipped.advice(
            monitor.experiment_id, skips, sorted({r["judge"] for r in rows if r["skipped"]})
        ),
    }


def mlflow_judges(monitor: Any, tags: Any) -> list[dict[str, Any]]:
    """Every judge registered in MLflow on the experiment (its Judges page), and what the
    monitor makes of it: run by the daemon, not started there, one of the monitor's own listed
    there, or unavailable and why; then the monitor's judges MLflow does not list, and why."""
    own = set(monitor.assessments_config.feedback_names)
    built = {j.name: j for j in monitor_judges(monitor) if j.origin == "mlflow"}
    listed = mirrors.read_state(tags, monitor.experiment_id, monitor.monitor_id)
    mine = listed.get("judges", {})
    rows = []
    for r in monitor.registered:
        if r.name in own:
            entry = mine.get(r.name) or {}
            ours = entry.get("scorer_id") == r.scorer_id and entry.get("version") == r.version
            shown = "" if r.started else " (MLflow shows a rate for gateway:/ models only)"
            role = (
                f"the monitor's own judge, listed in MLflow{shown}"
                if ours
                else "changed in MLflow since the monitor listed it: the monitor runs its "
                "own config (`mlflow monitor update` lists it again)"
            )
        elif not r.started:
            role = "not started in MLflow: not run"
        elif built[r.name].unavailable:
            role = f"unavailable: {built[r.name].unavailable}"
        else:
            role = "started in MLflow: run by the daemon"
        rows.append({"judge": r.name, "definition": r.describe(sampling=r.name not in own),
                     "version": r.version, "role": role})  # fmt: skip
    for name, why in (listed.get("problems") or {}).items():
        rows.append({"judge": name, "definition": "-", "version": None,
                     "role": f"the monitor's own judge, not listed in MLflow: {why}"})  # fmt: skip
    return rows


def _budget_fields(monitor: Any, stored: Any) -> dict[str, Any] | None:
    """The daily budget as the daemon last saved it: the day's spend, the rate's factor now."""
    limit = monitor.cost.daily_budget_usd
    if limit is None:
        return None
    mine = isinstance(stored, dict) and stored.get("monitor_id") == monitor.monitor_id
    stored = stored if mine else {}
    now = int(time.time() * 1000)
    factor = RateSchedule.from_list(stored.get("steps")).factor(now) if stored else 1.0
    return {
        "daily_budget_usd": limit,
        "day": stored.get("day_ms"),
        "spent_usd": stored.get("spent_usd"),
        "rate_factor_now": factor,
        "binding_since_ms": stored.get("binding_since_ms"),
        "enforced": stored.get("enforced", True),
        "reason": stored.get("reason"),
        "pace": monitor.cost.pace,
    }


def _shards(engine: MonitorEngine, monitor_id: str) -> list[dict[str, Any]] | None:
    """Each shard's cursors when replicas split the monitor (``run --shard``), else None."""
    shards = engine.shards.shard_cursors(monitor_id)
    if len(shards) < 2:
        return None
    return [
        {"shard": str(shard), "checkpoint": score.to_dict() if score else None,
         "export_checkpoint": export.to_dict() if export else None}
        for shard, score, export in shards
    ]  # fmt: skip


def _source_fields(judge: JudgeSpec) -> dict[str, str]:
    """The source a judge's verdicts carry, as the MLflow UI shows it beside each verdict."""
    source = judge_source(judge)
    return {"source_type": source.source_type, "source_id": source.source_id or ""}


def _count_sessions(
    monitor: Any, judges: list[Any], counts: dict[str, Counter], skips: skipped.Skips
) -> None:
    """Per session judge, the experiment's sessions: eligible, sampled, judged in their
    current version (scored), failed, skipped by the daemon, or pending (not quiet yet, or not
    reached yet)."""
    source = SessionSource(monitor.experiment_id)
    seen: set[str] = set()
    for page in source.trace_pages(None, int(time.time() * 1000) + 1, page_size=500):
        for session_id in session_ids(page):
            session = None if session_id in seen else source.session(session_id)
            seen.add(session_id)
            if session is None:
                continue
            states = session_states(session.first, monitor.monitor_id)
            for judge in judges:
                c = counts[judge.name]
                c["seen"] += 1
                if not is_sampled(session_id, monitor.monitor_id, judge.rate):
                    continue
                c["sampled"] += 1
                state = states.get(judge.name)
                if state and state.done(session.version):
                    c["scored"] += 1
                elif state and state.errors:
                    c["failed"] += 1
                elif skips.reason(judge.name, session.first.timestamp_ms):
                    c["skipped"] += 1
                else:
                    c["pending"] += 1


def load_example_app() -> ModuleType:
    """The example app shipped in the package (from examples/ in a source checkout)."""
    try:
        return importlib.import_module("mlflow_monitor_plugin._examples.rag_app")
    except ImportError:
        path = Path(__file__).resolve().parents[2] / "examples" / "rag_app.py"
        spec = importlib.util.spec_from_file_location("mlflow_monitor_rag_app", path)
        if spec is None or spec.loader is None:
            raise
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def demo(traces: int, echo: Callable[[str], None]) -> dict[str, Any]:
    """Log traces from the example app, monitor them, and summarise the verdicts."""
    from mlflow_monitor_plugin.engine.daemon import Daemon

    app = load_example_app()
    experiment_id = mlflow.set_experiment(DEMO_EXPERIMENT).experiment_id
    echo(f"Tracking URI {mlflow.get_tracking_uri()}; experiment {experiment_id}")
    questions = (app.QUESTIONS * (traces // len(app.QUESTIONS) + 1))[:traces]
    app.run(questions)
    mlflow.flush_trace_async_logging()  # MLflow logs traces in the background by default
    echo(f"Logged {len(questions)} traces from the example app.")
    suite = {
        "sample": 1.0,
        "assessments": [
            {"name": "safety"},
            {"name": "relevance_to_query"},
            {"name": "groundedness"},
            {"name": "chunk_relevance"},
            {"guidelines": {"mlflow_only": [
                "If the request is unrelated to MLflow, the response must refuse to answer."]}},
            {"name": "pii_detection"},
            {"name": "response_length", "args": {"max_length": 200}},
        ],
    }  # fmt: skip
    try:
        monitor = api.get_external_monitor(experiment_id=experiment_id)
        monitor = api.update_external_monitor(experiment_id=experiment_id, assessments_config=suite)
    except api.MonitorNotFoundError:
        monitor = api.create_external_monitor(
            catalog_name="workspace", schema_name="default",
            assessments_config=suite, experiment_id=experiment_id,
        )  # fmt: skip
    skipped = [j.name for j in monitor_judges(monitor) if endpoint_missing(j)]
    started = time.monotonic()
    with judge_proxy():
        report = Daemon([experiment_id]).run_until_idle()
    seen = sum(s.traces for s in report.stats)
    verdicts = sum(s.total("scored") for s in report.stats)
    failed = sum(s.total("failed") for s in report.stats)
    echo(
        f"Monitored {seen} traces in {time.monotonic() - started:.1f}s: "
        f"{verdicts} verdicts, {failed} failed."
    )
    if report.errors:
        raise api.MonitorError("; ".join(report.errors.values()))
    return {
        "judges": _verdict_table(experiment_id, monitor.monitor_id),
        "epilogue": _epilogue(monitor.export_uri, skipped, report),
    }


def _verdict_table(experiment_id: str, monitor_id: str) -> list[dict[str, Any]]:
    counts: dict[str, Counter[str]] = {}
    for page in TraceSource(experiment_id).infos_after(None, 500):
        for info in page:
            for judge, state in judge_states(info, monitor_id).items():
                c = counts.setdefault(judge, Counter())
                for group in state.complete[:1]:
                    for a in group:
                        if "/" in a.name:
                            continue
                        value = str(getattr(a, "value", "")).lower()
                        c[value if value in ("yes", "no") else "other"] += 1
                c["errors"] += bool(state.errors and not state.done)
    return [{"judge": k, **{f: c[f] for f in ("yes", "no", "other", "errors")}}
            for k, c in sorted(counts.items())]  # fmt: skip


def _epilogue(export_uri: str, skipped: list[str], report: Any) -> str:
    exported = sum(s.exported for s in report.stats)
    lines = [f"Exported {exported} traces to {export_uri} (Parquet, partitioned by date)."]
    if skipped:
        lines.append(
            f"Skipped the LLM judges {', '.join(skipped)}: no judge endpoint is configured. "
            "Set OPENAI_API_KEY (and OPENAI_API_BASE for an OpenAI-compatible server), or give "
            "them a gateway:/<endpoint> model of an MLflow server's AI Gateway, to run them."
        )
    lines.append(
        f"See the verdicts on each trace: run `mlflow ui --backend-store-uri "
        f"{mlflow.get_tracking_uri()}` and open the experiment's Traces tab."
    )
    return "\n".join(lines)
