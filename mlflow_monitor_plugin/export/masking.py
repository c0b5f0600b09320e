"""The redaction policy applied to an export row (pure): see docs/export-schema.md, "Masking".

| target | columns |
|---|---|
| request | ``request``, ``request_preview``, metadata ``mlflow.traceInputs`` |
| response | ``response``, ``response_preview``, metadata ``mlflow.traceOutputs`` |
| spans | ``spans``: each span's attribute values (inputs, outputs, the rest), its events'
  attribute values and its status message; ids, names and times stay |
| assessments | each assessment's ``rationale``, ``value`` and ``error`` |
| metadata | the other values of ``trace_metadata`` and ``tags``, except MLflow's ids, sizes
  and versions |

``drop`` removes the field that held a value: a column or assessment field becomes NULL, a span
attribute, event attribute or metadata entry is left out, a status message becomes empty.
"""

from __future__ import annotations

import json
from typing import Any

from mlflow_monitor_plugin.redaction import Masker

# MLflow's span attributes that hold ids and types, never content: left as they are.
_STRUCTURAL_ATTRIBUTES = frozenset({"mlflow.traceRequestId", "mlflow.spanType"})
# MLflow's metadata that copies the root span's inputs and outputs (request and response).
_COPIES = {"request": "mlflow.traceInputs", "response": "mlflow.traceOutputs"}
# MLflow's metadata and tags that hold ids, sizes and versions, never personal data.
_SYSTEM_KEYS = frozenset(
    {
        "mlflow.sourceRun", "mlflow.modelId", "mlflow.trace.sizeBytes", "mlflow.trace.sizeStats",
        "mlflow.trace_schema.version", "mlflow.trace.tokenUsage", "mlflow.traceName",
        "mlflow.artifactLocation", "mlflow.source.type",
    }
)  # fmt: skip


class RowMasking:
    """The masker for one row: the copies of a text within a trace (the request in its column,
    MLflow's metadata copy, the root span's inputs) are masked once."""

    def __init__(self, masker: Masker):
        self.masker = masker
        self.drops = masker.drops
        self.mask_text = masker.mask_text
        self.mask_value = masker.mask_value
        self.covers = masker.covers
        self._memo: dict[str, tuple[str, bool]] = {}

    def mask_json_text(self, text: str) -> tuple[str, bool]:
        hit = self._memo.get(text)
        if hit is None:
            hit = self._memo[text] = self.masker.mask_json_text(text)
        return hit


def _column(masker: RowMasking, value: str | None) -> str | None:
    if value is None:
        return None
    masked, found = masker.mask_json_text(value)
    return None if found and masker.drops else masked


def _attributes(masker: RowMasking, attributes: Any, structural: frozenset[str]) -> bool:
    """Mask a span's (or event's) attribute values in place; True when one changed."""
    if not isinstance(attributes, dict):
        return False
    changed = False
    for key in list(attributes):
        value = attributes[key]
        if key in structural:
            continue
        if isinstance(value, str):
            masked, found = masker.mask_json_text(value)
        else:
            masked, found = masker.mask_value(value)
        if found:
            changed = True
            if masker.drops:
                del attributes[key]
            else:
                attributes[key] = masked
    return changed


def mask_span(masker: RowMasking, span_json: str) -> str:
    """One span's JSON (MLflow's export form) with its content masked."""
    try:
        span = json.loads(span_json)
    except ValueError:
        return _column(masker, span_json) or "null"
    if not isinstance(span, dict):
        return span_json
    changed = _attributes(masker, span.get("attributes"), _STRUCTURAL_ATTRIBUTES)
    for event in span.get("events") or []:
        if isinstance(event, dict):
            changed |= _attributes(masker, event.get("attributes"), frozenset())
    status = span.get("status")
    if isinstance(status, dict) and isinstance(status.get("message"), str):
        masked, found = masker.mask_text(status["message"])
        if found:
            status["message"], changed = ("" if masker.drops else masked), True
    return json.dumps(span, ensure_ascii=False) if changed else span_json


def _map(masker: RowMasking, entries: list[tuple[str, str]], keys: set[str] | None) -> list[Any]:
    """Map entries with the values of ``keys`` (None: every key but MLflow's system keys)
    masked; ``drop`` leaves an entry out."""
    out = []
    for key, value in entries:
        if (key not in keys) if keys is not None else (key in _SYSTEM_KEYS):
            out.append((key, value))
            continue
        masked, found = masker.mask_json_text(value)
        if not (found and masker.drops):
            out.append((key, masked))
    return out


def _assessment(masker: RowMasking, entry: dict[str, Any]) -> dict[str, Any]:
    entry = dict(entry)
    for field in ("rationale", "value", "error"):
        if entry.get(field) is not None:
            entry[field] = _column(masker, entry[field])
    return entry


def mask_row(masker: RowMasking, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` (from ``trace_to_row``, spans not yet masked) with the policy's targets masked."""
    copies = set()
    for target in ("request", "response"):
        if masker.covers(target):
            for column in (target, f"{target}_preview"):
                row[column] = _column(masker, row[column])
            copies.add(_COPIES[target])
    if masker.covers("assessments"):
        row["assessments"] = [_assessment(masker, a) for a in row["assessments"]]
    if masker.covers("metadata"):
        row["trace_metadata"] = _map(masker, row["trace_metadata"], None)
        row["tags"] = _map(masker, row["tags"], None)
    elif copies:
        row["trace_metadata"] = _map(masker, row["trace_metadata"], copies)
    return row
