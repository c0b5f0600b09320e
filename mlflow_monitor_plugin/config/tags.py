"""Monitor config and checkpoints in experiment tags, under the ``mlflow_monitor.`` namespace.

A config up to one tag value (20,000 characters) is stored whole in ``mlflow_monitor.config``.
A larger one is split: its parts go to ``mlflow_monitor.config.v<version>.<i>`` first, then the
head tag is switched to point at them, with their SHA-256, so a reader never sees half an update.
Nothing read here is ever executed: it is parsed as JSON and validated, nothing more.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_monitor_plugin.config.model import ExternalMonitor
from mlflow_monitor_plugin.exceptions import (
    MonitorConfigError,
    MonitorNotFoundError,
    MonitorStorageError,
)
from mlflow_monitor_plugin.redact import assert_no_secret

_logger = logging.getLogger(__name__)

NAMESPACE = "mlflow_monitor."
CONFIG_TAG = NAMESPACE + "config"
MAX_TAG_VALUE = 20_000
MAX_PARTS = 50

# What the store says when two writers create the same new tag at once: MLflow's SQL store sets
# a tag with a SELECT then an INSERT, so the second INSERT hits the primary key, and MLflow
# passes the driver's message on as BAD_REQUEST (over REST too, as a RestException). Seen on
# SQLite and PostgreSQL; the MySQL and SQL Server wordings are their drivers' for the same error.
_DUPLICATE_KEY_MARKERS = (
    "UNIQUE constraint failed",  # sqlite3.IntegrityError
    "duplicate key value violates unique constraint",  # psycopg2.errors.UniqueViolation
    "Duplicate entry",  # MySQL 1062
    "Cannot insert duplicate key",  # SQL Server 2627
)


def part_key(version: int, index: int) -> str:
    return f"{CONFIG_TAG}.v{version}.{index}"


def split_document(document: str, version: int, limit: int = MAX_TAG_VALUE) -> dict[str, str]:
    """The tags that store ``document``: one head tag, plus parts when it exceeds ``limit``."""
    if len(document) <= limit:
        return {CONFIG_TAG: document}
    parts = [document[i : i + limit] for i in range(0, len(document), limit)]
    if len(parts) > MAX_PARTS:
        raise MonitorConfigError(
            "assessments_config",
            f"<{len(document)} characters of JSON>",
            f"the stored config may be at most {MAX_PARTS * limit} characters",
        )
    head = {
        "schema_version": 1,
        "split": {
            "version": version,
            "parts": len(parts),
            "sha256": hashlib.sha256(document.encode()).hexdigest(),
        },
    }
    tags = {part_key(version, i): part for i, part in enumerate(parts)}
    tags[CONFIG_TAG] = json.dumps(head)  # written last: see MonitorTags.write_config
    return tags


def join_document(tags: dict[str, str], experiment_id: str) -> str | None:
    """The config document stored in ``tags``, or None when there is none."""
    head = tags.get(CONFIG_TAG)
    if head is None:
        return None
    parsed = _parse_json(head, CONFIG_TAG, experiment_id)
    split = parsed.get("split") if isinstance(parsed, dict) else None
    if split is None:
        return head
    try:
        version, count, digest = int(split["version"]), int(split["parts"]), str(split["sha256"])
    except (KeyError, TypeError, ValueError):
        raise MonitorStorageError(
            f"Tag {CONFIG_TAG!r} of experiment {experiment_id} has a malformed 'split' header: "
            f"{split!r}; expected version, parts and sha256."
        ) from None
    missing = [part_key(version, i) for i in range(count) if part_key(version, i) not in tags]
    if missing:
        raise MonitorStorageError(
            f"Monitor config of experiment {experiment_id} is split across {count} tags but "
            f"{len(missing)} are missing ({', '.join(missing[:3])}). Run "
            "`mlflow monitor delete` and create the monitor again."
        )
    document = "".join(tags[part_key(version, i)] for i in range(count))
    if hashlib.sha256(document.encode()).hexdigest() != digest:
        raise MonitorStorageError(
            f"Monitor config of experiment {experiment_id} does not match its checksum: a part "
            "was edited by hand. Run `mlflow monitor delete` and create the monitor again."
        )
    return document


def _parse_json(text: str, key: str, experiment_id: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise MonitorStorageError(
            f"Tag {key!r} of experiment {experiment_id} is not valid JSON ({e.msg} at "
            f"position {e.pos}); fix the tag by hand, or run `mlflow monitor delete` and "
            "create the monitor again."
        ) from None


def parse_monitor(document: str, experiment_id: str) -> ExternalMonitor:
    data = _parse_json(document, CONFIG_TAG, experiment_id)
    if not isinstance(data, dict):
        raise MonitorStorageError(
            f"Tag {CONFIG_TAG!r} of experiment {experiment_id} holds {type(data).__name__}, "
            "expected a JSON object."
        )
    try:
        return ExternalMonitor.from_dict(data)
    except MonitorConfigError as e:
        raise MonitorStorageError(
            f"Monitor config stored on experiment {experiment_id} is invalid: {e}"
        ) from None


def lost_create_race(error: MlflowException) -> bool:
    """True when setting an experiment tag failed only because another writer created the same
    tag an instant before: the tag exists now, with the other writer's value."""
    message = str(error.message)
    return (
        error.error_code == "BAD_REQUEST"
        and "experiment_tag" in message
        and any(marker in message for marker in _DUPLICATE_KEY_MARKERS)
    )


