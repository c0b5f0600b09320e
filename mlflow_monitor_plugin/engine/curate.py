"""Curate: the traces a judge failed (or where a person disagrees with it), as records of an
MLflow evaluation dataset.

A trace is picked when the latest valid verdict of the judge from this monitor has the value
asked for (``no``). Its record is what MLflow itself makes of a trace (root span inputs and
outputs, the trace's expectations, the trace id as its source), tagged with the judge, the value
and the rationale. Records are merged into the dataset named (created if missing); a record whose
inputs the dataset already holds is left alone, so a rerun adds nothing twice (MLflow keys records
by their inputs too). With ``disagreement`` a trace is picked when a person's latest valid
label for the judge differs from the judge's verdict (engine/labels.py); its record carries
both labels. Where the store cannot hold evaluation datasets (the file store; Databricks
without ``databricks-agents``) the records go to a JSONL file instead, keyed the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Trace, TraceInfo
from mlflow.exceptions import MlflowException
from mlflow.tracing.constant import TraceMetadataKey
from mlflow.tracking import MlflowClient

from mlflow_monitor_plugin.config.tags import MonitorTags
from mlflow_monitor_plugin.discovery.timerange import TimeRange
from mlflow_monitor_plugin.discovery.traces import FINISHED, NOT_EVALUATION, TraceSource
from mlflow_monitor_plugin.engine.backfill import select_judges
from mlflow_monitor_plugin.engine.labels import disagreement_on, human_tags, labelled_judge
from mlflow_monitor_plugin.exceptions import MonitorConfigError, MonitorNotFoundError
from mlflow_monitor_plugin.scoring.feedback import judge_states

_logger = logging.getLogger(__name__)

TAG_PREFIX = "mlflow_monitor."
MAX_NAME = 255  # the column MLflow's SQL stores keep a dataset name in
BATCH = 100
UNSUPPORTED_CODES = {"FEATURE_DISABLED", "ENDPOINT_NOT_FOUND", "NOT_IMPLEMENTED"}


@dataclass
class CurateResult:
    dataset: str
    judge: str
    value: str
    scanned: int = 0
    matched: int = 0
    added: int = 0
    already_there: int = 0
    no_inputs: int = 0
    dataset_id: str | None = None
    fallback_path: str | None = None  # set when the records went to a JSONL file
    fallback_reason: str | None = None
    disagreement: bool = False
    trace_ids: list[str] = field(default_factory=list)  # of the records added


def check_dataset_name(name: str) -> str:
    """Names every MLflow store accepts: 1-255 characters, not blank."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise MonitorConfigError("dataset", name, f"expected 1-{MAX_NAME} characters, not blank")
    return name


def input_key(inputs: Any) -> str:
    """A record's identity, as MLflow's store computes it (the hash of its inputs)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _normal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip().lower()


def latest_verdict(info: TraceInfo, monitor_id: str, judge: str) -> list[Any] | None:
    """The feedbacks of the judge's latest valid verdict from this monitor, or None."""
    state = judge_states(info, monitor_id).get(judge)
    groups = [g for g in (state.verdicts if state else []) if all(a.valid is not False for a in g)]
    if not groups:
        return None
    return max(groups, key=lambda g: max(a.create_time_ms or 0 for a in g))


def verdict_matches(feedbacks: list[Any], judge: str, value: str) -> bool:
    """A verdict matches when a feedback named after the judge has the value (any of them, for
    a judge that logs one per retrieved chunk); values compare as text, case-insensitively."""
    named = [a for a in feedbacks if a.name == judge] or feedbacks
    return any(_normal(a.value) == _normal(value) for a in named)


def trace_record(trace: Trace, monitor_id: str, judge: str, feedbacks: list[Any]) -> dict:
    """The dataset record of a trace, as ``EvaluationDataset.merge_records`` makes it, tagged."""
    root = trace.data._get_root_span() if trace.data.spans else None
    inputs = root.inputs if root is not None and root.inputs is not None else {}
    outputs = root.outputs if root is not None else None
    expectations = {e.name: e.value for e in trace.search_assessments(type="expectation")}
    source_data = {"trace_id": trace.info.trace_id}
    if session := trace.info.trace_metadata.get(TraceMetadataKey.TRACE_SESSION):
        source_data["session_id"] = session
    first = next((a for a in feedbacks if a.name == judge), feedbacks[0])
    tags = {
        TAG_PREFIX + "monitor_id": monitor_id,
        TAG_PREFIX + "judge": judge,
        TAG_PREFIX + "value": str(first.value),
    }
    if first.rationale:
        tags[TAG_PREFIX + "rationale"] = str(first.rationale)[:1000]
    return {
        "inputs": inputs,
        "outputs": outputs,
        "expectations": expectations,
        "source": {"source_type": "TRACE", "source_data": source_data},
        "tags": tags,
    }


class DatasetUnsupported(Exception):
    """The tracking store cannot hold evaluation datasets."""


