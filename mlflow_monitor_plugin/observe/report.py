"""What ``mlflow monitor report`` and ``status`` show: a monitor's windows over a period,
recomputed exactly from the store, and their rendering as table rows and trend arrows."""

from __future__ import annotations

import re
from typing import Any

from mlflow_monitor_plugin.config.model import ExternalMonitor
from mlflow_monitor_plugin.config.tags import MonitorTags
from mlflow_monitor_plugin.discovery.traces import TraceSource
from mlflow_monitor_plugin.exceptions import MonitorConfigError
from mlflow_monitor_plugin.observe import skipped
from mlflow_monitor_plugin.observe.collect import (
    Judges,
    WindowReader,
    window_judges,
    window_strata,
)
from mlflow_monitor_plugin.observe.spend import budget_rates, schedule_of
from mlflow_monitor_plugin.observe.tracker import window_rows
from mlflow_monitor_plugin.observe.windows import (
    DAY_MS,
    HOUR_MS,
    WIDTHS,
    Outcome,
    tally,
    trend,
    window_start,
)
from mlflow_monitor_plugin.scoring.judges import monitor_judges

_DURATION = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNIT_MS = {"m": 60_000, "h": HOUR_MS, "d": DAY_MS, "w": 7 * DAY_MS}


def parse_duration_ms(text: str) -> int:
    """``30m``, ``12h``, ``7d`` or ``2w`` in milliseconds."""
    match = _DURATION.match(text or "")
    if not match or int(match.group(1)) == 0:
        raise MonitorConfigError("since", text, "a positive duration such as 30m, 12h, 7d or 2w")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def judges_of(monitor: ExternalMonitor) -> Judges:
    return window_judges(monitor)


def windows(
    monitor: ExternalMonitor,
    since_ms: int,
    now_ms: int,
    width: str,
    judge_names: list[str] | None = None,
    max_failed_passes: int = 5,
    source: Any = None,
    by_stratum: bool = False,
) -> list[dict[str, Any]]:
    """The rows of every ``width`` window overlapping ``[since_ms, now_ms]`` that holds traces,
    per judge, oldest first; computed from the store. ``by_stratum``: also a row per stratum
    of each stratified judge, its own rate (``judge`` named ``<judge>/<stratum>``)."""
    if width not in WIDTHS:
        raise MonitorConfigError("window", width, f"one of {', '.join(WIDTHS)}")
    judges = judges_of(monitor)
    if judge_names:
        judges = tuple(j for j in judges if j[0] in set(judge_names))
    source = source or TraceSource(monitor.experiment_id)
    tags = MonitorTags()
    schedule = schedule_of(tags, monitor.experiment_id, monitor.monitor_id)
    llm = frozenset(j.name for j in monitor_judges(monitor) if j.is_llm)
    reader = WindowReader(
        source, monitor.monitor_id, judges, max_failed_passes,
        rate_of=budget_rates(schedule, llm),
        skips=skipped.read(tags, monitor.experiment_id, monitor.monitor_id),
        strata=window_strata(monitor),
    )  # fmt: skip
    rows = []
    first = window_start(since_ms, DAY_MS)
    for day_start in range(first, now_ms + 1, DAY_MS):
        day = reader.load_day(day_start)
        if not day.hours:
            continue
        if width == "1d":
            rows += window_rows(monitor, judges, "1d", day_start, day.day_tallies(judges), now_ms)
            if by_stratum:
                traces = [t for hour in day.hours.values() for t in hour.values()]
                rows += stratum_rows(monitor, judges, "1d", day_start, traces, now_ms)
            continue
        for hour in sorted(day.hours):
            if hour + HOUR_MS > since_ms:
                tallies = day.hour_tallies(hour, judges)
                rows += window_rows(monitor, judges, "1h", hour, tallies, now_ms)
                if by_stratum:
                    traces = list(day.hours[hour].values())
                    rows += stratum_rows(monitor, judges, "1h", hour, traces, now_ms)
    return rows


def stratum_rows(
    monitor: ExternalMonitor,
    judges: Judges,
    width: str,
    start_ms: int,
    traces: list[dict[str, Outcome]],
    now_ms: int,
) -> list[dict[str, Any]]:
    """One window's rows of each stratum of each stratified judge: the stratum's own pass
    rate and interval (its traces alone), named ``<judge>/<stratum>``."""
    rows = []
    for name, _ in judges:
        mine = [t[name] for t in traces if name in t and t[name].stratum is not None]
        for stratum in sorted({o.stratum for o in mine if o.stratum is not None}):
            part = tally(o for o in mine if o.stratum == stratum)
            rate = min(c.prob for c in part.cells.values() if c.prob is not None)
            label = f"{name}/{stratum}"
            row = window_rows(monitor, ((label, rate),), width, start_ms, {label: part}, now_ms)
            rows += [{**r, "stratum": stratum} for r in row]
    return rows


