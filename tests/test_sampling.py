import uuid

import pytest

from mlflow_monitor_plugin.discovery.sampling import is_sampled, sample_point

TRACE_IDS = [f"tr-{uuid.UUID(int=i).hex}" for i in range(5000)]


def test_sample_point_is_deterministic_and_in_unit_interval():
    points = [sample_point(t, "m1") for t in TRACE_IDS]
    assert points == [sample_point(t, "m1") for t in TRACE_IDS]
    assert all(0.0 <= p < 1.0 for p in points)


@pytest.mark.parametrize(("low", "high"), [(0.2, 0.4), (0.0, 0.1), (0.5, 1.0), (0.33, 0.34)])
def test_sampling_is_dense(low, high):
    small = {t for t in TRACE_IDS if is_sampled(t, "m1", low)}
    large = {t for t in TRACE_IDS if is_sampled(t, "m1", high)}
    assert small <= large


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5, 0.9])
def test_sampling_rate_is_close_to_requested(rate):
    picked = sum(is_sampled(t, "m1", rate) for t in TRACE_IDS)
    assert abs(picked / len(TRACE_IDS) - rate) < 0.03


def test_rate_zero_picks_none_and_one_picks_all():
    assert not any(is_sampled(t, "m1", 0.0) for t in TRACE_IDS)
    assert all(is_sampled(t, "m1", 1.0) for t in TRACE_IDS)


def test_monitors_sample_independently():
    a = {t for t in TRACE_IDS if is_sampled(t, "m1", 0.3)}
    b = {t for t in TRACE_IDS if is_sampled(t, "m2", 0.3)}
    assert a != b
