"""Judge cost: tokens per verdict through the proxy, prices, windows' cost, the daily budget."""

import hashlib
import json
import logging
import time

import pytest
from mlflow.genai.judges.utils import get_default_model

from mlflow_monitor_plugin import create_external_monitor
from mlflow_monitor_plugin.config.tags import MonitorTags
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine
from mlflow_monitor_plugin.observe.report import windows
from mlflow_monitor_plugin.observe.spend import BUDGET_TAG, DAY_MS
from mlflow_monitor_plugin.scoring import usage
from mlflow_monitor_plugin.scoring.feedback import MONITOR_KEY
from mlflow_monitor_plugin.scoring.proxy import ProxySettings, judge_proxy
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.history import log_trace_at
from tests.traces_factory import feedback_by_trace, log_traces

FAST = ScoringSettings(workers=4, attempts=2, backoff_s=0.01, backoff_max_s=0.05)
SETTINGS = EngineSettings(export=False, windows=False, scoring=FAST, sweep_every_s=0, page_size=5)
PROXY = ProxySettings(backoff_s=0.01, backoff_max_s=0.02)
PRICE = {"input_per_million": 1.0, "output_per_million": 2.0}


def _prompt_usage(request):
    """Tokens that depend on the prompt: each verdict's sum is checkable."""
    prompt = len(json.dumps(request.get("messages", []))) // 4
    return {"prompt_tokens": prompt, "completion_tokens": 7, "total_tokens": prompt + 7}


def _digest(request):
    return hashlib.sha256(json.dumps(request.get("messages", [])).encode()).hexdigest()[:8]


def _verdicts(experiment_id, monitor_id):
    return [
        a
        for assessments in feedback_by_trace(experiment_id).values()
        for a in assessments
        if (a.metadata or {}).get(MONITOR_KEY) == monitor_id and a.error is None
    ]


def _monitor(cost, sample=1.0):
    return create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"sample": sample, "assessments": [{"name": "safety"}]}, cost=cost,
    )  # fmt: skip


def test_verdicts_carry_the_tokens_of_all_their_calls_and_windows_sum_their_cost(
    sqlite_experiment_id, fake_judge
):
    fake_judge.behaviour.usage = _prompt_usage
    fake_judge.behaviour.scripted = ["malformed"]  # the first reply is unparseable: retried
    log_traces(4, retriever=False)
    m = _monitor({"prices": {get_default_model(): PRICE}})
    with judge_proxy(PROXY):
        _run(sqlite_experiment_id)

    found = _verdicts(sqlite_experiment_id, m.monitor_id)
    assert len(found) == 4
    expected_cost = 0.0
    for verdict in found:
        digest = verdict.rationale.rsplit("(", 1)[1].rstrip(")")
        calls = [_prompt_usage(r) for r in fake_judge.requests if _digest(r) == digest]
        meta = verdict.metadata
        assert int(meta[usage.PROMPT_TOKENS_KEY]) == sum(c["prompt_tokens"] for c in calls)
        assert int(meta[usage.COMPLETION_TOKENS_KEY]) == 7 * len(calls)
        assert int(meta[usage.CALLS_KEY]) == len(calls)
        cost = sum(c["prompt_tokens"] * 1e-6 + c["completion_tokens"] * 2e-6 for c in calls)
        assert float(meta[usage.COST_KEY]) == pytest.approx(cost)
        assert meta[usage.PRICE_SOURCE_KEY] == "config"
        expected_cost += cost
    assert sorted(int(v.metadata[usage.CALLS_KEY]) for v in found) == [1, 1, 1, 2]
    # our header names the call to the proxy and never reaches the judge
    assert not any(usage.CALL_HEADER.lower() in map(str.lower, h) for h in fake_judge.headers)

    now = int(time.time() * 1000)
    (row,) = windows(m, now - DAY_MS, now, "1d")
    assert row["judge_tokens"] == sum(int(v.metadata[usage.TOTAL_TOKENS_KEY]) for v in found)
    assert row["judge_cost_usd"] == pytest.approx(expected_cost)
    assert row["judge_cost_unknown"] == 0
    assert row["effective_rate"] == 1.0


def test_an_endpoint_without_usage_leaves_tokens_and_cost_unknown(
    sqlite_experiment_id, fake_judge, caplog
):
    fake_judge.behaviour.usage = lambda request: None
    log_traces(3, retriever=False)
    m = _monitor({"daily_budget_usd": 1e-9})  # that no verdict's cost can be counted against
    with judge_proxy(PROXY), caplog.at_level(logging.WARNING):
        _run(sqlite_experiment_id)
        _run(sqlite_experiment_id)
    refusals = [r for r in caplog.records if "is not enforced" in r.getMessage()]
    assert len(refusals) == 1 and "returned no token usage" in refusals[0].getMessage()
    found = _verdicts(sqlite_experiment_id, m.monitor_id)
    assert len(found) == 3
    assert not any(usage.TOTAL_TOKENS_KEY in v.metadata or usage.COST_KEY in v.metadata
                   for v in found)  # fmt: skip
    now = int(time.time() * 1000)
    (row,) = windows(m, now - DAY_MS, now, "1d")
    assert row["judge_cost_usd"] is None
    assert row["judge_cost_unknown"] == 3


