"""What judge calls cost: the monitor's cost settings, and the price of a judge's model.

A price comes, first found, from the monitor's own ``cost.prices``, a prices file (the daemon's
``--prices FILE`` or ``MLFLOW_MONITOR_PRICES``), or MLflow's model catalog as MLflow 3.17 ships it
inside the package (``mlflow/utils/model_catalog/<provider>.json``). MLflow would fetch a newer
catalog from GitHub at a judge's first call (``MLFLOW_MODEL_CATALOG_URI``, three retries with
backoff, ~7-9 s lost when there is no network); the daemon turns that fetch off
(``offline_catalog``) unless the user set the variable (a mirror, a ``file://`` copy), so the
first pass loses nothing. A model found nowhere has no price: its tokens are still counted,
its cost is unknown, never guessed.

Validation is pure and raises ``MonitorConfigError`` naming the field; the catalog read is
local I/O.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_monitor_plugin.exceptions import MonitorConfigError

_logger = logging.getLogger(__name__)

PRICES_ENV = "MLFLOW_MONITOR_PRICES"
CATALOG_ENV = "MLFLOW_MODEL_CATALOG_URI"  # MLflow's own variable
_PRICE_KEYS = {"input_per_million", "output_per_million"}


def check_amount(field_name: str, value: Any, *, optional: bool = True) -> float | None:
    """A non-negative, finite number of dollars (or dollars per million tokens)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MonitorConfigError(field_name, value, "expected a non-negative number of USD")
    if value < 0:
        raise MonitorConfigError(field_name, value, "expected a non-negative number of USD")
    return float(value)


@dataclass(frozen=True)
class Price:
    """USD per token of a model's prompt and completion, and where the figure came from."""

    input_per_token: float
    output_per_token: float
    source: str = "config"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input_per_token + completion_tokens * self.output_per_token


def _price_from(field_name: str, value: Any, source: str) -> Price:
    if not isinstance(value, Mapping) or not set(value) or set(value) - _PRICE_KEYS:
        raise MonitorConfigError(
            field_name,
            value,
            "expected {'input_per_million': USD, 'output_per_million': USD}",
        )
    prompt = check_amount(f"{field_name}.input_per_million", value.get("input_per_million", 0))
    completion = check_amount(
        f"{field_name}.output_per_million", value.get("output_per_million", 0)
    )
    return Price((prompt or 0.0) / 1e6, (completion or 0.0) / 1e6, source)


