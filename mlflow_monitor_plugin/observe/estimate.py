"""The pass rate of a window whose traces were sampled at different rates, pure.

A window's traces fall into *cells*: one stratum (config/strata.py) at one inclusion
probability ``π`` (its sample rate, times a daily budget's factor where one lowered it). Inside
a cell the hash picks each trace with the same probability whatever its outcome, so the cell's
verdicts are a simple random sample of the cell. The window's rate is the stratified
(post-stratified Horvitz-Thompson) estimate:

    p̂ = Σ_h W_h p̂_h,    p̂_h = passed_h / n_h,    W_h = N'_h / Σ_k N'_k,   N'_h = N_h n_h / s_h

with ``N_h`` the cell's traces, ``s_h`` those sampled and ``n_h`` those with a pass/fail verdict
(``N'_h`` is the part of the cell the verdicts stand for, as for a uniform window). Its 95%
interval combines the cells' Wilson intervals ``(l_h, u_h)`` (at the effective size
``n_h / f_h``, ``f_h = (N'_h - n_h) / (N'_h - 1)`` the finite population correction) by the
MOVER method (Zou & Donner 2008), which keeps Wilson's good coverage when a cell has few
verdicts or none failing:

    low  = p̂ - sqrt(Σ_h W_h² (p̂_h - l_h)²),    high = p̂ + sqrt(Σ_h W_h² (u_h - p̂_h)²)

The failing traces of the window are estimated by Horvitz-Thompson, ``Σ_h failed_h / π_h``.
With a single cell all of this is the uniform formula of observe/windows.py, which the windows
keep using then (the same numbers as ever). ``finite=False`` drops the correction: the rate of
the process the window is drawn from, as the alerts judge it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass
class Cell:
    """The traces of a window in one stratum at one inclusion probability, counted."""

    stratum: str | None
    prob: float | None
    eligible: int = 0
    sampled: int = 0
    passed: int = 0
    failed: int = 0

    def add(self, sampled: bool, kind: str) -> None:
        self.eligible += 1
        if sampled:
            self.sampled += 1
            self.passed += kind == "pass"
            self.failed += kind == "fail"

    def merged(self, other: Cell) -> Cell:
        return Cell(
            self.stratum,
            self.prob,
            self.eligible + other.eligible,
            self.sampled + other.sampled,
            self.passed + other.passed,
            self.failed + other.failed,
        )

    @property
    def judged(self) -> int:
        return self.passed + self.failed


def merge_cells(
    a: dict[tuple[str | None, float | None], Cell], b: dict[tuple[str | None, float | None], Cell]
) -> dict[tuple[str | None, float | None], Cell]:
    out = dict(a)
    for key, cell in b.items():
        out[key] = out[key].merged(cell) if key in out else cell
    return out


@dataclass(frozen=True)
class Estimate:
    """A window's weighted pass rate, its interval, and what it rests on."""

    pass_rate: float
    low: float
    high: float
    judged: int  # pass/fail verdicts
    population: float  # the traces they stand for (Σ N'_h)
    estimated_failing: float  # Horvitz-Thompson


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson interval of an observed proportion at an effective sample size (the same
    formula as observe/windows.py ``wilson_effective``)."""
    z2 = z * z
    denominator = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def stratified(cells: Iterable[Cell], z: float = Z95, finite: bool = True) -> Estimate | None:
    """The weighted pass rate of the cells and its interval; None without a pass/fail verdict."""
    judged = [c for c in cells if c.judged]
    if not judged:
        return None
    sizes = [c.judged * c.eligible / c.sampled for c in judged]
    total = sum(sizes)
    rate = sum(size * c.passed / c.judged for c, size in zip(judged, sizes, strict=True)) / total
    below = above = 0.0
    for cell, size in zip(judged, sizes, strict=True):
        n, p = cell.judged, cell.passed / cell.judged
        if finite and n >= size - 1e-9:
            continue  # every trace of the cell judged: no sampling error
        correction = (size - n) / (size - 1) if finite else 1.0
        low, high = wilson(p, n / correction, z)
        weight = size / total
        below += (weight * (p - low)) ** 2
        above += (weight * (high - p)) ** 2
    failing = sum(c.failed / c.prob if c.prob else c.failed for c in judged)
    return Estimate(
        rate,
        max(0.0, min(rate, rate - math.sqrt(below))),
        min(1.0, max(rate, rate + math.sqrt(above))),
        sum(c.judged for c in judged),
        total,
        failing,
    )


def by_stratum(
    cells: Iterable[Cell],
) -> dict[str | None, list[Cell]]:
    """The cells of each stratum (a stratum has several when a budget changed its rate)."""
    out: dict[str | None, list[Cell]] = {}
    for cell in cells:
        out.setdefault(cell.stratum, []).append(cell)
    return out
