"""``mlflow monitor plan``, and ``create``/``update --plan``: a config's judge calls and $/day,
replayed on the last period's real traces (engine/plan.py), before it is applied."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from mlflow.tracking import MlflowClient

from mlflow_monitor_plugin.cli.options import experiment_options, handle_errors, output_option
from mlflow_monitor_plugin.config import api
from mlflow_monitor_plugin.config.model import AssessmentsSuiteConfig, ExternalMonitor
from mlflow_monitor_plugin.config.prices import CostConfig
from mlflow_monitor_plugin.exceptions import MonitorConfigError
from mlflow_monitor_plugin.observe.report import parse_duration_ms


def plan_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--plan`` and ``--yes`` of ``create`` and ``update``."""
    func = click.option("--yes", "-y", is_flag=True, help="With --plan: apply without asking.")(
        func
    )
    return click.option(
        "--plan",
        "show_plan",
        is_flag=True,
        help="First print what the config will cost per day on the last 24 h of traces (see "
        "`mlflow monitor plan`), and ask before applying it.",
    )(func)


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _usd(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"${value:,.2f}" if value >= 1 else f"${value:.6f}"


def print_plan(result: dict[str, Any], output: str) -> None:
    if output == "json":
        click.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    hours = (result["until_ms"] - result["since_ms"]) / 3_600_000
    table = Table(
        "judge", "rate", "traces/day", "scored/day", "calls/day", "tokens/day", "$/day", "basis",
        title=f"Judge cost per day, replayed on the last {hours:g} h of traces",
    )  # fmt: skip
    for row in result["judges"]:
        scored = _fmt(row["scored_per_day"], 0) + ("" if row["exact"] else " (expected)")
        usd = _usd(row["usd_per_day"])
        if row["usd_per_day"] is None and row["tokens_per_day"] is not None:
            usd = "unknown (no price)"
        table.add_row(
            row["judge"], f"{row['rate']:g}", _fmt(row["traces_per_day"], 0), scored,
            _fmt(row["calls_per_day"], 0), _fmt(row["tokens_per_day"], 0), usd, row["basis"],
        )  # fmt: skip
        for s in row.get("strata", []):
            fails = "fail rate unknown"
            if s["fail_rate"] is not None:
                fails = f"fail rate {100 * s['fail_rate']:.1f}% ({s['verdicts_seen']} verdicts)"
            table.add_row(
                f"  └ {s['stratum']}", f"{s['rate']:g}", _fmt(s["traces_per_day"], 0),
                _fmt(s["scored_per_day"], 0), _fmt(s["calls_per_day"], 0), "",
                _usd(s["usd_per_day"]), fails,
            )  # fmt: skip
    total = result["total"]
    table.add_row(
        "total", "", "", _fmt(total["scored_per_day"], 0), _fmt(total["calls_per_day"], 0),
        _fmt(total["tokens_per_day"], 0), _usd(total["usd_per_day"]), "",
    )  # fmt: skip
    Console(file=sys.stdout, width=160).print(table)
    for row in result["judges"]:
        if "strata" in row:
            click.echo(_found_line(row))
    if total["usd_per_day"] is None and total["usd_per_day_known"]:
        click.echo(f"Known part of the cost: {_usd(total['usd_per_day_known'])}/day.")
    if result["daily_budget_usd"] is not None:
        verdict = "binds" if result["budget_binds"] else "does not bind"
        click.echo(f"Daily budget ${result['daily_budget_usd']:g}: {verdict} at this traffic.")


def _found_line(row: dict[str, Any]) -> str:
    """What a stratified judge finds per day, against uniform sampling at the same calls."""
    found, uniform = row["failures_found_per_day"], row["uniform_failures_found_per_day"]
    if found is None or uniform is None:
        return (
            f"{row['judge']}: failing traces found per day unknown (a stratum has no recent "
            "verdicts to estimate its failure rate from)"
        )
    gain = f" ({found / uniform:.1f}x)" if uniform > 0 else ""
    return (
        f"{row['judge']}: finds ~{found:,.1f} failing traces/day with its strata; uniform "
        f"sampling at the same calls (rate {row['uniform_rate_same_calls']:.4g}) would find "
        f"~{uniform:,.1f}{gain}."
    )


def compute(monitor: ExternalMonitor, existing: bool, over: str, measure_n: int) -> dict:
    from mlflow_monitor_plugin.discovery.traces import TraceSource
    from mlflow_monitor_plugin.engine.plan import judge_calls, plan
    from mlflow_monitor_plugin.scoring.proxy import judge_proxy

    try:
        over_ms = parse_duration_ms(over)
    except MonitorConfigError as e:
        raise click.BadParameter(str(e), param_hint="--over") from None
    source = TraceSource(monitor.experiment_id)
    with judge_proxy():
        measure = judge_calls(source) if measure_n > 0 else None
        result = plan(monitor, source, int(time.time() * 1000), over_ms, existing, measure,
                      measure_n)  # fmt: skip
    return result.to_dict()


def gate(monitor: ExternalMonitor, existing: bool, yes: bool) -> None:
    """Print the plan of ``monitor``, then ask to go on (unless ``yes``); abort on no."""
    print_plan(compute(monitor, existing, "24h", 3), "table")
    if not yes and not click.confirm("Apply this config?", default=False, err=True):
        raise click.Abort()


def proposed(
    current: ExternalMonitor | None,
    experiment_id: str,
    suite: AssessmentsSuiteConfig,
    cost: CostConfig | None,
) -> ExternalMonitor:
    """The monitor a create or update would store, not stored."""
    if current is not None:
        return ExternalMonitor(
            experiment_id, suite, current.catalog_name, current.schema_name, current.export_uri,
            current.monitor_id, cost=cost if cost is not None else current.cost,
        )  # fmt: skip
    return ExternalMonitor(experiment_id, suite, "w", "d", "", "", cost=cost or CostConfig())


def _read_file(path: Path) -> dict[str, Any]:
    """A config file as ``create -f`` reads it: YAML (JSON is YAML), a mapping."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise click.BadParameter(f"{path} is neither valid YAML nor JSON: {e}") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping, not {type(data).__name__}")
    return data


@click.command("plan")
@experiment_options
@click.option(
    "--config-file",
    "--config",
    "-f",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A config to plan instead of the monitor's own (YAML or JSON, as `create -f`).",
)
@click.option(
    "--over",
    default="24h",
    show_default=True,
    help="The period of past traces to replay: 12h, 1d, 7d...",
)
@click.option(
    "--measure",
    "measure_n",
    default=3,
    show_default=True,
    type=click.IntRange(min=0),
    help="Real judge calls (on as many sampled traces, writing nothing) to measure a judge's "
    "tokens when the monitor has no recent usage of it; 0: none.",
)
@output_option
@handle_errors
def plan_command(
    experiment_id: str | None,
    experiment_name: str | None,
    config_file: Path | None,
    over: str,
    measure_n: int,
    output: str,
) -> None:
    """What a monitor config costs per day: its sampler and filters replayed on the last
    period's real traces, per judge the traces scored, judge calls, tokens and $/day. A judge
    with strata is also shown per stratum, with the failing traces it finds per day (failure
    rates from the monitor's recent verdicts) against uniform sampling at the same calls.

    Tokens per call come from the monitor's recent verdicts, else from --measure real calls,
    else are unknown; prices from the config, `run --prices`, or MLflow's model catalog.

    \b
    Examples:
      mlflow monitor plan -x 1
      mlflow monitor plan -x 1 --config new.yaml --over 7d --output json
    """
    from mlflow_monitor_plugin.cli.cost import cost_for_cli

    exp = api.resolve_experiment_id(experiment_id, experiment_name)
    try:
        current: ExternalMonitor | None = api.get_external_monitor(experiment_id=exp)
    except api.MonitorNotFoundError:
        current = None
    if config_file is None:
        if current is None:
            raise click.UsageError(f"Experiment {exp} has no monitor: give --config FILE.")
        monitor = current
    else:
        data = _read_file(config_file)
        suite = AssessmentsSuiteConfig.from_dict(data.get("assessments_config", data))
        api.check_filters(suite, exp, MlflowClient())  # as create and update refuse them
        cost = cost_for_cli(data, current.cost if current else None, None, None, (), None)
        monitor = proposed(current, exp, suite, cost)
    print_plan(compute(monitor, current is not None, over, measure_n), output)


COMMANDS = [plan_command]
