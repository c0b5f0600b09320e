import pytest

from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint, lag_ms, sweep_floor_ms
from mlflow_monitor_plugin.exceptions import MonitorStorageError


@pytest.mark.parametrize(
    ("ts", "trace_id", "ahead"),
    [(100, "b", False), (100, "a", False), (100, "c", True), (99, "z", False), (101, "a", True)],
)
def test_checkpoint_is_before_orders_by_time_then_id(ts, trace_id, ahead):
    assert Checkpoint(100, "b").is_before(ts, trace_id) is ahead


def test_checkpoint_round_trips_and_rejects_garbage():
    cp = Checkpoint(123, "tr-1")
    assert Checkpoint.from_dict(cp.to_dict(), "x") == cp
    assert Checkpoint.from_dict(None, "x") is None
    with pytest.raises(MonitorStorageError, match="malformed"):
        Checkpoint.from_dict({"timestamp_ms": "soon"}, "x")


def test_window_arithmetic_takes_now_as_argument():
    assert sweep_floor_ms(now_ms=10_000, late_window_ms=3_000) == 7_000
    assert sweep_floor_ms(now_ms=1_000, late_window_ms=3_000) == 0
    assert lag_ms(Checkpoint(900), 1_000) == 100
    assert lag_ms(None, None) is None
