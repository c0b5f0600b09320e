"""Markdown tables and a PNG chart from bench_vs_native.py's JSON summary.

.venv/bin/python benchmarks/report.py benchmarks/results/latest.json   # rewrite .md/.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _system(r: dict[str, Any]) -> str:
    if r["system"] == "native":
        return "native (mlflow server + huey jobs)"
    store = r.get("store") or r["system"].removeprefix("ours-").split("-")[0]
    where = "SQLite file" if store == "sqlite" else "REST mlflow server"
    before = " (before: --workers 8, baseline commit)" if r["system"].endswith("-baseline") else ""
    processes = f", --processes {r['processes']}" if r.get("processes") else ""
    return f"ours{before}, {where}{processes}"


def _judge(r: dict[str, Any]) -> str:
    cap = f", {r['judge_cap']} concurrent max" if r.get("judge_cap") else ""
    return f"{r['judge_latency_s'] * 1000:g} ms{cap}"


def write_markdown(s: dict[str, Any], path: Path) -> None:
    m = s["machine"]
    out = [
        "# Benchmark results: mlflow-monitor vs MLflow native online scoring",
        "",
        f"One run of `benchmarks/bench_vs_native.py` on {m['cpus']} CPUs, MLflow {m['mlflow']},"
        f" Python {m['python']}. Judges: {', '.join(s['judges'])} (all LLM judges, sample rate"
        " 1.0), answered by the fake judge in its own process. See BENCHMARKS.md for what each"
        " number means.",
        "",
        *(
            [
                f"**Workaround experiment:** the daemon was started after importing "
                f"`{s['args']['daemon_preimport']}` (bench_vs_native.py --daemon-preimport); "
                f"phases run: {s['args'].get('phases')}, stores: {s['args'].get('stores')}.",
                "",
            ]
            if s["args"].get("daemon_preimport")
            else []
        ),
        f"Package commit {s.get('package', {}).get('commit', '?')}.",
        "",
        "## Latency: trace finished -> all its verdicts visible in the store",
        "",
    ]
    rows = []
    for r in s["latency"]:
        config = r["config"] if r["system"] == "native" else f"interval {r['interval_s']:g} s"
        if r["system"] == "native":
            config = f"completion buffer {r['completion_buffer_s']} s"
        rows.append(
            [
                _system(r),
                config,
                r["traces_logged"],
                r["p50_s"],
                r["p95_s"],
                r["max_s"],
                r["missed"],
                r["duplicates"],
                r["never_arrived"],
            ]
        )
    out += _table(
        [
            "system",
            "config",
            "traces",
            "p50 s",
            "p95 s",
            "max s",
            "missed",
            "duplicates",
            "never arrived",
        ],
        rows,
    )
    out += ["## Throughput: verdicts per second (3 judges per trace)", ""]
    rows = []
    for r in s["throughput"]:
        worker = r["cost"].get("worker", {})
        server = r["cost"].get("server", {})
        state = "done" if r["completed"] else f"capped at {r['capped_at_s']:g} s"
        rows.append(
            [
                _system(r),
                r["traces"],
                _judge(r),
                r["verdicts_per_s"],
                f"{r['verdicts']:,}/{r['verdicts_expected']:,}",
                r["seconds"],
                state,
                r["cpu_s_per_1000_verdicts"],
                r.get("total_cpu_s_per_1000_verdicts"),
                worker.get("peak_pss_mb"),
                worker.get("peak_rss_mb"),
                server.get("cpu_s"),
                r["duplicates"],
                r["missed"],
                len(r.get("stalls", [])),
            ]
        )
    out += _table(
        [
            "system",
            "traces",
            "judge latency",
            "verdicts/s",
            "verdicts",
            "seconds",
            "run",
            "worker CPU s / 1k verdicts",
            "worker + server CPU s / 1k verdicts",
            "worker peak PSS MB",
            "worker peak RSS MB",
            "server CPU s",
            "duplicates",
            "missed",
            "stuck daemons (rerun)",
        ],
        rows,
    )
    native = [r for r in s["throughput"] if r["system"] == "native"]
    if native:
        out += [
            "Native jobs (MLflow's `jobs` table): "
            + "; ".join(
                f"{r['traces']} traces @ {r['judge_latency_s'] * 1000:g} ms: "
                f"{r['jobs']} jobs, {r['job_seconds_total']} s in jobs "
                f"({_f(r.get('verdicts_per_job_second'))} verdicts per job-second)"
                for r in native
            )
            + ".",
            "",
        ]
    out += ["## The store's own limits (the ceiling for any monitor)", ""]
    rows = [
        [
            label,
            v["log_feedback_per_s_1_thread"],
            v["log_feedback_per_s_8_threads"],
            v["search_traces_per_s_no_spans"],
            v["search_traces_per_s_with_spans"],
        ]
        for label, v in s["limits"].items()
    ]
    out += _table(
        [
            "store",
            "log_feedback/s (1 thread)",
            "log_feedback/s (8 threads)",
            "search_traces traces/s (no spans)",
            "search_traces traces/s (spans)",
        ],
        rows,
    )
    e = s.get("export")
    if e:
        out += ["## Export to Parquet (bench_export.py, SQLite)", ""]
        out += _table(
            [
                "traces",
                "search_traces only, traces/s",
                "search + export, traces/s",
                "ratio",
                "export alone, traces/s",
            ],
            [
                [
                    e["traces"],
                    e["a_search_only_traces_per_s"],
                    e["b_search_and_export_traces_per_s"],
                    e["ratio_b_over_a_throughput"],
                    e["b_export_only_traces_per_s"],
                ]
            ],
        )
    out += ["## Goals", ""]
    rows = []
    for goal, result in s["goals"].items():
        if all(isinstance(v, dict) for v in result.values()):
            for key, v in result.items():
                rows.append([goal, key, _detail(v), v.get("met")])
        else:
            rows.append([goal, "", _detail(result), result.get("met", "n/a")])
    out += _table(["goal", "case", "numbers", "met"], rows)
    out += [f"Wall clock (s since start): {json.dumps(s['wall_clock_s'])}", ""]
    path.write_text("\n".join(out))


def _detail(v: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_f(x, 2)}" for k, x in v.items() if k != "met")


def write_chart(s: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    axes = axes.flatten()
    colors = {
        "native": "#d62728",
        "ours-sqlite": "#1f77b4",
        "ours-rest": "#2ca02c",
        "ours-sqlite-p2": "#17becf",
        "ours-rest-p2": "#bcbd22",
        "ours-sqlite-baseline": "#aec7e8",
        "ours-rest-baseline": "#98df8a",
    }

    ax = axes[0]
    labels, p50, p95, cols = [], [], [], []
    for r in s["latency"]:
        if r["p50_s"] is None:
            continue
        if r["system"] == "native":
            labels.append(f"native\nbuffer {r['completion_buffer_s']}s")
            cols.append(colors["native"])
        else:
            labels.append(f"ours {r['store']}\n{r['interval_s']:g}s")
            cols.append(colors[f"ours-{r['store']}"])
        p50.append(r["p50_s"])
        p95.append(r["p95_s"])
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], p50, 0.4, color=cols, alpha=0.55, label="p50")
    ax.bar([i + 0.2 for i in x], p95, 0.4, color=cols, label="p95")
    ax.set_yscale("log")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("seconds (log)")
    ax.set_title("Latency: trace finished -> verdicts visible\n(light: p50, dark: p95)")
    ax.axhline(5, color="grey", ls="--", lw=0.8)

    ax = axes[1]
    rows = s["throughput"]
    cases = sorted({(r["traces"], r["judge_latency_s"], r.get("judge_cap") or 0) for r in rows})
    systems = [*sorted({r["system"] for r in rows} - {"native"}), "native"]
    width = 0.8 / len(systems)
    for k, system in enumerate(systems):
        vals = []
        for traces, lat, cap in cases:
            match = [
                r
                for r in rows
                if r["system"] == system
                and r["traces"] == traces
                and r["judge_latency_s"] == lat
                and (r.get("judge_cap") or 0) == cap
            ]
            vals.append(match[0]["verdicts_per_s"] if match else 0)
            if match and match[0].get("stuck", len(match[0].get("stalls", [])) >= 3):
                i = len(vals) - 1
                ax.text(
                    i + (k - (len(systems) - 1) / 2) * width,
                    vals[-1] + 2,
                    "stuck\n(deadlock)",
                    ha="center",
                    fontsize=7,
                    color=colors.get(system, "#7f7f7f"),
                )
        ax.bar(
            [i + (k - (len(systems) - 1) / 2) * width for i in range(len(cases))],
            vals,
            width,
            color=colors.get(system, "#7f7f7f"),
            label=system,
        )
    for label, v in s["limits"].items():
        best = max(v["log_feedback_per_s_1_thread"], v["log_feedback_per_s_8_threads"])
        ax.axhline(
            best, color=colors[f"ours-{label}"], ls=":", lw=1, label=f"raw log_feedback/s, {label}"
        )
    ax.set_xticks(
        range(len(cases)),
        [
            f"{t:,} traces\njudge {lat * 1000:g} ms" + (f"\n{cap} concurrent max" if cap else "")
            for t, lat, cap in cases
        ],
        fontsize=8,
    )
    ax.set_ylabel("verdicts / s")
    ax.set_title("Throughput (3 judges per trace)")
    ax.legend(fontsize=7, loc="upper left")

    # Cost of the runs that finished or ran to their cap (not the stuck ones).
    cost_rows = [
        r
        for r in rows
        if r["cpu_s_per_1000_verdicts"] is not None
        and not r.get("stuck", len(r.get("stalls", [])) >= 3)
    ]
    names = [f"{r['system']}\n{r['traces']:,} traces, {_judge(r)}" for r in cost_rows]
    cols = [colors.get(r["system"], "#7f7f7f") for r in cost_rows]
    x = list(range(len(cost_rows)))
    ax = axes[2]
    worker = [r["cpu_s_per_1000_verdicts"] for r in cost_rows]
    total = [
        r.get("total_cpu_s_per_1000_verdicts") or r["cpu_s_per_1000_verdicts"] for r in cost_rows
    ]
    ax.bar(x, total, 0.6, color=cols, alpha=0.35, label="+ tracking server (REST, AI Gateway)")
    ax.bar(x, worker, 0.6, color=cols, label="monitor worker processes")
    ax.set_xticks(x, names, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("CPU seconds per 1,000 verdicts")
    ax.set_title("CPU per 1,000 verdicts")
    ax.legend(fontsize=8)
    ax = axes[3]
    ax.bar(x, [r["cost"]["worker"]["peak_pss_mb"] for r in cost_rows], 0.6, color=cols)
    ax.set_xticks(x, names, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("MB (PSS, summed over the process tree)")
    ax.set_title("Peak memory of the monitor's processes")
    fig.suptitle(
        f"mlflow-monitor vs MLflow {s['machine']['mlflow']} native online scoring, "
        f"{s['machine']['cpus']} CPUs"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/latest.json")
    summary = json.loads(source.read_text())
    write_markdown(summary, source.with_suffix(".md"))
    write_chart(summary, source.with_suffix(".png"))
