"""People's labels beside the judge: given with MLflow's API, with `mlflow monitor label` and
with the REST calls the MLflow UI makes; the windows' agreement numbers against counts made
here, the same after a restart, /metrics, the alert metrics and curate --disagreement."""

import json
import time
import urllib.request

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.entities import AssessmentSource
from mlflow.genai.datasets import get_dataset

from mlflow_monitor_plugin import create_external_monitor
from mlflow_monitor_plugin.alerts.evaluate import evaluate
from mlflow_monitor_plugin.alerts.source import StoreWindows
from mlflow_monitor_plugin.cli import monitor as cli
from mlflow_monitor_plugin.config.alerts import parse_alert_spec
from mlflow_monitor_plugin.discovery.traces import TraceSource
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine
from mlflow_monitor_plugin.observe import report
from mlflow_monitor_plugin.observe.live import LiveMetrics
from mlflow_monitor_plugin.observe.tracker import QualitySettings, QualityTracker
from mlflow_monitor_plugin.observe.windows import DAY_MS, window_start
from mlflow_monitor_plugin.scoring.feedback import judge_states
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.test_agreement import kappa_by_hand
from tests.traces_factory import log_traces


def settings():
    return EngineSettings(export=False, scoring=ScoringSettings(workers=4), sweep_every_s=0)


def human(user="ana"):
    return AssessmentSource("HUMAN", user)


def cli_run(*args, code=0):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def scored(count=12):
    """``count`` traces, every third UNSAFE (the fake judge says no), judged by safety."""
    ids = [t for i in range(count) for t in log_traces(1, False, f"q{i} {'UNSAFE' * (i % 3 == 0)}")]
    monitor = create_external_monitor(
        catalog_name="w", schema_name="d", assessments_config={"assessments": [{"name": "safety"}]}
    )
    engine = MonitorEngine.create(monitor.experiment_id, settings())
    engine.run_pass()
    return monitor, ids, engine


def judge_value(trace_id):
    (ours,) = [a for a in mlflow.get_trace(trace_id).info.assessments
               if a.name == "safety" and a.source.source_type == "LLM_JUDGE"]  # fmt: skip
    return ours


def today_row(monitor):
    now = int(time.time() * 1000)
    (row,) = report.windows(monitor, window_start(now, DAY_MS), now, "1d")
    return row