def test_the_model_catalog_prices_a_judge_without_a_fetch(sqlite_experiment_id, fake_judge):
    log_traces(1, retriever=False)
    m = _monitor(None)
    with judge_proxy(PROXY):
        _run(sqlite_experiment_id)
    (verdict,) = _verdicts(sqlite_experiment_id, m.monitor_id)
    assert verdict.metadata[usage.PRICE_SOURCE_KEY] == "mlflow-catalog"
    assert float(verdict.metadata[usage.COST_KEY]) > 0


def _run(experiment_id):
    """One pass of a daemon that then stops (and gives its lease back)."""
    engine = MonitorEngine.create(experiment_id, SETTINGS)
    try:
        return engine.run_pass()
    finally:
        engine.release_lease()


def _day_start(days_ago):
    now = int(time.time() * 1000)
    return now - now % DAY_MS - days_ago * DAY_MS


def test_a_budget_stops_a_day_at_its_calls_and_the_next_day_starts_at_the_full_rate(
    sqlite_experiment_id, fake_judge, caplog
):
    fake_judge.behaviour.usage = lambda r: {"prompt_tokens": 100, "completion_tokens": 20}
    per_call = 100 * 1e-6 + 20 * 2e-6
    yesterday = _day_start(1)
    ids = [log_trace_at(yesterday + DAY_MS - 3_600_000 + i * 1000, f"y{i}") for i in range(30)]
    m = _monitor({"daily_budget_usd": 10.5 * per_call, "prices": {get_default_model(): PRICE}})
    with judge_proxy(PROXY), caplog.at_level(logging.WARNING):
        _run(sqlite_experiment_id)
        scored = len(_verdicts(sqlite_experiment_id, m.monitor_id))
        # 10 calls fit: the judge is probed first, then each pair reserves its measured cost
        assert scored == 10
        assert "binds" in caplog.text

        # a restarted daemon derives the day's spend from the store and its sweep adds nothing
        _run(sqlite_experiment_id)
        assert len(_verdicts(sqlite_experiment_id, m.monitor_id)) == scored

        today = _day_start(0)
        new = [log_trace_at(today + i * 1000, f"t{i}") for i in range(6)]
        _run(sqlite_experiment_id)
    on_new = [v for v in _verdicts(sqlite_experiment_id, m.monitor_id) if v.trace_id in new]
    assert len(on_new) == 6  # a new day: the configured rate again

    stored = MonitorTags().read_json(sqlite_experiment_id, BUDGET_TAG)
    assert stored["monitor_id"] == m.monitor_id and stored["steps"][-1][1] == 0.0
    (row,) = windows(m, yesterday, yesterday + DAY_MS - 1, "1d")
    assert row["eligible"] == len(ids)
    assert row["sampled"] == row["verdicts"] == scored  # the others: not sampled, not unscored
    assert row["effective_rate"] < 1.0
    assert row["judge_cost_usd"] == pytest.approx(scored * per_call)


