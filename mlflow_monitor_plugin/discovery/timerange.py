"""A range of request times as a user writes it (``--since 7d --until 2026-11-30``). Pure.

An instant is a date (``2026-11-01``, midnight UTC; as ``until`` the end of that day), a date and
time (``2026-11-01T08:30``, UTC unless it carries an offset), ``now``, or an age (``7d``, ``12h``,
``90m``, ``2w``: that long before now). A range is half-open, ``[since, until)``; ``until``
defaults to now and is capped at now. A range in the future or ending before it starts is refused.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from mlflow_monitor_plugin.exceptions import MonitorConfigError

_AGE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
FORMS = "a date (2026-11-01), a UTC date and time (2026-11-01T08:30), 'now', or an age (7d, 12h)"


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_instant(field: str, text: str, now_ms: int, end_of_day: bool = False) -> int:
    """Milliseconds since the epoch for ``text``; a bare date is its midnight (UTC), or with
    ``end_of_day`` the next midnight."""
    value = text.strip().lower()
    if value == "now":
        return now_ms
    age = _AGE.match(value)
    if age:
        return now_ms - int(age.group(1)) * _UNIT_S[age.group(2)] * 1000
    try:
        if _DATE.match(value):
            day = dt.date.fromisoformat(value) + dt.timedelta(days=1 if end_of_day else 0)
            when = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
        else:
            when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise MonitorConfigError(field, text, f"expected {FORMS}") from None
    return int(when.timestamp() * 1000)


@dataclass(frozen=True)
class TimeRange:
    """Request times ``[since_ms, until_ms)``; ``key`` names the range as it was written, so a
    relative range (``7d``) is recognised again when the same command is run later."""

    since_ms: int
    until_ms: int
    key: str

    @classmethod
    def parse(cls, since: str, until: str | None, now_ms: int) -> TimeRange:
        since_ms = parse_instant("since", since, now_ms)
        if since_ms > now_ms:
            raise MonitorConfigError("since", since, f"it is in the future (now is {_iso(now_ms)})")
        until_text = until if until is not None else "now"
        until_ms = parse_instant("until", until_text, now_ms, end_of_day=True)
        if _DATE.match(until_text.strip()):
            starts_ms = parse_instant("until", until_text, now_ms)
        else:
            starts_ms = until_ms
        if starts_ms > now_ms:
            raise MonitorConfigError(
                "until", until_text, f"it is in the future (now is {_iso(now_ms)})"
            )
        until_ms = min(until_ms, now_ms)
        if since_ms >= until_ms:
            raise MonitorConfigError(
                "since/until",
                (since, until_text),
                f"since ({_iso(since_ms)}) must be before until ({_iso(until_ms)})",
            )
        return cls(since_ms, until_ms, f"{since.strip()}..{until_text.strip()}")

    @classmethod
    def between(cls, since_ms: int, until_ms: int) -> TimeRange:
        """A range of fixed instants (for the Python API)."""
        if since_ms >= until_ms:
            raise MonitorConfigError(
                "since/until", (since_ms, until_ms), "since must be before until"
            )
        return cls(since_ms, until_ms, f"{since_ms}..{until_ms}")

    def describe(self) -> str:
        return f"{_iso(self.since_ms)} .. {_iso(self.until_ms)}"

    def fraction(self, timestamp_ms: int) -> float:
        """How far into the range a request time is, 0.0-1.0 (the progress of a walk)."""
        span = self.until_ms - self.since_ms
        return min(1.0, max(0.0, (timestamp_ms - self.since_ms) / span))
