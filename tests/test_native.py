"""MLflow's own online scoring and the daemon on one tracking server: no judge run by both.

A real `mlflow server` with its job runner on (huey; it schedules the judges started in MLflow
every minute, on traces older than its 5-minute completion buffer), its AI Gateway in front of
the fake judge. Three experiments with the same judge started in MLflow:
- ``control``: no monitor; MLflow's runner scores it (so the runner is really on);
- ``held``: monitored, the daemon running: MLflow's runner scores nothing there;
- ``late``: monitored, the daemon down until MLflow's runner has scored it: the daemon then
  finds those verdicts and scores none of those pairs again.
"""

from __future__ import annotations

import time
import uuid

import mlflow
import pytest

from mlflow_monitor_plugin import create_external_monitor
from mlflow_monitor_plugin.config.tags import MonitorTags
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine
from mlflow_monitor_plugin.observe.report import windows
from mlflow_monitor_plugin.scoring.feedback import MONITOR_KEY, SCORER_NAME_KEY
from mlflow_monitor_plugin.scoring.proxy import ProxySettings, judge_proxy
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.conftest import MlflowServer, _use_tracking_uri
from tests.fake_judge import FakeJudge
from tests.gateway import JUDGE_ENVS, create_endpoint, register_ui_judge
from tests.history import log_trace_at

pytestmark = [pytest.mark.server, pytest.mark.slow]

SETTINGS = EngineSettings(
    export=False, windows=False, sweep_every_s=0, scoring=ScoringSettings(workers=4, attempts=2)
)
TRACES = 4


@pytest.fixture(scope="module")
def runner_server(tmp_path_factory):
    server = MlflowServer(
        tmp_path_factory.mktemp("native"), env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"}
    )
    server.start(timeout_s=240)
    yield server
    server.stop()


def _experiment(server, endpoint, name):
    exp = mlflow.set_experiment(f"{name}-{uuid.uuid4().hex[:8]}").experiment_id
    old = int(time.time() * 1000) - 10 * 60_000  # past MLflow's 5-minute completion buffer
    ids = [log_trace_at(old + i * 1000, f"{name} {i}") for i in range(TRACES)]
    register_ui_judge(server.url, exp, "polite", "Is {{ outputs }} polite?", f"gateway:/{endpoint}")
    return exp, ids


def _pass(exp):
    engine = MonitorEngine.create(exp, SETTINGS)
    try:
        with judge_proxy(ProxySettings(attempts=2, backoff_s=0.05)):
            return engine.run_pass()
    finally:
        engine.release_lease()


def _by_who(exp, judge):
    """trace id -> (the daemon's verdicts, MLflow's runner's) of ``judge``."""
    found = {}
    for trace in mlflow.search_traces(locations=[exp], return_type="list", include_spans=False):
        ours = theirs = 0
        for a in trace.info.assessments:
            meta = a.metadata or {}
            if a.name != judge or a.error is not None:
                continue
            ours += MONITOR_KEY in meta
            theirs += SCORER_NAME_KEY in meta and MONITOR_KEY not in meta
        found[trace.info.trace_id] = (ours, theirs)
    return found


@pytest.fixture
def runner_uri(runner_server, tmp_path, monkeypatch):
    for name in JUDGE_ENVS:  # the daemon has no judge key: the gateway holds it
        monkeypatch.delenv(name, raising=False)
    yield from _use_tracking_uri(runner_server.url, tmp_path, monkeypatch)


def _monitor(exp):
    return create_external_monitor(
        catalog_name="w", schema_name="d", experiment_id=exp,
        assessments_config={"assessments": [{"name": "pii_detection"}]},
    )  # fmt: skip


def test_no_judge_is_run_by_both_mlflows_runner_and_the_daemon(runner_server, runner_uri):
    with FakeJudge() as judge:
        endpoint = create_endpoint(runner_server.url, judge.url)
        held, held_ids = _experiment(runner_server, endpoint, "held")
        _monitor(held)
        _pass(held)  # from now on the daemon holds MLflow's runner off `held`
        control, control_ids = _experiment(runner_server, endpoint, "control")
        late, late_ids = _experiment(runner_server, endpoint, "late")
        late_monitor = _monitor(late)  # its daemon is down until MLflow's runner scored it

        deadline = time.monotonic() + 200
        while time.monotonic() < deadline:  # the daemon serves `held`; MLflow's runner ticks
            _pass(held)
            done = [_by_who(exp, "polite") for exp in (control, late)]
            if all(theirs == 1 for found in done for _, theirs in found.values()):
                break
            time.sleep(3)
        else:
            pytest.fail(f"MLflow's runner scored nothing in 200 s: {done}")
        _pass(held)
        # the runner is on (it scored `control`) and scored nothing where the daemon holds it
        assert set(done[0]) == set(control_ids)
        assert _by_who(held, "polite") == dict.fromkeys(held_ids, (1, 0))

        # the daemon, started after MLflow's runner scored `late`, scores none of it again
        calls = judge.count("ok")
        stats = _pass(late)
        assert judge.count("ok") == calls and stats.judges["polite"]["already_done"] == TRACES
        assert _by_who(late, "polite") == dict.fromkeys(late_ids, (0, 1))
        m = MonitorTags().read_config(late)
        assert m.monitor_id == late_monitor.monitor_id
        now = int(time.time() * 1000)
        rows = windows(m, now - 3_600_000, now, "1d")
        (row,) = [r for r in rows if r["judge"] == "polite"]
        assert row["verdicts"] == TRACES  # MLflow's verdicts stand in the windows
