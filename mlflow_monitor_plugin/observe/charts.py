"""The report's chart: pass rate per judge over time with its 95% band, as a PNG or as one
self-contained HTML file (the chart inlined as SVG, the table as HTML; nothing fetched)."""

from __future__ import annotations

import datetime as dt
import html
import io
from pathlib import Path
from typing import Any

from mlflow_monitor_plugin.observe.report import (
    TABLE_COLUMNS,
    by_judge,
    changed_windows,
    table_rows,
)


def _figure(rows: list[dict[str, Any]], title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display, no GUI toolkit
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    labelled = any(r.get("human_labels") for r in rows)
    figure, panels = plt.subplots(
        2 if labelled else 1, 1, figsize=(10, 7.5 if labelled else 4.5), dpi=100, sharex=True,
        squeeze=False,
    )  # fmt: skip
    axes = panels[0][0]
    for judge, judge_rows in sorted(by_judge(rows).items()):
        points = [r for r in judge_rows if r["pass_rate"] is not None]
        if not points:
            continue
        times = [r["window_start"] for r in points]
        (line,) = axes.plot(times, [r["pass_rate"] for r in points], marker="o", label=judge)
        axes.fill_between(
            times,
            [r["pass_rate_low95"] for r in points],
            [r["pass_rate_high95"] for r in points],
            color=line.get_color(),
            alpha=0.2,
            linewidth=0,
        )
        for row, _ in changed_windows(judge_rows):  # a step here may be the judge's
            axes.axvline(row["window_start"], color=line.get_color(), linestyle="--", alpha=0.7)
            axes.annotate(f"{judge}: judge changed", (row["window_start"], 0.02), rotation=90,
                          fontsize=7, color=line.get_color())  # fmt: skip
    if labelled:
        _agreement_panel(panels[1][0], rows)
    axes.set_ylim(-0.02, 1.02)
    axes.set_ylabel("pass rate (95% interval)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=dt.timezone.utc))
    figure.autofmt_xdate()
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower left")
    else:
        axes.text(0.5, 0.5, "no yes/no verdicts in this period", ha="center",
                  transform=axes.transAxes)  # fmt: skip
    figure.tight_layout()
    return figure


def _agreement_panel(axes: Any, rows: list[dict[str, Any]]) -> None:
    """Agreement of each judge with people's labels, with its 95% band, where labelled."""
    for judge, judge_rows in sorted(by_judge(rows).items()):
        points = [r for r in judge_rows if r.get("human_agreement") is not None]
        if not points:
            continue
        times = [r["window_start"] for r in points]
        (line,) = axes.plot(
            times, [r["human_agreement"] for r in points], marker="s", label=f"{judge} vs people"
        )
        axes.fill_between(
            times,
            [r["human_agreement_low95"] for r in points],
            [r["human_agreement_high95"] for r in points],
            color=line.get_color(),
            alpha=0.2,
            linewidth=0,
        )
    axes.set_ylim(-0.02, 1.02)
    axes.set_ylabel("agreement with people (95%)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")


def write_png(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    figure = _figure(rows, title)
    try:
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)


def write_html(rows: list[dict[str, Any]], path: Path, title: str, last: int) -> None:
    import matplotlib.pyplot as plt

    figure = _figure(rows, title)
    buffer = io.StringIO()
    try:
        figure.savefig(buffer, format="svg")
    finally:
        plt.close(figure)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE (no external DTD fetch)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in TABLE_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(r[c])}</td>" for c in TABLE_COLUMNS) + "</tr>"
        for r in table_rows(rows, last)
    )
    path.write_text(
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{svg}<table><tr>{head}</tr>{body}</table>"
        "</body></html>\n",
        encoding="utf-8",
    )
