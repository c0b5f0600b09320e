"""``mlflow monitor report`` and the windows in ``status``, on a real SQLite store."""

import re
import time

import pytest
from click.testing import CliRunner
from PIL import Image

from mlflow_monitor_plugin import create_external_monitor
from mlflow_monitor_plugin.cli import monitor as monitor_cli
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine
from mlflow_monitor_plugin.observe.windows import HOUR_MS, window_start
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.test_quality import MAX_LENGTH, log_at

JUDGES = [  # every trace judged, so the rates are known exactly
    {"name": "response_length", "args": {"max_length": MAX_LENGTH}},
    {"name": "pii_detection"},
]
SETTINGS = EngineSettings(
    scoring=ScoringSettings(workers=2, attempts=1), sweep_every_s=0, export=False
)


@pytest.fixture
def monitored(sqlite_experiment_id):
    """Two hours of traces: all pass in the first, a third fail in the second."""
    now_ms = int(time.time() * 1000)
    for hours_ago, texts in (
        (2, ["Reply to q1"] * 6),
        (1, ["Reply to q1"] * 4 + ["Reply to q10"] * 2),
    ):
        start = window_start(now_ms, HOUR_MS) - hours_ago * HOUR_MS
        for i, text in enumerate(texts):
            log_at(start + i * 1000, text)
    create_external_monitor(
        catalog_name="w", schema_name="d", assessments_config={"assessments": JUDGES}
    )
    MonitorEngine.create(sqlite_experiment_id, SETTINGS).run_pass()
    return sqlite_experiment_id


def invoke(*args):
    return CliRunner().invoke(monitor_cli, list(args))


def test_report_table_trend_bad_judge_and_status(monitored):
    result = invoke("report", "-x", monitored, "--judge", "pii_detection")
    assert result.exit_code == 0, result.output
    assert "pii_detection" in result.output and "response_length" not in result.output
    assert "100.0%" in result.output
    daily = invoke("report", "-x", monitored, "--window", "1d")
    assert daily.exit_code == 0 and "response_length" in daily.output
    # the rate drops from the first hour to the second: the arrow points down
    result = invoke("report", "-x", monitored, "--judge", "response_length", "--since", "3h")
    rows = [line for line in result.output.splitlines() if "response_length" in line]
    assert len(rows) == 2 and "↓" in rows[1]
    bad = invoke("report", "-x", monitored, "--judge", "nope")
    assert bad.exit_code == 2 and "allowed: response_length, pii_detection" in bad.output
    status = invoke("status", "-x", monitored)
    assert status.exit_code == 0, status.output
    table = status.output.split("last window:")[1]
    assert "response_length" in table and "66.7%" in table and "0.6667" not in table


def test_report_png_and_html(monitored, tmp_path):
    png = tmp_path / "report.png"
    result = invoke("report", "-x", monitored, "--out", str(png))
    assert result.exit_code == 0, result.output
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (1000, 450)
        pixels = image.convert("RGB").getdata()
        colored = sum(1 for r, g, b in pixels if max(r, g, b) - min(r, g, b) > 60)
        dark = sum(1 for r, g, b in pixels if r + g + b < 200)
    assert colored > 500 and dark > 500  # the lines and bands, the axes and labels

    page_path = tmp_path / "report.html"
    assert invoke("report", "-x", monitored, "--out", str(page_path)).exit_code == 0
    page = page_path.read_text(encoding="utf-8")
    assert "<svg" in page and "<table>" in page and "pii_detection" in page
    # nothing to fetch: no scripts, styles or images from anywhere (xmlns names are not fetched)
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--window", "2h"], "'1h', '1d'"),
        (["--since", "soon"], "30m, 12h, 7d or 2w"),
        (["--out", "report.pdf"], ".png or .html"),
    ],
)
def test_report_bad_input_exits_2_naming_what_is_allowed(sqlite_uri, args, message):
    result = invoke("report", *args)
    assert result.exit_code == 2
    assert message in result.output
