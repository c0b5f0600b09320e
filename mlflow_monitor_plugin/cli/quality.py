"""``mlflow monitor report``, and the ``run`` options that serve ``/metrics`` and ``/healthz``."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from mlflow_monitor_plugin.cli.options import experiment_options, handle_errors, output_option
from mlflow_monitor_plugin.exceptions import MonitorConfigError


def metrics_options(func: Any) -> Any:
    """``--metrics-port`` and ``--metrics-host`` of ``mlflow monitor run``."""
    func = click.option(
        "--metrics-host",
        default="127.0.0.1",
        show_default=True,
        envvar="MLFLOW_MONITOR_METRICS_HOST",
        help="Address of the metrics endpoint; 0.0.0.0 to let Prometheus and Kubernetes in "
        "from outside the host or pod.",
    )(func)
    return click.option(
        "--metrics-port",
        type=click.IntRange(0, 65535),
        envvar="MLFLOW_MONITOR_METRICS_PORT",
        help="Serve Prometheus /metrics and /healthz on this port (also "
        "$MLFLOW_MONITOR_METRICS_PORT). Default: no endpoint.",
    )(func)


@contextlib.contextmanager
def serving_metrics(daemon: Any, host: str, port: int | None, interval_s: float) -> Iterator[None]:
    """Serve the daemon's metrics and health while the block runs (nothing if ``port`` is None)."""
    if port is None:
        yield
        return
    from mlflow_monitor_plugin.observe.live import METRICS
    from mlflow_monitor_plugin.observe.server import Health, MetricsServer
    from mlflow_monitor_plugin.scoring import limiter

    METRICS.add_snapshot_source("judge_concurrency", lambda: limiter.snapshot() or {})
    health = Health(interval_s)
    daemon.observers.append(health)
    server = MetricsServer(host, port, health)
    try:
        server.start()
    except OSError as e:
        raise click.ClickException(
            f"Cannot serve metrics on {host}:{port}: {e.strerror or e}. "
            "Is the port in use? Choose another with --metrics-port."
        ) from e
    try:
        yield
    finally:
        server.close()


@click.command("report")
@experiment_options
@click.option(
    "--since", default="7d", show_default=True, help="How far back: e.g. 30m, 12h, 7d, 2w."
)
@click.option(
    "--judge", "judge_names", multiple=True, help="Only this judge (repeatable). Default: all."
)
@click.option(
    "--window",
    type=click.Choice(["1h", "1d"]),
    default="1h",
    show_default=True,
    help="Window width: hourly or daily.",
)
@click.option(
    "--last",
    type=click.IntRange(min=1),
    default=12,
    show_default=True,
    help="Windows per judge in the table.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a chart: a .png image or a self-contained .html page.",
)
@click.option(
    "--by-stratum",
    is_flag=True,
    help="Also each stratum's own pass rate, as <judge>/<stratum> rows and chart lines "
    "(judges with strata; see docs/sampling.md).",
)
@output_option
@handle_errors
def report_command(
    experiment_id: str | None,
    experiment_name: str | None,
    since: str,
    judge_names: tuple[str, ...],
    window: str,
    last: int,
    out: Path | None,
    by_stratum: bool,
    output: str,
) -> None:
    """Quality over time: pass rate per judge and window, with its 95% interval and trend;
    where the judge changed; how often people's labels agree with it.

    Recomputed from the verdicts in the tracking store. The interval is that of the rate among
    all traces (the sample stands for them); est_failing is the failing verdicts divided by
    the judge's sample rate; skipped counts sampled traces the daemon did not run the judge on
    (no judge endpoint, say), which a backfill can score. A judge with strata (or a daily
    budget that changed its rate in a window) has its verdicts weighted by their inclusion
    probability: the rate, interval and est_failing still stand for all traces. judge_fp is
    the judge's fingerprint ('*': it changed there). labels, agreement and kappa compare
    people's labels (feedback under the judge's name from a HUMAN source) with the judge's
    verdicts, with 95% intervals. --output json gives every window's numbers.

    \b
    Examples:
      mlflow monitor report -x 123
      mlflow monitor report -x 123 --since 30d --window 1d --judge safety
      mlflow monitor report -x 123 --out quality.html
      mlflow monitor report -x 123 --judge safety --by-stratum
    """
    from mlflow_monitor_plugin.config import api
    from mlflow_monitor_plugin.observe import report

    try:
        since_ms = report.parse_duration_ms(since)
    except MonitorConfigError as e:
        raise click.BadParameter(str(e), param_hint="--since") from None
    if out is not None and out.suffix.lower() not in (".png", ".html"):
        raise click.BadParameter(
            f"{out.name!r}: the file must end in .png or .html", param_hint="--out"
        )
    monitor = api.get_external_monitor(experiment_id=experiment_id, experiment_name=experiment_name)
    allowed = [name for name, _ in report.judges_of(monitor)]
    unknown = [name for name in judge_names if name not in allowed]
    if unknown:
        raise click.BadParameter(
            f"unknown judge {unknown[0]!r}; allowed: {', '.join(allowed)}", param_hint="--judge"
        )
    now_ms = int(time.time() * 1000)
    rows = report.windows(
        monitor, now_ms - since_ms, now_ms, window, list(judge_names) or None, by_stratum=by_stratum
    )
    advice = report.skipped_advice(monitor, rows)
    own = set(monitor.assessments_config.feedback_names)
    from_mlflow = sorted({r["judge"] for r in rows} - own)
    changes = report.judge_changes(rows)
    if output == "json":
        data = {"windows": rows, "skipped": advice, "judge_changes": changes,
                "judges_from_mlflow": from_mlflow}  # fmt: skip
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        _print_table(report.table_rows(rows, last), report.TABLE_COLUMNS)
        if from_mlflow:
            click.echo(f"judges configured in MLflow (its Judges page): {', '.join(from_mlflow)}")
        for line in advice:
            click.echo(line)
        for change in changes:
            click.echo(
                f"{change['judge']}: judge changed in the window of "
                f"{change['window']:%Y-%m-%d %H:%M}"
                f" (fingerprint {change['before'] or '?'} -> {change['after']})"
            )
        if changes:
            click.echo(report.CHANGED_NOTE)
    if out is not None:
        from mlflow_monitor_plugin.observe import charts

        title = f"Experiment {monitor.experiment_id}: pass rate per {window} window, last {since}"
        if out.suffix.lower() == ".png":
            charts.write_png(rows, out, title)
        else:
            charts.write_html(rows, out, title, last)
        click.echo(f"Wrote {out}")


def _print_table(rows: list[dict[str, str]], columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    if not rows:
        click.echo("No traces in this period.")
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    Console(file=sys.stdout, width=220).print(table)


COMMANDS = [report_command]
