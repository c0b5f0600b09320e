"""Screenshots of the MLflow UI after ``mlflow monitor demo``, for the README.

Runs the demo into a temporary store, serves that store with ``mlflow server`` on 127.0.0.1, and
captures the experiment's Traces tab and one trace's Assessments panel with headless Chromium
(Debian's ``chromium`` package, driven by Playwright: ``pip install ".[screenshots]"``). Then it
gives the server an AI Gateway endpoint (the fake judge behind it), points the demo monitor's
LLM judges at it (``gateway:/judge``), and captures the experiment's Judges page listing them
with their sample rates. It fails if the pictures would not show the verdicts' source names or
the judges. Rerunnable; not part of the tests.

    python scripts/screenshot_ui.py                # the demo as a first run without a judge key
    python scripts/screenshot_ui.py --llm fake     # LLM judges answered by tests/fake_judge.py
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
JUDGE_ENVS = ("OPENAI_API_KEY", "OPENAI_API_BASE", "OPENAI_BASE_URL")
DEMO_EXPERIMENT = "mlflow-monitor-demo"
GATEWAY_ENV = {  # the server's AI Gateway may call the fake judge on loopback
    "MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS": "true",
    "MLFLOW_GATEWAY_API_BASE_ALLOWED_SCHEMES": "http,https",
}
TRACE_TEXT = "jane.doe@example.com"  # the example app's question that pii_detection flags
TIMEOUT_MS = 180_000  # the UI's first load is slow on a busy machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def judge_endpoint(llm: str, env: dict[str, str]) -> Iterator[None]:
    """Set the demo's judge endpoint: none, the fake judge, or whatever the environment has."""
    if llm == "env":
        yield
        return
    for name in (*JUDGE_ENVS, "MLFLOW_GENAI_JUDGE_DEFAULT_MODEL"):
        env.pop(name, None)
    if llm == "none":
        yield
        return
    sys.path.insert(0, str(ROOT))
    from tests.fake_judge import FakeJudge

    with FakeJudge() as judge:
        env.update(OPENAI_API_BASE=judge.url, OPENAI_BASE_URL=judge.url, OPENAI_API_KEY="sk-fake")
        env["MLFLOW_MODEL_CATALOG_URI"] = ""  # no price catalog fetched from the internet
        yield


def run_demo(workdir: Path, env: dict[str, str], traces: int) -> None:
    cmd = [sys.executable, "-m", "mlflow_monitor_plugin.cli", "demo", "--traces", str(traces)]
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    sys.stderr.write(done.stdout + done.stderr)
    if done.returncode:
        raise SystemExit(f"mlflow monitor demo failed (exit {done.returncode})")


@contextlib.contextmanager
def mlflow_server(store: str, workdir: Path, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", store, "--default-artifact-root", str(workdir / "artifacts"),
        "--workers", "1",
    ]  # fmt: skip
    with open(workdir / "server.log", "wb") as log:
        server = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + TIMEOUT_MS / 1000
            while True:
                if server.poll() is not None:
                    raise SystemExit(
                        f"mlflow server exited: {(workdir / 'server.log').read_text()}"
                    )
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(url + "/health", timeout=2),
                ):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("mlflow server did not answer /health in time")
                time.sleep(0.5)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def capture(url: str, experiment_id: str, out: Path, width: int, height: int) -> list[Path]:
    """The Traces tab and one trace's Assessments panel, as PNGs in ``out``."""
    from playwright.sync_api import sync_playwright

    traces_png, assessments_png = out / "ui-traces.png", out / "ui-assessments.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            _shoot(page, f"{url}/#/experiments/{experiment_id}/traces", traces_png, assessments_png)
        except Exception:
            page.screenshot(path=out / "failed.png")  # what the page showed when it gave up
            raise
        finally:
            browser.close()
    return [traces_png, assessments_png]


def _shoot(page: Page, traces_url: str, traces_png: Path, assessments_png: Path) -> None:
    from playwright.sync_api import expect

    page.goto(traces_url)
    _header(page, "pii_detection").wait_for()
    _tidy_traces_tab(page)
    page.screenshot(path=traces_png)

    page.get_by_text(TRACE_TEXT).first.click()
    page.get_by_role("button", name="Assess").click()
    pane = page.get_by_test_id("assessments-pane")
    toggles = pane.locator(
        '[data-component-id="shared.model-trace-explorer.toggle-assessment-expanded"]'
    )
    toggles.first.wait_for()
    for i in range(toggles.count()):
        toggles.nth(i).click()
    _widen_assessments(page, 250)
    expect(pane.get_by_text("mlflow_monitor/pii_detection")).to_be_visible()
    pane.get_by_text("Assessments", exact=True).scroll_into_view_if_needed()  # the pane's top
    page.wait_for_timeout(500)
    page.screenshot(path=assessments_png)


