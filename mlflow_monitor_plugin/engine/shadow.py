"""Compare a judge with its shadow on the traces both judged, and promote the shadow.

``compare`` walks the finished traces of a range (no spans) and pairs, on each trace, the
verdict of the judge with the verdict of its shadow (each as the quality windows count it:
the verdict the reconcile keeps, several parts as one). From the pairs it gives the confusion
matrix, the agreement rate and Cohen's kappa with 95% intervals, both pass rates and their
difference with its paired interval (observe/agreement.py), the disagreeing trace ids, and what
each side cost (tokens and USD from the verdicts' metadata). ``promote`` is the config change
(config/api.py ``promote_shadow``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mlflow.tracking import MlflowClient

from mlflow_monitor_plugin.config.model import ExternalMonitor
from mlflow_monitor_plugin.config.shadows import shadow_name
from mlflow_monitor_plugin.config.tags import MonitorTags
from mlflow_monitor_plugin.discovery.checkpoint import Checkpoint
from mlflow_monitor_plugin.discovery.timerange import TimeRange
from mlflow_monitor_plugin.discovery.traces import TraceSource
from mlflow_monitor_plugin.exceptions import MonitorConfigError, MonitorNotFoundError
from mlflow_monitor_plugin.observe.agreement import agreement, confusion, paired_difference
from mlflow_monitor_plugin.observe.collect import outcomes
from mlflow_monitor_plugin.observe.windows import VERDICT_KINDS, category

MAX_IDS = 1000  # disagreeing trace ids listed, at most
PAGE = 500


@dataclass
class Side:
    """One judge's verdicts in the range: count, errors, tokens, cost, fingerprints."""

    verdicts: int = 0
    errors: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    costed: int = 0
    fingerprints: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: Any) -> None:
        if outcome.kind == "error":
            self.errors += 1
        elif outcome.kind in VERDICT_KINDS:
            self.verdicts += 1
            if outcome.fingerprint:
                self.fingerprints[outcome.fingerprint] += 1
        else:
            return
        self.tokens += outcome.tokens or 0
        if outcome.cost_usd is not None:
            self.cost_usd += outcome.cost_usd
            self.costed += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdicts": self.verdicts,
            "errors": self.errors,
            "tokens": self.tokens,
            "cost_usd": round(self.cost_usd, 8) if self.costed else None,
            "fingerprints": dict(self.fingerprints),
        }


@dataclass
class Comparison:
    """A judge beside its shadow over a range of traces."""

    judge: str
    shadow: str
    window: TimeRange
    traces: int = 0
    pairs: Counter[tuple[str, str]] = field(default_factory=Counter)
    judge_only: int = 0  # traces the judge judged and the shadow did not (yet)
    shadow_only: int = 0
    disagreeing: list[str] = field(default_factory=list)
    live: Side = field(default_factory=Side)
    candidate: Side = field(default_factory=Side)

    def to_dict(self) -> dict[str, Any]:
        numbers = agreement(self.pairs)
        yes_no = {k: n for k, n in self.pairs.items() if set(k) <= {"yes", "no"}}
        a, b = yes_no.get(("yes", "yes"), 0), yes_no.get(("yes", "no"), 0)
        c, d = yes_no.get(("no", "yes"), 0), yes_no.get(("no", "no"), 0)
        n = a + b + c + d
        diff, low, high = paired_difference(a, b, c, d)
        return {
            "judge": self.judge,
            "shadow": self.shadow,
            "since_ms": self.window.since_ms,
            "until_ms": self.window.until_ms,
            "traces": self.traces,
            "pairs": numbers["n"],
            "judge_only": self.judge_only,
            "shadow_only": self.shadow_only,
            "confusion": confusion(self.pairs),  # judge's label -> shadow's label -> traces
            "agreed": numbers["agreed"],
            "agreement": numbers["agreement"],
            "agreement_low95": numbers["agreement_low95"],
            "agreement_high95": numbers["agreement_high95"],
            "kappa": numbers["kappa"],
            "kappa_low95": numbers["kappa_low95"],
            "kappa_high95": numbers["kappa_high95"],
            "yes_no_pairs": n,
            "judge_pass_rate": (a + b) / n if n else None,
            "shadow_pass_rate": (a + c) / n if n else None,
            "pass_rate_difference": diff,  # the judge's minus the shadow's
            "pass_rate_difference_low95": low,
            "pass_rate_difference_high95": high,
            "disagreeing_trace_ids": self.disagreeing,
            "judge_cost": self.live.to_dict(),
            "shadow_cost": self.candidate.to_dict(),
        }


def shadowed(monitor: ExternalMonitor, judge: str) -> str:
    """The shadow name of ``judge``, which must have a shadow in the monitor's config."""
    shadows = monitor.assessments_config.shadows or {}
    if judge not in shadows:
        allowed = sorted(shadows)
        raise MonitorConfigError(
            "judge",
            judge,
            f"expected a judge with a shadow: {allowed}"
            if allowed
            else "expected a judge with a shadow; this monitor has none (add one with "
            "`mlflow monitor update --shadow NAME=SPEC`)",
        )
    return shadow_name(judge)


def compare(
    experiment_id: str, judge: str, window: TimeRange, client: MlflowClient | None = None
) -> Comparison:
    """The judge beside its shadow on the finished traces of ``window``."""
    client = client or MlflowClient()
    monitor = MonitorTags(client).read_config(experiment_id)
    if monitor is None:
        raise MonitorNotFoundError(f"Experiment {experiment_id} has no monitor.")
    shadow = shadowed(monitor, judge)
    result = Comparison(judge, shadow, window)
    source = TraceSource(experiment_id, client)
    both = ((judge, 1.0), (shadow, 1.0))  # every verdict: a sample rate hides none
    for page in source.infos_after(Checkpoint(window.since_ms, ""), PAGE, window.until_ms):
        for info in page:
            result.traces += 1
            found = outcomes(info, monitor.monitor_id, both, max_failed_passes=1)
            live, candidate = found[judge], found[shadow]
            result.live.add(live)
            result.candidate.add(candidate)
            judged = live.kind in VERDICT_KINDS, candidate.kind in VERDICT_KINDS
            if judged == (True, False):
                result.judge_only += 1
            elif judged == (False, True):
                result.shadow_only += 1
            if judged != (True, True):
                continue
            pair = category(live.kind, live.value), category(candidate.kind, candidate.value)
            result.pairs[pair] += 1
            if pair[0] != pair[1] and len(result.disagreeing) < MAX_IDS:
                result.disagreeing.append(info.trace_id)
    return result


def compare_shadow(
    *,
    judge: str,
    experiment_id: str | None = None,
    experiment_name: str | None = None,
    since: str = "7d",
    until: str | None = None,
) -> dict[str, Any]:
    """The Python form of ``mlflow monitor compare``: the judge beside its shadow over
    ``[since, until)`` (dates, UTC times or ages such as ``7d``), as a dict."""
    import time

    from mlflow_monitor_plugin.config.api import resolve_experiment_id

    exp_id = resolve_experiment_id(experiment_id, experiment_name)
    window = TimeRange.parse(since, until, int(time.time() * 1000))
    return compare(exp_id, judge, window).to_dict()
