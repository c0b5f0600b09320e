"""The cost options of ``create`` and ``update``: a daily budget, a per-call cost, model prices."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from mlflow_monitor_plugin.config.prices import (
    PRICES_ENV,
    CostConfig,
    cost_from,
    read_prices_file,
)
from mlflow_monitor_plugin.exceptions import MonitorConfigError

PRICE_FORM = "MODEL=INPUT,OUTPUT (USD per million tokens), e.g. openai:/gpt-4.1-mini=0.4,1.6"


def cost_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--daily-budget-usd",
            type=str,
            help="Most the judges may spend on one UTC day's traces, in USD: sampling stops "
            "for the rest of the day when it is reached (see --pace). 'none' removes it.",
        ),
        click.option(
            "--call-cost-usd",
            type=str,
            help="The stated cost of one judge call, in USD: what the budget counts for a call "
            "whose tokens or price are unknown. 'none' removes it.",
        ),
        click.option(
            "--price",
            "prices",
            multiple=True,
            metavar="MODEL=IN,OUT",
            help=f"A model's price, overriding MLflow's catalog: {PRICE_FORM}. Repeatable.",
        ),
        click.option(
            "--pace/--no-pace",
            default=None,
            help="Lower the sample rate ahead of time so that the budget lasts the whole day at "
            "the day's traffic so far, instead of judging at the full rate until it runs out.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _amount(option: str, text: str | None) -> Any:
    if text is None or text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        message = f"expected a number of USD, got {text!r}"
        raise click.BadParameter(message, param_hint=option) from None


def _price(spec: str) -> tuple[str, dict[str, Any]]:
    model, sep, numbers = spec.rpartition("=")
    parts = numbers.split(",")
    bad = click.BadParameter(f"expected {PRICE_FORM}, got {spec!r}", param_hint="--price")
    if not sep or not model.strip() or len(parts) != 2:
        raise bad
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise bad from None
    return model.strip(), {"input_per_million": values[0], "output_per_million": values[1]}


def cost_for_cli(
    file_data: dict[str, Any] | None,
    current: CostConfig | None,
    budget: str | None,
    call_cost: str | None,
    prices: tuple[str, ...],
    pace: bool | None,
) -> CostConfig | None:
    """The cost settings of the file's ``cost`` key, the current ones and the flags (a flag
    wins); None when none of them is given (``update`` then keeps the current settings)."""
    from_file = (file_data or {}).get("cost")
    given = budget is not None or call_cost is not None or prices or pace is not None
    if from_file is None and not given:
        return None
    merged: dict[str, Any] = (current or CostConfig()).to_dict()
    if from_file is not None:
        if not isinstance(from_file, dict):
            raise click.BadParameter("the file's 'cost' must be a mapping", param_hint="cost")
        merged = dict(from_file)
    if budget is not None:
        merged["daily_budget_usd"] = _amount("--daily-budget-usd", budget)
    if call_cost is not None:
        merged["call_cost_usd"] = _amount("--call-cost-usd", call_cost)
    if prices:
        merged["prices"] = {**(merged.get("prices") or {}), **dict(_price(p) for p in prices)}
    if pace is not None:
        merged["pace"] = pace
    try:
        return cost_from(merged)
    except MonitorConfigError as e:
        raise click.BadParameter(str(e), param_hint="cost") from None


def use_prices_file(path: str) -> None:
    """Check the daemon's prices file now (a bad one is a usage error, exit 2) and hand it to
    the engines and scoring processes through the environment."""
    import os

    try:
        read_prices_file(path)
    except MonitorConfigError as e:
        raise click.BadParameter(str(e), param_hint="--prices") from None
    os.environ[PRICES_ENV] = os.path.abspath(path)
