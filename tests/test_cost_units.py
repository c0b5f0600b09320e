"""Judge cost, pure parts: usage parsing, prices, cost settings, the budget's schedule and pace."""

import json
import os
import urllib.request

import pytest
from click.testing import CliRunner

from mlflow_monitor_plugin.cli.main import monitor
from mlflow_monitor_plugin.config.prices import (
    Price,
    PriceBook,
    catalog_price,
    cost_from,
    read_prices_file,
)
from mlflow_monitor_plugin.exceptions import MonitorConfigError
from mlflow_monitor_plugin.observe.spend import (
    DAY_MS,
    HOUR_MS,
    DaySpend,
    RateSchedule,
    pace,
    quantize,
)
from mlflow_monitor_plugin.scoring import usage
from mlflow_monitor_plugin.scoring.proxy import JudgeProxy, ProxySettings

D = 20_000 * DAY_MS  # a UTC day start


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}',
         usage.Usage(3, 4, 7, 1)),
        (b'{"usage": {"input_tokens": 3, "output_tokens": 4}}', usage.Usage(3, 4, 7, 1)),
        (b'{"usage": {"total_tokens": 9}}', usage.Usage(0, 0, 9, 1)),
        (b'{"choices": []}', None),
        (b'{"usage": {"prompt_tokens": -1}}', None),
        (b"not json", None),
    ],
)  # fmt: skip
def test_parse_usage_reads_openai_replies_and_nothing_else(body, expected):
    assert usage.parse_usage(body) == expected


def test_proxy_counts_usage_per_call_id_and_hands_it_out_once_over_http(fake_judge):
    proxy = JudgeProxy(fake_judge.url, ProxySettings(backoff_s=0.01)).start()
    try:
        body = b'{"messages": []}'
        for _ in range(2):
            proxy.forward("/chat/completions", body, {}, call_id="abc")
        proxy.forward("/chat/completions", body, {}, call_id=None)  # uncounted
        url = f"{proxy.url}{usage.USAGE_PATH}abc"
        with urllib.request.urlopen(url) as reply:
            assert json.loads(reply.read()) == {"prompt": 20, "completion": 20, "total": 40,
                                                "calls": 2}  # fmt: skip
        with urllib.request.urlopen(url) as reply:
            assert json.loads(reply.read()) is None
    finally:
        proxy.stop()


def test_a_scorer_names_its_calls_in_the_headers_mlflow_sends():
    from mlflow.genai.judges import make_judge
    from mlflow.genai.scorers import Safety

    builtin = Safety()
    custom = make_judge(name="x", instructions="Is {{ outputs }} ok?", feedback_value_type=bool)
    assert usage.set_call_header(builtin, "a") and builtin.extra_headers[usage.CALL_HEADER] == "a"
    assert usage.set_call_header(custom, "b")
    assert custom._extra_headers[usage.CALL_HEADER] == "b"
    assert usage.set_call_header(builtin, "c") and builtin.extra_headers[usage.CALL_HEADER] == "c"
    assert not usage.set_call_header(object(), "d")


@pytest.mark.parametrize(
    ("cost", "field"),
    [
        ({"daily_budget_usd": -1}, "cost.daily_budget_usd"),
        ({"daily_budget_usd": "5"}, "cost.daily_budget_usd"),
        ({"daily_budget_usd": float("nan")}, "cost.daily_budget_usd"),
        ({"call_cost_usd": True}, "cost.call_cost_usd"),
        ({"prices": {"m": {"input_per_million": -0.1}}}, "cost.prices['m'].input_per_million"),
        ({"prices": {"m": {"input": 1}}}, "cost.prices['m']"),
        ({"prices": {"m": 3}}, "cost.prices['m']"),
        ({"pace": "yes"}, "cost.pace"),
        ({"budget": 1}, "cost"),
    ],
)
def test_cost_settings_reject_bad_amounts_naming_the_field(cost, field):
    with pytest.raises(MonitorConfigError) as e:
        cost_from(cost)
    assert e.value.field == field