def test_plan_predicts_the_calls_the_daemon_then_makes_and_prices_them(
    sqlite_experiment_id, fake_judge, tmp_path
):
    from click.testing import CliRunner

    from mlflow_monitor_plugin.cli.main import monitor as cli

    log_traces(20, retriever=False)
    _monitor({"prices": {get_default_model(): PRICE}, "daily_budget_usd": 1.0}, 0.5)
    result = CliRunner().invoke(
        cli, ["plan", "-x", sqlite_experiment_id, "--output", "json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    (row,) = plan["judges"]
    measured = fake_judge.count("ok")  # the few real calls that measured the tokens
    assert row["basis"] == f"measured ({measured} calls)" and measured == 3
    assert row["tokens_per_call"] == 20 and row["usd_per_call"] == pytest.approx(30e-6)

    with judge_proxy(PROXY):
        _run(sqlite_experiment_id)
    calls = fake_judge.count("ok") - measured
    assert row["calls_per_day"] == calls == row["scored_per_day"]  # exact: the same hash
    assert row["usd_per_day"] == pytest.approx(calls * 30e-6)
    assert plan["budget_binds"] is False

    # now from the verdicts' recorded usage, without a call
    again = json.loads(
        CliRunner().invoke(cli, ["plan", "-x", sqlite_experiment_id, "--output", "json"]).output
    )
    assert again["judges"][0]["basis"] == "recent usage"
    assert fake_judge.count("ok") == measured + calls

    # a proposed config: the rate it would have, on the same traces
    proposal = tmp_path / "new.yaml"
    proposal.write_text("assessments_config: {sample: 1.0, assessments: [{name: safety}]}\n")
    args = ["plan", "-x", sqlite_experiment_id, "--config", str(proposal), "--output", "json"]
    (row,) = json.loads(CliRunner().invoke(cli, args).output)["judges"]
    assert row["scored_per_day"] == row["traces"] == 20 and row["exact"]


@pytest.mark.slow
def test_scoring_processes_take_their_verdicts_usage_from_the_daemons_proxy(
    sqlite_experiment_id, fake_judge
):
    from mlflow_monitor_plugin.scoring.pool import make_scorer

    fake_judge.behaviour.usage = _prompt_usage
    log_traces(4, retriever=False)
    m = _monitor({"prices": {get_default_model(): PRICE}})
    settings = EngineSettings(**{**SETTINGS.__dict__, "scoring": ScoringSettings(
        workers=2, attempts=2, backoff_s=0.01, processes=1)})  # fmt: skip
    with judge_proxy(PROXY):
        scorer = make_scorer(settings.scoring)
        try:
            engine = MonitorEngine.create(sqlite_experiment_id, settings, scorer=scorer)
            engine.run_pass()
        finally:
            scorer.close()
    found = _verdicts(sqlite_experiment_id, m.monitor_id)
    assert len(found) == 4
    for verdict in found:
        digest = verdict.rationale.rsplit("(", 1)[1].rstrip(")")
        calls = [_prompt_usage(r) for r in fake_judge.requests if _digest(r) == digest]
        assert int(verdict.metadata[usage.TOTAL_TOKENS_KEY]) == sum(
            c["total_tokens"] for c in calls
        )
        assert usage.COST_KEY in verdict.metadata


def test_a_stated_call_cost_budgets_an_endpoint_without_usage(sqlite_experiment_id, fake_judge):
    fake_judge.behaviour.usage = lambda request: None
    end_of_yesterday = _day_start(0) - 3_600_000
    for i in range(12):
        log_trace_at(end_of_yesterday + i * 1000, f"y{i}")
    m = _monitor({"daily_budget_usd": 0.0045, "call_cost_usd": 0.001})
    with judge_proxy(PROXY):
        _run(sqlite_experiment_id)
    assert len(_verdicts(sqlite_experiment_id, m.monitor_id)) == 4  # known in advance: exact


def test_create_with_plan_asks_first_and_yes_skips_the_question(sqlite_experiment_id):
    from click.testing import CliRunner

    from mlflow_monitor_plugin import get_external_monitor
    from mlflow_monitor_plugin.cli.main import monitor as cli
    from mlflow_monitor_plugin.exceptions import MonitorNotFoundError

    log_traces(3, retriever=False)
    args = ["create", "-x", sqlite_experiment_id, "--judge", "pii_detection", "--plan"]
    declined = CliRunner().invoke(cli, args, input="n\n")
    assert declined.exit_code == 1 and "Apply this config?" in declined.output
    assert "pii_detection" in declined.output and "no LLM call" in declined.output
    with pytest.raises(MonitorNotFoundError):
        get_external_monitor(experiment_id=sqlite_experiment_id)
    accepted = CliRunner().invoke(cli, [*args, "--yes"])
    assert accepted.exit_code == 0, accepted.output
    assert get_external_monitor(experiment_id=sqlite_experiment_id).monitor_id


def test_a_budget_holds_from_the_first_call_of_a_new_monitor(sqlite_experiment_id, fake_judge):
    """Issue 26: a fresh monitor, prices stated, no cost measured yet: the first pass (a whole
    page of 50 traces at default flags) stops at the budget's 20 calls, not 50, and status
    shows the binding at once."""
    from click.testing import CliRunner

    from mlflow_monitor_plugin.cli import monitor as cli

    fake_judge.behaviour.usage = lambda r: {"prompt_tokens": 10, "completion_tokens": 5}
    per_call = 10 * 2.5e-6 + 5 * 10e-6  # $0.000075 at 2.5 / 10 dollars per million
    end_of_yesterday = _day_start(0) - 3_600_000
    for i in range(50):
        log_trace_at(end_of_yesterday + i * 1000, f"t{i}")
    runner = CliRunner()
    created = runner.invoke(cli, [
        "create", "-x", sqlite_experiment_id, "--judge", "safety",
        "--price", f"{get_default_model()}=2.5,10", "--daily-budget-usd", f"{20 * per_call:.7f}",
    ])  # fmt: skip
    assert created.exit_code == 0, created.output
    ran = runner.invoke(cli, ["run", "-x", sqlite_experiment_id, "--once", "--no-export"])
    assert ran.exit_code == 0, ran.output
    monitor_id = MonitorTags().read_config(sqlite_experiment_id).monitor_id
    assert len(_verdicts(sqlite_experiment_id, monitor_id)) == 20
    assert "The daily budget $0.0015 binds" in ran.output
    status = runner.invoke(cli, ["status", "-x", sqlite_experiment_id, "--output", "json"])
    budget = json.loads(status.output)["budget"]
    assert budget["spent_usd"] == pytest.approx(20 * per_call)
    assert budget["binding_since_ms"] is not None and budget["enforced"] is True