class MonitorTags:
    """Reads and writes one experiment's monitor tags through an ``MlflowClient``."""

    def __init__(self, client: MlflowClient | None = None):
        self.client = client or MlflowClient()

    def experiment_tags(self, experiment_id: str) -> dict[str, str]:
        try:
            experiment = self.client.get_experiment(experiment_id)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise MonitorNotFoundError(f"Experiment {experiment_id!r} does not exist.") from e
        if experiment.lifecycle_stage != "active":
            raise MonitorNotFoundError(f"Experiment {experiment_id!r} is deleted.")
        return dict(experiment.tags)

    def read_config(self, experiment_id: str, registered: bool = True) -> ExternalMonitor | None:
        """The monitor of the experiment, None when it has none; with the judges registered in
        MLflow on the experiment (``monitor.registered``) unless ``registered`` is False."""
        document = join_document(self.experiment_tags(experiment_id), experiment_id)
        if document is None:
            return None
        monitor = parse_monitor(document, experiment_id)
        if registered:
            from mlflow_monitor_plugin.config import registered as registry

            monitor.registered = tuple(registry.read(experiment_id, self.client))
        return monitor

    def write_config(
        self, monitor: ExternalMonitor, previous: dict[str, str] | None = None
    ) -> None:
        document = json.dumps(monitor.to_dict(), sort_keys=True)
        assert_no_secret(document, "the monitor config")
        tags = split_document(document, monitor.config_version)
        head = tags.pop(CONFIG_TAG)
        for key, value in tags.items():
            self.client.set_experiment_tag(monitor.experiment_id, key, value)
        self.client.set_experiment_tag(monitor.experiment_id, CONFIG_TAG, head)
        stale = [k for k in previous or {} if k.startswith(CONFIG_TAG + ".v") and k not in tags]
        for key in stale:
            self._delete_tag(monitor.experiment_id, key)

    def delete_namespace(self, experiment_id: str, tags: dict[str, str]) -> None:
        """Remove the head first, so a crash midway leaves no readable half-config."""
        keys = sorted((k for k in tags if k.startswith(NAMESPACE)), key=lambda k: k != CONFIG_TAG)
        for key in keys:
            self._delete_tag(experiment_id, key)

    def read_json(self, experiment_id: str, key: str) -> Any:
        value = self.experiment_tags(experiment_id).get(NAMESPACE + key)
        return None if value is None else _parse_json(value, NAMESPACE + key, experiment_id)

    def write_json(self, experiment_id: str, key: str, value: Any) -> None:
        self.client.set_experiment_tag(experiment_id, NAMESPACE + key, json.dumps(value))

    def monitored_experiment_ids(self) -> list[str]:
        """Every active experiment that carries a monitor config tag."""
        ids: list[str] = []
        token = None
        while True:
            page = self.client.search_experiments(
                filter_string=f"tags.`{CONFIG_TAG}` LIKE '%'", max_results=1000, page_token=token
            )
            ids.extend(e.experiment_id for e in page)
            token = page.token
            if not token:
                return ids

    def _delete_tag(self, experiment_id: str, key: str) -> None:
        try:
            self.client.delete_experiment_tag(experiment_id, key)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            _logger.debug("Tag %s already gone from experiment %s", key, experiment_id)
