"""Judge one alert rule on its windows: breached, clear, or not judged (pure).

A rate rule is judged on the current window once it holds ``min_verdicts`` verdicts, else on
the previous (complete) window if that one does, else not at all. ``pass_rate`` breaches when
the whole interval of the population rate lies below the threshold (its upper bound is below)
and clears when the whole interval is back at or above it (its lower bound); in between it
holds its state. ``error_rate`` is the mirror image. ``volume`` looks at the last complete
window, ``lag_seconds`` at the lag now, ``budget_factor`` at the daily budget's factor now.

A window still filling is judged again on every pass, each time with more verdicts; judging it
each time at the rule's confidence would add up the risks of all those looks. So a filling
window is judged at a stricter level: the risk ``1 - confidence`` is split over every verdict
count ``n >= min_verdicts`` it could be looked at, ``m / (n (n + 1))`` of it at ``n`` (these
shares sum to 1), which bounds the chance of a false alarm over all the looks at a window by
the risk of one look. A complete window is judged at the rule's confidence.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mlflow_monitor_plugin.alerts.stats import Rate, WindowStats
from mlflow_monitor_plugin.config.alerts import AlertRule


@dataclass(frozen=True)
class Evaluation:
    """The verdict on a rule at one moment, and the numbers it rests on."""

    judged: bool
    breach: bool = False
    clear: bool = False
    value: float | None = None
    low: float | None = None
    high: float | None = None
    n: int = 0
    confidence: float | None = None  # the level the interval is at
    window: WindowStats | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "judged": self.judged,
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "confidence": self.confidence,
            "reason": self.reason,
        }
        if self.window is not None:
            out["window_start_ms"] = self.window.start_ms
        return out


def look_confidence(confidence: float, n: int, min_verdicts: int) -> float:
    """The level a filling window is judged at with ``n`` verdicts (see the module's text)."""
    m = max(1, min_verdicts)
    return 1 - (1 - confidence) * m / (max(n, m) * (max(n, m) + 1))


def _rate_of(rule: AlertRule, window: WindowStats, confidence: float | None = None) -> Rate:
    level = rule.confidence if confidence is None else confidence
    if rule.metric == "pass_rate":
        return window.pass_rate(level)
    if rule.metric == "agreement":
        return window.agreement(level)
    if rule.metric == "human_overrides":
        return window.human_overrides(level)
    return window.error_rate(level)


def _judge_rate(rule: AlertRule, window: WindowStats, filling: bool) -> Evaluation:
    rate = _rate_of(rule, window)
    if filling:
        rate = replace(rate, confidence=look_confidence(rule.confidence, rate.n, rule.min_verdicts))
    low, high, t = rate.low, rate.high, rule.threshold
    if rule.side == "below":
        breach, clear = high < t, low >= t
    else:
        breach, clear = low > t, high <= t
    state = "breached" if breach else "clear" if clear else "undecided (interval spans it)"
    return Evaluation(
        judged=True,
        breach=breach,
        clear=clear,
        value=rate.value,
        low=low,
        high=high,
        n=rate.n,
        confidence=rate.confidence,
        window=window,
        reason=f"{state}: {rate.successes}/{rate.n}"
        + (f" (window filling: judged at {rate.confidence:.5f})" if filling else ""),
    )


def evaluate(
    rule: AlertRule,
    current: WindowStats | None,
    previous: WindowStats | None,
    lag_seconds: float | None = None,
    not_before_ms: int = 0,
    budget_factor: float | None = None,
) -> Evaluation:
    """Judge ``rule`` now. ``previous`` is the complete window before ``current``; windows
    starting before ``not_before_ms`` (the monitor's creation) are never counted complete."""
    t = rule.threshold
    if rule.metric == "lag_seconds":
        if lag_seconds is None:
            return Evaluation(judged=False, reason="no finished trace yet")
        return Evaluation(
            judged=True, breach=lag_seconds > t, clear=lag_seconds <= t, value=lag_seconds
        )
    if rule.metric == "budget_factor":
        if budget_factor is None:
            return Evaluation(judged=False, reason="the monitor has no daily budget")
        return Evaluation(
            judged=True, breach=budget_factor < t, clear=budget_factor >= t, value=budget_factor
        )
    if rule.metric == "volume":
        if previous is None or previous.start_ms < not_before_ms:
            return Evaluation(judged=False, reason="no complete window since the monitor began")
        traces = previous.traces
        return Evaluation(
            judged=True, breach=traces < t, clear=traces >= t, value=traces, window=previous
        )
    for window, filling in ((current, True), (previous, False)):
        if window is not None and _rate_of(rule, window).n >= rule.min_verdicts:
            return _judge_rate(rule, window, filling)
    have = _rate_of(rule, current).n if current is not None else 0
    what = "labels" if rule.metric == "agreement" else "verdicts"
    return Evaluation(judged=False, n=have, reason=f"{have} of {rule.min_verdicts} {what} needed")
