"""Apply a redaction policy to text, JSON text and documents.

A value found is replaced by ``[KIND]`` (``placeholder``), or ``[KIND:<16 hex>]`` (``hash``):
HMAC-SHA256 of the normalized value under the key in ``MLFLOW_MONITOR_PII_SECRET``, so equal
values give equal tokens across traces, passes and re-exports while the key stays the same.
``drop`` is carried out by the caller (the field goes); the masker says whether anything was
found. Replacement tokens hold no quote or backslash, so JSON text stays JSON.

Where values overlap, the likelier one wins: the recognizer's score (an operator's pattern
counts as certain), then the longer match.
"""

from __future__ import annotations

import functools
import hmac
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from mlflow_monitor_plugin.exceptions import MonitorConfigError
from mlflow_monitor_plugin.redaction.policy import RedactionPolicy
from mlflow_monitor_plugin.redaction.recognizers import Found, Recognizer, load

SECRET_ENV = "MLFLOW_MONITOR_PII_SECRET"
MIN_SECRET_LENGTH = 16
HASH_HEX = 16
SHORT_TEXT, SHORT_CACHE = 64, 4096
_NOT_ALNUM = re.compile(r"[^0-9A-Za-z]")
_CONTEXT = re.compile(r"\^|\$|\\[AZz]|\(\?<?[=!]")
_ESCAPE = re.compile(r"\\(?:u[0-9A-Fa-f]{4}|.)", re.DOTALL)
_QUOTE_OR_ESCAPE = re.compile(r'["\\]')
_COMPACT = {"phone", "credit_card", "iban"}  # separators do not make another value


def _normalized(kind: str, value: str) -> str:
    if kind == "email":
        return value.lower()
    if kind in _COMPACT:
        return _NOT_ALNUM.sub("", value).upper()
    return value


def _resolve(found: list[Found]) -> list[Found]:
    """Non-overlapping findings, the likeliest first, returned in text order."""
    kept: list[Found] = []
    for f in sorted(found, key=lambda f: (-f.score, -(f.end - f.start), f.start)):
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


