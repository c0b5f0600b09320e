import logging
import os

import pytest
import requests
from mlflow.genai.scorers import Safety

from mlflow_monitor_plugin.scoring.proxy import (
    JudgeProxy,
    ProxySettings,
    judge_proxy,
    retry_after_seconds,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), ("0.5", 0.5), ("-2", 0.0), ("Thu, 01 Jan 1970 00:00:10 GMT", 5.0), ("soon", None),
     (None, None)],
)  # fmt: skip
def test_retry_after_seconds_reads_seconds_and_http_dates(value, expected):
    assert retry_after_seconds(value, now=5.0) == expected


def post(proxy, fake_judge):
    return proxy.forward("/chat/completions", b'{"messages": []}', {"Authorization": "Bearer k"})


def test_proxy_waits_as_long_as_retry_after_says(fake_judge):
    fake_judge.behaviour.retry_after_s = 1.5
    fake_judge.behaviour.scripted = ["429", "429"]
    proxy = JudgeProxy(fake_judge.url, ProxySettings(backoff_s=0.01)).start()
    try:
        status, _, _ = post(proxy, fake_judge)
    finally:
        proxy.stop()
    assert status == 200
    gaps = [b - a for a, b in zip(fake_judge.times, fake_judge.times[1:], strict=False)]
    assert len(gaps) == 2 and all(gap >= 1.45 for gap in gaps)


def test_proxy_gives_up_with_a_400_that_names_the_failure(fake_judge):
    fake_judge.behaviour.scripted = ["500"] * 3
    settings = ProxySettings(attempts=3, backoff_s=0.01, backoff_max_s=0.02)
    proxy = JudgeProxy(fake_judge.url, settings).start()
    try:
        status, _, body = post(proxy, fake_judge)
    finally:
        proxy.stop()
    assert status == 400
    assert b"failed after 3 attempts (HTTP 500)" in body
    assert fake_judge.count("500") == 3


def test_proxy_retries_a_hung_call_after_its_timeout(fake_judge):
    fake_judge.behaviour.hang_s = 5
    fake_judge.behaviour.scripted = ["hang"]
    proxy = JudgeProxy(fake_judge.url, ProxySettings(timeout_s=0.5, backoff_s=0.01)).start()
    try:
        status, _, _ = post(proxy, fake_judge)
    finally:
        proxy.stop()
    assert status == 200 and fake_judge.count("hang") == 1 and fake_judge.count("ok") == 1


def test_proxy_spaces_calls_under_the_rate_limit(fake_judge):
    proxy = JudgeProxy(fake_judge.url, ProxySettings(rate_limit=10)).start()
    try:
        for _ in range(6):
            post(proxy, fake_judge)
    finally:
        proxy.stop()
    gaps = [b - a for a, b in zip(fake_judge.times, fake_judge.times[1:], strict=False)]
    assert min(gaps) >= 0.08


def test_mlflow_judges_go_through_the_proxy_and_keys_stay_out_of_logs(fake_judge, caplog):
    caplog.set_level(logging.DEBUG)
    fake_judge.behaviour.scripted = ["500", "429"]
    fake_judge.behaviour.retry_after_s = 0.1
    key = os.environ["OPENAI_API_KEY"]
    with judge_proxy(ProxySettings(backoff_s=0.01)) as proxy:
        assert os.environ["OPENAI_API_BASE"] == proxy.url
        feedback = Safety()(outputs="hello")
    assert os.environ["OPENAI_API_BASE"] == fake_judge.url  # restored
    assert feedback.value == "yes"
    assert fake_judge.count("500") == 1 and fake_judge.count("429") == 1
    sent = {k.lower(): v for k, v in fake_judge.headers[-1].items()}
    assert sent["authorization"] == f"Bearer {key}"
    assert key not in caplog.text


def test_proxy_keeps_one_upstream_connection_across_callers(fake_judge):
    """MLflow's client opens a connection per call; the proxy must not do the same upstream."""
    proxy = JudgeProxy(fake_judge.url).start()
    try:
        for _ in range(5):
            reply = requests.post(f"{proxy.url}/chat/completions", json={"messages": []})
            assert reply.status_code == 200
    finally:
        proxy.stop()
    assert len(fake_judge.peers) == 5 and len(set(fake_judge.peers)) == 1


def test_proxy_goes_through_the_environments_http_proxy(fake_judge, monkeypatch):
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", fake_judge.url.removesuffix("/v1"))  # it answers as one
    proxy = JudgeProxy("http://judge.invalid/v1").start()
    try:
        status, _, _ = post(proxy, fake_judge)
    finally:
        proxy.stop()
    assert status == 200 and fake_judge.count("ok") == 1
