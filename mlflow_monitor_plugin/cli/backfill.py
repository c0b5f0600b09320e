"""``mlflow monitor backfill | curate``: score a past range of traces; turn failed traces into an
evaluation dataset."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from mlflow_monitor_plugin.cli.options import (
    experiment_options,
    handle_errors,
    log_level_option,
    output_option,
)
from mlflow_monitor_plugin.exceptions import MonitorConfigError

RANGE_HELP = "a date (2026-11-01, UTC), a UTC date and time (2026-11-01T08:30) or an age (7d, 12h)"


def _range(since: str, until: str | None) -> Any:
    from mlflow_monitor_plugin.discovery.timerange import TimeRange

    try:
        return TimeRange.parse(since, until, int(time.time() * 1000))
    except MonitorConfigError as e:
        raise click.UsageError(str(e)) from None


def _table(rows: list[dict[str, Any]], columns: dict[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns.values())
    for row in rows:
        table.add_row(*(str(row.get(key, "")) for key in columns))
    Console(file=sys.stdout, width=160).print(table)


@click.command("backfill")
@experiment_options
@click.option("--since", required=True, metavar="WHEN", help=f"Start of the range: {RANGE_HELP}.")
@click.option(
    "--until",
    metavar="WHEN",
    help="End of the range, excluded (a date: through that day). Default: now.",
)
@click.option(
    "--judge",
    "judges",
    multiple=True,
    metavar="NAME",
    help="Score only this judge of the monitor (repeatable). Default: all of its judges.",
)
@click.option(
    "--rate-limit", type=click.FloatRange(min=0, min_open=True), help="Judge calls per second."
)
@click.option(
    "--workers",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Concurrent judge calls (in each scoring process).",
)
@click.option(
    "--processes",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Scoring processes, as for `mlflow monitor run`.",
)
@click.option(
    "--late-window",
    default=24 * 3600.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="The daemon's --late-window (seconds): retries of failures within it are its own.",
)
@click.option(
    "--page-size",
    default=200,
    show_default=True,
    type=click.IntRange(min=1, max=1000),
    help="Traces per page; the position is saved after each, so a rerun repeats at most one.",
)
@click.option(
    "--dry-run", is_flag=True, help="Count what would be scored and the judge calls; write nothing."
)
@output_option
@log_level_option
@handle_errors
def backfill_command(
    experiment_id: str | None,
    experiment_name: str | None,
    since: str,
    until: str | None,
    judges: tuple[str, ...],
    rate_limit: float | None,
    workers: int,
    processes: int,
    late_window: float,
    page_size: int,
    dry_run: bool,
    output: str,
    log_level: str,
) -> None:
    """Score the traces of a past range with the monitor's judges (or the ones named).

    Exactly once with the daemon: a pair the daemon has scored, or will (traces ahead of its
    checkpoint, retries within its late window), is left to it, so the two can run side by
    side. Killed and run again with the same options, it resumes where it was.

    \b
    Examples:
      mlflow monitor backfill -x 1 --since 7d --dry-run
      mlflow monitor backfill -x 1 --since 2026-11-01 --until 2026-11-30 --judge polite
      mlflow monitor backfill -x 1 --since 30d --rate-limit 5
    """
    from mlflow_monitor_plugin.config import api
    from mlflow_monitor_plugin.engine.backfill import Backfill, BackfillSettings
    from mlflow_monitor_plugin.redact import configure_logging
    from mlflow_monitor_plugin.scoring.runner import ScoringSettings

    configure_logging(log_level)
    window = _range(since, until)
    exp_id = api.get_external_monitor(
        experiment_id=experiment_id, experiment_name=experiment_name
    ).experiment_id
    scoring = ScoringSettings(workers=workers, processes=processes)
    settings = BackfillSettings(late_window_s=late_window, page_size=page_size)
    try:
        if dry_run:
            job = Backfill.create(exp_id, window, list(judges) or None, settings)
            stats = job.dry_run()
        else:
            stats = _run(exp_id, window, list(judges) or None, settings, scoring, rate_limit)
    except MonitorConfigError as e:
        raise click.UsageError(str(e)) from None
    _report(stats, dry_run, output)


def _run(
    exp_id: str,
    window: Any,
    judges: list[str] | None,
    settings: Any,
    scoring: Any,
    rate_limit: float | None,
) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from mlflow_monitor_plugin.engine.backfill import Backfill
    from mlflow_monitor_plugin.engine.pipeline import EngineSettings
    from mlflow_monitor_plugin.scoring.pool import make_scorer
    from mlflow_monitor_plugin.scoring.proxy import ProxySettings, judge_proxy

    calls = scoring.workers * max(1, scoring.processes)
    scorer = make_scorer(scoring)
    progress = Progress(
        TextColumn("[bold]Backfill"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn(
            "{task.fields[traces]} traces, {task.fields[verdicts]} verdicts, "
            "{task.fields[errors]} errors"
        ),  # fmt: skip
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    live = {"verdicts": 0, "errors": 0}

    def on_outcome(outcome: Any) -> None:
        if outcome.applicable:
            live["verdicts" if outcome.verdict.ok else "errors"] += 1
            progress.update(task, **live)

    def on_page(stats: Any) -> None:
        done = stats.window.fraction(stats.position_ms) * 1000
        progress.update(task, completed=done, traces=stats.traces, **live)

    proxy = ProxySettings(rate_limit=rate_limit, connections=calls, fixed_concurrency=calls)
    with judge_proxy(proxy):
        if scorer is not None:
            scorer.start()
        try:
            job = Backfill.create(
                exp_id, window, judges, settings, EngineSettings(export=False, scoring=scoring),
                scorer=scorer,
            )  # fmt: skip
            with progress:
                task = progress.add_task("backfill", total=1000, traces=0, **live)
                return job.run(on_outcome=on_outcome, on_page=on_page)
        finally:
            if scorer is not None:
                scorer.close()


def _report(stats: Any, dry_run: bool, output: str) -> None:
    rows = stats.rows()
    if output == "json":
        summary = {
            "experiment_id": stats.experiment_id,
            "since_ms": stats.window.since_ms,
            "until_ms": stats.window.until_ms,
            "dry_run": dry_run,
            "traces": stats.traces,
            "judge_calls": stats.judge_calls(),
            "resumed_from_ms": stats.resumed_from_ms,
            "seconds": round(stats.seconds, 3),
            "judges": rows,
        }
        click.echo(json.dumps(summary, indent=2))
        return
    head = f"experiment {stats.experiment_id}, {stats.window.describe()}: {stats.traces} traces"
    if dry_run:
        _table(rows, {"judge": "judge", "sampled": "sampled", "already_done": "scored already",
                      "due": "to score", "daemon": "left to the daemon",
                      "judge_calls": "judge calls (at most)"})  # fmt: skip
        click.echo(f"Dry run, {head}; estimated judge calls: {stats.judge_calls()} at most.")
        return
    _table(rows, {"judge": "judge", "sampled": "sampled", "already_done": "scored already",
                  "scored": "scored now", "failed": "failed", "not_applicable": "not applicable",
                  "daemon": "left to the daemon"})  # fmt: skip
    resumed = " (resumed)" if stats.resumed_from_ms is not None else ""
    click.echo(
        f"Backfill{resumed}, {head}, {stats.verdicts} verdicts, {stats.errors} errors "
        f"in {stats.seconds:.1f}s."
    )
    left = stats.counts.total("daemon")
    if left:
        click.echo(
            f"{left} sampled pairs are the daemon's (ahead of its checkpoint, or retries within "
            f"its late window): `mlflow monitor run -x {stats.experiment_id}` scores them."
        )
    if stats.verdicts:
        click.echo(
            "Exported copies of these traces get the new verdicts with: "
            f"mlflow monitor export -x {stats.experiment_id} --since {_day(stats.window.since_ms)}"
            f" --until {_day(stats.window.until_ms - 1)}"
        )


def _day(ms: int) -> str:
    import datetime as dt

    return str(dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).date())


@click.command("curate")
@experiment_options
@click.option("--judge", required=True, metavar="NAME", help="The judge whose verdicts to read.")
@click.option(
    "--value", default="no", show_default=True, help="The verdict value to collect, e.g. 'no'."
)
@click.option(
    "--disagreement",
    is_flag=True,
    help="Instead of a value: the traces where a person's label for the judge differs from "
    "its verdict, with both labels (for judge.align() or to fix the prompt).",
)
@click.option(
    "--since", default="7d", show_default=True, metavar="WHEN", help=f"Start: {RANGE_HELP}."
)
@click.option("--until", metavar="WHEN", help="End, excluded (a date: through that day).")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many traces, newest first.")
@click.option("--dataset", required=True, help="The MLflow evaluation dataset to add them to.")
@click.option(
    "--fallback-path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where the JSONL file goes when the store cannot hold datasets. "
    "Default: ./mlflow_monitor_datasets/<dataset>.jsonl",
)
@output_option
@handle_errors
def curate_command(
    experiment_id: str | None,
    experiment_name: str | None,
    judge: str,
    value: str,
    disagreement: bool,
    since: str,
    until: str | None,
    limit: int | None,
    dataset: str,
    fallback_path: Path | None,
    output: str,
) -> None:
    """Add the traces a judge failed to an MLflow evaluation dataset, to evaluate fixes on.

    Picks the traces of the range whose latest valid verdict of the judge, from this monitor,
    has the value; creates the dataset if missing; a trace whose inputs are already in it is
    not added again. Records keep the source trace id.

    \b
    Examples:
      mlflow monitor curate -x 1 --judge safety --value no --dataset unsafe-answers
      mlflow monitor curate -x 1 --judge polite --since 30d --limit 200 --dataset rude
      mlflow monitor curate -x 1 --judge safety --disagreement --dataset safety-disagreements
    """
    from mlflow_monitor_plugin.config import api
    from mlflow_monitor_plugin.engine.curate import curate

    window = _range(since, until)
    exp_id = api.get_external_monitor(
        experiment_id=experiment_id, experiment_name=experiment_name
    ).experiment_id
    try:
        result = curate(exp_id, judge, value, window, dataset, limit, fallback_path, disagreement)
    except MonitorConfigError as e:
        raise click.UsageError(str(e)) from None
    if output == "json":
        click.echo(json.dumps({k: v for k, v in result.__dict__.items()}, indent=2))
        return
    what = (
        f"a person's label differing from the {judge!r} verdict"
        if disagreement
        else f"a {judge!r} verdict of {value!r}"
    )
    found = (
        f"{result.matched} of {result.scanned} traces have {what}; "
        f"{result.added} added, {result.already_there} already there"
        + (f", {result.no_inputs} without inputs skipped" if result.no_inputs else "")
    )
    if result.fallback_path:
        click.echo(
            f"This tracking store cannot hold evaluation datasets ({result.fallback_reason}).\n"
            f"{found}: records written to {result.fallback_path} (JSONL). Evaluate on them with "
            f"mlflow.genai.evaluate(data=pandas.read_json({result.fallback_path!r}, lines=True))."
        )
        return
    click.echo(
        f"{found}: evaluation dataset {dataset!r} ({result.dataset_id}). Read it with "
        f"mlflow.genai.datasets.get_dataset(name={dataset!r})."
    )


COMMANDS = [backfill_command, curate_command]
