"""``mlflow monitor alerts [test]``, and the alert options of ``create``, ``update`` and ``run``."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import click

from mlflow_monitor_plugin.cli.options import experiment_options, handle_errors, output_option
from mlflow_monitor_plugin.config.alerts import AlertRule, rules_from
from mlflow_monitor_plugin.config.model import AssessmentsSuiteConfig
from mlflow_monitor_plugin.exceptions import MonitorConfigError


def alert_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--alert SPEC`` on create and update."""
    return click.option(
        "--alert",
        "alert_specs",
        multiple=True,
        metavar="SPEC",
        help="An alert rule, e.g. 'safety.pass_rate<0.95 over 1h to slack:SLACK_WEBHOOK_URL' "
        "(see docs/alerts.md). Repeatable; on update, replaces the rules.",
    )(func)


def rules_for_cli(
    file_data: dict[str, Any] | None, specs: tuple[str, ...], suite: AssessmentsSuiteConfig
) -> list[AlertRule] | None:
    """The rules of the file's ``alerts`` key and the ``--alert`` flags; None when neither is
    given. A bad rule is a usage error (exit 2)."""
    from_file = (file_data or {}).get("alerts")
    if from_file is None and not specs:
        return None
    if from_file is not None and not isinstance(from_file, list):
        raise click.BadParameter("the file's 'alerts' must be a list of rules", param_hint="alerts")
    try:
        return rules_from([*(from_file or []), *specs], suite.feedback_names)
    except MonitorConfigError as e:
        raise click.BadParameter(str(e), param_hint="--alert") from None


def daemon_alert_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The alert options of ``mlflow monitor run``."""
    options = [
        click.option(
            "--alert-command",
            envvar="MLFLOW_MONITOR_ALERT_COMMAND",
            help="Also run this command for every alert message (JSON on stdin, no shell; exit "
            "0 means delivered). Only from here, never from a tag.",
        ),
        click.option(
            "--alert-timeout",
            type=click.FloatRange(min=0.1),
            default=10.0,
            show_default=True,
            help="Seconds a webhook may take to answer one attempt.",
        ),
        click.option(
            "--alert-max-backoff",
            type=click.FloatRange(min=0.1),
            default=300.0,
            show_default=True,
            help="Longest wait, in seconds, before an undelivered alert is tried again.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def runner_from_options(options: dict[str, Any]) -> Any:
    """The daemon's ``AlertRunner``, from (and removing) the options above."""
    from mlflow_monitor_plugin.alerts.notify import DeliverySettings
    from mlflow_monitor_plugin.alerts.runner import AlertRunner, AlertSettings

    timeout = options.pop("alert_timeout")
    delivery = DeliverySettings(
        timeout_s=timeout,
        backoff_s=min(1.0, timeout),
        budget_s=max(3 * timeout, 1.0),
        max_backoff_s=options.pop("alert_max_backoff"),
        command=options.pop("alert_command") or None,
    )
    return AlertRunner.create(AlertSettings(delivery=delivery))


