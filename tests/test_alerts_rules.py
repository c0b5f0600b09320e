"""Alert rules (pure): the config objects, the Wilson interval, judging windows, incidents,
and a seeded simulation of a healthy but noisy sampled stream counting false alarms."""

from __future__ import annotations

import bisect
import dataclasses
import json
import random

import pytest

from mlflow_monitor_plugin import AlertRule, MonitorConfigError, WebhookTarget
from mlflow_monitor_plugin.alerts import message
from mlflow_monitor_plugin.alerts.evaluate import evaluate, look_confidence
from mlflow_monitor_plugin.alerts.incidents import (
    MAX_OUTBOX,
    RuleState,
    fit,
    retry_delay_s,
    step,
)
from mlflow_monitor_plugin.alerts.stats import WindowStats, wilson_interval, window_start_ms
from mlflow_monitor_plugin.config.alerts import parse_alert_spec, parse_duration, rules_from
from mlflow_monitor_plugin.observe.estimate import Cell

HOUR = 3_600_000


def rule(**kw):
    base = dict(name="safety-drop", judge="safety", metric="pass_rate", below=0.95)
    return AlertRule(**(base | kw)).validate(["safety", "groundedness"])


def window(passes, verdicts, start=10 * HOUR, errors=0, traces=None, rate=1.0):
    return WindowStats(
        "m1", "safety", start, HOUR, traces=traces if traces is not None else verdicts,
        sampled=verdicts, verdicts=verdicts, passes=passes, errors=errors, sample_rate=rate,
        failing_trace_ids=tuple(f"tr-{i}" for i in range(min(3, verdicts - passes))),
    )  # fmt: skip


# -- config --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("safety.pass_rate<0.95 over 1h", dict(judge="safety", below=0.95, window="1h")),
        ("drop=safety.pass_rate<0.9", dict(name="drop", below=0.9, window="1h")),
        ("safety.error_rate>0.2 over 15m min 10", dict(above=0.2, window="15m", min_verdicts=10)),
        ("lag_seconds>600", dict(judge=None, metric="lag_seconds", above=600.0)),
        ("volume<10 over 1d", dict(metric="volume", below=10.0, window="1d")),
        (
            "safety.pass_rate<0.95 to slack:SLACK_URL,HOOK",
            dict(targets=(WebhookTarget("SLACK_URL", "slack"), WebhookTarget("HOOK", "json"))),
        ),
    ],
)
def test_parse_alert_spec_reads_the_short_form(spec, expected):
    parsed = parse_alert_spec(spec)
    for key, value in expected.items():
        assert getattr(parsed, key) == value, key
    assert parse_alert_spec(parsed.describe()).threshold == parsed.threshold


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(judge="nope"), "AlertRule('safety-drop').judge"),
        (dict(metric="latency"), "AlertRule('safety-drop').metric"),
        (dict(below=1.5), "AlertRule('safety-drop').below"),
        (dict(below=-0.1), "AlertRule('safety-drop').below"),
        (dict(below=None, above=0.5), "AlertRule('safety-drop').above"),
        (dict(window="an hour"), "AlertRule('safety-drop').window"),
        (dict(window="0s"), "AlertRule('safety-drop').window"),
        (dict(min_verdicts=0), "AlertRule('safety-drop').min_verdicts"),
        (dict(confidence=1.0), "AlertRule('safety-drop').confidence"),
        (dict(name="bad name"), "AlertRule.name"),
        (dict(targets=[{"url_env": "https://hooks.slack.com/x"}]), "targets[0].url_env"),
        (dict(targets=[{"url_env": "HOOK", "format": "teams"}]), "targets[0].format"),
    ],
)
def test_alert_rule_rejects_bad_fields_naming_them(kwargs, field):
    with pytest.raises(MonitorConfigError) as e:
        rule(**kwargs)
    assert field in e.value.field
    assert "https://hooks" not in str(e.value)  # a URL given by mistake is not echoed


@pytest.mark.parametrize("spec", ["safety.pass_rate>0.95", "safety.pass_rate<", "what", "x.y<1"])
def test_parse_alert_spec_rejects_bad_specs(spec):
    with pytest.raises(MonitorConfigError):
        rules_from([spec], ["safety"])


