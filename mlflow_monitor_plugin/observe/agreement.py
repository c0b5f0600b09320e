"""How much two raters agree, from their paired labels: agreement rate, Cohen's kappa, the
difference of their pass rates, each with a 95% interval. Pure.

The two raters are a judge and a person (``observe/labels.py``), or a judge and its shadow
(``engine/shadow.py``). Labels are categories (``yes``, ``no``, a number as text, a label);
``pairs`` counts the traces per (first rater's label, second rater's label).

- Agreement rate ``po``: the share of pairs with the same label, with its Wilson interval.
- Cohen's kappa (Cohen 1960): ``k = (po - pe) / (1 - pe)``, where ``pe = sum_i r_i c_i`` is the
  agreement expected by chance from the raters' own label shares (``r_i``, ``c_i``). Its
  variance is the large-sample one of Fleiss, Cohen & Everitt (1969):
  ``[sum_i p_ii (1 - (r_i + c_i)(1 - k))^2 + (1 - k)^2 sum_{i != j} p_ij (c_i + r_j)^2
  - (k - pe (1 - k))^2] / (n (1 - pe)^2)``. That Wald interval is over-confident with few
  labels (it is a point at k = 1), so the interval published is the hull of it and the
  agreement rate's Wilson interval carried to the kappa scale with ``pe`` held
  (``(po_low - pe) / (1 - pe)``, same for the upper bound), clipped to [-1, 1].
- Pass-rate difference of paired yes/no labels: ``(b - c) / n`` (``b``: first yes, second
  no; ``c``: the reverse), with Newcombe's (1998, method 10) interval for paired proportions,
  built from each rater's Wilson interval and the phi correlation of the pairs (``ad - bc``
  less ``n/2`` when above it, 0 between 0 and ``n/2``, over the square root of the margins'
  product, as "Statistics with Confidence" (Altman et al. 2000) gives it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mlflow_monitor_plugin.observe.windows import Z95, wilson

Pairs = Mapping[tuple[str, str], int]


def categories(pairs: Pairs) -> list[str]:
    """Every label either rater gave, sorted."""
    return sorted({a for a, _ in pairs} | {b for _, b in pairs})


def confusion(pairs: Pairs) -> dict[str, dict[str, int]]:
    """The confusion matrix: first rater's label -> second rater's label -> traces."""
    labels = categories(pairs)
    return {a: {b: int(pairs.get((a, b), 0)) for b in labels} for a in labels}


def kappa(pairs: Pairs, z: float = Z95) -> tuple[float | None, float | None, float | None]:
    """Cohen's kappa and its interval (see the module's text); None when undefined (no pairs,
    or both raters always gave the same single label, so chance explains all agreement)."""
    n = sum(pairs.values())
    if n == 0:
        return None, None, None
    labels = categories(pairs)
    p = {(a, b): pairs.get((a, b), 0) / n for a in labels for b in labels}
    rows = {a: sum(p[(a, b)] for b in labels) for a in labels}
    cols = {b: sum(p[(a, b)] for a in labels) for b in labels}
    po = sum(p[(a, a)] for a in labels)
    pe = sum(rows[a] * cols[a] for a in labels)
    if pe >= 1 - 1e-12:
        return None, None, None
    k = (po - pe) / (1 - pe)
    term_a = sum(p[(i, i)] * (1 - (rows[i] + cols[i]) * (1 - k)) ** 2 for i in labels)
    term_b = (
        sum(p[(i, j)] * (cols[i] + rows[j]) ** 2 for i in labels for j in labels if i != j)
        * (1 - k) ** 2
    )
    term_c = (k - pe * (1 - k)) ** 2
    variance = max(0.0, (term_a + term_b - term_c) / (n * (1 - pe) ** 2))
    half = z * math.sqrt(variance)
    agreed = sum(pairs.get((a, a), 0) for a in labels)
    low_po, high_po = wilson(agreed, n, z)
    low = min(k - half, (low_po - pe) / (1 - pe))
    high = max(k + half, (high_po - pe) / (1 - pe))
    return k, max(-1.0, low), min(1.0, high)


def agreement(pairs: Pairs, z: float = Z95) -> dict[str, Any]:
    """The published numbers of paired labels: count, agreement rate and kappa with intervals."""
    n = sum(pairs.values())
    agreed = sum(count for (a, b), count in pairs.items() if a == b)
    low, high = wilson(agreed, n, z) if n else (None, None)
    k, k_low, k_high = kappa(pairs, z)
    return {
        "n": n,
        "agreed": agreed,
        "agreement": agreed / n if n else None,
        "agreement_low95": low,
        "agreement_high95": high,
        "kappa": k,
        "kappa_low95": k_low,
        "kappa_high95": k_high,
    }


def paired_difference(
    both_yes: int, first_only: int, second_only: int, both_no: int, z: float = Z95
) -> tuple[float | None, float | None, float | None]:
    """The first rater's pass rate minus the second's, on the same traces, and Newcombe's
    method-10 interval; None without pairs."""
    a, b, c, d = both_yes, first_only, second_only, both_no
    n = a + b + c + d
    if n == 0:
        return None, None, None
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n, z)
    l2, u2 = wilson(a + c, n, z)
    denominator = (a + b) * (c + d) * (a + c) * (b + d)
    concordance = a * d - b * c  # Newcombe's phi, corrected as in Altman et al. (2000) p. 52
    corrected = concordance - n / 2 if concordance > n / 2 else min(concordance, 0)
    phi = corrected / math.sqrt(denominator) if denominator else 0.0
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    epsilon = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    diff = p1 - p2
    return diff, max(-1.0, diff - delta), min(1.0, diff + epsilon)


def labels_for_kappa_width(po: float, pe: float, half_width: float = 0.1, z: float = Z95) -> int:
    """About how many labels give kappa an interval of +-``half_width`` when the raters agree
    on ``po`` of the traces and chance alone would give ``pe`` (Cohen's 1960 approximation of
    the variance, ``po (1 - po) / (n (1 - pe)^2)``): for planning, docs/judges-trust.md."""
    if not 0 <= pe < 1 or not 0 <= po <= 1 or half_width <= 0:
        raise ValueError("expected 0 <= po <= 1, 0 <= pe < 1 and half_width > 0")
    return max(1, math.ceil(z * z * po * (1 - po) / (half_width**2 * (1 - pe) ** 2)))
