"""The coverage ledger: counts per window and judge, its states, and `status --coverage`."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from mlflow_monitor_plugin import create_external_monitor
from mlflow_monitor_plugin.cli import monitor as cli
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine
from mlflow_monitor_plugin.observe.coverage import Coverage, heartbeat_minutes, window_state
from mlflow_monitor_plugin.observe.windows import HOUR_MS, window_start
from tests.history import log_trace_at

HOUR = 3_600_000
END = 10 * HOUR


def coverage(delays=(), **counts):
    c = Coverage()
    c.counts.update(counts)
    c.delays = list(delays)
    return c


@pytest.mark.parametrize(
    ("c", "now_ms", "expected"),
    [
        (coverage(sampled=3, pending=3), END - 1, "open"),
        (coverage(sampled=3, pending=3), END + 10 * 60_000, "open"),  # within 15 minutes
        (coverage(sampled=3, pending=1, scored=2), END + 20 * 60_000, "behind"),
        (coverage(sampled=2, scored=1, failed=1, delays=[2.0]), END + HOUR, "errors"),
        (coverage(sampled=2, scored=2, delays=[2.0, 3 * 3600.0]), END + 4 * HOUR, "caught up"),
        (coverage(sampled=2, scored=2, delays=[2.0, 5.0]), END + HOUR, "ok"),
        (coverage(sampled=2, scored=2, delays=[2.0, 5.0]), END - 1, "open"),
        (coverage(seen=4), END + HOUR, "ok"),  # nothing sampled: nothing owed
    ],
)
def test_window_state(c, now_ms, expected):
    assert window_state(c, END, now_ms) == expected


def test_heartbeats_count_the_minutes_the_daemon_ran():
    start = 5 * HOUR
    every_5_min = [start + m * 60_000 for m in range(5, 61, 5)]
    assert heartbeat_minutes(every_5_min, start, 300) == 60
    assert heartbeat_minutes(every_5_min[:6], start, 300) == 30  # stopped at half past
    assert heartbeat_minutes([], start, 300) == 0
    assert heartbeat_minutes([start - HOUR, start + 2 * HOUR], start, 300) == 0


def ledger(experiment_id, since="6h"):
    out = CliRunner().invoke(
        cli, ["status", "-x", experiment_id, "--coverage", "--since", since, "--output", "json"]
    )
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def test_ledger_shows_a_gap_while_the_daemon_is_down_and_its_closing_after(sqlite_experiment_id):
    now_ms = int(time.time() * 1000)
    old_hour = window_start(now_ms - 3 * HOUR, HOUR_MS)
    old = [log_trace_at(old_hour + 60_000 * (i + 1), f"q{i} {'x' * 300 * (i % 2)}")
           for i in range(4)]  # fmt: skip
    create_external_monitor(
        catalog_name="w", schema_name="d", experiment_id=sqlite_experiment_id,
        assessments_config={"sample": 1.0, "assessments": [
            {"name": "response_length", "args": {"max_length": 200}}]},
    )  # fmt: skip

    before = ledger(sqlite_experiment_id)
    [row] = [r for r in before["windows"] if r["window_start_ms"] == old_hour]
    assert (row["seen"], row["sampled"], row["scored"], row["pending"]) == (4, 4, 0, 4)
    assert row["state"] == "behind" and row["daemon_minutes"] is None
    assert before["heartbeat"] is False

    # the daemon comes back: it catches up by itself
    MonitorEngine.create(sqlite_experiment_id, EngineSettings(sweep_every_s=0)).run_pass()
    after = ledger(sqlite_experiment_id)
    [row] = [r for r in after["windows"] if r["window_start_ms"] == old_hour]
    assert (row["sampled"], row["scored"], row["pending"], row["failed"]) == (4, 4, 0, 0)
    assert row["state"] == "caught up"
    assert 2.9 * 3600 < row["delay_max_s"] < 4.1 * 3600  # the hour began 3-4 h ago
    assert row["daemon_minutes"] == 0  # it was not running in that hour
    assert after["heartbeat"] is True and len(old) == 4

    table = CliRunner().invoke(cli, ["status", "-x", sqlite_experiment_id, "--coverage"])
    assert table.exit_code == 0, table.output
    assert "caught up" in table.output and "response_length" in table.output


def test_ledger_bad_since_exits_2_naming_the_option(sqlite_experiment_id):
    create_external_monitor(
        catalog_name="w", schema_name="d", experiment_id=sqlite_experiment_id,
        assessments_config={"sample": 1.0, "assessments": [{"name": "safety"}]},
    )  # fmt: skip
    out = CliRunner().invoke(cli, ["status", "-x", sqlite_experiment_id, "--coverage",
                                   "--since", "yesterday"])  # fmt: skip
    assert out.exit_code == 2 and "--since" in out.output and "7d" in out.output
