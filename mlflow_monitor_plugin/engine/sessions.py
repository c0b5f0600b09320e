"""One pass of a monitor's session judges: find the sessions that went quiet, judge them once.

The session cursor (tag ``mlflow_monitor.sessions``) walks the experiment's session traces up
to ``now - quiet``; each session whose trace it passes is read whole, and if it is quiet, every
sampled session judge without a verdict on its current version judges it. The verdict goes on
the session's first trace, at its root span, with the metadata MLflow's own session scoring
writes (``mlflow.trace.session``, ``mlflow.assessment.onlineScoringSessionId``), so the UI
shows it with the session. A session that continues is judged again when quiet again; the new
verdict overrides the older one, which stays, marked invalid. Whether a verdict is due is
read from the store, not the cursor, so a crash repeats a page and writes nothing twice; a
sweep every ``sweep_every_s`` revisits the late window for late traces and failed judges.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from mlflow.entities import Trace
from mlflow.tracing.constant import AssessmentMetadataKey

from mlflow_monitor_plugin.config.model import ExternalMonitor
from mlflow_monitor_plugin.config.tags import MonitorTags
from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint, sweep_floor_ms
from mlflow_monitor_plugin.discovery.sampling import is_sampled
from mlflow_monitor_plugin.discovery.sessions import (
    SESSION_KEY,
    Session,
    SessionSource,
    quiet_until_ms,
    session_ids,
)
from mlflow_monitor_plugin.discovery.shards import UNSHARDED
from mlflow_monitor_plugin.scoring.feedback import (
    SESSION_VERSION_KEY,
    FeedbackWriter,
    SessionState,
    session_states,
)
from mlflow_monitor_plugin.scoring.judges import JudgeSpec
from mlflow_monitor_plugin.scoring.runner import JudgeRunner, Verdict

_logger = logging.getLogger(__name__)

CURSOR_KEY = "sessions"
Count = Callable[[str, str], None]


class SessionPass:
    """Judges an experiment's quiet sessions. Collaborators are handed in."""

    def __init__(
        self,
        experiment_id: str,
        tags: MonitorTags,
        source: SessionSource,
        runner: JudgeRunner,
        quiet_s: float,
        late_window_s: float,
        sweep_every_s: float,
        max_failed_passes: int,
        shards: Any = None,
    ):
        self.experiment_id = experiment_id
        self.tags = tags
        self.source = source
        self.runner = runner
        self.quiet_ms = int(quiet_s * 1000)
        self.late_window_ms = int(late_window_s * 1000)
        self.sweep_every_ms = int(sweep_every_s * 1000)
        self.max_failed_passes = max_failed_passes
        self._last_sweep_ms: int | None = None
        self.shards = shards  # engine/shards.py: the sessions this replica owns, its cursor

    @classmethod
    def create(
        cls, experiment_id: str, tags: MonitorTags, client: Any, settings: Any, shards: Any = None
    ) -> SessionPass:
        """Wired from the engine's ``EngineSettings`` (and its ``ShardWork``)."""
        return cls(
            experiment_id, tags, SessionSource(experiment_id, client),
            JudgeRunner(settings.scoring), settings.session_quiet_s, settings.late_window_s,
            settings.sweep_every_s, settings.max_failed_passes, shards,
        )  # fmt: skip

    def _owns(self, session_id: str) -> bool:
        return (self.shards.shard if self.shards else UNSHARDED).owns(session_id)

    @property
    def _key(self) -> str:
        return self.shards.key(CURSOR_KEY) if self.shards else CURSOR_KEY

    # -- the cursor in tags ------------------------------------------------------------------
    def read_cursor(self, monitor: ExternalMonitor) -> Checkpoint | None:
        stored = self.tags.read_json(self.experiment_id, self._key) or {}
        if self.shards is not None and not self.shards.current(stored, monitor.monitor_id):
            return self.shards.handed_over.sessions  # a new layout: where the old one left off
        if stored.get("monitor_id") != monitor.monitor_id:
            return None  # a new monitor starts from the experiment's first session
        return Checkpoint.from_dict(stored.get("cursor"), f"of experiment {self.experiment_id}")

    def _save_cursor(self, monitor: ExternalMonitor, cursor: Checkpoint | None) -> None:
        value = {"monitor_id": monitor.monitor_id, "cursor": cursor.to_dict() if cursor else None}
        if self.shards is not None:
            value = self.shards.stamp(value)
        self.tags.write_json(self.experiment_id, self._key, value)

    # -- the pass ------------------------------------------------------------------------------
    def run(
        self,
        monitor: ExternalMonitor,
        judges: list[JudgeSpec],
        writer: FeedbackWriter,
        count: Count,
        now_ms: int,
        renew: Callable[[], Any] = lambda: None,
    ) -> int:
        """Judge the sessions that went quiet since the last pass (and, on a sweep, those of
        the late window still due); ``renew`` the lease after each page. Returns the
        feedbacks logged."""
        until = quiet_until_ms(now_ms, self.quiet_ms) + 1
        cursor = self.read_cursor(monitor)
        logged = 0
        for page in self.source.trace_pages(cursor, until):
            ids = [s for s in session_ids(page) if self._owns(s)]
            logged += self._judge(monitor, judges, writer, count, ids, now_ms)
            cursor = Checkpoint(page[-1].timestamp_ms, page[-1].trace_id)
            self._save_cursor(monitor, cursor)
            if renew() is False:
                return logged  # the lease or the layout changed: another replica goes on
        if self._sweep_due(now_ms) and cursor is not None:
            self._last_sweep_ms = now_ms
            ids = self._unsettled(monitor, judges, cursor, now_ms)  # late traces, failures
            if ids:
                counted = {"scored", "failed"}  # as the trace sweep: only what it did
                logged += self._judge(
                    monitor, judges, writer, lambda j, w: w in counted and count(j, w), ids, now_ms
                )
        return logged

    def _unsettled(
        self, monitor: ExternalMonitor, judges: list[JudgeSpec], cursor: Checkpoint, now_ms: int
    ) -> list[str]:
        """The sessions of the late window behind the cursor that the sweep must read whole:
        sampled by some judge, and not shown settled by the window itself (a first trace in
        the window holding a verdict on the window's version of the session for each judge
        that sampled it, and no error)."""
        floor = Checkpoint(sweep_floor_ms(now_ms, self.late_window_ms), "")
        seen: dict[str, list[Any]] = {}  # session -> [trace count, newest id, its states]
        for page in self.source.trace_pages(floor, cursor.timestamp_ms + 1, page_size=500):
            for info in page:
                sid = session_ids([info])[0]
                entry = seen.setdefault(sid, [0, "", None])
                entry[0] += 1
                entry[1] = info.trace_id  # pages come in (request time, trace id) order
                entry[2] = entry[2] or session_states(info, monitor.monitor_id) or None
        unsettled = []
        for sid, (n, newest, states) in seen.items():
            if not self._owns(sid):
                continue
            sampled = [j for j in judges if is_sampled(sid, monitor.monitor_id, j.rate)]
            if not sampled:
                continue
            version = f"{n}:{newest}"
            if states and all(
                (st := states.get(j.name)) and st.done(version) and not st.errors for j in sampled
            ):
                continue
            unsettled.append(sid)
        return unsettled

    def _sweep_due(self, now_ms: int) -> bool:
        last = self._last_sweep_ms
        return last is None or now_ms - last >= self.sweep_every_ms

    def _judge(
        self,
        monitor: ExternalMonitor,
        judges: list[JudgeSpec],
        writer: FeedbackWriter,
        count: Count,
        ids: list[str],
        now_ms: int,
    ) -> int:
        due: list[tuple[Session, JudgeSpec, SessionState]] = []
        for session_id in ids:
            if not any(is_sampled(session_id, monitor.monitor_id, j.rate) for j in judges):
                continue  # no judge samples it: nothing to read
            session = self.source.session(session_id)
            if session is None or not session.quiet(now_ms, self.quiet_ms):
                continue  # still going: judged once its newest trace goes quiet
            due += self._due(monitor, judges, session, count)
        if not due:
            return 0
        traces = self._fetch({s.session_id: s for s, _, _ in due})
        tasks, states = [], {}
        for session, judge, state in due:
            session_traces = traces.get(session.session_id) or []
            if not session_traces or not judge.applies_to_session(session_traces):
                count(judge.name, "not_applicable")
                continue
            holder = _holder(state, session)
            first = next((t for t in session_traces if t.info.trace_id == holder), None)
            first = first or session_traces[0]
            tasks.append((first, judge, session_traces))
            states[(first.info.trace_id, judge.name)] = (session, state)
        return self._score(writer, count, tasks, states)

    def _due(
        self,
        monitor: ExternalMonitor,
        judges: list[JudgeSpec],
        session: Session,
        count: Count,
    ) -> list[tuple[Session, JudgeSpec, SessionState]]:
        states = _states(session, monitor.monitor_id)
        filters = {j.filter_string for j in judges if j.filter_string}
        matching = {f: self.source.traces.matching([session.first], f) for f in filters}
        due = []
        for judge in judges:
            if judge.filter_string and not matching[judge.filter_string]:
                continue  # MLflow's session scoring, too, filters on the first trace
            count(judge.name, "eligible")
            if not is_sampled(session.session_id, monitor.monitor_id, judge.rate):
                continue
            count(judge.name, "sampled")
            state = states.get(judge.name) or SessionState()
            if state.done(session.version):
                count(judge.name, "already_done")
            elif state.failed_passes >= self.max_failed_passes:
                count(judge.name, "failed")
            else:
                due.append((session, judge, state))
        return due

    def _fetch(self, sessions: dict[str, Session]) -> dict[str, list[Trace]]:
        wanted = [i.trace_id for s in sessions.values() for i in s.infos]
        found = {t.info.trace_id: t for t in self.source.traces.fetch(wanted)}
        return {
            sid: [found[i.trace_id] for i in s.infos if i.trace_id in found]
            for sid, s in sessions.items()
        }

    def _score(
        self,
        writer: FeedbackWriter,
        count: Count,
        tasks: list[Any],
        states: dict[tuple[str, str], tuple[Session, SessionState]],
    ) -> int:
        logged, answered, failed = 0, set(), []
        for verdict, _ in self.runner.run(tasks):
            session, state = states[(verdict.trace_id, verdict.judge.name)]
            _mark(verdict, session, state)
            if verdict.ok:
                logged += writer.write(verdict, state.as_judge_state())
                answered.add(verdict.judge.name)
                count(verdict.judge.name, "scored")
            else:
                failed.append((verdict, state))
                count(verdict.judge.name, "failed")
                _logger.warning(
                    "Judge %s failed on session %s after %d attempts: %s",
                    verdict.judge.name, session.session_id, verdict.attempts, verdict.error,
                )  # fmt: skip
        for verdict, state in failed:  # charged only if the judge answered other sessions
            charge = verdict.judge.name in answered and not verdict.skipped
            logged += writer.write(verdict, state.as_judge_state(), charge)
        return logged


def _states(session: Session, monitor_id: str) -> dict[str, SessionState]:
    """The monitor's session verdicts, wherever in the session they are (on its first trace,
    unless a late trace has since become the first)."""
    merged: dict[str, SessionState] = {}
    for info in session.infos:
        for judge, state in session_states(info, monitor_id).items():
            into = merged.setdefault(judge, SessionState())
            into.verdicts += state.verdicts
            into.errors += state.errors
    return merged


def _holder(state: SessionState, session: Session) -> str:
    """The trace a new verdict goes on: the one holding the verdict it supersedes (overrides
    stay on one trace), else the session's first trace, as MLflow puts it."""
    current = state.current or next(iter(state.verdicts + state.errors), None)
    return current.trace_id if current is not None else session.first.trace_id


def _mark(verdict: Verdict, session: Session, state: SessionState) -> None:
    """The metadata that ties a verdict to its session and version, and what it supersedes."""
    verdict.metadata = {
        SESSION_KEY: session.session_id,
        AssessmentMetadataKey.ONLINE_SCORING_SESSION_ID: session.session_id,
        SESSION_VERSION_KEY: session.version,
    }
    current = state.current
    verdict.overrides = current.assessment_id if verdict.ok and current is not None else None
