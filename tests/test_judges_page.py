"""The experiment's Judges page in a real browser (Playwright driving Debian's chromium): it lists
the monitor's judges, and a judge created through its "New LLM judge" form gets verdicts from
the daemon, through the tracking server's AI Gateway, with no judge key in the daemon."""

from __future__ import annotations

import os
import shutil
import time

import mlflow
import pytest

from mlflow_monitor_plugin import create_external_monitor
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine
from mlflow_monitor_plugin.scoring.feedback import MONITOR_KEY
from mlflow_monitor_plugin.scoring.proxy import judge_proxy
from tests.traces_factory import feedback_by_trace, log_traces

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install '.[test]')"
    if not shutil.which(CHROMIUM):
        return f"{CHROMIUM} is missing (Debian's chromium package)"
    return None


@pytest.fixture
def browser_page():
    missing = _browser_missing()
    if missing:
        if os.environ.get("MLFLOW_MONITOR_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MLFLOW_MONITOR_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.set_default_timeout(90_000)  # the UI's first load is slow on a busy machine
        try:
            yield page
        finally:
            browser.close()


@pytest.mark.server
def test_the_judges_page_lists_the_monitors_judges_and_runs_one_made_in_its_form(
    rest_uri, mlflow_server, gateway_judge, browser_page
):
    from playwright.sync_api import expect

    judge, endpoint = gateway_judge
    exp = mlflow.set_experiment(f"page-{time.time_ns()}").experiment_id
    ids = log_traces(3, retriever=False)
    m = create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"sample": 0.5, "assessments": [
            {"name": "safety", "model": f"gateway:/{endpoint}"}, {"name": "pii_detection"}]},
    )  # fmt: skip
    page = browser_page
    page.goto(f"{mlflow_server.url}/#/experiments/{exp}/judges")
    card = page.locator("div").filter(has_text="safety").filter(has_text="Sample rate")
    expect(card.last).to_contain_text("50%")
    expect(page.get_by_text("pii_detection").first).to_be_visible()

    # a judge made in the page's form, as a user makes it
    page.get_by_role("button", name="New LLM judge").click()
    dialog = page.get_by_role("dialog")
    dialog.locator('input[name="name"]').fill("helpful_ui")
    dialog.get_by_role("button", name="Evaluation criteria").click()
    dialog.locator('textarea[name="instructions"]').fill(
        "Is the answer in {{ outputs }} helpful for {{ inputs }}?"
    )
    dialog.get_by_role("combobox").filter(has_text="Select an endpoint").click()
    page.get_by_role("option").filter(has_text=endpoint).first.click()
    dialog.get_by_role("button", name="Create judge").click()
    expect(page.get_by_text("helpful_ui").first).to_be_visible()

    engine = MonitorEngine.create(exp, EngineSettings(export=False, windows=False))
    with judge_proxy():
        stats = engine.run_pass()
    assert stats.judges["helpful_ui"]["scored"] == len(ids)
    for trace_id, assessments in feedback_by_trace(exp).items():
        made = [a for a in assessments if a.name == "helpful_ui" and a.error is None]
        assert len(made) == 1 and made[0].metadata[MONITOR_KEY] == m.monitor_id, trace_id
    assert judge.count("ok") >= len(ids)
