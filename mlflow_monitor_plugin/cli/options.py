"""Options and error handling shared by the ``mlflow monitor`` commands."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from mlflow_monitor_plugin.exceptions import MonitorError


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


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one-line CLI errors (exit code 1)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return func(*args, **kwargs)
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
