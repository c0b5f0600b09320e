"""The redaction options of ``create`` and ``update``: what personal data the export and the
alert messages mask (docs/configuration.md, "Personal data")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from mlflow_monitor_plugin.config.api import redaction_policy
from mlflow_monitor_plugin.exceptions import MonitorConfigError
from mlflow_monitor_plugin.redaction.policy import MODES, TARGETS, RedactionPolicy

_HINTS = {"pii.mode": "--pii-mode", "pii.patterns": "--pii-pattern", "pii.where": "--pii-where"}


def pii_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--pii",
            "pii_kinds",
            metavar="standard|off|KIND,...",
            help="Personal data to mask in the export and alert messages: 'standard' (email, "
            "phone, credit_card, iban, ip_address), 'off', or kinds such as "
            "'standard,us_ssn' (see docs/configuration.md).",
        ),
        click.option(
            "--pii-mode",
            type=click.Choice(MODES),
            help="How: [EMAIL] placeholders, a keyed hash ([EMAIL:9f2c...], key in "
            "$MLFLOW_MONITOR_PII_SECRET), or drop the field. Default: placeholder.",
        ),
        click.option(
            "--pii-pattern",
            "pii_patterns",
            multiple=True,
            metavar="NAME=REGEX",
            help="Also mask what your own regular expression matches, as [NAME]. Repeatable.",
        ),
        click.option(
            "--pii-where",
            metavar="PLACE,...",
            help=f"Where to mask, from {', '.join(TARGETS)}. Default: all of them.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _patterns(specs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for spec in specs:
        name, sep, regex = spec.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(
                f"expected NAME=REGEX, e.g. 'ticket=TCK-\\d{{6}}', got {spec!r}",
                param_hint="--pii-pattern",
            )
        out[name.strip()] = regex
    return out


def pii_for_cli(
    file_data: dict[str, Any] | None,
    current: RedactionPolicy | None,
    kinds: str | None,
    mode: str | None,
    patterns: tuple[str, ...],
    where: str | None,
) -> RedactionPolicy | None:
    """The policy the flags and the file's ``pii`` key give, on top of ``current``; None when
    neither says anything (``update`` keeps the policy). Refused (exit 2) when invalid or
    when this process could not apply it."""
    has_file = bool(file_data) and "pii" in (file_data or {})
    if not has_file and kinds is None and mode is None and not patterns and where is None:
        return None
    try:
        base = file_data["pii"] if has_file else (current or RedactionPolicy())
        if kinds is not None and kinds.strip().lower() in ("off", "none"):
            return redaction_policy("off")
        value = redaction_policy(base).to_dict()
        if kinds is not None:
            value["kinds"] = kinds
        if mode is not None:
            value["mode"] = mode
        if patterns:
            value["patterns"] = {**value.get("patterns", {}), **_patterns(patterns)}
        if where is not None:
            value["where"] = where
        return redaction_policy(value)
    except MonitorConfigError as e:
        hint = _HINTS.get(e.field.split("[")[0].split(" ")[0], "--pii")
        raise click.BadParameter(str(e), param_hint=hint) from None