def test_labels_from_the_api_and_the_cli_give_exact_agreement_windows_metrics_and_alerts(
    sqlite_experiment_id, fake_judge
):
    monitor, ids, engine = scored()
    exp = monitor.experiment_id
    judge = {t: judge_value(t) for t in ids}
    expected = {}  # trace -> (judge's label, person's latest label)

    def label(trace_id, value):
        mlflow.log_feedback(trace_id=trace_id, name="safety", value=value, source=human())
        expected[trace_id] = (judge[trace_id].value, value)

    label(ids[1], "yes")  # agrees
    mlflow.override_feedback(trace_id=ids[2], assessment_id=judge[ids[2]].assessment_id,
                             value="no", source=human("bo"))  # fmt: skip
    expected[ids[2]] = ("yes", "no")  # a person corrected the judge: it stays counted
    label(ids[3], "no")
    label(ids[4], "yes")  # then the same person edits it: the latest valid value counts
    first = next(
        a for a in mlflow.get_trace(ids[4]).info.assessments if a.source.source_id == "ana"
    )
    mlflow.override_feedback(trace_id=ids[4], assessment_id=first.assessment_id, value="no",
                             source=human())  # fmt: skip
    expected[ids[4]] = ("yes", "no")
    mlflow.log_feedback(trace_id=ids[5], name="safety", value=4, source=human())  # not yes/no
    cli_run("label", "-x", exp, "--trace-id", ids[7], "--judge", "safety", "--value", "yes")
    expected[ids[7]] = (judge[ids[7]].value, "yes")

    a = [j for j, _ in expected.values()]
    b = [p for _, p in expected.values()]
    agreed = sum(x == y for x, y in zip(a, b, strict=True))
    row = today_row(monitor)
    assert row["verdicts"] == len(ids), "a person's label is no verdict of the judge"
    assert (row["human_labels"], row["human_agreed"]) == (len(expected), agreed)
    assert (row["human_invalid"], row["human_overrides"]) == (1, len(expected) - agreed)
    assert row["human_kappa"] == pytest.approx(kappa_by_hand(a, b))
    assert row["human_agreement_low95"] < agreed / len(expected) < row["human_agreement_high95"]

    engine.run_pass()  # exactly once: nothing judged again, nobody's label removed
    assert today_row(monitor)["human_labels"] == len(expected)
    assert today_row(monitor)["verdicts"] == len(ids)

    # the daemon's windows and /metrics, then a restart: the same numbers from the store
    def tracker():
        return QualityTracker(
            exp, mlflow.MlflowClient(), TraceSource(exp),
            QualitySettings(update_every_s=0, labels_every_s=0.001, export=False),
            live=LiveMetrics(),
        )  # fmt: skip

    def gauges(t):
        value = t.live.registry.get_sample_value
        labels = {"experiment": exp, "judge": "safety"}
        return (value("mlflow_monitor_human_labels", labels),
                value("mlflow_monitor_human_agreement", labels))  # fmt: skip

    now = int(time.time() * 1000)
    running = tracker()
    stats = type("S", (), {"seconds": 0.1, "exported": 0})()
    running.after_pass(monitor, None, {t: now for t in ids}, stats, now)
    assert gauges(running) == (len(expected), pytest.approx(agreed / len(expected)))
    label(ids[8], "no")  # given outside any pass: counted at the next re-read
    time.sleep(0.01)
    running.after_pass(monitor, None, {}, stats, now + 1)
    n, agreed = len(expected), agreed + (judge[ids[8]].value == "no")
    assert gauges(running) == (n, pytest.approx(agreed / n))
    restarted = tracker()
    restarted.after_pass(monitor, None, {ids[0]: now}, stats, now + 2)
    assert gauges(restarted) == gauges(running)

    window = StoreWindows(exp).window(monitor, "safety", window_start(now, DAY_MS), DAY_MS, now)
    assert (window.labels, window.agreements, window.scored) == (n, agreed, len(ids))
    rule = parse_alert_spec("safety.agreement<0.99 over 1d min 5")
    result = evaluate(rule, None, window)
    assert result.judged and result.n == n and result.value == pytest.approx(agreed / n)
    overrides = evaluate(
        parse_alert_spec("safety.human_overrides>0.01 over 1d min 5"), None, window
    )
    assert overrides.value == pytest.approx((n - agreed) / len(ids)) and overrides.n == len(ids)

    args = ("--disagreement", "--dataset", "safety-disagreements", "--output", "json")
    out = json.loads(cli_run("curate", "-x", exp, "--judge", "safety", *args).output)
    disagreeing = {t for t, (j, p) in expected.items() if j != p} | (
        {ids[8]} if judge[ids[8]].value != "no" else set()
    )
    assert set(out["trace_ids"]) == disagreeing
    records = get_dataset(name="safety-disagreements").to_df()
    tags = {r.source_data["trace_id"]: t for r, t in zip(records["source"], records["tags"],
                                                          strict=True)}  # fmt: skip
    for trace_id in disagreeing:
        assert (
            tags[trace_id]["mlflow_monitor.value"] != tags[trace_id]["mlflow_monitor.human_value"]
        )


def _rest(url, method="GET", body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def test_the_ui_rest_calls_label_a_trace_and_leave_the_judges_verdict_counted_once(
    rest_uri, fake_judge
):
    mlflow.set_experiment("ui-labels")
    monitor, ids, engine = scored(6)
    base = f"{rest_uri}/ajax-api/3.0/mlflow/traces"
    # The assessments panel's edit of the judge's verdict: the old assessment, as the UI
    # holds it, with the new value, a HUMAN source and `overrides` (its metadata copied).
    info = _rest(f"{base}/{ids[1]}")["trace"]["trace_info"]
    (old,) = [a for a in info["assessments"] if a["assessment_name"] == "safety"]
    edited = {k: v for k, v in old.items()
              if k not in ("assessment_id", "create_time", "last_update_time")}  # fmt: skip
    edited.update(feedback={"value": "no"}, rationale="rude",
                  source={"source_type": "HUMAN", "source_id": "ana"},
                  overrides=old["assessment_id"])  # fmt: skip
    assert "mlflow_monitor.verdict_id" in edited["metadata"]
    _rest(f"{base}/{ids[1]}/assessments", "POST", {"assessment": edited})
    # "Add feedback" (and the Review page): a new assessment under the judge's name
    added = {"assessment_name": "safety", "trace_id": ids[2], "feedback": {"value": "yes"},
             "source": {"source_type": "HUMAN", "source_id": "bo"}}  # fmt: skip
    _rest(f"{base}/{ids[2]}/assessments", "POST", {"assessment": added})

    engine.run_pass()  # its sweep reconciles: the person's copy of the metadata is not ours
    trace = mlflow.get_trace(ids[1])
    state = judge_states(trace.info, monitor.monitor_id)["safety"]
    assert [[a.source.source_type for a in g] for g in state.complete] == [["LLM_JUDGE"]]
    assert any(a.source.source_type == "HUMAN" and a.valid for a in trace.info.assessments)
    row = today_row(monitor)
    assert (row["verdicts"], row["passed"]) == (len(ids), 4)  # the judge's values, not ana's
    assert (row["human_labels"], row["human_agreed"]) == (2, 1)
