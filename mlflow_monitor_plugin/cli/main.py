"""The ``mlflow monitor`` command group (also installed as ``mlflow-monitor``).

Commands are thin: they parse options, call the library, and print. Library errors become
``click.ClickException`` here, so users see one clear line and exit code 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mlflow_monitor_plugin.cli import alerts as cli_alerts
from mlflow_monitor_plugin.cli import backfill as cli_backfill
from mlflow_monitor_plugin.cli import export as cli_export
from mlflow_monitor_plugin.cli import judges as cli_judges
from mlflow_monitor_plugin.cli import plan as cli_plan
from mlflow_monitor_plugin.cli import quality as cli_quality
from mlflow_monitor_plugin.cli import run as cli_run
from mlflow_monitor_plugin.cli import trust as cli_trust
from mlflow_monitor_plugin.cli.cost import cost_for_cli, cost_options
from mlflow_monitor_plugin.cli.options import experiment_options, handle_errors, output_option
from mlflow_monitor_plugin.cli.pii import pii_for_cli, pii_options
from mlflow_monitor_plugin.cli.strata import stratum_option, with_strata
from mlflow_monitor_plugin.config import api
from mlflow_monitor_plugin.config.model import AssessmentsSuiteConfig, ExternalMonitor


def suite_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The ways to give an assessments config: a YAML/JSON file, or flags."""
    options = [
        click.option(
            "--config-file",
            "-f",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="YAML or JSON file with the assessments config (see the examples/ folder).",
        ),
        click.option(
            "--judge",
            "judges",
            multiple=True,
            metavar="NAME[:RATE]",
            help="A built-in judge, e.g. 'safety' or 'groundedness:0.4'. Repeatable.",
        ),
        click.option(
            "--guideline",
            "guidelines",
            multiple=True,
            metavar="NAME=TEXT",
            help="A guideline judged under NAME, e.g. 'polite=The response is polite.'. "
            "Repeat a NAME to give it several rules.",
        ),
        click.option("--sample", type=float, help="Default sample rate of every judge, 0.0-1.0."),
        click.option("--model", help="Judge model URI, e.g. 'openai:/gpt-4o-mini'."),
        click.option("--paused", is_flag=True, default=False, help="Create or keep it paused."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _read_file(path: Path) -> dict[str, Any]:
    import yaml

    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)  # JSON is YAML; safe_load builds plain data, never objects
    except yaml.YAMLError as e:
        raise click.BadParameter(f"{path} is neither valid YAML nor JSON: {e}") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping, not {type(data).__name__}")
    return data


def _parse_judge(spec: str) -> dict[str, Any]:
    name, _, rate = spec.partition(":")
    judge: dict[str, Any] = {"name": name.strip()}
    if rate:
        try:
            judge["sample_rate"] = float(rate)
        except ValueError:
            raise click.BadParameter(
                f"{spec!r}: the rate after ':' must be a number, e.g. 'groundedness:0.4'",
                param_hint="--judge",
            ) from None
    return judge


def _parse_guidelines(specs: tuple[str, ...]) -> dict[str, list[str]]:
    guidelines: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        if not sep:
            raise click.BadParameter(
                f"{spec!r}: expected NAME=TEXT, e.g. 'polite=The response is polite.'",
                param_hint="--guideline",
            )
        guidelines.setdefault(name.strip(), []).append(text)
    return guidelines


def build_suite(
    file_data: dict[str, Any] | None,
    judges: tuple[str, ...],
    guidelines: tuple[str, ...],
    sample: float | None,
    model: str | None,
    paused: bool,
) -> dict[str, Any]:
    """The assessments config from a file (its ``assessments_config`` key or the whole file),
    extended by the flags."""
    suite: dict[str, Any] = dict((file_data or {}).get("assessments_config", file_data or {}))
    assessments = list(suite.get("assessments") or [])
    assessments += [_parse_judge(j) for j in judges]
    if guidelines:
        assessments.append({"guidelines": _parse_guidelines(guidelines)})
    suite["assessments"] = assessments
    if sample is not None:
        suite["sample"] = sample
    if model is not None:
        suite["model"] = model
    if paused:
        suite["paused"] = True
    if not assessments:
        raise click.UsageError("Give at least one judge: --judge, --guideline or --config-file.")
    return suite


def print_monitor(monitor: ExternalMonitor, output: str) -> None:
    """The monitor as stored (JSON: what ``create -f`` reads back), and the judges registered
    in MLflow on its experiment (``mlflow_judges``, read from MLflow, not stored)."""
    if output == "json":
        data = monitor.to_dict()
        data["mlflow_judges"] = [
            {"name": r.name, "version": r.version, "kind": r.kind, "model": r.model,
             "session": r.session, "sample_rate": r.sample_rate, "filter_string": r.filter_string,
             "started": r.started, "problem": r.problem}
            for r in monitor.registered
        ]  # fmt: skip
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(str(monitor))


@click.group("monitor")
@click.version_option(package_name="mlflow-monitor", prog_name="mlflow-monitor")
def monitor() -> None:
    """Production monitoring: LLM judges on sampled traces, and every trace exported to Parquet.

    \b
    Quick start:
      mlflow monitor create -x 1 --judge safety --judge groundedness:0.4
      mlflow monitor run -x 1
    """


@monitor.command("create")
@experiment_options
@click.option("--catalog-name", default="workspace", show_default=True, help="Export catalog.")
@click.option("--schema-name", default="default", show_default=True, help="Export schema.")
@click.option("--export-uri", help="Export location: a local path or a URI pyarrow understands.")
@suite_options
@stratum_option
@cli_alerts.alert_option
@cost_options
@pii_options
@cli_plan.plan_options
@output_option
@handle_errors
def create_command(
    experiment_id: str | None,
    experiment_name: str | None,
    catalog_name: str,
    schema_name: str,
    export_uri: str | None,
    config_file: Path | None,
    judges: tuple[str, ...],
    guidelines: tuple[str, ...],
    sample: float | None,
    model: str | None,
    paused: bool,
    strata_specs: tuple[str, ...],
    alert_specs: tuple[str, ...],
    daily_budget_usd: str | None,
    call_cost_usd: str | None,
    prices: tuple[str, ...],
    pace: bool | None,
    pii_kinds: str | None,
    pii_mode: str | None,
    pii_patterns: tuple[str, ...],
    pii_where: str | None,
    show_plan: bool,
    yes: bool,
    output: str,
) -> None:
    """Create the monitor of an experiment.

    \b
    Examples:
      mlflow monitor create -x 1 --judge safety --judge groundedness:0.4 --sample 0.5
      mlflow monitor create -x 1 --guideline "mlflow_only=Refuse questions unrelated to MLflow."
      mlflow monitor create -x 1 -f examples/monitor.yaml
      mlflow monitor create -x 1 --judge safety --alert "safety.pass_rate<0.95 over 1h"
      mlflow monitor create -x 1 --judge safety --daily-budget-usd 5 --plan
      mlflow monitor create -x 1 --judge safety --pii standard --pii-mode hash
      mlflow monitor create -x 1 --judge safety --sample 0.02 \\
        --stratum "errors=trace.status = 'ERROR'@1" \\
        --stratum "slow=trace.execution_time_ms > 5000@0.5"
    """
    data = _read_file(config_file) if config_file else None
    suite = AssessmentsSuiteConfig.from_dict(
        with_strata(build_suite(data, judges, guidelines, sample, model, paused), strata_specs)
    )
    file_args = data or {}
    cost = cost_for_cli(data, None, daily_budget_usd, call_cost_usd, prices, pace)
    pii = pii_for_cli(data, None, pii_kinds, pii_mode, pii_patterns, pii_where)
    if show_plan:
        exp = api.resolve_experiment_id(experiment_id, experiment_name)
        cli_plan.gate(cli_plan.proposed(None, exp, suite, cost), existing=False, yes=yes)
    created = api.create_external_monitor(
        catalog_name=file_args.get("catalog_name", catalog_name),
        schema_name=file_args.get("schema_name", schema_name),
        assessments_config=suite,
        experiment_id=experiment_id,
        experiment_name=experiment_name,
        export_uri=export_uri or file_args.get("export_uri"),
        alerts=cli_alerts.rules_for_cli(data, alert_specs, suite),
        cost=cost,
        pii=pii,
    )
    print_monitor(created, output)


@monitor.command("get")
@experiment_options
@output_option
@handle_errors
def get_command(experiment_id: str | None, experiment_name: str | None, output: str) -> None:
    """Show the monitor of an experiment.

    \b
    Example:
      mlflow monitor get -x 1 --output json
    """
    print_monitor(
        api.get_external_monitor(experiment_id=experiment_id, experiment_name=experiment_name),
        output,
    )


@monitor.command("update")
@experiment_options
@suite_options
@stratum_option
@cli_trust.shadow_option
@cli_alerts.alert_option
@cost_options
@pii_options
@cli_plan.plan_options
@output_option
@handle_errors
def update_command(
    experiment_id: str | None,
    experiment_name: str | None,
    config_file: Path | None,
    judges: tuple[str, ...],
    guidelines: tuple[str, ...],
    sample: float | None,
    model: str | None,
    paused: bool,
    strata_specs: tuple[str, ...],
    shadow_specs: tuple[str, ...],
    alert_specs: tuple[str, ...],
    daily_budget_usd: str | None,
    call_cost_usd: str | None,
    prices: tuple[str, ...],
    pace: bool | None,
    pii_kinds: str | None,
    pii_mode: str | None,
    pii_patterns: tuple[str, ...],
    pii_where: str | None,
    show_plan: bool,
    yes: bool,
    output: str,
) -> None:
    """Replace the monitor's assessments config whole. The export location stays.

    --shadow alone keeps the judges and changes only their shadows: a candidate judge runs
    beside the judge on the same sampled traces, its verdicts under shadow/NAME
    (see `mlflow monitor compare` and `promote`, docs/judges-trust.md).

    Alert rules stay unless --alert or the file's 'alerts' key gives new ones; the cost
    settings stay unless a cost flag or the file's 'cost' key changes them; the redaction
    policy stays unless a --pii flag or the file's 'pii' key changes it (files already
    exported keep their masking: `mlflow monitor export` re-exports a period under the new one).

    \b
    Example:
      mlflow monitor update -x 1 --judge safety --sample 0.2
      mlflow monitor update -x 1 --judge safety --daily-budget-usd 2.5 --price gpt-4.1-mini=0.4,1.6
      mlflow monitor update -x 1 --shadow "safety={model: 'openai:/gpt-4.1-nano'}"
    """
    data = _read_file(config_file) if config_file else None
    before = api.get_external_monitor(experiment_id=experiment_id, experiment_name=experiment_name)
    only_shadows = shadow_specs and not (
        data or judges or guidelines or sample is not None or model or paused or strata_specs
    )
    if only_shadows:
        suite_data = before.assessments_config.to_dict()
    else:
        suite_data = with_strata(
            build_suite(data, judges, guidelines, sample, model, paused), strata_specs
        )
    if shadow_specs:
        suite_data = cli_trust.apply_shadows(suite_data, shadow_specs)
    suite = AssessmentsSuiteConfig.from_dict(suite_data)
    cost = cost_for_cli(data, before.cost, daily_budget_usd, call_cost_usd, prices, pace)
    pii = pii_for_cli(data, before.pii, pii_kinds, pii_mode, pii_patterns, pii_where)
    if show_plan:
        proposal = cli_plan.proposed(before, before.experiment_id, suite, cost)
        cli_plan.gate(proposal, existing=True, yes=yes)
    updated = api.update_external_monitor(
        assessments_config=suite,
        experiment_id=before.experiment_id,
        alerts=cli_alerts.rules_for_cli(data, alert_specs, suite),
        cost=cost,
        pii=pii,
    )
    print_monitor(updated, output)
    added = api.added_judges(before, updated)
    if added:  # on stderr: --output json stays parseable
        click.echo(
            f"{', '.join(added)}: scored on new traces from now on. To score past traces too:\n"
            f"  {api.backfill_command(updated, added)}",
            err=True,
        )


@monitor.command("delete")
@experiment_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def delete_command(experiment_id: str | None, experiment_name: str | None, yes: bool) -> None:
    """Delete the monitor of an experiment. Verdicts already logged and exports stay.

    \b
    Example:
      mlflow monitor delete -x 1 --yes
    """
    exp_id = api.resolve_experiment_id(experiment_id, experiment_name)
    if not yes:
        click.confirm(f"Delete the monitor of experiment {exp_id}?", abort=True)
    api.delete_external_monitor(experiment_id=exp_id)
    click.echo(f"Deleted the monitor of experiment {exp_id}.")


@monitor.command("list")
@output_option
@handle_errors
def list_command(output: str) -> None:
    """List every monitor on the tracking server.

    \b
    Example:
      mlflow monitor list --output json
    """
    monitors = api.list_external_monitors()
    if output == "json":
        click.echo(json.dumps([m.to_dict() for m in monitors], indent=2))
        return
    if not monitors:
        click.echo("No monitors. Create one with `mlflow monitor create`.")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("experiment", "judges", "sample", "paused", "version", "export_uri")
    for m in monitors:
        suite = m.assessments_config
        names = ", ".join(n for j in suite.assessments or [] for n in j.feedback_names)
        table.add_row(
            m.experiment_id,
            names,
            f"{suite.default_rate:g}",
            "yes" if suite.paused else "no",
            str(m.config_version),
            m.export_uri,
        )
    Console(width=200).print(table)


for command in (
    cli_run.COMMANDS
    + cli_export.COMMANDS
    + cli_judges.COMMANDS
    + cli_alerts.COMMANDS
    + cli_backfill.COMMANDS
    + cli_quality.COMMANDS
    + cli_plan.COMMANDS
    + cli_trust.COMMANDS
):
    monitor.add_command(command)


def main() -> None:
    """Entry point of the standalone ``mlflow-monitor`` command."""
    monitor(prog_name="mlflow-monitor")