def _header(page: Page, name: str) -> Locator:
    """A column header of the Traces table (its cells are not in an ARIA table, so no role)."""
    return page.locator("[role=columnheader]").filter(has=page.get_by_text(name, exact=True))


def _tidy_traces_tab(page: Page) -> None:
    """Close what a first visit opens over the table, and hide the empty columns."""
    got_it = page.get_by_role("button", name="Got it")
    if got_it.count():
        got_it.first.click()
    assistant = page.get_by_role("button", name="Close", exact=True)
    if assistant.count():
        assistant.first.click()
    page.get_by_role("button", name="Toggle sidebar").click()
    for column in ("Tokens", "Tags"):
        header = _header(page, column)
        header.hover()
        header.get_by_role("button", name="Column options").click()
        page.get_by_role("menuitem", name="Hide column").click()
    page.mouse.move(0, 0)
    page.wait_for_timeout(500)


def _widen_assessments(page: Page, pixels: int) -> None:
    """Drag the divider before the Assessments panel left, so source names show in full."""
    box = page.locator(".react-resizable").nth(1).bounding_box()
    x, y = box["x"] + box["width"] - 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - pixels, y, steps=10)
    page.mouse.up()


def capture_judges(url: str, experiment_id: str, out: Path, width: int, height: int) -> Path:
    """The experiment's Judges page, after its LLM judges moved to a gateway endpoint."""
    from playwright.sync_api import expect, sync_playwright

    png = out / "ui-judges.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            page.goto(f"{url}/#/experiments/{experiment_id}/judges")
            expect(page.get_by_text("Sample rate").first).to_be_visible()
            for name in ("safety", "mlflow_only", "pii_detection"):
                expect(page.get_by_text(name, exact=True).first).to_be_visible()
            assistant = page.get_by_role("button", name="Close", exact=True)
            if assistant.count():
                assistant.first.click()
            page.wait_for_timeout(500)
            page.screenshot(path=png)
        finally:
            browser.close()
    return png


def use_gateway(url: str, experiment_id: str) -> contextlib.AbstractContextManager[None]:
    """An endpoint ``judge`` on the server's AI Gateway, the fake judge behind it, and the
    demo monitor's LLM judges on ``gateway:/judge`` (so MLflow lists them started)."""

    @contextlib.contextmanager
    def using() -> Iterator[None]:
        sys.path.insert(0, str(ROOT))
        import mlflow

        from mlflow_monitor_plugin import get_external_monitor, update_external_monitor
        from tests.fake_judge import FakeJudge
        from tests.gateway import create_endpoint

        with FakeJudge() as judge:
            endpoint = create_endpoint(url, judge.url, name="judge")
            mlflow.set_tracking_uri(url)
            monitor = get_external_monitor(experiment_id=experiment_id)
            suite = {**monitor.assessments_config.to_dict(), "model": f"gateway:/{endpoint}"}
            update_external_monitor(experiment_id=experiment_id, assessments_config=suite)
            yield

    return using()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--traces", type=int, default=24, help="Demo traces to log.")
    parser.add_argument(
        "--llm",
        choices=("none", "fake", "env"),
        default="none",
        help="LLM judges: skipped (as without a key), the fake judge, or the environment's.",
    )
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=860)
    parser.add_argument("--keep", action="store_true", help="Keep the temporary store.")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mlflow-monitor-screenshots-"))
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    try:
        with judge_endpoint(args.llm, env):
            run_demo(workdir, env, args.traces)
        from mlflow.tracking import MlflowClient

        experiment = MlflowClient(store).get_experiment_by_name(DEMO_EXPERIMENT)
        server_env = {**env, "MLFLOW_MONITOR_DISABLE_CLI_HOOK": "1", **GATEWAY_ENV}
        server_env.pop("MLFLOW_TRACKING_URI")
        args.out.mkdir(parents=True, exist_ok=True)
        with mlflow_server(store, workdir, server_env) as url:
            exp = experiment.experiment_id
            for png in capture(url, exp, args.out, args.width, args.height):
                print(png)
            with use_gateway(url, exp):
                print(capture_judges(url, exp, args.out, args.width, args.height))
    finally:
        if args.keep:
            print(f"store kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
