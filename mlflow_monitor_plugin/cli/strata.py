"""``--stratum`` of ``create`` and ``update``: the monitor's strata from the command line
(config/strata.py; per-judge strata are given in a config file)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

HUMAN_PREFIX = "human:"
FORM = "NAME=FILTER@RATE or NAME=human:FEEDBACK[=VALUE]@RATE"


def stratum_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--stratum",
        "strata_specs",
        multiple=True,
        metavar="NAME=RULE@RATE",
        help="Sample the traces a rule matches at their own rate, e.g. "
        "\"errors=trace.status = 'ERROR'@1\" or 'unhappy=human:user_rating=thumbs_down@1' "
        "(a person's feedback). A trace is in the first stratum it matches; the others keep "
        "the judge's rate. Repeatable; adds to the file's strata.",
    )(func)


def parse_stratum(spec: str) -> dict[str, Any]:
    """One ``--stratum`` as the config's dict form (validated by config/strata.py)."""
    name, sep, rest = spec.partition("=")
    rule, at, rate = rest.rpartition("@")
    if not sep or not name.strip() or not at or not rule.strip():
        raise click.BadParameter(f"expected {FORM}, got {spec!r}", param_hint="--stratum")
    try:
        sample_rate = float(rate)
    except ValueError:
        raise click.BadParameter(
            f"{spec!r}: the rate after the last '@' must be a number, e.g. '@0.5'",
            param_hint="--stratum",
        ) from None
    stratum: dict[str, Any] = {"name": name.strip(), "sample_rate": sample_rate}
    rule = rule.strip()
    if rule.startswith(HUMAN_PREFIX):
        stratum["human_feedback"] = rule[len(HUMAN_PREFIX) :].strip()
    else:
        stratum["filter_string"] = rule
    return stratum


def with_strata(suite: dict[str, Any], specs: tuple[str, ...]) -> dict[str, Any]:
    """The suite's dict with the ``--stratum`` strata after those its file gives."""
    if specs:
        suite["strata"] = list(suite.get("strata") or []) + [parse_stratum(s) for s in specs]
    return suite
