"""Options and error handling shared by the ``mlflow monitor`` commands."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from mlflow_monitor_plugin.exceptions import MonitorConfigError, MonitorError


def experiment_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``-x/--experiment-id`` and ``--experiment-name``, as MLflow's own CLI spells them."""
    func = click.option(
        "--experiment-name",
        envvar="MLFLOW_EXPERIMENT_NAME",
        help="Experiment name. Defaults to $MLFLOW_EXPERIMENT_NAME.",
    )(func)
    return click.option(
        "-x",
        "--experiment-id",
        envvar="MLFLOW_EXPERIMENT_ID",
        help="Experiment ID. Defaults to $MLFLOW_EXPERIMENT_ID, else the default experiment.",
    )(func)


def output_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--output",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="Output format.",
    )(func)


class ConfigRefused(click.ClickException):
    """A config, option or argument refused: ``Error: <message>`` and exit code 2, click's
    convention for usage errors, without the usage text (the message names the field, the
    value and what is allowed). Exit codes: 0 done, 1 a failure (the store, the judge, the
    export), 2 refused input. See docs/configuration.md#exit-codes."""

    exit_code = 2


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one-line CLI errors: a refused config exits 2, anything else 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return func(*args, **kwargs)
        except MonitorConfigError as e:
            raise ConfigRefused(str(e)) from e
        except (MonitorError, MlflowException) as e:
            message = e.message if isinstance(e, MlflowException) else str(e)
            raise click.ClickException(message) from e

    return wrapper


def log_level_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--log-level",
        type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
        default="INFO",
        show_default=True,
        envvar="MLFLOW_MONITOR_LOG_LEVEL",
        help="Log level of the plugin's messages (stderr).",
    )(func)
