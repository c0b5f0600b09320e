"""``mlflow monitor export | compact``: re-sync and tidy a monitor's Parquet export."""

from __future__ import annotations

import datetime as dt

import click

from mlflow_monitor_plugin.cli.options import experiment_options, handle_errors


def _date(value: dt.datetime | None) -> dt.date | None:
    return value.date() if value else None


@click.command("export")
@experiment_options
@click.option(
    "--since", type=click.DateTime(["%Y-%m-%d"]), required=True, help="First day (UTC), inclusive."
)
@click.option(
    "--until", type=click.DateTime(["%Y-%m-%d"]), help="Last day (UTC), inclusive. Default: today."
)
@handle_errors
def export_command(
    experiment_id: str | None,
    experiment_name: str | None,
    since: dt.datetime,
    until: dt.datetime | None,
) -> None:
    """Re-sync a period of the export from MLflow, with a progress bar.

    Replaces the period's date partitions with the traces as MLflow has them now, so feedback
    added after a trace was exported reaches the copy. The monitor's current redaction policy
    (pii) is applied to what is rewritten. Traces the daemon has not exported yet are left to it.

    \b
    Example:
      mlflow monitor export -x 123 --since 2026-11-01 --until 2026-11-07
    """
    from rich.progress import Progress

    from mlflow_monitor_plugin.config import api
    from mlflow_monitor_plugin.engine.pipeline import MonitorEngine
    from mlflow_monitor_plugin.export.parquet import ParquetExporter
    from mlflow_monitor_plugin.export.resync import resync
    from mlflow_monitor_plugin.redaction import masker_for

    monitor = api.get_external_monitor(experiment_id=experiment_id, experiment_name=experiment_name)
    masker = masker_for(monitor.pii)  # refused before anything is rewritten
    engine = MonitorEngine.create(monitor.experiment_id)
    cursor = engine.read_cursor(monitor)
    if cursor.export is None:
        raise click.ClickException(
            "Nothing exported yet: run `mlflow monitor run --once` first; it exports every trace."
        )
    date_from, date_to = _date(since), _date(until) or dt.datetime.now(dt.timezone.utc).date()
    with Progress(transient=True) as progress:
        task = progress.add_task("Re-syncing traces", total=None)
        rows = resync(
            engine.source,
            ParquetExporter(monitor.export_uri, masker=masker),
            date_from,
            date_to,
            cursor.export,
            on_page=lambda n: progress.advance(task, n),
        )
    click.echo(f"Re-synced {rows} traces of {date_from}..{date_to} in {monitor.export_uri}.")


@click.command("compact")
@experiment_options
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="First day (UTC) to compact.")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Last day (UTC) to compact.")
@handle_errors
def compact_command(
    experiment_id: str | None,
    experiment_name: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> None:
    """Merge the small files of each date partition of the export into one.

    Rows are copied as they were written: what was masked stays masked. To apply a changed
    redaction policy to files already written, re-export the period with `export`.

    \b
    Example:
      mlflow monitor compact -x 123 --since 2026-11-01
    """
    from mlflow_monitor_plugin.config import api
    from mlflow_monitor_plugin.export.parquet import ParquetExporter

    monitor = api.get_external_monitor(experiment_id=experiment_id, experiment_name=experiment_name)
    removed = ParquetExporter(monitor.export_uri).compact(_date(since), _date(until))
    click.echo(f"Merged {removed} files in {monitor.export_uri}.")


COMMANDS = [export_command, compact_command]