def _when(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _value(rule: AlertRule, last: dict[str, Any] | None) -> str:
    if not last or last.get("value") is None:
        return (last or {}).get("reason", "") or "not evaluated yet"
    value = last["value"]
    if last.get("low") is None:
        return f"{value:g}"
    return f"{value:.3f} [{last['low']:.3f}, {last['high']:.3f}] n={last['n']}"


def alert_rows(experiment_id: str | None, experiment_name: str | None) -> list[dict[str, Any]]:
    """Each rule of the monitor with its stored state."""
    from mlflow_monitor_plugin.alerts.incidents import RuleState
    from mlflow_monitor_plugin.alerts.runner import state_key
    from mlflow_monitor_plugin.config import api
    from mlflow_monitor_plugin.config.tags import NAMESPACE, MonitorTags

    monitor = api.get_external_monitor(experiment_id=experiment_id, experiment_name=experiment_name)
    tags = MonitorTags().experiment_tags(monitor.experiment_id)
    rows = []
    for rule in monitor.alerts:
        raw = tags.get(NAMESPACE + state_key(rule.name))
        state = RuleState.from_dict(json.loads(raw) if raw else None, monitor.monitor_id, rule.name)
        rows.append({"rule": rule, "state": state})
    return rows


@click.group("alerts", invoke_without_command=True)
@experiment_options
@output_option
@click.pass_context
@handle_errors
def alerts_group(
    ctx: click.Context, experiment_id: str | None, experiment_name: str | None, output: str
) -> None:
    """The monitor's alert rules: state, last value, pending messages and history.

    \b
    Examples:
      mlflow monitor alerts -x 1
      mlflow monitor alerts -x 1 --output json
      mlflow monitor alerts test -x 1 --rule safety-pass_rate
    """
    if ctx.invoked_subcommand is not None:
        return
    rows = alert_rows(experiment_id, experiment_name)
    if output == "json":
        out = []
        for row in rows:
            state = row["state"].to_dict()
            state["outbox"] = [
                {k: v for k, v in e.items() if k != "message"} for e in state["outbox"]
            ]
            out.append({"rule": row["rule"].to_dict(), "state": state})
        click.echo(json.dumps(out, indent=2))
        return
    if not rows:
        click.echo("No alert rules. Add one with `mlflow monitor update ... --alert SPEC`.")
        return
    for row in rows:
        rule, state = row["rule"], row["state"]
        pending = ", ".join(
            f"{e['event']} (attempt {e['attempts']}{': ' + e['error'] if e.get('error') else ''})"
            for e in state.outbox
        )
        targets = ", ".join(f"{t.format}:${t.url_env}" for t in rule.targets) or "none"
        click.echo(f"{rule.name}: {rule.describe()}   targets: {targets}")
        click.echo(
            f"  state:    {state.state}"
            + (f"  incident {state.incident_id}" if state.incident_id else "")
        )
        last = state.last or {}
        click.echo(f"  last:     {_value(rule, last)}  at {_when(last.get('at_ms')) or '-'}")
        if pending:
            click.echo(f"  pending:  {pending}")
        for event in state.history[-10:]:
            detail = event.get("incident") or event.get("event_id") or ""
            click.echo(f"  {_when(event['at_ms'])}  {event['event']:<8} {detail}")


@alerts_group.command("test")
@experiment_options
@click.option("--rule", "rule_name", required=True, help="The rule whose targets get the message.")
@click.option("--alert-command", help="Also run this command, as `run --alert-command` would.")
@handle_errors
def test_command(
    experiment_id: str | None,
    experiment_name: str | None,
    rule_name: str,
    alert_command: str | None,
) -> None:
    """Send a clearly marked test message to a rule's targets, with the current numbers.

    Reads the webhook URLs from this shell's environment, as the daemon would from its own.

    \b
    Example:
      export SLACK_WEBHOOK_URL=https://hooks.slack.com/services/...
      mlflow monitor alerts test -x 1 --rule safety-drop
    """
    from mlflow_monitor_plugin.alerts.notify import DeliverySettings
    from mlflow_monitor_plugin.alerts.runner import AlertSettings, send_test
    from mlflow_monitor_plugin.config import api

    exp_id = api.resolve_experiment_id(experiment_id, experiment_name)
    settings = AlertSettings(delivery=DeliverySettings(command=alert_command))
    results = send_test(exp_id, rule_name, settings)
    if not results:
        raise click.ClickException(f"Rule {rule_name} has no targets to send to.")
    failed = 0
    for target, delivery in results:
        if delivery.ok:
            click.echo(f"{target}: delivered")
        else:
            failed += 1
            click.echo(f"{target}: NOT delivered ({delivery.error})")
    if failed:
        raise click.ClickException(
            f"{failed} of {len(results)} target(s) did not take the message."
        )


COMMANDS = [alerts_group]