def test_rules_from_requires_unique_names_and_round_trips():
    rules = rules_from(["safety.pass_rate<0.9", {"name": "lag", "metric": "lag_seconds",
                                                  "above": 60}], ["safety"])  # fmt: skip
    assert [r.name for r in rules] == ["safety-pass_rate", "lag"]
    assert rules_from([r.to_dict() for r in rules], ["safety"]) == rules
    with pytest.raises(MonitorConfigError, match="at most once"):
        rules_from(["safety.pass_rate<0.9", "safety.pass_rate<0.8"], ["safety"])
    assert parse_duration("w", "90s") == 90 and parse_duration("w", "2d") == 172800


# -- the interval --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("k", "n", "conf", "low", "high"),
    [  # computed by hand from the Wilson formula (and matching published tables)
        (40, 80, 0.95, 0.39297, 0.60703),
        (10, 10, 0.95, 0.72246, 1.0),
        (0, 10, 0.95, 0.0, 0.27754),
        (97, 100, 0.95, 0.91548, 0.98975),
        (19, 20, 0.99, 0.68170, 0.99410),
    ],
)
def test_wilson_interval_matches_hand_computed_values(k, n, conf, low, high):
    lo, hi = wilson_interval(k, n, conf)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)


def test_window_stats_population_estimates():
    w = window(passes=18, verdicts=20, traces=200, rate=0.1)
    assert w.pass_rate().value == 0.9 and w.estimated_failing == pytest.approx(20.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert window_start_ms(10 * HOUR + 5, HOUR) == 10 * HOUR


# -- judging -------------------------------------------------------------------------------
def test_pass_rate_fires_only_when_the_upper_bound_is_below():
    r = rule(min_verdicts=10)
    assert evaluate(r, window(5, 10), None).breach  # 50% of 10: upper ~0.8
    assert not evaluate(r, window(9, 10), None).breach  # 90% of 10: interval spans 0.95
    assert not evaluate(r, window(9, 10), None).clear
    assert evaluate(r, None, window(100, 100)).clear  # complete window, lower 0.963
    held = evaluate(r, window(5, 9), None)
    assert not held.judged and "9 of 10" in held.reason  # below min_verdicts: no verdict


def test_filling_window_is_judged_stricter_than_a_complete_one():
    r = rule(min_verdicts=30)
    assert look_confidence(0.95, 30, 30) == pytest.approx(1 - 0.05 / 31)
    assert look_confidence(0.95, 100, 30) > look_confidence(0.95, 30, 30)
    # 26 of 30: breached at 95% on a complete window, not yet while the window fills
    assert evaluate(r, None, window(26, 30)).breach
    assert not evaluate(r, window(26, 30), None).breach
    assert evaluate(r, window(15, 30), None).breach  # a real drop is caught at once


def test_other_metrics():
    err = rule(name="errors", metric="error_rate", below=None, above=0.1, min_verdicts=10)
    assert evaluate(err, window(20, 20, errors=20), None).breach
    lag = AlertRule("lag", metric="lag_seconds", above=60).validate()
    assert evaluate(lag, None, None, lag_seconds=61).breach
    assert evaluate(lag, None, None, lag_seconds=5).clear
    vol = AlertRule("vol", metric="volume", below=10).validate()
    assert evaluate(vol, window(0, 0), window(0, 0, traces=3), not_before_ms=0).breach
    assert not evaluate(vol, None, window(0, 0, traces=3), not_before_ms=11 * HOUR).judged


# -- incidents -----------------------------------------------------------------------------
def _compose(event, incident, event_id):
    return {"event": event, "incident_id": incident, "event_id": event_id}


def test_incident_fires_once_holds_then_resolves():
    r = rule(min_verdicts=10, repeat_every="1h")
    state = RuleState("m1", r.name)
    bad, good = evaluate(r, window(5, 20), None), evaluate(r, None, window(100, 100))
    assert step(state, r, bad, 10 * HOUR, _compose, ["webhook:0"])
    assert state.state == "firing" and state.incident_id == f"m1/{r.name}/{10 * HOUR}"
    for minute in range(1, 59):  # still bad, every pass: nothing new to send
        assert not step(state, r, bad, 10 * HOUR + minute * 60_000, _compose, ["webhook:0"])
    assert step(state, r, bad, 11 * HOUR, _compose, ["webhook:0"])  # repeat_every
    # 100/100 in a window still filling is not yet enough (judged at the stricter level)
    assert not step(state, r, evaluate(r, window(100, 100), None), 11 * HOUR, _compose, [])
    assert step(state, r, good, 11 * HOUR + 1, _compose, ["webhook:0"])
    assert state.state == "resolved"
    events = [e["event_id"].rpartition("#")[2] for e in state.outbox]
    assert events == ["firing", "firing.1", "resolved"]
    assert len({e["message"]["incident_id"] for e in state.outbox}) == 1
    # a new drop opens a new incident with its own id
    assert step(state, r, evaluate(r, window(5, 20, start=12 * HOUR), None), 12 * HOUR,
                _compose, [])  # fmt: skip
    assert state.incident_id.endswith(str(12 * HOUR))


def test_state_round_trips_and_outbox_is_bounded():
    r = rule(min_verdicts=10, repeat_every="1m")
    state = RuleState("m1", r.name)
    bad = evaluate(r, window(5, 20), None)
    for i in range(40):
        step(state, r, bad, 10 * HOUR + i * 60_000, _compose, ["webhook:0"])
    assert len(state.outbox) == MAX_OUTBOX and state.outbox[0]["event"] == "firing"
    assert state.outbox[0]["event_id"].endswith("#firing")  # the first message is kept
    again = RuleState.from_dict(state.to_dict(), "m1", r.name)
    assert again == state
    assert RuleState.from_dict(state.to_dict(), "other-monitor", r.name).state == "ok"
    big = RuleState("m1", r.name)  # messages of 3,000 characters: ten would not fit a tag
    for i in range(12):
        step(big, r, bad, 10 * HOUR + i * 60_000,
             lambda *a: {**_compose(*a), "text": "x" * 3000}, ["webhook:0"])  # fmt: skip
    dropped = fit(big, 20_000)
    assert len(json.dumps(big.to_dict())) <= 20_000 and len(big.outbox) == 10 - len(dropped) > 1
    assert big.outbox[0]["event_id"].endswith("#firing") and len(big.history) == 1
    assert retry_delay_s(1, 1.0, 300, None) == 1.0 and retry_delay_s(20, 1.0, 300, None) == 300
    assert retry_delay_s(1, 1.0, 300, 120.0) == 120.0


def test_message_says_what_a_person_needs():
    r = rule(min_verdicts=10)
    w = window(40, 80, traces=800, rate=0.1)
    payload = message.build(
        event="firing", rule=r, evaluation=evaluate(r, None, w), monitor_id="m1",
        experiment_id="7", experiment_name="chatbot", incident_id="m1/x/1",
        event_id="m1/x/1#firing", now_ms=11 * HOUR,
    )  # fmt: skip
    text = payload["text"]
    for part in ("FIRING", "safety-drop", "chatbot", "50.0%", "95% CI 39.3%-60.7%", "95.0%",
                 "1h", "40 failing sampled traces", "~400", "tr-0", "m1/x/1"):  # fmt: skip
        assert part in text, part
    slack = message.to_slack(payload)
    assert slack["text"] == text and slack["blocks"][0]["type"] == "section"
    assert "m1/x/1" in slack["blocks"][-1]["elements"][0]["text"]


# -- simulation ----------------------------------------------------------------------------
def _windows_that_fire(true_rate: float, rng: random.Random, windows: int, naive: bool) -> int:
    """Windows of ~1000 traces sampled at 0.1, judged after every verdict as they fill, then
    once complete; a window counts when it would open an incident."""
    r = rule(min_verdicts=30)
    fired = 0
    for w in range(windows):
        start = w * HOUR
        verdicts = [rng.random() < true_rate for _ in range(rng.randint(600, 1400))
                    if rng.random() < 0.1]  # fmt: skip
        passes, hit = 0, False
        for n, ok in enumerate(verdicts, start=1):
            passes += ok
            stats = window(passes, n, start=start, rate=0.1)
            if naive:
                hit = hit or (n >= 30 and passes / n < 0.95)
            else:
                hit = hit or evaluate(r, stats, None).breach
        hit = hit or evaluate(r, None, window(passes, len(verdicts), start=start)).breach
        fired += hit
    return fired


def test_noisy_healthy_stream_rarely_alarms_and_a_real_drop_is_caught():
    rng = random.Random(20261202)
    windows = 500  # three weeks of hourly windows
    honest = _windows_that_fire(0.97, rng, windows, naive=False)
    naive = _windows_that_fire(0.97, rng, windows, naive=True)
    print(f"false alarms over {windows} windows: {honest} (naive 'rate < 0.95': {naive})")
    # The risk of one look, 2.5% on the low side at 95%, bounds the whole window's; with the
    # true rate two points above the threshold it is far smaller.
    assert honest <= 0.01 * windows, honest
    assert naive >= 0.25 * windows, naive  # "sampled rate < 95%" fires on luck
    assert _windows_that_fire(0.5, rng, 20, naive=False) == 20


# -- the same simulation, stratified (config/strata.py) ------------------------------------
# (stratum, share of traces, pass rate, sample rate): errors and slow traces fail more and are
# sampled more; the whole stream passes 97.4%, above the rule's 95%
HEALTHY_STRATA = [("errors", 0.03, 0.80, 1.0), ("slow", 0.07, 0.90, 0.5),
                  ("default", 0.90, 0.985, 0.1)]  # fmt: skip


def _stratified_windows_that_fire(
    strata: list[tuple[str, float, float, float]],
    rng: random.Random,
    windows: int,
    weighted: bool,
) -> int:
    """Windows of ~1000 traces sampled per stratum, judged after every verdict as they fill,
    then once complete; ``weighted``: the window carries its cells (observe/estimate.py), as
    the alerts' store source gives them, else only its counts (the sample's own rate)."""
    r = rule(min_verdicts=30)
    cumulative = [sum(s[1] for s in strata[: i + 1]) for i in range(len(strata))]
    fired = 0
    for w in range(windows):
        cells = {name: Cell(name, rate) for name, _, _, rate in strata}
        passes = verdicts = 0
        hit = False
        for _ in range(rng.randint(600, 1400)):
            name, _, pass_rate, rate = strata[bisect.bisect(cumulative, rng.random() * 0.999999)]
            sampled, ok = rng.random() < rate, rng.random() < pass_rate
            cells[name].add(sampled, "pass" if ok else "fail")
            if not sampled:
                continue
            passes, verdicts = passes + ok, verdicts + 1
            stats = dataclasses.replace(
                window(passes, verdicts, start=w * HOUR, rate=0.1),
                cells=tuple(cells.values()) if weighted else (),
            )
            hit = hit or evaluate(r, stats, None).breach
        final = dataclasses.replace(
            window(passes, verdicts, start=w * HOUR, rate=0.1),
            cells=tuple(cells.values()) if weighted else (),
        )
        hit = hit or evaluate(r, None, final).breach
        fired += hit
    return fired


def test_stratified_healthy_stream_rarely_alarms_when_weighted_and_a_drop_is_caught():
    rng = random.Random(20261206)
    windows = 300
    honest = _stratified_windows_that_fire(HEALTHY_STRATA, rng, windows, weighted=True)
    unweighted = _stratified_windows_that_fire(HEALTHY_STRATA, rng, windows, weighted=False)
    print(f"stratified: false alarms over {windows} windows: {honest} (unweighted: {unweighted})")
    assert honest <= 0.01 * windows, honest
    assert unweighted >= 0.2 * windows, unweighted  # the enriched sample's own rate is ~93%
    dropped = [(n, share, 0.70 if n == "default" else p, rate)
               for n, share, p, rate in HEALTHY_STRATA]  # fmt: skip
    assert _stratified_windows_that_fire(dropped, rng, 20, weighted=True) == 20
