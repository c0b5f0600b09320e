import datetime as dt

import pytest

from mlflow_monitor_plugin.discovery.timerange import TimeRange, parse_instant
from mlflow_monitor_plugin.exceptions import MonitorConfigError

NOW = int(dt.datetime(2026, 12, 2, 15, 30, tzinfo=dt.timezone.utc).timestamp() * 1000)
DAY = 86_400_000


def ms(*args):
    return int(dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp() * 1000)


@pytest.mark.parametrize(
    ("text", "end_of_day", "expected"),
    [
        ("7d", False, NOW - 7 * DAY),
        ("12h", False, NOW - 12 * 3_600_000),
        ("90m", False, NOW - 90 * 60_000),
        ("2w", False, NOW - 14 * DAY),
        ("now", False, NOW),
        ("2026-11-01", False, ms(2026, 11, 1)),
        ("2026-11-01", True, ms(2026, 11, 2)),
        ("2026-11-01T08:30", False, ms(2026, 11, 1, 8, 30)),
        ("2026-11-01T08:30:00Z", False, ms(2026, 11, 1, 8, 30)),
        ("2026-11-01T10:30+02:00", False, ms(2026, 11, 1, 8, 30)),
    ],
)
def test_parse_instant_forms(text, end_of_day, expected):
    assert parse_instant("since", text, NOW, end_of_day) == expected


def test_range_until_a_date_covers_that_day_and_today_is_capped_at_now():
    assert TimeRange.parse("2026-11-01", "2026-11-30", NOW).until_ms == ms(2026, 12, 1)
    today = TimeRange.parse("2026-11-01", "2026-12-02", NOW)
    assert (today.since_ms, today.until_ms) == (ms(2026, 11, 1), NOW)
    assert TimeRange.parse("7d", None, NOW).until_ms == NOW
    assert TimeRange.parse("7d", None, NOW).key == TimeRange.parse("7d", None, NOW + DAY).key


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        ("2026-12-10", None, "Invalid since: got '2026-12-10'; it is in the future"),
        ("1d", "2026-12-03", "Invalid until: got '2026-12-03'; it is in the future"),
        ("2026-11-20", "2026-11-10", "since (2026-11-20T00:00:00Z) must be before until"),
        ("now", None, "must be before until"),
        ("yesterday", None, "Invalid since: got 'yesterday'; expected a date (2026-11-01)"),
        ("7x", None, "expected a date"),
        ("2026-13-01", None, "expected a date"),
    ],
)
def test_range_bad_input_names_the_field_and_the_reason(since, until, message):
    with pytest.raises(MonitorConfigError) as caught:
        TimeRange.parse(since, until, NOW)
    assert message in str(caught.value)


def test_fraction_is_the_position_in_the_range():
    window = TimeRange.between(1000, 2000)
    assert [window.fraction(t) for t in (500, 1000, 1500, 2500)] == [0.0, 0.0, 0.5, 1.0]
