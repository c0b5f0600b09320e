"""Shadow judges end to end on a real store: a candidate that answers differently on a known
subset (the fake judge keyed on a marker) runs beside the judge on exactly its sampled traces;
compare's numbers are checked against counts and a kappa computed here; promote switches the
judge with no trace scored twice; bad input exits 2 naming what is allowed."""

import json
import time
from collections import Counter

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.entities import SpanType

from mlflow_monitor_plugin import create_external_monitor, get_external_monitor
from mlflow_monitor_plugin.cli import monitor as cli
from mlflow_monitor_plugin.discovery.sampling import is_sampled
from mlflow_monitor_plugin.engine.pipeline import EngineSettings, MonitorEngine
from mlflow_monitor_plugin.observe import report
from mlflow_monitor_plugin.scoring.runner import ScoringSettings
from tests.history import log_history
from tests.test_agreement import kappa_by_hand

SETTINGS = EngineSettings(scoring=ScoringSettings(workers=4, attempts=1), sweep_every_s=0)
RATE = 0.6
CANDIDATE = {
    "kind": "custom",
    "name": "safety",
    "instructions": "CANDIDATE: is this answer safe? {{ outputs }}",
    "feedback_value_type": ["yes", "no"],
}
FP = "mlflow_monitor.fingerprint"


def verdict(prompt: str) -> str:
    """The judge says no to UNSAFE; the candidate also to BORDER."""
    if "UNSAFE" in prompt or ("CANDIDATE" in prompt and "BORDER" in prompt):
        return "no"
    return "yes"


@mlflow.trace(name="chat_app", span_type=SpanType.CHAIN)
def _chat(question: str) -> str:
    return f"Reply to {question}"


def log(count: int, prefix: str) -> list[str]:
    ids = []
    for i in range(count):
        kind = ("UNSAFE", "BORDER", "fine", "fine")[i % 4]
        _chat(f"{prefix}{i} {kind}")
        ids.append(mlflow.get_last_active_trace_id())
    return ids


def questions(trace_ids: list[str], monitor_id: str) -> list[str]:
    """The questions of the traces sampled at RATE."""
    sampled = [t for t in trace_ids if is_sampled(t, monitor_id, RATE)]
    return [mlflow.get_trace(t).data.request for t in sampled]


def run(*args, code=0):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def verdicts(experiment_id: str) -> dict[str, dict[str, list]]:
    """Raw assessments by trace and name, read straight from MLflow (valid or not)."""
    found = {}
    for trace in mlflow.search_traces(locations=[experiment_id], return_type="list"):
        by_name = {}
        for a in trace.info.assessments:
            by_name.setdefault(a.name, []).append(a)
        found[trace.info.trace_id] = (trace.data.request, by_name)
    return found


@pytest.fixture
def shadowed(sqlite_experiment_id, fake_judge):
    """A monitor of safety at RATE, 24 traces, then a shadow added by `update --shadow`, 24
    more traces and a pass."""
    fake_judge.behaviour.verdict = verdict
    monitor = create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"assessments": [{"name": "safety", "sample_rate": RATE}]},
    )  # fmt: skip
    before = log(24, "a")
    engine = MonitorEngine.create(monitor.experiment_id, SETTINGS)  # one: it holds the lease
    engine.run_pass()
    spec = json.dumps({k: v for k, v in CANDIDATE.items() if k != "name"})
    run("update", "-x", monitor.experiment_id, "--shadow", f"safety={spec}")
    after = log(24, "b")
    engine.run_pass()
    return get_external_monitor(experiment_id=monitor.experiment_id), before, after, engine


def test_shadow_judges_exactly_the_sampled_traces_and_compare_matches_the_counts(shadowed):
    monitor, before, after, _ = shadowed
    exp = monitor.experiment_id
    found = verdicts(exp)
    sampled = {t for t in after if is_sampled(t, monitor.monitor_id, RATE)}
    assert {t for t in after if "shadow/safety" in found[t][1]} == sampled
    assert not any("shadow/safety" in found[t][1] for t in before)  # added later: new traces
    live_fp = {a.metadata[FP] for t in after + before for a in found[t][1].get("safety", [])}
    shadow_meta = [a.metadata for t in sampled for a in found[t][1]["shadow/safety"]]
    assert len(live_fp) == 1 and {m[FP] for m in shadow_meta} != live_fp
    assert {m["mlflow_monitor.shadow_of"] for m in shadow_meta} == {"safety"}

    pairs = [(found[t][1]["safety"][0].value, found[t][1]["shadow/safety"][0].value)
             for t in sorted(sampled)]  # fmt: skip
    out = json.loads(run("compare", "-x", exp, "--judge", "safety", "--output", "json").output)
    assert out["pairs"] == len(sampled) and out["judge_only"] == len(
        [t for t in before if is_sampled(t, monitor.monitor_id, RATE)]
    )
    counts = Counter(pairs)
    assert out["confusion"]["yes"]["no"] == counts[("yes", "no")]
    assert counts[("yes", "no")] == sum("BORDER" in found[t][0] for t in sampled) > 0
    assert out["confusion"]["no"]["no"] == counts[("no", "no")] > 0
    assert out["agreed"] == counts[("yes", "yes")] + counts[("no", "no")]
    assert out["kappa"] == pytest.approx(
        kappa_by_hand([a for a, _ in pairs], [b for _, b in pairs])
    )
    assert out["kappa_low95"] < out["kappa"] < out["kappa_high95"]
    n = len(pairs)
    assert out["pass_rate_difference"] == pytest.approx(counts[("yes", "no")] / n)
    assert sorted(out["disagreeing_trace_ids"]) == sorted(
        t for t in sampled if "BORDER" in found[t][0]
    )
    assert out["shadow_cost"]["verdicts"] == n and out["shadow_cost"]["tokens"] == 20 * n
    text = run("compare", "-x", exp, "--judge", "safety").output
    assert f"{n} traces judged by both" in text and "kappa:" in text

    # the judge's windows, alerts and curation never see the shadow
    now_ms = int(time.time() * 1000)
    rows = report.windows(monitor, now_ms - 86_400_000, now_ms, "1d")
    assert {r["judge"] for r in rows} == {"safety"}
    live = sum(1 for t in before + after if is_sampled(t, monitor.monitor_id, RATE))
    assert sum(r["verdicts"] for r in rows) == live and rows[-1]["fingerprints"] == 1
    curated = json.loads(run("curate", "-x", exp, "--judge", "safety", "--dataset", "d",
                             "--output", "json").output)  # fmt: skip
    assert all("UNSAFE" in found[t][0] for t in curated["trace_ids"])
    assert "shadow/safety (instructions=" in run("get", "-x", exp).output


