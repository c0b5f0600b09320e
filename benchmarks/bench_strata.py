"""Stratified against uniform sampling at the same number of judge calls (issue 30).

A seeded simulation of many hourly windows per design: each window's traces fall into strata
with their own failure rate; a stratified sampler judges each stratum at its own rate, a
uniform one every trace at the rate that makes the same judge calls on average. Per design it
reports the judge calls and the failing traces found per window, and for the 95% interval of
the window's pass rate (observe/estimate.py for stratified, the windows' own population
interval for uniform) how often it holds the window's true rate and how wide it is.

    .venv/bin/python benchmarks/bench_strata.py --windows 4000

Prints a markdown table and writes benchmarks/results/strata-latest.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark the working tree

from mlflow_monitor_plugin.observe.estimate import Cell, stratified
from mlflow_monitor_plugin.observe.windows import population_interval

# name -> [(stratum, share of traces, failure rate, sample rate)]
DESIGNS = {
    "errors and slow traces fail more": [
        ("errors", 0.03, 0.50, 1.0), ("slow", 0.07, 0.25, 0.5), ("default", 0.90, 0.04, 0.05)],
    "thumbs-down (human feedback)": [("unhappy", 0.02, 0.60, 1.0), ("default", 0.98, 0.03, 0.05)],
    "a rare bad path": [("fallback", 0.01, 0.70, 1.0), ("default", 0.99, 0.02, 0.05)],
    "a noisy stratum (Neyman-like)": [
        ("new_prompt", 0.20, 0.40, 0.3), ("default", 0.80, 0.02, 0.05)],
    "strata with no signal": [
        ("errors", 0.03, 0.05, 1.0), ("slow", 0.07, 0.05, 0.5), ("default", 0.90, 0.05, 0.05)],
}  # fmt: skip
SMALL = "errors and slow, windows of 200 traces"  # the first design in small windows
SIZES = {SMALL: 200}


def simulate(
    design: list[tuple[str, float, float, float]], windows: int, seed: int, size: int = 1000
) -> dict:
    rng = np.random.default_rng(seed)
    shares = np.array([s for _, s, _, _ in design])
    uniform_rate = float(sum(s * r for _, s, _, r in design))
    out = {k: [] for k in ("calls_s", "found_s", "calls_u", "found_u", "cover_s", "cover_u",
                           "width_s", "width_u", "err_s", "err_u")}  # fmt: skip
    for _ in range(windows):
        sizes = rng.multinomial(size, shares)
        failing = [int(rng.binomial(n, f)) for n, (_, _, f, _) in zip(sizes, design, strict=True)]
        truth = 1 - sum(failing) / size
        cells, calls, found = [], 0, 0
        u_sampled = u_failed = 0
        for (name, _, _, rate), n, bad in zip(design, sizes, failing, strict=True):
            n, good = int(n), int(n) - bad
            s = int(rng.binomial(n, rate))
            f = int(rng.hypergeometric(bad, good, s)) if s else 0
            cells.append(Cell(name, rate, n, s, s - f, f))
            calls, found = calls + s, found + f
            us = int(rng.binomial(n, uniform_rate))  # the uniform sampler, on the same traces
            u_sampled, u_failed = (
                u_sampled + us,
                u_failed + (int(rng.hypergeometric(bad, good, us)) if us else 0),
            )
        out["calls_s"].append(calls)
        out["found_s"].append(found)
        out["calls_u"].append(u_sampled)
        out["found_u"].append(u_failed)
        est = stratified(cells)
        if est is not None:
            out["cover_s"].append(est.low - 1e-12 <= truth <= est.high + 1e-12)
            out["width_s"].append(est.high - est.low)
            out["err_s"].append(est.pass_rate - truth)
        if u_sampled:
            p = (u_sampled - u_failed) / u_sampled
            low, high = population_interval(u_sampled - u_failed, u_sampled, float(size))
            out["cover_u"].append(low - 1e-12 <= truth <= high + 1e-12)
            out["width_u"].append(high - low)
            out["err_u"].append(p - truth)
    mean = {k: float(np.mean(v)) for k, v in out.items() if not k.startswith("err")}
    mean["rmse_s"] = float(np.sqrt(np.mean(np.square(out["err_s"]))))
    mean["rmse_u"] = float(np.sqrt(np.mean(np.square(out["err_u"]))))
    mean["uniform_rate"] = uniform_rate
    mean["true_fail_rate"] = float(sum(s * f for _, s, f, _ in design))
    return mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=20261206)
    args = parser.parse_args()
    designs = {**DESIGNS, SMALL: next(iter(DESIGNS.values()))}
    results = {
        name: simulate(d, args.windows, args.seed, SIZES.get(name, 1000))
        for name, d in designs.items()
    }
    print(f"{args.windows} windows of 1,000 traces per design (unless said); stratified / "
          "uniform at the same judge calls\n")  # fmt: skip
    print("| design | failing traces | judge calls | failing found | found per call (x) "
          "| 95% coverage | interval width | RMSE of the rate |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        gain = (r["found_s"] / r["calls_s"]) / (r["found_u"] / r["calls_u"])
        print(
            f"| {name} | {SIZES.get(name, 1000) * r['true_fail_rate']:.0f} | {r['calls_s']:.1f} / "
            f"{r['calls_u']:.1f} | {r['found_s']:.1f} / {r['found_u']:.1f} | {gain:.1f} | "
            f"{100 * r['cover_s']:.1f}% / {100 * r['cover_u']:.1f}% | "
            f"{r['width_s']:.3f} / {r['width_u']:.3f} | {r['rmse_s']:.4f} / {r['rmse_u']:.4f} |"
        )
    path = Path(__file__).parent / "results" / "strata-latest.json"
    path.write_text(json.dumps({"windows": args.windows, "seed": args.seed,
                                "results": results}, indent=2) + "\n")  # fmt: skip
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