def prices_from(field_name: str, value: Any, source: str = "config") -> dict[str, Price]:
    """``{model: {input_per_million, output_per_million}}`` validated; a model is a URI
    (``openai:/gpt-4.1-mini``) or a bare name (``gpt-4.1-mini``, any provider)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MonitorConfigError(field_name, value, "expected a dict of {model: price}")
    out = {}
    for model, price in value.items():
        if not isinstance(model, str) or not model.strip():
            raise MonitorConfigError(field_name, model, "expected model names as keys")
        out[model.strip()] = _price_from(f"{field_name}[{model!r}]", price, source)
    return out


@dataclass
class CostConfig:
    """A monitor's cost settings (``cost`` in its config).

    ``daily_budget_usd`` caps what the judges may spend on one UTC day's traces: the daemon
    stops sampling that day's traces when the budget is reached, or, with ``pace``, lowers the
    sample rate ahead of time so that the budget lasts the day at the day's traffic so far
    (see docs/cost.md); ``call_cost_usd`` is the stated
    cost of one judge call, used by the budget for calls whose tokens or price are unknown
    (without it such calls cannot be budgeted and the budget says so); ``prices`` override the
    price of a model.
    """

    daily_budget_usd: float | None = None
    call_cost_usd: float | None = None
    prices: dict[str, Price] = field(default_factory=dict)
    pace: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.daily_budget_usd is not None:
            out["daily_budget_usd"] = self.daily_budget_usd
        if self.call_cost_usd is not None:
            out["call_cost_usd"] = self.call_cost_usd
        if self.pace:
            out["pace"] = True
        if self.prices:
            out["prices"] = {
                model: {
                    "input_per_million": p.input_per_token * 1e6,
                    "output_per_million": p.output_per_token * 1e6,
                }
                for model, p in self.prices.items()
            }
        return out

    @property
    def empty(self) -> bool:
        return not self.to_dict()


def cost_from(value: Any) -> CostConfig:
    """A validated ``CostConfig`` from itself, its dict form or None."""
    if value is None:
        return CostConfig()
    if isinstance(value, CostConfig):
        value = value.to_dict()
    if not isinstance(value, Mapping):
        raise MonitorConfigError("cost", value, "expected a dict or CostConfig")
    extra = set(value) - {"daily_budget_usd", "call_cost_usd", "prices", "pace"}
    if extra:
        raise MonitorConfigError(
            "cost", sorted(extra), "expected only daily_budget_usd, call_cost_usd, prices, pace"
        )
    budget = check_amount("cost.daily_budget_usd", value.get("daily_budget_usd"))
    call = check_amount("cost.call_cost_usd", value.get("call_cost_usd"))
    pace = value.get("pace", False)
    if not isinstance(pace, bool):
        raise MonitorConfigError("cost.pace", pace, "expected true or false")
    return CostConfig(budget, call, prices_from("cost.prices", value.get("prices")), pace)


def read_prices_file(path: str | Path) -> dict[str, Price]:
    """A prices file: JSON or YAML ``{model: {input_per_million, output_per_million}}``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise MonitorConfigError(
            "prices file", str(path), f"expected a readable file ({e})"
        ) from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:
        raise MonitorConfigError("prices file", str(path), f"expected JSON or YAML ({e})") from None
    return prices_from(f"prices file {path}", data, source=f"file:{path.name}")


def split_model(model: str) -> tuple[str | None, str]:
    """``openai:/gpt-4.1-mini`` -> (openai, gpt-4.1-mini); a bare name has no provider."""
    if ":/" in model:
        provider, name = model.split(":/", 1)
        return provider, name.lstrip("/")
    return None, model


def catalog_price(model: str) -> Price | None:
    """The price MLflow's model catalog gives ``model`` (a URI), None when it has none. The
    bundled catalog, unless the user pointed ``MLFLOW_MODEL_CATALOG_URI`` somewhere."""
    provider, name = split_model(model)
    if not provider:
        return None
    try:
        from mlflow.utils import providers

        if os.environ.get(CATALOG_ENV):
            info = providers._lookup_model_info(name, custom_llm_provider=provider)
        else:
            info = providers._load_bundled_provider(provider).get(name)
    except Exception as e:  # a private part of MLflow: without it there is no catalog price
        _logger.debug("MLflow's model catalog is not readable: %s", e)
        return None
    if not info or info.get("input_cost_per_token") is None:
        return None
    return Price(
        float(info.get("input_cost_per_token") or 0.0),
        float(info.get("output_cost_per_token") or 0.0),
        "mlflow-catalog",
    )


class PriceBook:
    """Where a model's price is looked up: the monitor's prices, a file's, MLflow's catalog."""

    def __init__(self, config: Mapping[str, Price] | None = None, file_path: str | None = None):
        self.config = dict(config or {})
        path = file_path if file_path is not None else os.environ.get(PRICES_ENV)
        self.file = read_prices_file(path) if path else {}
        self._catalog: dict[str, Price | None] = {}

    def price(self, model: str | None) -> Price | None:
        if not model:
            return None
        _, name = split_model(model)
        for table in (self.config, self.file):
            found = table.get(model) or table.get(name)
            if found is not None:
                return found
        if model not in self._catalog:
            self._catalog[model] = catalog_price(model)
        return self._catalog[model]


def offline_catalog() -> bool:
    """Turn off MLflow's fetch of its model catalog from the internet in this process (and the
    processes it starts), unless the user set ``MLFLOW_MODEL_CATALOG_URI``; MLflow then reads
    the catalog it ships. True when it changed the environment."""
    if CATALOG_ENV in os.environ:
        return False
    os.environ[CATALOG_ENV] = ""
    return True
