"""``mlflow monitor run | test | status | demo``: the commands that operate monitors."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import click

from mlflow_monitor_plugin.cli.alerts import daemon_alert_options, runner_from_options
from mlflow_monitor_plugin.cli.cost import use_prices_file
from mlflow_monitor_plugin.cli.options import (
    experiment_options,
    handle_errors,
    log_level_option,
    output_option,
)
from mlflow_monitor_plugin.cli.quality import metrics_options, serving_metrics
from mlflow_monitor_plugin.cli.shards import shard_from_options, shard_options
from mlflow_monitor_plugin.engine.daemon import DEFAULT_INTERVAL_S
from mlflow_monitor_plugin.engine.pipeline import EngineSettings
from mlflow_monitor_plugin.exceptions import MonitorConfigError
from mlflow_monitor_plugin.redact import configure_logging
from mlflow_monitor_plugin.scoring.runner import ScoringSettings


def engine_options(func: Any) -> Any:
    options = [
        click.option(
            "--workers",
            type=click.IntRange(min=1),
            help="A fixed number of concurrent judge calls in each scoring process. Default: "
            "adaptive, from 8 up to --max-concurrency, following the judge's latency and 429s.",
        ),
        click.option(
            "--max-concurrency",
            default=256,
            show_default=True,
            type=click.IntRange(min=1),
            help="Most judge calls in flight at once (all scoring processes together) that the "
            "adaptive limit may reach.",
        ),
        click.option(
            "--processes",
            default=0,
            show_default=True,
            type=click.IntRange(min=0),
            help="Scoring processes beside the daemon; 0 scores in the daemon's own process. "
            "One process uses about one core: on a machine with cores to spare, 1 to the "
            "number of cores scores faster (see BENCHMARKS.md).",
        ),
        click.option("--rate-limit", type=float, help="Judge calls per second, at most."),
        click.option(
            "--attempts", default=3, show_default=True, help="Tries per judge call in a pass."
        ),
        click.option(
            "--max-failed-passes",
            default=5,
            show_default=True,
            help="Passes a failing (trace, judge) is retried in before it is left as an error.",
        ),
        click.option(
            "--late-window",
            default=24 * 3600.0,
            show_default=True,
            help="Seconds behind the checkpoint that the sweep for late traces revisits.",
        ),
        click.option("--no-export", is_flag=True, help="Score only; do not export traces."),
        click.option(
            "--session-quiet",
            default=300.0,
            show_default=True,
            type=click.FloatRange(min=0),
            help="Seconds without a new trace after which a session is judged by the session "
            "judges (judged again if it continues).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _settings(
    workers: int | None,
    max_concurrency: int,
    processes: int,
    rate_limit: float | None,
    attempts: int,
    max_failed_passes: int,
    late_window: float,
    no_export: bool,
    session_quiet: float = 300.0,
) -> EngineSettings:
    return EngineSettings(
        max_failed_passes=max_failed_passes,
        late_window_s=late_window,
        export=not no_export,
        session_quiet_s=session_quiet,
        scoring=ScoringSettings(
            workers=workers,
            max_concurrency=max_concurrency,
            processes=processes,
            attempts=attempts,
        ),
    )


@click.command("run")
@click.option(
    "-x",
    "--experiment-id",
    "experiment_ids",
    multiple=True,
    help="Experiment(s) to monitor. Default: every experiment that has a monitor.",
)
@click.option("--once", is_flag=True, help="Process everything pending, then exit.")
@click.option(
    "--interval",
    type=click.FloatRange(min=1),
    default=DEFAULT_INTERVAL_S,
    show_default=True,
    help="Seconds between passes (at least 1).",
)
@click.option(
    "--prices",
    "prices_file",
    type=click.Path(exists=True, dir_okay=False),
    envvar="MLFLOW_MONITOR_PRICES",
    help="A JSON or YAML file of model prices, {model: {input_per_million, output_per_million}}, "
    "used where a monitor's own cost.prices name none; else MLflow's catalog (docs/cost.md).",
)
@click.option(
    "--allow-registered-code",
    is_flag=True,
    help="Run the judges started in MLflow whose stored definition carries code (an @scorer "
    "function's source, a third-party scorer): code read from the tracking store, executed in "
    "this process. Off by default: such judges are listed as unavailable.",
)
@engine_options
@shard_options
@daemon_alert_options
@metrics_options
@log_level_option
@handle_errors
def run_command(
    experiment_ids: tuple[str, ...],
    once: bool,
    interval: float,
    prices_file: str | None,
    allow_registered_code: bool,
    log_level: str,
    metrics_port: int | None,
    metrics_host: str,
    **engine: Any,
) -> None:
    """Run the monitoring daemon: score sampled traces, log verdicts, export every trace.

    Runs until SIGTERM or Ctrl-C, which finish the pass in flight and exit 0.
    With --once, exits 0 when everything pending was processed, 1 when a monitor could not be
    served. Judges call the OpenAI-compatible endpoint in $OPENAI_API_BASE with $OPENAI_API_KEY,
    or, for a gateway:/<endpoint> model, the tracking server's AI Gateway (no key here). The
    judges started in MLflow on a monitored experiment (its Judges page) are run too.

    \b
    Examples:
      mlflow monitor run                       # every monitored experiment
      mlflow monitor run -x 123 --interval 1   # one experiment, a pass every second
      mlflow monitor run -x 123 --once         # catch up, then exit
      mlflow monitor run --metrics-port 9464   # and serve /metrics and /healthz
      mlflow monitor run --shard 1/4           # one of 4 replicas splitting the traces
    """
    from mlflow_monitor_plugin.engine.daemon import Daemon
    from mlflow_monitor_plugin.scoring.proxy import judge_proxy

    configure_logging(log_level)
    if prices_file:
        use_prices_file(prices_file)
    if allow_registered_code:  # before any scoring process starts: they inherit it
        from mlflow_monitor_plugin.scoring.judges import allow_registered_code as allow

        allow()
    shard = shard_from_options(engine)  # takes the --shard* options out of `engine`
    alerts = runner_from_options(engine)  # takes the --alert-* options out of `engine`
    settings = dataclasses.replace(_settings(**engine), shard=shard)
    daemon = Daemon(list(experiment_ids) or None, interval, settings, alerts=alerts)
    with (
        serving_metrics(daemon, metrics_host, metrics_port, interval),
        judge_proxy(_proxy_settings(engine)),
    ):
        _run(daemon, once)


def _proxy_settings(engine: dict[str, Any]) -> Any:
    from mlflow_monitor_plugin.scoring.limiter import LimitSettings
    from mlflow_monitor_plugin.scoring.proxy import ProxySettings

    most = engine["max_concurrency"]
    fixed = engine["workers"] * max(1, engine["processes"]) if engine["workers"] else None
    return ProxySettings(
        rate_limit=engine["rate_limit"],
        connections=fixed or most,
        concurrency=LimitSettings(initial=min(8, most), latency_floor=min(8, most), max_limit=most),
        fixed_concurrency=fixed,
    )


def _run(daemon: Any, once: bool) -> None:
    if once:
        report = daemon.run_until_idle()
        for stats in report.stats:
            if stats.traces or stats.export_error:
                click.echo(stats.summary())
        if not report.ok:
            problems = [f"experiment {k}: {v}" for k, v in report.errors.items()]
            problems += [
                f"experiment {s.experiment_id}: export failed: {s.export_error}"
                for s in report.stats
                if s.export_error
            ]
            raise click.ClickException("; ".join(problems))
        click.echo("All pending traces processed.")
        return
    daemon.install_signal_handlers()
    daemon.loop()


@click.command("test")
@experiment_options
@click.option("--max-traces", default=10, show_default=True, help="How many recent traces.")
@output_option
@handle_errors
def test_command(
    experiment_id: str | None, experiment_name: str | None, max_traces: int, output: str
) -> None:
    """Dry run: the monitor's judges on the latest traces, writing nothing.

    Shows which judges produce results on your real traces before you rely on them.

    \b
    Example:
      mlflow monitor test -x 123 --max-traces 10
    """
    from mlflow_monitor_plugin.cli import operations

    rows = operations.test_judges(experiment_id, experiment_name, max_traces)
    columns = ["judge", "traces", "results", "skipped", "not_applicable", "errors", "example"]
    _print_rows(rows, output, columns)


@click.command("status")
@experiment_options
@click.option(
    "--coverage",
    "show_coverage",
    is_flag=True,
    help="Show the coverage ledger instead: per hourly window and judge, traces seen, sampled "
    "and scored, the delay to the verdict, the minutes the daemon ran, and gaps.",
)
@click.option(
    "--since",
    default="1d",
    show_default=True,
    help="With --coverage: how far back, e.g. 12h, 7d.",
)
@output_option
@handle_errors
def status_command(
    experiment_id: str | None,
    experiment_name: str | None,
    show_coverage: bool,
    since: str,
    output: str,
) -> None:
    """Checkpoint, lag behind the newest trace, judge-call concurrency, and per judge its
    verdicts' source and counts; with --coverage, the coverage ledger.

    \b
    A window's state in the ledger: open (in progress), behind (ended over 15 minutes ago
    with sampled traces not scored yet: the daemon is down or behind), errors (judge errors
    left), caught up (scored, but late: the gap is closed), ok.

    \b
    Examples:
      mlflow monitor status -x 123 --output json
      mlflow monitor status -x 123 --coverage --since 7d
    """
    from mlflow_monitor_plugin.cli import operations

    if show_coverage:
        _print_coverage(experiment_id, experiment_name, since, output)
        return
    status = operations.status(experiment_id, experiment_name)
    if output == "json":
        click.echo(json.dumps(status, indent=2))
        return
    lag = status["lag_seconds"]
    lines = {
        "experiment_id": status["experiment_id"],
        "checkpoint": _cursor_text(status["checkpoint"]),
        "export_checkpoint": _cursor_text(status["export_checkpoint"]),
        "lag": "-" if lag is None else f"{_seconds(lag)} behind the newest trace",
        "export_uri": status["export_uri"],
        "pii": status["pii"],
    }
    for key, text in lines.items():
        click.echo(f"{key + ':':<19}{text}")
    if status.get("concurrency"):
        click.echo(f"{'concurrency:':<19}{_concurrency(status['concurrency'])}")
    for shard in status.get("shards") or []:
        click.echo(f"{'shard ' + shard['shard'] + ':':<19}{_cursor_text(shard['checkpoint'])}")
    _print_rows(
        status["judges"],
        "table",
        [
            "judge",
            "origin",
            "source_id",
            "eligible",
            "sampled",
            "scored",
            "skipped",
            "not_applicable",
            "failed",
            "pending",
        ],
    )
    for row in status["judges"]:
        if row.get("unavailable"):
            click.echo(f"unavailable: {row['judge']}: {row['unavailable']}")
    for line in status.get("skipped") or []:
        click.echo(line)
    if status.get("mlflow_judges"):
        click.echo("judges in MLflow's registry (the experiment's Judges page):")
        _print_rows(status["mlflow_judges"], "table", ["judge", "definition", "version", "role"])
    if status.get("windows"):
        windows = [_window_cells(row) for row in status["windows"]]
        click.echo("last window:")
        _print_rows(windows, "table", ["judge", "window", "verdicts", "pass_rate",
                    "interval95", "errors", "effective_rate"])  # fmt: skip
        click.echo("judge cost today (UTC, by trace time):")
        _print_rows(windows, "table", ["judge", "tokens_today", "cost_today_usd",
                    "cost_unknown_today"])  # fmt: skip
    budget = status.get("budget")
    if budget:
        spent = "-" if budget["spent_usd"] is None else f"${budget['spent_usd']:.6f}"
        state = "enforced" if budget["enforced"] else f"NOT enforced: {budget['reason']}"
        click.echo(
            f"{'daily budget:':<19}${budget['daily_budget_usd']:g}, spent {spent}, sample rates "
            f"x{budget['rate_factor_now']:g} now ({state})"
        )


COVERAGE_COLUMNS = [
    "window", "judge", "rate", "effective", "seen", "sampled", "scored", "failed", "skipped",
    "not_appl", "pending", "delay_p50", "delay_max", "daemon", "state",
]  # fmt: skip


def _print_coverage(
    experiment_id: str | None, experiment_name: str | None, since: str, output: str
) -> None:
    import time

    from mlflow_monitor_plugin.cli import operations
    from mlflow_monitor_plugin.observe.report import parse_duration_ms

    try:
        since_ms = parse_duration_ms(since)
    except MonitorConfigError as e:
        raise click.BadParameter(str(e), param_hint="--since") from None
    now_ms = int(time.time() * 1000)
    ledger = operations.coverage_ledger(experiment_id, experiment_name, now_ms - since_ms, now_ms)
    if output == "json":
        click.echo(json.dumps(ledger, indent=2, default=str))
        return
    rows = [
        {
            **row,
            "rate": "-" if row["sample_rate"] is None else f"{row['sample_rate']:g}",
            "effective": f"{row['effective_rate']:.3g}",
            "not_appl": row["not_applicable"],
            "delay_p50": _seconds(row["delay_p50_s"]),
            "delay_max": _seconds(row["delay_max_s"]),
            "daemon": "-" if row["daemon_minutes"] is None else f"{row['daemon_minutes']} min",
        }
        for row in ledger["windows"]
    ]
    _print_rows(rows, "table", COVERAGE_COLUMNS)
    for line in ledger["skipped"]:
        click.echo(line)
    if not ledger["heartbeat"]:
        click.echo("daemon: unknown (no metrics run yet: the daemon charts its heartbeat there)")


def _window_cells(row: dict[str, Any]) -> dict[str, Any]:
    """A ``status`` window row as ``report`` prints its numbers: rates in percent, UTC times,
    dollars; ``-`` where there is no value."""
    import datetime as dt

    rate, cost = row["pass_rate"], row["cost_today_usd"]
    window = dt.datetime.fromisoformat(row["window"]).strftime("%Y-%m-%d %H:%M UTC")
    return {
        **row,
        "window": window,
        "pass_rate": "-" if rate is None else f"{100 * rate:.1f}%",
        "effective_rate": f"{row['effective_rate']:g}",
        "cost_today_usd": "-" if cost is None else f"${cost:.6f}",
    }


def _cursor_text(cursor: dict[str, Any] | None) -> str:
    """A cursor as a reader wants it: the UTC time of the last trace it passed, its age and
    the trace's id (the raw values are in ``--output json``)."""
    import datetime as dt
    import time

    if not cursor:
        return "none yet (no trace passed)"
    stamp = cursor["timestamp_ms"] / 1000
    when = dt.datetime.fromtimestamp(stamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    age = _seconds(max(0.0, time.time() - stamp))
    trace = f", trace {cursor['trace_id']}" if cursor.get("trace_id") else ""
    return f"{when} ({age} ago){trace}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.0f} min" if value < 7200 else f"{value / 3600:.1f} h"


def _concurrency(c: dict[str, Any]) -> str:
    """E.g. ``limit 48 (adaptive, max 256), 45 in flight, 3 waiting, saved 2 s ago``."""
    import time

    age = max(0.0, time.time() - c.get("updated_ms", 0) / 1000)
    return (
        f"limit {c.get('limit')} ({c.get('mode')}, max {c.get('max')}), "
        f"{c.get('in_flight')} in flight, {c.get('waiting')} waiting, saved {age:.0f} s ago"
    )


@click.command("demo")
@click.option("--traces", default=24, show_default=True, help="How many demo traces to log.")
@log_level_option
@handle_errors
def demo_command(traces: int, log_level: str) -> None:
    """Try it end to end: log traces from an example app, monitor them, show the verdicts.

    Uses the tracking URI from $MLFLOW_TRACKING_URI (default: MLflow's local SQLite store) and
    exports to ./mlflow_monitor_exports. Without a judge endpoint ($OPENAI_API_KEY or
    $OPENAI_API_BASE) only the deterministic judges run.

    \b
    Example:
      mlflow monitor demo
    """
    from mlflow_monitor_plugin.cli import operations

    configure_logging(log_level)
    result = operations.demo(traces, echo=click.echo)
    _print_rows(result["judges"], "table", ["judge", "yes", "no", "other", "errors"])
    click.echo(result["epilogue"])


def _print_rows(rows: list[dict[str, Any]], output: str, columns: list[str]) -> None:
    if output == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*(_cell(row.get(c, "")) for c in columns))
    Console(file=sys.stdout, width=200).print(table)


def _cell(value: Any) -> str:
    """A table cell: ``-`` for a missing value, as ``report`` prints it."""
    return "-" if value is None else str(value)


COMMANDS = [run_command, test_command, status_command, demo_command]
