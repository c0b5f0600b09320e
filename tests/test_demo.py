import datetime as dt
import json
import os

import pytest
from click.testing import CliRunner

from mlflow_monitor_plugin.cli import monitor as monitor_cli
from tests.traces_factory import feedback_by_trace


@pytest.fixture
def no_judge_endpoint(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_API_BASE", "OPENAI_BASE_URL",
                 "MLFLOW_GENAI_JUDGE_DEFAULT_MODEL"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def test_demo_without_judge_endpoint_runs_deterministic_judges(sqlite_uri, no_judge_endpoint):
    result = CliRunner().invoke(monitor_cli, ["demo", "--traces", "8"])
    assert result.exit_code == 0, result.output
    assert "Logged 8 traces" in result.output
    # two deterministic judges on each trace: the counts a reader expects, verdicts not pairs
    assert "Monitored 8 traces in" in result.output and ": 16 verdicts, 0 failed." in result.output
    assert "experiment 1: 8 traces, 16 verdicts, 0 failed," in result.output  # the pass's log
    assert "Exported 8 traces to" in result.output
    assert "Skipped the LLM judges safety, relevance_to_query" in result.output
    assert "OPENAI_API_KEY" in result.output and "mlflow ui --backend-store-uri" in result.output
    assert "pii_detection" in result.output
    feedback = feedback_by_trace("1")
    assert len(feedback) == 8
    assert all(
        {"pii_detection", "response_length"} <= {a.name for a in fb} for fb in feedback.values()
    )


def test_demo_with_a_judge_endpoint_runs_every_judge(sqlite_uri, fake_judge):
    result = CliRunner().invoke(monitor_cli, ["demo", "--traces", "8"])
    assert result.exit_code == 0, result.output
    assert "Skipped" not in result.output
    names = {a.name for fb in feedback_by_trace("1").values() for a in fb}
    assert {
        "safety",
        "relevance_to_query",
        "groundedness",
        "chunk_relevance",
        "mlflow_only",
    } <= names
    # run twice: the demo reuses its experiment and monitor
    again = CliRunner().invoke(monitor_cli, ["demo", "--traces", "8"])
    assert again.exit_code == 0, again.output
    assert len(feedback_by_trace("1")) == 16


def _cli(*args):
    result = CliRunner().invoke(monitor_cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_status_and_report_say_the_llm_judges_were_skipped_and_how_to_score_them(
    sqlite_uri, fake_judge, monkeypatch
):
    """A newcomer's demo with no judge key: status and report say 'skipped, no judge endpoint'
    (not 'not applicable'), in text and JSON; once a key is set, the backfill they name scores
    the skipped traces."""
    judge_env = {k: os.environ[k] for k in ("OPENAI_API_BASE", "OPENAI_BASE_URL", "OPENAI_API_KEY")}
    for name in judge_env:
        monkeypatch.delenv(name)
    _cli("demo", "--traces", "6")

    text = _cli("status", "-x", "1")
    assert "skipped: safety, relevance_to_query, groundedness, chunk_relevance, mlflow_only: " \
           "no judge endpoint" in text  # fmt: skip
    assert "OPENAI_API_KEY" in text and "mlflow monitor backfill -x 1 --since 20" in text
    judges = {r["judge"]: r for r in json.loads(_cli("status", "-x", "1", "--output", "json"))
              ["judges"]}  # fmt: skip
    assert (judges["safety"]["skipped"], judges["safety"]["not_applicable"]) == (6, 0)
    assert judges["safety"]["skipped_reason"].startswith("no judge endpoint")
    assert judges["pii_detection"]["skipped"] == 0
    assert "skipped_reason" not in judges["pii_detection"]
    # groundedness did not run, so whether it applies is unknown: skipped, never not applicable
    assert (judges["groundedness"]["skipped"], judges["groundedness"]["not_applicable"]) == (6, 0)

    report = _cli("report", "-x", "1")
    names = "chunk_relevance, groundedness, mlflow_only, relevance_to_query, safety"
    assert f"skipped: {names}: no judge endpoint" in report
    rows = json.loads(_cli("report", "-x", "1", "--output", "json"))
    by_judge = {r["judge"]: r for r in rows["windows"]}
    assert (by_judge["safety"]["skipped"], by_judge["safety"]["verdicts"]) == (6, 0)
    assert (by_judge["pii_detection"]["skipped"], by_judge["pii_detection"]["verdicts"]) == (0, 6)
    assert rows["skipped"] and "no judge endpoint" in rows["skipped"][0]
    ledger = json.loads(_cli("status", "-x", "1", "--coverage", "--since", "1d", "--output=json"))
    states = {r["judge"]: r["state"] for r in ledger["windows"]}
    assert states["safety"] == "skipped" and states["pii_detection"] != "skipped"

    for name, value in judge_env.items():  # the key is set, the backfill named is run
        monkeypatch.setenv(name, value)
    _cli("backfill", "-x", "1", "--since", "1d", "--judge", "safety")
    judges = {r["judge"]: r for r in json.loads(_cli("status", "-x", "1", "--output", "json"))
              ["judges"]}  # fmt: skip
    assert (judges["safety"]["scored"], judges["safety"]["skipped"]) == (6, 0)
    assert judges["relevance_to_query"]["skipped"] == 6  # not backfilled: still said


def test_status_prints_times_dashes_and_dollars_a_reader_can_use(sqlite_uri, no_judge_endpoint):
    _cli("demo", "--traces", "4")
    text = _cli("status", "-x", "1")
    raw = json.loads(_cli("status", "-x", "1", "--output", "json"))
    cursor = raw["checkpoint"]
    assert set(cursor) >= {"timestamp_ms", "trace_id"}  # the raw values stay in JSON
    when = dt.datetime.fromtimestamp(cursor["timestamp_ms"] / 1000, dt.timezone.utc)
    line = next(li for li in text.splitlines() if li.startswith("checkpoint:"))
    assert when.strftime("%Y-%m-%d %H:%M:%S UTC") in line and " ago), trace " in line
    assert cursor["trace_id"] in line and "{" not in text and "timestamp_ms" not in text
    assert "None" not in text  # one convention with report: '-' where there is no value
    cost = {r["judge"]: r for r in raw["windows"]}
    # code judges call no LLM: $0, never 'unknown' (docs/cost.md)
    assert cost["pii_detection"]["cost_today_usd"] == 0 and cost["pii_detection"][
        "cost_unknown_today"] == 0  # fmt: skip
    row = next(li for li in text.splitlines() if "response_length" in li and "$" in li)
    assert "$0.000000" in row
    shown = _cli("get", "-x", "1")
    assert "response_length (max_length=200)" in shown and "{" not in shown
    assert shown.startswith("Monitor of experiment 1")
    tried = _cli("test", "-x", "1", "--max-traces", "2")
    assert "skipped: no judge endpoint" in tried and "MlflowException" not in tried
