"""A monitor's redaction policy: which personal data to mask, how, and where (pure).

``pii: standard`` masks the common kinds (email, phone, credit card, IBAN, IP address) with
placeholders everywhere the policy reaches; a mapping says more::

    pii:
      kinds: [standard, us_ssn]           # built-in kinds, "standard" names the common ones
      patterns: {ticket: 'TCK-\\d{6}'}    # the operator's own regexes, by name
      mode: hash                          # placeholder | hash | drop
      where: [request, response, spans, assessments, metadata, alerts]

Validation raises ``MonitorConfigError`` naming the field, the value and what is allowed. Whether
the recognizers are installed and the hash key is set is checked by ``redaction.masker``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlflow_monitor_plugin.exceptions import MonitorConfigError

STANDARD_KINDS = ("email", "phone", "credit_card", "iban", "ip_address")
NATIONAL_ID_KINDS = (
    "us_ssn", "us_itin", "uk_nino", "uk_nhs", "ca_sin", "es_nif", "es_nie", "it_fiscal_code",
    "pl_pesel", "fi_personal_identity_code", "se_personnummer", "de_tax_id", "in_aadhaar",
    "in_pan", "sg_nric_fin", "au_tfn", "kr_rrn", "th_tnin", "tr_national_id", "ng_nin",
    "za_id_number",
)  # fmt: skip
KINDS = STANDARD_KINDS + NATIONAL_ID_KINDS
MODES = ("placeholder", "hash", "drop")
TARGETS = ("request", "response", "spans", "assessments", "metadata", "alerts")
OFF_WORDS = ("off", "none", "false")

_PATTERN_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_PATTERNS = 50
MAX_PATTERN_LENGTH = 1000


@dataclass(frozen=True)
class RedactionPolicy:
    """What the export and the alert messages mask. The default masks nothing."""

    kinds: tuple[str, ...] = ()
    patterns: tuple[tuple[str, str], ...] = ()  # (name, regex), in the order given
    mode: str = "placeholder"
    where: tuple[str, ...] = TARGETS

    @property
    def enabled(self) -> bool:
        return bool(self.kinds or self.patterns)

    def covers(self, target: str) -> bool:
        return self.enabled and target in self.where

    def to_dict(self) -> dict[str, Any]:
        """The stored form; ``{}`` when the policy is off."""
        if not self.enabled:
            return {}
        out: dict[str, Any] = {"kinds": list(self.kinds), "mode": self.mode}
        if self.patterns:
            out["patterns"] = dict(self.patterns)
        out["where"] = list(self.where)
        return out

    def describe(self) -> str:
        """One line for ``get`` and ``status``."""
        if not self.enabled:
            return "off"
        kinds = list(self.kinds)
        if set(STANDARD_KINDS) <= set(kinds):
            kinds = ["standard"] + [k for k in kinds if k not in STANDARD_KINDS]
        names = kinds + [f"{name} (regex)" for name, _ in self.patterns]
        where = "everywhere" if set(self.where) == set(TARGETS) else ", ".join(self.where)
        return f"{', '.join(names)}; {self.mode}; {where}"


def _names(field: str, value: Any, allowed: Sequence[str], hint: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, Sequence) or isinstance(value, (bytes, Mapping)):
        raise MonitorConfigError(field, value, f"expected a list of {hint}")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or item.strip().lower() not in allowed:
            raise MonitorConfigError(field, item, f"allowed: {', '.join(allowed)}")
        if item.strip().lower() not in out:
            out.append(item.strip().lower())
    return tuple(out)


def _kinds(value: Any) -> tuple[str, ...]:
    names = _names("pii.kinds", value or [], ("standard", *KINDS), "kinds")
    kinds: list[str] = []
    for name in names:
        for kind in STANDARD_KINDS if name == "standard" else (name,):
            if kind not in kinds:
                kinds.append(kind)
    return tuple(kinds)


def _patterns(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise MonitorConfigError("pii.patterns", value, "expected a mapping of {name: regex}")
    if len(value) > MAX_PATTERNS:
        raise MonitorConfigError("pii.patterns", len(value), f"at most {MAX_PATTERNS} patterns")
    out = []
    for name, regex in value.items():
        if not isinstance(name, str) or not _PATTERN_NAME.match(name) or name in KINDS:
            raise MonitorConfigError(
                "pii.patterns name",
                name,
                "expected 1-40 lowercase letters, digits or '_', starting with a letter, and "
                "not the name of a built-in kind",
            )
        field = f"pii.patterns[{name!r}]"
        if not isinstance(regex, str) or not regex or len(regex) > MAX_PATTERN_LENGTH:
            raise MonitorConfigError(
                field, regex, f"expected a regular expression of 1-{MAX_PATTERN_LENGTH} characters"
            )
        try:
            compiled = re.compile(regex)
        except re.error as e:
            raise MonitorConfigError(
                field, regex, f"expected a Python regular expression; re says: {e}"
            ) from None
        if compiled.fullmatch(""):
            raise MonitorConfigError(field, regex, "expected a pattern that never matches ''")
        out.append((name, regex))
    return tuple(out)


def policy_from(value: Any) -> RedactionPolicy:
    """A validated policy from itself, ``None``/``"off"`` (no masking), ``"standard"``, a list
    of kinds, or the mapping form (``kinds``, ``patterns``, ``mode``, ``where``)."""
    if value is None or value is False or value == {}:
        return RedactionPolicy()
    if isinstance(value, RedactionPolicy):
        value = value.to_dict()
        if not value:
            return RedactionPolicy()
    if isinstance(value, str) and value.strip().lower() in OFF_WORDS:
        return RedactionPolicy()
    if isinstance(value, (str, list, tuple)):
        value = {"kinds": value}
    if value is True:
        value = {"kinds": ["standard"]}
    if not isinstance(value, Mapping):
        raise MonitorConfigError(
            "pii", value, "expected 'standard', 'off', a list of kinds, or a mapping"
        )
    extra = set(value) - {"kinds", "patterns", "mode", "where"}
    if extra:
        raise MonitorConfigError("pii", sorted(extra), "expected only kinds, patterns, mode, where")
    mode = value.get("mode", "placeholder")
    if not isinstance(mode, str) or mode.strip().lower() not in MODES:
        raise MonitorConfigError("pii.mode", mode, f"allowed: {', '.join(MODES)}")
    where = value.get("where")
    policy = RedactionPolicy(
        kinds=_kinds(value.get("kinds")),
        patterns=_patterns(value.get("patterns")),
        mode=mode.strip().lower(),
        where=TARGETS if where is None else _names("pii.where", where, TARGETS, "places"),
    )
    if not policy.enabled and (value.get("mode") or value.get("where")):
        raise MonitorConfigError(
            "pii.kinds", value.get("kinds"), "name at least one kind or pattern to mask"
        )
    if policy.enabled and not policy.where:
        raise MonitorConfigError("pii.where", where, f"name at least one of {', '.join(TARGETS)}")
    return policy