def by_judge(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["judge"], []).append(row)
    for judge_rows in grouped.values():
        judge_rows.sort(key=lambda r: r["window_start_ms"])
    return grouped


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def changed_windows(judge_rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str | None]]:
    """A judge's windows (oldest first) where its fingerprint changed: in the window (verdicts of
    two fingerprints) or since the judge's previous window with verdicts; with the fingerprint
    before, where known."""
    changed, before = [], None
    for row in judge_rows:
        now = row.get("fingerprint")
        if (row.get("fingerprints") or 0) > 1:
            changed.append((row, row.get("fingerprint_before") or before))
        elif before and now and now != before:
            changed.append((row, before))
        before = now or before
    return changed


def judge_changes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every change of a judge's fingerprint in ``rows``: judge, window, before, after."""
    return [
        {"judge": judge, "window": row["window_start"], "before": before,
         "after": row.get("fingerprint"), "fingerprints_in_window": row.get("fingerprints")}
        for judge, judge_rows in by_judge(rows).items()
        for row, before in changed_windows(judge_rows)
    ]  # fmt: skip


def table_rows(rows: list[dict[str, Any]], last: int) -> list[dict[str, str]]:
    """The last ``last`` windows of each judge as printable cells, with a trend arrow each
    and ``*`` after the fingerprint of a window where the judge changed."""
    printable = []
    for judge, judge_rows in by_judge(rows).items():
        previous = None
        shown = []
        changed = {id(row) for row, _ in changed_windows(judge_rows)}
        for row in judge_rows:
            shown.append((row, trend(previous, row["pass_rate"])))
            if row["pass_rate"] is not None:
                previous = row["pass_rate"]
        for row, arrow in shown[-last:]:
            low, high = row["pass_rate_low95"], row["pass_rate_high95"]
            fingerprint = (row.get("fingerprint") or "-")[:8] + ("*" if id(row) in changed else "")
            printable.append(
                {
                    "judge": judge,
                    "window": row["window_start"].strftime(
                        "%Y-%m-%d %H:%M" if row["width"] == "1h" else "%Y-%m-%d"
                    ),
                    "traces": str(row["eligible"]),
                    "sampled": str(row["sampled"]),
                    "verdicts": str(row["verdicts"]),
                    "skipped": str(row["skipped"]),
                    "pass_rate": _pct(row["pass_rate"]),
                    "95%": "-" if low is None else f"{_pct(low)}–{_pct(high)}",
                    "trend": arrow,
                    "errors": str(row["errors"]),
                    "est_failing": _num(row["estimated_failing"]) if row["verdicts"] else "-",
                    "mean": _num(row["value_mean"], 3),
                    "latency_p50": _num(row["latency_p50"], 2),
                    "latency_p95": _num(row["latency_p95"], 2),
                    "judge_fp": fingerprint,
                    "labels": str(row.get("human_labels") or 0),
                    "agree": _pct(row.get("human_agreement")),
                    "kappa": _num(row.get("human_kappa"), 2),
                }  # fmt: skip
            )
    return printable


TABLE_COLUMNS = [
    "judge", "window", "traces", "sampled", "verdicts", "skipped", "pass_rate", "95%", "trend",
    "errors", "est_failing", "latency_p50", "latency_p95", "judge_fp", "labels", "agree", "kappa",
]  # fmt: skip
CHANGED_NOTE = (
    "judge_fp: the judge's fingerprint (model, prompt, options, MLflow version); '*' marks a "
    "window where it changed, so a step there may be the judge's, not the traffic's. labels, "
    "agree, kappa: people's labels beside the judge (intervals: --output json)."
)


def skipped_advice(monitor: ExternalMonitor, rows: list[dict[str, Any]]) -> list[str]:
    """What ``report`` says under its table of the judges the daemon skipped."""
    names = sorted({r["judge"] for r in rows if r["skipped"]})
    if not names:
        return []
    skips = skipped.read(MonitorTags(), monitor.experiment_id, monitor.monitor_id)
    return skipped.advice(monitor.experiment_id, skips, names)


def last_windows(monitor: ExternalMonitor, now_ms: int, source: Any = None) -> list[dict]:
    """For ``status``: each judge's latest hourly window with traces (today or yesterday)."""
    rows = windows(monitor, window_start(now_ms, DAY_MS) - DAY_MS, now_ms, "1h", source=source)
    grouped = by_judge(rows)
    today = window_start(now_ms, DAY_MS)
    return [
        {
            "judge": judge,
            "window": row["window_start"].isoformat(),
            "verdicts": row["verdicts"],
            "pass_rate": None if row["pass_rate"] is None else round(row["pass_rate"], 4),
            "interval95": "-"
            if row["pass_rate_low95"] is None
            else f"{_pct(row['pass_rate_low95'])}–{_pct(row['pass_rate_high95'])}",
            "errors": row["errors"],
            "effective_rate": round(row["effective_rate"], 6),
            **cost_of_rows([r for r in grouped[judge] if r["window_start_ms"] >= today]),
        }
        for judge, row in ((j, judge_rows[-1]) for j, judge_rows in grouped.items())
    ]


def cost_of_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Tokens and cost summed over windows: ``cost_usd`` None when no verdict had a price."""
    costs = [r["judge_cost_usd"] for r in rows if r["judge_cost_usd"] is not None]
    return {
        "tokens_today": sum(r["judge_tokens"] for r in rows),
        "cost_today_usd": round(sum(costs), 8) if costs else None,
        "cost_unknown_today": sum(r["judge_cost_unknown"] for r in rows),
    }