class Masker:
    """Masks what ``policy`` names. Build it with ``masker_for``."""

    def __init__(
        self, policy: RedactionPolicy, recognizers: list[Recognizer], key: bytes | None = None
    ):
        if policy.mode == "hash" and not key:
            raise MonitorConfigError("pii.mode", "hash", f"the hash key ${SECRET_ENV} is not set")
        self.policy = policy
        self._recognizers = recognizers
        self._patterns = [(name, re.compile(regex)) for name, regex in policy.patterns]
        self._labels = {r.kind: r.spec.label for r in recognizers}
        self._labels.update({name: name.upper() for name, _ in policy.patterns})
        self._key = key
        self._short = functools.lru_cache(maxsize=SHORT_CACHE)(self._find)
        self._hashed = functools.lru_cache(maxsize=SHORT_CACHE)(self._hash)  # a value's copies
        # An operator's pattern that reads its context (anchors, lookarounds) may match a
        # decoded JSON string but not the same characters between quotes; one that reads
        # whitespace or any character may tell an escape from a blank: such JSON is parsed.
        self._in_place = not any(_CONTEXT.search(regex) for _, regex in policy.patterns)
        self._escapes_in_place = not policy.patterns

    @property
    def drops(self) -> bool:
        return self.policy.mode == "drop"

    def covers(self, target: str) -> bool:
        return self.policy.covers(target)

    def find(self, text: str) -> tuple[Found, ...]:
        """The values in ``text``, in order, without overlaps. Short texts (keys, tag values,
        small fields: they repeat across traces) are remembered."""
        return self._short(text) if len(text) <= SHORT_TEXT else self._find(text)

    def _find(self, text: str) -> tuple[Found, ...]:
        found = []
        for r in self._recognizers:
            if r.spec.gate.search(text):
                found += r.find(text)
        for name, pattern in self._patterns:
            found += [Found(m.start(), m.end(), name, 2.0) for m in pattern.finditer(text)]
        return tuple(_resolve([f for f in found if f.end > f.start])) if found else ()

    def token(self, kind: str, value: str) -> str:
        label = self._labels[kind]
        if self.policy.mode != "hash" or self._key is None:
            return f"[{label}]"
        return self._hashed(label, kind, _normalized(kind, value))

    def _hash(self, label: str, kind: str, normalized: str) -> str:
        digest = hmac.new(self._key or b"", f"{kind}:{normalized}".encode(), "sha256")
        return f"[{label}:{digest.hexdigest()[:HASH_HEX]}]"

    def mask_text(self, text: str) -> tuple[str, bool]:
        """``text`` with every value found replaced, and whether there was one."""
        found = self.find(text)
        return (self._replaced(text, found), True) if found else (text, False)

    def _replaced(self, text: str, found: tuple[Found, ...]) -> str:
        parts, last = [], 0
        for f in found:
            parts += [text[last : f.start], self.token(f.kind, text[f.start : f.end])]
            last = f.end
        parts.append(text[last:])
        return "".join(parts)

    def mask_value(self, value: Any) -> tuple[Any, bool]:
        """A JSON value with its strings (and numbers that hold a value) masked."""
        if isinstance(value, str):
            return self.mask_text(value)
        if isinstance(value, bool) or value is None:
            return value, False
        if isinstance(value, (int, float)):
            text, found = self.mask_text(str(value))
            return (text if found else value), found
        if isinstance(value, Mapping):
            out, any_found = {}, False
            for k, v in value.items():
                key, key_found = self.mask_text(k) if isinstance(k, str) else (k, False)
                out[key], found = self.mask_value(v)
                any_found |= found or key_found
            return (out if any_found else value), any_found
        if isinstance(value, (list, tuple)):
            items = [self.mask_value(v) for v in value]
            any_found = any(found for _, found in items)
            return ([v for v, _ in items] if any_found else value), any_found
        return value, False

    def mask_json_text(self, text: str) -> tuple[str, bool]:
        """Text that may be JSON: masked value by value when it parses (a number stays valid
        JSON, as a string token), else as plain text. Unchanged text is returned as is.

        Most JSON is masked in its text instead, for one scan: values are looked for in a view
        of it where each escape (``\\n``, ``\\"``...) is blanked, so a string's characters read
        as decoded (an escape's letter is no neighbour), and where every value found lies
        inside a string (an odd number of quotes before it, none and no escape inside it) it
        is replaced in place: what parsing, masking each string and writing back would give.
        A value in a number, ``\\u`` escapes, or an operator's pattern that could read the
        view differently send it the slow way."""
        stripped = text.lstrip()
        if not (stripped[:1] in ("{", "[", '"') or stripped[:1].isdigit()):
            return self.mask_text(text)
        view = text
        if "\\" in text:
            if not self._escapes_in_place or "\\u" in text or "\\/" in text:
                return self._mask_parsed(text)
            view = _ESCAPE.sub(_blank, text)
        elif not self._in_place:
            return self._mask_parsed(text)
        found = self.find(view)
        if not found:
            return text, False
        if _within_strings(text, view, found):
            return self._replaced(text, found), True
        return self._mask_parsed(text)

    def _mask_parsed(self, text: str) -> tuple[str, bool]:
        try:
            value = json.loads(text)
        except ValueError:
            return self.mask_text(text)
        masked, found = self.mask_value(value)
        return (json.dumps(masked, ensure_ascii=False), True) if found else (text, False)


def _blank(escape: re.Match[str]) -> str:
    return " " * len(escape.group())


def _within_strings(text: str, view: str, found: tuple[Found, ...]) -> bool:
    """Every value lies inside a string of the JSON ``text``: an odd number of quotes before it
    in ``view`` (its escaped quotes blanked), no quote and no escape within it."""
    return all(
        view.count('"', 0, f.start) % 2 == 1 and not _QUOTE_OR_ESCAPE.search(text, f.start, f.end)
        for f in found
    )


def _key(environ: Mapping[str, str]) -> bytes | None:
    value = environ.get(SECRET_ENV) or ""
    return value.encode() if value else None


def check_key(policy: RedactionPolicy, environ: Mapping[str, str] | None = None) -> None:
    """Refuse a hash policy when this process has no usable key."""
    if policy.mode != "hash" or not policy.enabled:
        return
    value = (os.environ if environ is None else environ).get(SECRET_ENV) or ""
    if len(value) < MIN_SECRET_LENGTH:
        state = "is not set" if not value else f"has {len(value)} characters"
        raise MonitorConfigError(
            "pii.mode",
            "hash",
            f"the hash key ${SECRET_ENV} {state}; set it (at least {MIN_SECRET_LENGTH} "
            "random characters) in the environment of this command and of the daemon, it is "
            "never stored in a tag; or use mode placeholder or drop",
        )


@functools.lru_cache(maxsize=32)
def _masker(policy: RedactionPolicy, key: bytes | None) -> Masker:
    return Masker(policy, [load(kind) for kind in policy.kinds], key)


def masker_for(policy: RedactionPolicy, environ: Mapping[str, str] | None = None) -> Masker | None:
    """The masker of ``policy`` (None when it is off). ``MonitorConfigError`` when a built-in
    kind needs the ``pii`` extra, or ``hash`` has no key in the environment."""
    if not policy.enabled:
        return None
    check_key(policy, environ)
    env = os.environ if environ is None else environ
    return _masker(policy, _key(env) if policy.mode == "hash" else None)
