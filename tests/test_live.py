"""The daemon's /metrics and /healthz endpoint, on real stores and a real HTTP socket."""

import contextlib
import json
import socket
import threading
import urllib.error
import urllib.request
from types import SimpleNamespace

import mlflow
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from mlflow_monitor_plugin import create_external_monitor
from mlflow_monitor_plugin.cli import monitor as monitor_cli
from mlflow_monitor_plugin.engine.daemon import Daemon
from mlflow_monitor_plugin.engine.pipeline import EngineSettings
from mlflow_monitor_plugin.observe.live import METRICS, LiveMetrics
from mlflow_monitor_plugin.observe.server import Health, MetricsServer
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.traces_factory import log_traces

SETTINGS = EngineSettings(scoring=ScoringSettings(workers=2, attempts=1), sweep_every_s=0)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def samples(url: str) -> dict[tuple[str, tuple], float]:
    status, body = get(url + "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_endpoint_counts_what_a_pass_did(sqlite_experiment_id):
    log_traces(6, retriever=False)
    create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"assessments": [
            {"name": "pii_detection"},
            {"name": "response_length", "args": {"max_length": 11}},
        ]},
    )  # fmt: skip
    daemon = Daemon([sqlite_experiment_id], 1, SETTINGS)
    health = Health(1)
    daemon.observers.append(health)
    METRICS.add_snapshot_source("concurrency", lambda: {"limit": 8, "in_flight": 3})
    with MetricsServer("127.0.0.1", 0, health) as server:
        url = f"http://127.0.0.1:{server.port}"
        before = samples(url)
        report = daemon.run_pass()
        after = samples(url)
        status, body = get(url + "/healthz")
    assert report.ok
    exp = sqlite_experiment_id
    assert delta(before, after, "mlflow_monitor_verdicts_total", experiment=exp,
                 judge="pii_detection", value="yes") == 6  # fmt: skip
    # "Reply to q0".."q5" are 11 characters: all within max_length
    assert delta(before, after, "mlflow_monitor_verdicts_total", experiment=exp,
                 judge="response_length", value="yes") == 6  # fmt: skip
    assert delta(before, after, "mlflow_monitor_judge_call_seconds_count", experiment=exp,
                 judge="pii_detection") == 6  # fmt: skip
    # no error yet, but the series exists (an error ratio reads 0, not nothing)
    errors = (
        "mlflow_monitor_judge_errors_total",
        (("experiment", exp), ("judge", "pii_detection")),
    )
    assert after[errors] == 0
    assert delta(before, after, "mlflow_monitor_pass_seconds_count", experiment=exp) == 1
    assert delta(before, after, "mlflow_monitor_traces_exported_total", experiment=exp) == 6
    assert after[("mlflow_monitor_export_failures_total", (("experiment", exp),))] == 0
    assert ("mlflow_monitor_budget_factor", (("experiment", exp),)) not in after  # no budget
    assert after[("mlflow_monitor_interval_seconds", ())] == 1
    assert after[("mlflow_monitor_healthy", ())] == 1
    lag = [k for k in after if k[0] == "mlflow_monitor_lag_seconds" and ("experiment", exp) in k[1]]
    assert lag and after[lag[0]] >= 0
    assert after[("mlflow_monitor_last_pass_timestamp_seconds", ())] > 0
    assert after[("mlflow_monitor_concurrency_limit", ())] == 8
    assert ("process_cpu_seconds_total", ()) in after
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_health_is_503_when_no_pass_finished_within_three_intervals():
    now = [100.0]
    live = LiveMetrics()
    health = Health(2.0, probe=lambda: None, live=live, clock=lambda: now[0])
    healthy = lambda: live.registry.get_sample_value("mlflow_monitor_healthy")  # noqa: E731
    assert health.check()[0] == 200 and healthy() == 1
    assert live.registry.get_sample_value("mlflow_monitor_interval_seconds") == 2.0
    now[0] += 6.5
    status, body = health.check()
    assert (
        status == 503 and "no pass finished" in body["reason"] and "3 intervals" in body["reason"]
    )
    assert healthy() == 0  # /metrics says what /healthz says
    health.record(SimpleNamespace(errors={}, stats=[]))
    assert health.check() == (200, {"interval_seconds": 2.0, "last_pass_seconds_ago": 0.0,
                                    "status": "ok"})  # fmt: skip
    assert healthy() == 1


def test_a_failed_export_is_counted_for_its_experiment(sqlite_experiment_id, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the export directory should be")
    log_traces(2, retriever=False)
    create_external_monitor(
        catalog_name="w", schema_name="d", export_uri=str(blocker / "export"),
        assessments_config={"assessments": [{"name": "pii_detection"}]},
    )  # fmt: skip
    live = LiveMetrics()
    daemon = Daemon([sqlite_experiment_id], 1, SETTINGS)
    daemon.observers.append(Health(1, live=live))
    failures = {"experiment": sqlite_experiment_id}
    assert not daemon.run_pass().ok
    assert live.registry.get_sample_value("mlflow_monitor_export_failures_total", failures) == 1
    daemon.run_pass()  # the export waits for its retry (backoff): nothing more failed
    assert live.registry.get_sample_value("mlflow_monitor_export_failures_total", failures) == 1


class Forwarder:
    """A TCP forwarder to the real MLflow server that can be switched off: the store going
    away (connection refused) and coming back, as the daemon sees it."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        if self._listener is not None:
            # shutdown wakes the accepting thread; close() alone leaves the socket listening
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for s in self._open:  # pooled keep-alive connections break too
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def test_healthz_flips_to_503_when_the_store_goes_away_and_back(
    mlflow_server, tmp_path, monkeypatch
):
    forwarder = Forwarder(mlflow_server.port)
    forwarder.up()
    uri = f"http://127.0.0.1:{forwarder.port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_MONITOR_EXPORT_ROOT", str(tmp_path / "exports"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.set_experiment(f"health-{tmp_path.name}").experiment_id
        log_traces(2, retriever=False)
        create_external_monitor(
            catalog_name="w", schema_name="d", experiment_id=exp,
            assessments_config={"assessments": [{"name": "pii_detection"}]},
        )  # fmt: skip
        daemon = Daemon([exp], 1, SETTINGS)
        health = Health(60)
        daemon.observers.append(health)
        with MetricsServer("127.0.0.1", 0, health) as server:
            healthz = f"http://127.0.0.1:{server.port}/healthz"
            daemon.run_pass()
            assert get(healthz)[0] == 200
            forwarder.down()
            daemon.run_pass()
            status, body = get(healthz)
            assert status == 503
            assert json.loads(body)["reason"].startswith("tracking store unreachable")
            forwarder.up()
            daemon.health.clear()  # skip the daemon's backoff for the failed monitor
            daemon.run_pass()
            assert get(healthz)[0] == 200
    finally:
        forwarder.down()
        mlflow.set_tracking_uri(None)


def test_run_with_a_metrics_port_in_use_exits_1_naming_it(sqlite_uri):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(monitor_cli, ["run", "--once", "--metrics-port", str(port)])
    assert result.exit_code == 1
    assert f"127.0.0.1:{port}" in result.output and "in use" in result.output


def test_metrics_port_comes_from_the_environment_too(sqlite_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_MONITOR_METRICS_PORT", "not-a-port")
    result = CliRunner().invoke(monitor_cli, ["run", "--once"])
    assert result.exit_code == 2 and "--metrics-port" in result.output
