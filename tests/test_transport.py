"""MLflow's judge calls reach the judge proxy in the calling thread (scoring/transport.py): every
call still goes through the proxy's rate limit, Retry-After, retries and token count, and a
verdict's tokens are those of its own calls when many verdicts' calls interleave."""

from __future__ import annotations

import requests
from mlflow.genai.judges.utils import get_default_model

from mlflow_monitor_plugin import create_external_monitor
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine
from mlflow_monitor_plugin.scoring import transport, usage
from mlflow_monitor_plugin.scoring.feedback import MONITOR_KEY
from mlflow_monitor_plugin.scoring.proxy import ProxySettings, judge_proxy
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.test_cost import _digest, _prompt_usage
from tests.traces_factory import feedback_by_trace, log_traces

PRICE = {"input_per_million": 1.0, "output_per_million": 2.0}


def test_tokens_and_cost_of_each_verdict_are_its_own_when_many_calls_interleave(
    sqlite_experiment_id, fake_judge
):
    fake_judge.behaviour.usage = _prompt_usage
    fake_judge.behaviour.latency_s = 0.02  # calls overlap: 16 in flight
    fake_judge.behaviour.fault_rate, fake_judge.behaviour.faults = 0.2, ("429", "500")
    fake_judge.behaviour.retry_after_s = 0.05
    log_traces(30, retriever=False)
    m = create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"assessments": [{"name": "safety"}, {"name": "fluency"}]},
        cost={"prices": {get_default_model(): PRICE}},
    )  # fmt: skip
    settings = EngineSettings(export=False, windows=False, sweep_every_s=0,
                              scoring=ScoringSettings(workers=16, attempts=2))  # fmt: skip
    engine = MonitorEngine.create(sqlite_experiment_id, settings)
    with judge_proxy(ProxySettings(attempts=8, backoff_s=0.01, backoff_max_s=0.05)):
        engine.run_pass()
    ours = (a for found in feedback_by_trace(sqlite_experiment_id).values() for a in found)
    mine = lambda a: (a.metadata or {}).get(MONITOR_KEY) == m.monitor_id  # noqa: E731
    verdicts = [a for a in ours if mine(a) and a.error is None]
    assert len(verdicts) == 60
    replies = zip(fake_judge.requests, fake_judge.outcomes, strict=True)
    answered = [r for r, what in replies if what == "ok"]
    assert fake_judge.count("429") + fake_judge.count("500") > 0  # retries happened
    for verdict in verdicts:
        digest = verdict.rationale.rsplit("(", 1)[1].rstrip(")")
        calls = [_prompt_usage(r) for r in answered if _digest(r) == digest]
        meta = verdict.metadata
        assert int(meta[usage.TOTAL_TOKENS_KEY]) == sum(c["total_tokens"] for c in calls) > 0
        assert int(meta[usage.CALLS_KEY]) == len(calls)
        cost = sum(c["prompt_tokens"] * 1e-6 + c["completion_tokens"] * 2e-6 for c in calls)
        assert abs(float(meta[usage.COST_KEY]) - cost) < 1e-9


def test_the_rate_limit_and_retry_after_hold_for_calls_made_in_process(fake_judge):
    from mlflow_monitor_plugin.scoring.runner import JudgeRunner
    from tests.traces_factory import log_traces as log

    fake_judge.behaviour.scripted = ["429"]  # the first call: Retry-After 1 s
    fake_judge.behaviour.retry_after_s = 1.0
    with judge_proxy(ProxySettings(rate_limit=10, backoff_s=0.01)) as proxy:
        assert proxy is not None
        # MLflow's client reaches the proxy through the mounted adapter, never the loopback
        session = requests.Session()
        assert isinstance(session.get_adapter(proxy.url + "/chat"), transport.ProxyAdapter)
        import mlflow

        mlflow.set_experiment("transport")
        traces = [mlflow.get_trace(t) for t in log(12, retriever=False)]
        runner = JudgeRunner(ScoringSettings(workers=6, attempts=1))
        verdicts = [v for v, _ in runner.run([(t, _judge()) for t in traces])]
        runner.close()
    assert all(v.ok for v in verdicts), [v.error for v in verdicts if not v.ok]
    first = _digest(fake_judge.requests[0])
    again = [t for r, t in zip(fake_judge.requests, fake_judge.times, strict=True)
             if _digest(r) == first]  # fmt: skip
    assert fake_judge.outcomes[0] == "429" and again[1] - again[0] >= 0.95  # Retry-After held
    times = sorted(fake_judge.times)
    assert len(times) == 13
    # 10 calls/s at most, whatever the six threads did: 5 intervals of 0.1 s between a call and
    # the 5th after it (without the limit all six threads call at once: ~0 s). The margin is
    # for arrival times on a loaded machine; the departures are what the limiter spaces.
    assert min(b - a for a, b in zip(times, times[5:], strict=False)) >= 0.4


def _judge():
    from mlflow_monitor_plugin.config.model import AssessmentsSuiteConfig
    from mlflow_monitor_plugin.scoring.judges import build_judges

    suite = AssessmentsSuiteConfig.from_dict({"assessments": [{"name": "safety"}]})
    return build_judges(suite)[0]


def test_the_adapter_is_gone_when_the_proxy_stops(fake_judge):
    with judge_proxy() as proxy:
        url = proxy.url
        assert isinstance(requests.Session().get_adapter(url), transport.ProxyAdapter)
    assert not isinstance(requests.Session().get_adapter(url), transport.ProxyAdapter)
    assert requests.Session().get_adapter("http://other.invalid/x") is not None
