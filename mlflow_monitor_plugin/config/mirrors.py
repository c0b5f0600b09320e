"""The monitor's own judges, listed in MLflow's judge registry: the experiment's Judges page and
``mlflow.genai.scorers.list_scorers()`` show them where MLflow users look.

``sync`` registers each judge of the monitor's config under its feedback name, as the MLflow
scorer it runs (a built-in scorer, ``Guidelines``, a ``make_judge`` prompt), and, when its
model is a ``gateway:/`` endpoint, starts it there with its sample rate and filter (MLflow
accepts a rate above 0 for gateway models only; the others are listed without one). A new
version is registered only when the definition changed; a judge the config no longer has is
deleted from the registry if the registry still holds the monitor's version of it (an edit in
MLflow since makes it MLflow's). The monitor's config wins for its own names: a judge of the
same name registered in MLflow by someone else gets the monitor's definition as a new version
(MLflow keeps the older versions). ``create``, ``update`` and ``delete`` keep the registry in
step, and the daemon does so for a config written before it did (``in_step``).

Listing a judge in MLflow never makes MLflow run it too: the daemon runs every judge of a
monitored experiment, and holds MLflow's own online-scoring runner off the experiment
(engine/native.py). Code judges live in the daemon's environment, not in MLflow: they are not
listed. What could not be listed, and why, is kept in the tag ``mlflow_monitor.mirrors`` for
``status``; a failure never fails the config's own write.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from mlflow_monitor_plugin.config.model import ExternalMonitor
from mlflow_monitor_plugin.config.scorers import Definition, definitions

_logger = logging.getLogger(__name__)

MIRRORS_KEY = "mirrors"  # tag mlflow_monitor.mirrors: what sync wrote, and what it could not
NOT_LISTED_CODE = "a code judge lives in the daemon's environment, not in MLflow's registry"
NO_REGISTRY = "this tracking store keeps no judge registry (MLflow's file store)"


def _store(client: Any) -> Any:
    return client._tracking_client.store


def _digest(serialized: str) -> str:
    return hashlib.sha256(serialized.encode()).hexdigest()[:16]


def _serialized(definition: Definition) -> str:
    """The MLflow scorer a judge runs, as MLflow serializes it."""
    scorer = definition.make()
    data = scorer.model_dump()
    data.pop("mlflow_version", None)  # not part of what the judge is
    return json.dumps(data, sort_keys=True, default=str)


def _is_gateway(model: str | None) -> bool:
    return bool(model) and str(model).startswith("gateway:/")


def read_state(tags: Any, experiment_id: str, monitor_id: str) -> dict[str, Any]:
    """What ``sync`` last wrote for this monitor (empty for another monitor's state)."""
    try:
        state = tags.read_json(experiment_id, MIRRORS_KEY)
    except Exception:  # damaged: sync writes it again
        return {}
    return state if isinstance(state, dict) and state.get("monitor_id") == monitor_id else {}


def in_step(state: dict[str, Any], monitor: ExternalMonitor) -> bool:
    return state.get("config_version") == monitor.config_version


def sync(monitor: ExternalMonitor, tags: Any) -> dict[str, str]:
    """List the monitor's judges in MLflow's registry as its config has them; returns what
    could not be listed, by judge. Never raises for the registry's sake."""
    client = tags.client
    exp = monitor.experiment_id
    previous = read_state(tags, exp, monitor.monitor_id).get("judges", {})
    problems: dict[str, str] = {}
    written: dict[str, dict[str, Any]] = {}
    try:
        current = {v.scorer_name: v for v in _store(client).list_scorers(exp)}
        configs = _configs(client, current)
    except NotImplementedError:
        current, configs = None, {}
    except Exception as e:
        _logger.warning("Could not read MLflow's judge registry of experiment %s: %s", exp, e)
        current, configs = None, {}
    for definition in definitions(monitor.assessments_config):
        if definition.make.kind == "code":
            problems[definition.name] = NOT_LISTED_CODE
        elif current is None:
            problems[definition.name] = NO_REGISTRY
        else:
            try:
                written[definition.name] = _list_one(
                    client, exp, definition, current.get(definition.name), previous, configs
                )
            except Exception as e:
                problems[definition.name] = _reason(e)
                _logger.warning(
                    "Judge %s of experiment %s is not listed in MLflow: %s",
                    definition.name, exp, problems[definition.name],
                )  # fmt: skip
    if current is not None:
        for name, mine in previous.items():
            if name not in written and name not in problems:
                _delete_if_mine(client, exp, name, mine, current.get(name))
    _save(tags, monitor, written, problems)
    return problems


def _configs(client: Any, current: dict[str, Any]) -> dict[str, Any]:
    ids = [v.scorer_id for v in current.values()]
    found = _store(client).get_online_scoring_configs(ids) if ids else []
    return {c.scorer_id: c for c in found}


def _list_one(
    client: Any,
    exp: str,
    definition: Definition,
    existing: Any,
    previous: dict[str, Any],
    configs: dict[str, Any],
) -> dict[str, Any]:
    """Register (when changed) and start (a gateway model) one judge; what was written."""
    serialized = _serialized(definition)
    digest = _digest(serialized)
    mine = previous.get(definition.name) or {}
    ours = existing is not None and (
        mine.get("scorer_id") == existing.scorer_id
        and mine.get("version") == existing.scorer_version
    )
    store = _store(client)
    if ours and mine.get("digest") == digest:
        scorer_id, version = existing.scorer_id, existing.scorer_version
    else:
        if existing is not None and not ours:
            _logger.info(
                "The judge %s registered in MLflow on experiment %s (version %s) gets the "
                "monitor's definition as a new version: the monitor's config wins for its names",
                definition.name, exp, existing.scorer_version,
            )  # fmt: skip
        made = store.register_scorer(exp, definition.name, serialized)
        scorer_id, version = made.scorer_id, made.scorer_version
    rate = definition.rate if _is_gateway(definition.model) else None
    if rate is not None:
        config = configs.get(scorer_id)
        wanted = (float(rate), definition.filter_string or None)
        have = None if config is None else (float(config.sample_rate), config.filter_string or None)
        if have != wanted:
            store.upsert_online_scoring_config(exp, definition.name, *wanted)
    return {"scorer_id": scorer_id, "version": int(version), "digest": digest, "rate": rate}


def _delete_if_mine(client: Any, exp: str, name: str, mine: dict[str, Any], existing: Any) -> None:
    """Delete a judge the config dropped, if the registry still holds the monitor's version."""
    if existing is None:
        return
    if existing.scorer_id != mine.get("scorer_id") or existing.scorer_version != mine.get(
        "version"
    ):
        _logger.info(
            "Judge %s, dropped from the monitor of experiment %s, was changed in MLflow since: "
            "it stays there, as MLflow's",
            name, exp,
        )  # fmt: skip
        return
    try:
        _store(client).delete_scorer(exp, name, None)
    except Exception as e:
        _logger.warning("Could not delete judge %s from MLflow's registry: %s", name, _reason(e))


def remove(monitor: ExternalMonitor, tags: Any) -> None:
    """The monitor is deleted: delete the judges it listed that MLflow still holds as it
    wrote them."""
    mine = read_state(tags, monitor.experiment_id, monitor.monitor_id).get("judges", {})
    if not mine:
        return
    try:
        current = {
            v.scorer_name: v for v in _store(tags.client).list_scorers(monitor.experiment_id)
        }
    except Exception as e:
        _logger.warning("Could not read MLflow's judge registry: %s", _reason(e))
        return
    for name, entry in mine.items():
        _delete_if_mine(tags.client, monitor.experiment_id, name, entry, current.get(name))


def _save(
    tags: Any, monitor: ExternalMonitor, written: dict[str, Any], problems: dict[str, str]
) -> None:
    value = {
        "monitor_id": monitor.monitor_id,
        "config_version": monitor.config_version,
        "judges": written,
        "problems": problems,
    }
    try:
        tags.write_json(monitor.experiment_id, MIRRORS_KEY, value)
    except Exception as e:  # status only; the next sync writes it again
        _logger.warning("Could not save the judges listed in MLflow: %s", _reason(e))


def _reason(e: BaseException) -> str:
    message = getattr(e, "message", None) or str(e)
    return f"{type(e).__name__}: {message}"[:500]