class MlflowDatasetSink:
    """An evaluation dataset in the tracking store (``mlflow.genai.datasets``)."""

    def __init__(self, name: str, experiment_id: str):
        from mlflow.genai import datasets

        try:
            try:
                self.dataset = datasets.get_dataset(name=name)
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                self.dataset = datasets.create_dataset(name=name, experiment_id=[experiment_id])
                _logger.info("Created evaluation dataset %r (%s)", name, self.dataset.dataset_id)
        except MlflowException as e:
            if e.error_code in UNSUPPORTED_CODES:
                raise DatasetUnsupported(e.message) from e
            if e.error_code == "INVALID_PARAMETER_VALUE":
                raise MonitorConfigError("dataset", name, e.message) from e
            raise
        except (NotImplementedError, ImportError) as e:
            raise DatasetUnsupported(str(e)) from e
        self.dataset_id = self.dataset.dataset_id

    def keys(self) -> set[str]:
        return {input_key(inputs) for inputs in self.dataset.to_df()["inputs"]}

    def add(self, records: list[dict]) -> None:
        self.dataset.merge_records(records)


class JsonlSink:
    """Records in a JSONL file, one a line; each batch rewrites the file atomically."""

    def __init__(self, path: Path):
        self.path = path
        self.dataset_id = None

    def keys(self) -> set[str]:
        if not self.path.exists():
            return set()
        with self.path.open(encoding="utf-8") as f:
            return {input_key(json.loads(line)["inputs"]) for line in f if line.strip()}

    def add(self, records: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with tmp.open("w", encoding="utf-8") as out:
            if self.path.exists():
                out.write(self.path.read_text(encoding="utf-8"))
            for record in records:
                out.write(json.dumps(record, default=str) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)


def default_fallback_path(name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".") or "dataset"
    return Path("mlflow_monitor_datasets") / f"{safe}.jsonl"


def newest_first(client: MlflowClient, experiment_id: str, window: TimeRange) -> Iterator[Any]:
    """The finished traces of the range, newest first, a page at a time (infos only)."""
    conditions = [
        FINISHED, NOT_EVALUATION,
        f"trace.timestamp_ms >= {window.since_ms}", f"trace.timestamp_ms < {window.until_ms}",
    ]  # fmt: skip
    token = None
    while True:
        page = client.search_traces(
            locations=[experiment_id],
            filter_string=" AND ".join(conditions),
            max_results=200,
            order_by=["timestamp_ms DESC", "request_id DESC"],
            page_token=token,
            include_spans=False,
        )
        yield from (t.info for t in page)
        token = page.token
        if not token or not page:
            return


def curate(
    experiment_id: str,
    judge: str,
    value: str,
    window: TimeRange,
    dataset: str,
    limit: int | None = None,
    fallback_path: Path | None = None,
    disagreement: bool = False,
) -> CurateResult:
    """Add the traces of ``window`` whose latest valid ``judge`` verdict is ``value`` (with
    ``disagreement``: where a person's label differs from the verdict) to the evaluation
    dataset ``dataset``, newest first, at most ``limit`` of them."""
    check_dataset_name(dataset)
    client = MlflowClient()
    monitor = MonitorTags(client).read_config(experiment_id)
    if monitor is None:
        raise MonitorNotFoundError(f"Experiment {experiment_id} has no monitor.")
    select_judges(monitor, [judge])
    space = labelled_judge(monitor, judge) if disagreement else None
    result = CurateResult(dataset, judge, value, disagreement=disagreement)
    sink: MlflowDatasetSink | JsonlSink
    try:
        sink = MlflowDatasetSink(dataset, experiment_id)
        result.dataset_id = sink.dataset_id
    except DatasetUnsupported as e:
        path = fallback_path or default_fallback_path(dataset)
        sink = JsonlSink(path)
        result.fallback_path, result.fallback_reason = str(path), str(e)
        _logger.warning("The store cannot hold evaluation datasets (%s); writing %s", e, path)
    known = sink.keys()
    source = TraceSource(experiment_id, client)
    batch: list[tuple[str, list[Any]]] = []
    people: dict[str, Any] = {}  # trace id -> the person's label (disagreement)

    def flush() -> None:
        traces = {t.info.trace_id: t for t in source.fetch([t for t, _ in batch])}
        records = []
        for trace_id, feedbacks in batch:
            if trace_id not in traces:
                continue
            record = trace_record(traces[trace_id], monitor.monitor_id, judge, feedbacks)
            if trace_id in people:
                record["tags"].update(human_tags(people.pop(trace_id)))
            if not record["inputs"]:
                result.no_inputs += 1
                continue
            key = input_key(record["inputs"])
            if key in known:
                result.already_there += 1
                continue
            known.add(key)
            records.append(record)
            result.trace_ids.append(trace_id)
        if records:
            sink.add(records)
            result.added += len(records)
        batch.clear()

    for info in newest_first(client, experiment_id, window):
        result.scanned += 1
        if space is not None:
            found = disagreement_on(info, monitor.monitor_id, judge, space)
            if found is None:
                continue
            feedbacks, people[info.trace_id] = found
        else:
            feedbacks = latest_verdict(info, monitor.monitor_id, judge)
            if feedbacks is None or not verdict_matches(feedbacks, judge, value):
                continue
        result.matched += 1
        batch.append((info.trace_id, feedbacks))
        if len(batch) >= BATCH:
            flush()
        if limit is not None and result.matched >= limit:
            break
    if batch:
        flush()
    return result
