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
