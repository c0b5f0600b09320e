"""Conversations: the traces that share ``mlflow.trace.session`` metadata, and which are quiet.

A session is judged once it has been quiet (no new trace) for ``quiet_ms``; it is judged again
when it continues. Its version, the number of its traces and the newest one, tells a verdict
on the session's current state from one on an earlier state. The session cursor walks the
session traces in (request time, trace id) order, up to ``now - quiet_ms``: a session whose
newest trace the cursor has just passed is one that has just gone quiet.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from mlflow.entities import TraceInfo
from mlflow.tracing.constant import TraceMetadataKey
from mlflow.tracking import MlflowClient

from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint
from mlflow_monitor_plugin.discovery.traces import FINISHED, NOT_EVALUATION, TraceSource

SESSION_KEY = TraceMetadataKey.TRACE_SESSION  # "mlflow.trace.session"
IN_A_SESSION = f"metadata.`{SESSION_KEY}` IS NOT NULL"
MAX_SESSION_TRACES = 5000


@dataclass(frozen=True)
class Session:
    """One conversation as the store holds it now, its traces in request-time order."""

    session_id: str
    infos: tuple[TraceInfo, ...]

    @property
    def first(self) -> TraceInfo:
        """Where the session's verdicts live, as MLflow's own session scoring puts them."""
        return self.infos[0]

    @property
    def last_ms(self) -> int:
        return self.infos[-1].timestamp_ms

    @property
    def version(self) -> str:
        return f"{len(self.infos)}:{self.infos[-1].trace_id}"

    def quiet(self, now_ms: int, quiet_ms: int) -> bool:
        return self.last_ms <= quiet_until_ms(now_ms, quiet_ms)


def quiet_until_ms(now_ms: int, quiet_ms: int) -> int:
    """A session whose newest trace started at or before this time is quiet."""
    return now_ms - quiet_ms


def session_ids(infos: list[TraceInfo]) -> list[str]:
    """The distinct sessions of ``infos``, in order of first appearance."""
    seen: dict[str, None] = {}
    for info in infos:
        session_id = (info.trace_metadata or {}).get(SESSION_KEY)
        if session_id:
            seen.setdefault(session_id, None)
    return list(seen)


def _quoted(value: str) -> str | None:
    """``value`` as a search literal, or None when MLflow's syntax cannot quote it."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


class SessionSource:
    """The sessions of one experiment, through ``MlflowClient.search_traces``."""

    def __init__(self, experiment_id: str, client: MlflowClient | None = None):
        self.experiment_id = experiment_id
        self.client = client or MlflowClient()
        self.traces = TraceSource(experiment_id, self.client)

    def trace_pages(
        self, after: Checkpoint | None, until_ms: int, page_size: int = 200
    ) -> Iterator[list[TraceInfo]]:
        """Pages of finished traces that belong to a session, after ``after`` and started
        before ``until_ms``."""
        return self.traces.infos_after(after, page_size, until_ms=until_ms, where=IN_A_SESSION)

    def session(self, session_id: str) -> Session | None:
        """Every finished trace of the session now, or None if it has none (or an id the
        search syntax cannot express)."""
        literal = _quoted(session_id)
        if literal is None:
            return None
        where = " AND ".join([FINISHED, NOT_EVALUATION, f"metadata.`{SESSION_KEY}` = {literal}"])
        infos: list[TraceInfo] = []
        token = None
        while len(infos) < MAX_SESSION_TRACES:
            result = self.client.search_traces(
                locations=[self.experiment_id],
                filter_string=where,
                max_results=500,
                order_by=["timestamp_ms ASC", "request_id ASC"],
                page_token=token,
                include_spans=False,
            )
            infos.extend(t.info for t in result)
            token = result.token
            if not token or not result:
                break
        infos.sort(key=lambda i: (i.timestamp_ms, i.trace_id))
        return Session(session_id, tuple(infos)) if infos else None
