import random

import pytest

from mlflow_monitor_plugin.config.model import AssessmentsSuiteConfig
from mlflow_monitor_plugin.discovery.traces import TraceSource
from mlflow_monitor_plugin.scoring.judges import build_judges
from mlflow_monitor_plugin.scoring.runner import (
    JudgeRunner,
    RateLimiter,
    ScoringSettings,
    backoff_delay,
)
from tests.traces_factory import log_traces


@pytest.mark.parametrize("attempt", [0, 1, 3, 10])
def test_backoff_is_full_jitter_under_the_cap(attempt):
    rng = random.Random(1)
    delays = [backoff_delay(attempt, 0.5, 8.0, rng) for _ in range(200)]
    assert all(0 <= d <= min(8.0, 0.5 * 2**attempt) for d in delays)
    assert len(set(delays)) > 100


def test_rate_limiter_spaces_calls_by_its_rate():
    now = [0.0]
    slept = []
    limiter = RateLimiter(4.0, clock=lambda: now[0])
    for _ in range(5):
        limiter.wait(sleep=slept.append)
    assert slept == [0.25, 0.5, 0.75, 1.0]


def test_runner_stops_calling_a_judge_that_keeps_failing(sqlite_experiment_id, fake_judge):
    fake_judge.behaviour.fault_rate = 1.0
    fake_judge.behaviour.faults = ("malformed",)
    log_traces(10, retriever=False)
    source = TraceSource(sqlite_experiment_id)
    traces = source.fetch([i.trace_id for page in source.infos_after(None) for i in page])
    (safety,) = build_judges(
        AssessmentsSuiteConfig.from_dict({"assessments": [{"name": "safety"}]})
    )
    runner = JudgeRunner(ScoringSettings(workers=1, attempts=1, breaker_after=3))
    verdicts = [v for v, _ in runner.run([(t, safety) for t in traces])]
    assert fake_judge.count("malformed") == 3
    assert sum(v.skipped for v in verdicts) == 7
    assert not any(v.ok for v in verdicts)
    fake_judge.behaviour.fault_rate = 0.0  # a new run starts with the breaker closed
    assert all(v.ok for v, _ in runner.run([(t, safety) for t in traces[:2]]))