def test_cost_settings_round_trip():
    price = {"input_per_million": 1, "output_per_million": 4}
    cost = cost_from(
        {"daily_budget_usd": 5, "call_cost_usd": 0.001, "pace": True, "prices": {"gpt-x": price}}
    )
    assert cost_from(cost.to_dict()) == cost
    assert cost.prices["gpt-x"].cost(1_000_000, 1_000_000) == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--daily-budget-usd", "-3"], "non-negative"),
        (["--daily-budget-usd", "abc"], "expected a number of USD"),
        (["--call-cost-usd", "1e999"], "non-negative"),
        (["--price", "gpt-x=1"], "MODEL=INPUT,OUTPUT"),
        (["--price", "gpt-x=a,b"], "MODEL=INPUT,OUTPUT"),
        (["--price", "gpt-x=-1,2"], "non-negative"),
    ],
)
def test_create_rejects_bad_budgets_and_prices_with_exit_2(args, message):
    result = CliRunner().invoke(monitor, ["create", "-x", "0", "--judge", "safety", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_prices_come_from_config_then_file_then_mlflow_catalog(tmp_path, monkeypatch):
    path = tmp_path / "prices.yaml"
    path.write_text("gpt-4.1-mini: {input_per_million: 9, output_per_million: 9}\n")
    monkeypatch.delenv("MLFLOW_MODEL_CATALOG_URI", raising=False)
    config = {"openai:/gpt-4o": Price(1e-6, 2e-6)}
    book = PriceBook(config, str(path))
    assert book.price("openai:/gpt-4o").source == "config"
    assert book.price("openai:/gpt-4.1-mini").source == "file:prices.yaml"  # a bare name
    assert book.price("openai:/gpt-4o-mini").source == "mlflow-catalog"
    assert book.price("openai:/no-such-model") is None
    assert book.price("gpt-4o-mini") is None  # no provider: never guessed from another's
    assert catalog_price("openai:/gpt-4o-mini") == book.price("openai:/gpt-4o-mini")
    assert "MLFLOW_MODEL_CATALOG_URI" not in os.environ  # looked up without turning on a fetch


def test_a_bad_prices_file_names_itself(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"m": {"input_per_million": "x"}}')
    with pytest.raises(MonitorConfigError, match="p.json"):
        read_prices_file(path)


def test_rate_schedule_steps_hold_to_their_day_end():
    s = RateSchedule()
    assert s.factor(D + 5) == 1.0
    assert s.set(D + 10 * HOUR_MS, 0.5)
    assert s.set(D + 20 * HOUR_MS, 0.0)
    assert not s.set(D + 21 * HOUR_MS, 0.0)  # no change
    assert [s.factor(D + h * HOUR_MS) for h in (9, 10, 19, 20, 23)] == [1, 0.5, 0.5, 0, 0]
    assert s.factor(D + DAY_MS) == 1.0  # the next day starts at the configured rate
    assert RateSchedule.from_list(s.to_list()) == s
    assert RateSchedule.from_list([[1, 2.0], ["x"], None, [5, 0.25]]).steps == [(5, 0.25)]
    s.prune(D + DAY_MS)
    assert s.steps == []


@pytest.mark.parametrize(
    ("factor", "expected"),
    [(1.3, 1.0), (1.0, 1.0), (0.7, 0.5), (0.5, 0.5), (0.3, 0.25), (1e-4, 0.0)],
)
def test_quantize_rounds_down_to_a_power_of_two(factor, expected):
    assert quantize(factor) == expected


def test_pace_stops_when_the_next_call_does_not_fit_and_spreads_the_rest_of_the_day():
    spend = DaySpend(D, usd=0.9, traces=100)
    assert pace(1.0, spend, D + 12 * HOUR_MS, None, 0.05) == 1.0  # one more call fits
    assert pace(1.0, spend, D + 12 * HOUR_MS, None, 0.2) == 0.0
    spend.reserved = 0.1
    assert pace(1.0, spend, D + 12 * HOUR_MS, None, None) == 0.0  # all promised
    # 100 traces in 12 h, as many again to come at $0.01 each: $1 wanted, $0.5 left
    assert pace(1.0, DaySpend(D, usd=0.5, traces=100), D + 12 * HOUR_MS, 0.01, 0.01) == (
        pytest.approx(0.5)
    )
    assert pace(10.0, DaySpend(D, usd=0.5, traces=100), D + 12 * HOUR_MS, 0.01, 0.01) == 1.0


def test_a_budget_factor_rule_fires_while_the_budget_binds():
    from mlflow_monitor_plugin.alerts.evaluate import evaluate
    from mlflow_monitor_plugin.config.alerts import rules_from
    from mlflow_monitor_plugin.config.model import AssessmentsSuiteConfig, ExternalMonitor
    from mlflow_monitor_plugin.observe.spend import BUDGET_TAG, TAG_PREFIX, budget_factor

    (rule,) = rules_from(["budget_factor<1"], ["safety"])
    assert rule.describe() == "budget_factor<1"
    assert evaluate(rule, None, None, budget_factor=0.25).breach
    assert evaluate(rule, None, None, budget_factor=1.0).clear
    assert not evaluate(rule, None, None, budget_factor=None).judged

    suite = AssessmentsSuiteConfig.from_dict({"assessments": [{"name": "safety"}]})
    m = ExternalMonitor(
        "1", suite, "w", "d", "/tmp/x", "m1", cost=cost_from({"daily_budget_usd": 1})
    )
    steps = json.dumps({"monitor_id": "m1", "steps": [[D + HOUR_MS, 0.5]]})
    tags = {TAG_PREFIX + BUDGET_TAG: steps}
    assert budget_factor(m, tags, D + 2 * HOUR_MS) == 0.5
    assert budget_factor(m, tags, D + DAY_MS) == 1.0
    assert budget_factor(m, {}, D) == 1.0
    m.cost = cost_from(None)
    assert budget_factor(m, tags, D + 2 * HOUR_MS) is None