def test_promote_makes_the_candidate_the_judge_without_scoring_a_trace_twice(shadowed):
    monitor, before, after, engine = shadowed
    exp = monitor.experiment_id
    old_fp = {
        a.metadata[FP] for _, by in verdicts(exp).values() for a in by.get("safety", [])
    }  # fmt: skip
    run("promote", "-x", exp, "--judge", "safety")
    promoted = get_external_monitor(experiment_id=exp)
    suite = promoted.assessments_config
    assert suite.shadows is None and suite.assessments[0].instructions.startswith("CANDIDATE")
    assert suite.assessments[0].sample_rate == RATE  # the judge's rate carried over
    later = log(8, "c")
    while not any("BORDER" in q for q in questions(later, monitor.monitor_id)):
        later += log(4, f"c{len(later)}-")  # a sampled BORDER trace: the candidate says no
    engine.run_pass()
    found = verdicts(exp)
    for trace_id in before + after + later:
        live = found[trace_id][1].get("safety", [])
        assert len(live) == is_sampled(trace_id, monitor.monitor_id, RATE), trace_id
    new_fp = {a.metadata[FP] for t in later for a in found[t][1].get("safety", [])}
    shadow_fp = {a.metadata[FP] for t in after for a in found[t][1].get("shadow/safety", [])}
    assert new_fp == shadow_fp and not new_fp & old_fp  # the promoted judge is the shadow's
    assert not any("shadow/safety" in found[t][1] for t in later)
    border = [t for t in later if "BORDER" in found[t][0] and found[t][1].get("safety")]
    assert border and all(found[t][1]["safety"][0].value == "no" for t in border)
    out = json.loads(run("report", "-x", exp, "--window", "1d", "--output", "json").output)
    (change,) = out["judge_changes"]
    assert (change["judge"], change["before"], change["after"]) == ("safety", *old_fp, *new_fp)
    assert "judge changed" in run("report", "-x", exp, "--window", "1d").output


def test_backfill_scores_a_shadow_on_past_traces(sqlite_experiment_id, fake_judge):
    fake_judge.behaviour.verdict = verdict
    ids = log_history(2, 6, prefix="p", unsafe_every=3)
    monitor = create_external_monitor(
        catalog_name="w", schema_name="d", assessments_config={"assessments": [{"name": "safety"}]}
    )
    MonitorEngine.create(monitor.experiment_id, SETTINGS).run_pass()
    exp = monitor.experiment_id
    run("update", "-x", exp, "--shadow", "safety={model: 'openai:/gpt-4.1-nano'}")
    run("backfill", "-x", exp, "--since", "3d", "--judge", "shadow/safety")
    out = json.loads(run("compare", "-x", exp, "--judge", "safety", "--since", "3d",
                         "--output", "json").output)  # fmt: skip
    assert out["pairs"] == len(ids) and out["agreement"] == 1.0
    models = {r["model"] for r in fake_judge.requests}
    assert "gpt-4.1-nano" in models


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["update", "--shadow", "toxicity={model: 'openai:/x'}"],
         "expected a judge of this monitor: ['safety', 'polite']"),
        (["update", "--shadow", "safety={name: groundedness}"], "expected a judge logging"),
        (["update", "--shadow", "safety={}"], "expected a candidate that differs"),
        (["promote", "--judge", "safety"], "this monitor has none"),
        (["compare", "--judge", "polite"], "expected a judge with a shadow"),
        (["label", "--trace-id", "{trace}", "--judge", "safety", "--value", "4"],
         "judge safety gives yes or no"),
        (["label", "--trace-id", "{trace}", "--judge", "toxicity", "--value", "no"],
         "expected a judge of this monitor: ['safety', 'polite']"),
    ],
)  # fmt: skip
def test_trust_bad_input_exits_2_naming_what_is_allowed(sqlite_experiment_id, args, message):
    monitor = create_external_monitor(
        catalog_name="w", schema_name="d",
        assessments_config={"assessments": [{"name": "safety"},
                                            {"guidelines": {"polite": ["Be polite."]}}]},
    )  # fmt: skip
    (trace,) = log(1, "x")
    args = [a.replace("{trace}", trace) for a in args]
    result = run(args[0], "-x", monitor.experiment_id, *args[1:], code=2)
    assert message in result.output and "Traceback" not in result.output
    assert get_external_monitor(experiment_id=monitor.experiment_id).config_version == 1
