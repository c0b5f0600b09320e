"""The Databricks-compatible monitor API: create, get, update, delete and list monitors.

Signatures follow ``databricks.agents.monitoring`` so that Databricks code runs unchanged but for
its import line. The experiment is the active one unless ``experiment_id`` or ``experiment_name``
is given.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shlex
import time
import uuid
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from mlflow_monitor_plugin.config import mirrors, registered
from mlflow_monitor_plugin.config.alerts import AlertRule, rules_from
from mlflow_monitor_plugin.config.model import (
    AssessmentsSuiteConfig,
    ExternalMonitor,
    check_identifier,
)
from mlflow_monitor_plugin.config.prices import CostConfig, cost_from
from mlflow_monitor_plugin.config.shadows import promoted
from mlflow_monitor_plugin.config.tags import CONFIG_TAG, MonitorTags
from mlflow_monitor_plugin.exceptions import (
    MonitorConfigError,
    MonitorExistsError,
    MonitorNotFoundError,
    MonitorStorageError,
)
from mlflow_monitor_plugin.redaction import RedactionPolicy, masker_for, policy_from

_logger = logging.getLogger(__name__)

EXPORT_ROOT_ENV = "MLFLOW_MONITOR_EXPORT_ROOT"
DEFAULT_EXPORT_ROOT = "mlflow_monitor_exports"


def resolve_experiment_id(
    experiment_id: str | None = None,
    experiment_name: str | None = None,
    client: MlflowClient | None = None,
) -> str:
    """The explicit experiment, else the active one (``set_experiment``, MLFLOW_EXPERIMENT_*)."""
    client = client or MlflowClient()
    if experiment_id is not None and experiment_name is not None:
        raise MonitorConfigError(
            "experiment_id/experiment_name",
            (experiment_id, experiment_name),
            "give one of them, not both",
        )
    if experiment_name is not None:
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            raise MonitorNotFoundError(f"Experiment named {experiment_name!r} does not exist.")
        return experiment.experiment_id
    if experiment_id is not None:
        return str(experiment_id)
    from mlflow.tracking.fluent import _get_experiment_id

    return str(_get_experiment_id())


def default_export_uri(catalog_name: str, schema_name: str, experiment_id: str) -> str:
    root = os.environ.get(EXPORT_ROOT_ENV) or DEFAULT_EXPORT_ROOT
    return _absolute(f"{root.rstrip('/')}/{catalog_name}/{schema_name}/trace_logs_{experiment_id}")


def _absolute(uri: str) -> str:
    """Local paths become absolute now, so the daemon finds them from any working directory."""
    if "://" in uri:
        return uri
    return str(Path(uri).expanduser().resolve())


def check_filters(suite: AssessmentsSuiteConfig, experiment_id: str, client: MlflowClient) -> None:
    """Every judge's and stratum's ``filter_string``, tried in one real search of the
    experiment's traces, so a filter MLflow rejects is refused now with MLflow's own message,
    not in the daemon."""
    from mlflow.exceptions import MlflowException

    filters = [(f"strata[{i}].filter_string", s.filter_string) for i, s in
               enumerate(suite.strata or ())]  # fmt: skip
    for index, judge in enumerate(suite.assessments or []):
        filters.append((f"assessments[{index}].filter_string", judge.filter_string))
        filters += [
            (f"assessments[{index}].strata[{i}].filter_string", s.filter_string)
            for i, s in enumerate(getattr(judge, "strata", None) or ())
        ]
    for where, filter_string in filters:
        if not filter_string:
            continue
        try:
            client.search_traces(
                locations=[experiment_id],
                filter_string=filter_string,
                max_results=1,
                include_spans=False,
            )
        except MlflowException as e:
            raise MonitorConfigError(
                where,
                filter_string,
                f"expected a trace search filter MLflow accepts; MLflow says: {e.message}",
            ) from None


def _now_ms() -> int:
    return int(time.time() * 1000)


def redaction_policy(value: RedactionPolicy | dict[str, Any] | str | None) -> RedactionPolicy:
    """The validated policy, refused when this process could not apply it: a built-in kind
    without the ``pii`` extra, or ``hash`` without the key in the environment."""
    policy = policy_from(value)
    masker_for(policy)
    return policy


def create_external_monitor(
    *,
    catalog_name: str,
    schema_name: str,
    assessments_config: AssessmentsSuiteConfig | dict[str, Any],
    experiment_id: str | None = None,
    experiment_name: str | None = None,
    export_uri: str | None = None,
    alerts: list[AlertRule | dict[str, Any] | str] | None = None,
    cost: CostConfig | dict[str, Any] | None = None,
    pii: RedactionPolicy | dict[str, Any] | str | None = None,
) -> ExternalMonitor:
    """Create the monitor of an experiment; it starts with the next pass of ``mlflow monitor run``.

    Traces are exported to ``<MLFLOW_MONITOR_EXPORT_ROOT>/<catalog>/<schema>/trace_logs_<id>``
    unless ``export_uri`` (a local path or a URI pyarrow understands) is given. ``alerts`` are
    the monitor's alert rules (see docs/alerts.md); ``cost`` its daily budget and model prices
    (see docs/cost.md); ``pii`` what personal data the export and alert messages mask
    (``"standard"`` or a mapping, see docs/configuration.md#personal-data).
    """
    check_identifier("catalog_name", catalog_name)
    check_identifier("schema_name", schema_name)
    suite = AssessmentsSuiteConfig.from_dict(assessments_config)
    costs = cost_from(cost)
    policy = redaction_policy(pii)
    if export_uri is not None and (not isinstance(export_uri, str) or not export_uri.strip()):
        raise MonitorConfigError("export_uri", export_uri, "expected a local path or a URI")
    store = MonitorTags()
    exp_id = resolve_experiment_id(experiment_id, experiment_name, store.client)
    rules = rules_from(alerts, judge_names(suite, exp_id, store.client))
    tags = store.experiment_tags(exp_id)
    check_filters(suite, exp_id, store.client)
    if CONFIG_TAG in tags:
        raise MonitorExistsError(
            f"Experiment {exp_id} already has a monitor; use update_external_monitor() to change "
            "it, or delete_external_monitor() first."
        )
    now = _now_ms()
    monitor = ExternalMonitor(
        experiment_id=exp_id,
        assessments_config=suite,
        catalog_name=catalog_name,
        schema_name=schema_name,
        export_uri=_absolute(export_uri)
        if export_uri
        else default_export_uri(catalog_name, schema_name, exp_id),
        monitor_id=uuid.uuid4().hex,
        created_at_ms=now,
        updated_at_ms=now,
        alerts=rules,
        cost=costs,
        pii=policy,
    )
    store.write_config(monitor)
    mirrors.sync(monitor, store)
    monitor.registered = tuple(registered.read(exp_id, store.client))
    return monitor


def judge_names(suite: AssessmentsSuiteConfig, experiment_id: str, client: Any) -> list[str]:
    """The judges alert rules may name: the suite's, and those started in MLflow's registry."""
    started = [j.name for j in registered.read(experiment_id, client) if j.started]
    return [*suite.feedback_names, *(n for n in started if n not in suite.feedback_names)]


def get_external_monitor(
    *, experiment_id: str | None = None, experiment_name: str | None = None
) -> ExternalMonitor:
    """The monitor of an experiment; ``MonitorNotFoundError`` when it has none."""
    store = MonitorTags()
    exp_id = resolve_experiment_id(experiment_id, experiment_name, store.client)
    monitor = store.read_config(exp_id)
    if monitor is None:
        raise MonitorNotFoundError(f"Experiment {exp_id} has no monitor.")
    return monitor


def update_external_monitor(
    *,
    assessments_config: AssessmentsSuiteConfig | dict[str, Any],
    experiment_id: str | None = None,
    experiment_name: str | None = None,
    alerts: list[AlertRule | dict[str, Any] | str] | None = None,
    cost: CostConfig | dict[str, Any] | None = None,
    pii: RedactionPolicy | dict[str, Any] | str | None = None,
) -> ExternalMonitor:
    """Replace the monitor's assessments config whole (stateless, as Databricks documents).

    The export location is fixed at creation. ``alerts=None`` keeps the current alert rules
    (checked against the new judges), a list replaces them; ``cost=None`` keeps the cost
    settings, a dict replaces them; ``pii=None`` keeps the redaction policy, ``"off"`` ends
    it, anything else replaces it (files already exported stay as written: re-export a period
    with ``mlflow monitor export`` to apply the new policy to it). A rejected update changes
    nothing.
    A judge it adds scores new traces from then on; the backfill command for past ones is logged
    (INFO).
    """
    suite = AssessmentsSuiteConfig.from_dict(assessments_config)
    costs = cost_from(cost) if cost is not None else None
    policy = redaction_policy(pii) if pii is not None else None
    store = MonitorTags()
    exp_id = resolve_experiment_id(experiment_id, experiment_name, store.client)
    names = judge_names(suite, exp_id, store.client)
    if alerts is not None:
        rules_from(alerts, names)
    tags = store.experiment_tags(exp_id)
    current = store.read_config(exp_id)
    if current is None:
        raise MonitorNotFoundError(f"Experiment {exp_id} has no monitor to update.")
    check_filters(suite, exp_id, store.client)
    updated = ExternalMonitor(
        experiment_id=exp_id,
        assessments_config=suite,
        catalog_name=current.catalog_name,
        schema_name=current.schema_name,
        export_uri=current.export_uri,
        monitor_id=current.monitor_id,
        config_version=current.config_version + 1,
        created_at_ms=current.created_at_ms,
        updated_at_ms=max(_now_ms(), current.updated_at_ms),
        alerts=rules_from(current.alerts if alerts is None else alerts, names),
        cost=current.cost if costs is None else costs,
        pii=current.pii if policy is None else policy,
    )
    store.write_config(updated, previous=tags)
    mirrors.sync(updated, store)
    updated.registered = tuple(registered.read(exp_id, store.client))
    added = added_judges(current, updated)
    if added:
        _logger.info(
            "The monitor of experiment %s scores %s on new traces from now on; to score past "
            "traces too, run: %s",
            exp_id, ", ".join(added), backfill_command(updated, added),
        )  # fmt: skip
    return updated


def promote_shadow(
    *, judge: str, experiment_id: str | None = None, experiment_name: str | None = None
) -> ExternalMonitor:
    """Make the shadow of ``judge`` the judge, in one config update: from the daemon's next
    pass the candidate scores the traces the judge has not (under the judge's name, so its
    windows go on), and no trace the judge scored is scored again. The judge's sample rate and
    filter carry over unless the candidate sets its own. ``MonitorConfigError`` when the judge
    has no shadow."""
    current = get_external_monitor(experiment_id=experiment_id, experiment_name=experiment_name)
    suite = current.assessments_config
    judges, shadows = promoted(list(suite.assessments or []), dict(suite.shadows or {}), judge)
    new_suite = AssessmentsSuiteConfig(
        sample=suite.sample, paused=suite.paused, assessments=judges, model=suite.model,
        strata=suite.strata, shadows=shadows or None, shadows_in_budget=suite.shadows_in_budget,
    )  # fmt: skip
    return update_external_monitor(
        assessments_config=new_suite, experiment_id=current.experiment_id
    )


def added_judges(before: ExternalMonitor, after: ExternalMonitor) -> list[str]:
    """The judges ``after`` runs that ``before`` did not, in config order."""
    old = {n for j in before.assessments_config.assessments or [] for n in j.feedback_names}
    new = [n for j in after.assessments_config.assessments or [] for n in j.feedback_names]
    return [n for n in new if n not in old]


def backfill_command(monitor: ExternalMonitor, judges: list[str]) -> str:
    """The command that scores ``judges`` on the traces since the monitor was created."""
    since = dt.datetime.fromtimestamp(monitor.created_at_ms / 1000, dt.timezone.utc).date()
    names = " ".join(f"--judge {shlex.quote(name)}" for name in judges)
    return f"mlflow monitor backfill -x {monitor.experiment_id} --since {since} {names}"


def delete_external_monitor(
    *, experiment_id: str | None = None, experiment_name: str | None = None
) -> None:
    """Remove the monitor (config and checkpoints, and the judges it listed in MLflow's
    registry). Verdicts already logged and exports stay."""
    store = MonitorTags()
    exp_id = resolve_experiment_id(experiment_id, experiment_name, store.client)
    tags = store.experiment_tags(exp_id)
    if CONFIG_TAG not in tags:
        raise MonitorNotFoundError(f"Experiment {exp_id} has no monitor.")
    try:
        current = store.read_config(exp_id, registered=False)
    except MonitorStorageError:
        current = None  # unreadable: nothing of it can be found in MLflow's registry either
    if current is not None:
        mirrors.remove(current, store)  # before the tags that say which judges are ours
    store.delete_namespace(exp_id, tags)


def list_external_monitors() -> list[ExternalMonitor]:
    """Every monitor on the tracking server. A monitor whose tags cannot be read is left out;
    ``get_external_monitor`` on its experiment says why."""
    store = MonitorTags()
    monitors = []
    for exp_id in store.monitored_experiment_ids():
        try:
            monitor = store.read_config(exp_id)
        except (MonitorStorageError, MonitorNotFoundError) as e:
            _logger.warning("Skipping the monitor of experiment %s: %s", exp_id, e)
            continue
        if monitor is not None:
            monitors.append(monitor)
    return monitors
