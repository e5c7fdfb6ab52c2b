"""Schedule periods in the schedule's timezone: DST days, month ends, weeks, hours, once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from reportd_plugins.email_periods import from_micros, latest_period

ROME = ZoneInfo("Europe/Rome")
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def local(*args) -> datetime:
    return datetime(*args, tzinfo=ROME)


def test_daily_covers_the_local_day_that_ended_at_local_midnight():
    period = latest_period("daily", "Europe/Rome", local(2026, 11, 23, 0, 0, 1), created=LONG_AGO)
    assert period.start == local(2026, 11, 22) and period.end == local(2026, 11, 23)
    assert period.start == datetime(2026, 11, 21, 23, tzinfo=UTC)  # CET is UTC+1
    assert period.label == "2026-11-22"
    # a second before midnight the day before is still the latest ended one
    earlier = latest_period("daily", "Europe/Rome", local(2026, 11, 22, 23, 59, 59), created=LONG_AGO)
    assert earlier.label == "2026-11-21"


def test_the_spring_dst_day_is_23_hours_and_the_autumn_one_25():
    spring = latest_period("daily", "Europe/Rome", local(2026, 3, 30, 8), created=LONG_AGO)
    assert spring.label == "2026-03-29"
    assert spring.end - spring.start == timedelta(hours=23)
    assert spring.end == datetime(2026, 3, 29, 22, tzinfo=UTC)  # CEST midnight
    autumn = latest_period("daily", "Europe/Rome", local(2026, 10, 26, 8), created=LONG_AGO)
    assert autumn.label == "2026-10-25"
    assert autumn.end - autumn.start == timedelta(hours=25)
    assert autumn.start == datetime(2026, 10, 24, 22, tzinfo=UTC)
    assert autumn.end == datetime(2026, 10, 25, 23, tzinfo=UTC)


def test_hourly_counts_the_repeated_autumn_hour_twice_and_skips_the_missing_spring_one():
    # 02:30 CEST (first pass, 00:30 UTC) and 02:30 CET (second pass, 01:30 UTC)
    first = latest_period(
        "hourly", "Europe/Rome", datetime(2026, 10, 25, 1, 0, 5, tzinfo=UTC), created=LONG_AGO
    )
    second = latest_period(
        "hourly", "Europe/Rome", datetime(2026, 10, 25, 2, 0, 5, tzinfo=UTC), created=LONG_AGO
    )
    assert first.start == datetime(2026, 10, 25, 0, tzinfo=UTC) and first.label == "2026-10-25 02:00"
    assert second.start == datetime(2026, 10, 25, 1, tzinfo=UTC) and second.label == "2026-10-25 02:00"
    assert first.end == second.start and second.end - second.start == timedelta(hours=1)
    # spring: 01:00 CET is followed by 03:00 CEST
    spring = latest_period(
        "hourly", "Europe/Rome", datetime(2026, 3, 29, 1, 10, tzinfo=UTC), created=LONG_AGO
    )
    assert spring.label == "2026-03-29 01:00"
    assert spring.end == local(2026, 3, 29, 3)
    assert spring.end - spring.start == timedelta(hours=1)


@pytest.mark.parametrize(
    ("now", "label", "start", "end"),
    [
        (local(2026, 3, 1, 0, 0, 1), "2026-02", local(2026, 2, 1), local(2026, 3, 1)),
        (local(2028, 3, 1, 9), "2028-02", local(2028, 2, 1), local(2028, 3, 1)),  # leap year
        (local(2027, 1, 1, 0, 5), "2026-12", local(2026, 12, 1), local(2027, 1, 1)),
        (local(2026, 4, 30, 23, 59), "2026-03", local(2026, 3, 1), local(2026, 4, 1)),  # DST inside
    ],
)
def test_monthly_covers_the_previous_calendar_month(now, label, start, end):
    period = latest_period("monthly", "Europe/Rome", now, created=LONG_AGO)
    assert (period.label, period.start, period.end) == (label, start, end)


def test_month_end_days():
    jan31 = latest_period("daily", "Europe/Rome", local(2026, 2, 1, 0, 1), created=LONG_AGO)
    assert jan31.label == "2026-01-31"
    feb29 = latest_period("daily", "Europe/Rome", local(2028, 3, 1, 0, 1), created=LONG_AGO)
    assert feb29.label == "2028-02-29"


def test_weekly_is_monday_to_monday_in_local_time():
    period = latest_period("weekly", "Europe/Rome", local(2026, 11, 25, 12), created=LONG_AGO)  # a Wednesday
    assert period.start == local(2026, 11, 16) and period.end == local(2026, 11, 23)
    assert period.start.astimezone(ROME).weekday() == 0
    assert period.label == "2026-W47 (from 2026-11-16)"
    across_dst = latest_period("weekly", "Europe/Rome", local(2026, 10, 26, 0, 1), created=LONG_AGO)
    assert across_dst.end - across_dst.start == timedelta(days=7, hours=1)


def test_other_timezones_use_their_own_midnight():
    tokyo = latest_period("daily", "Asia/Tokyo", datetime(2026, 11, 22, 15, 30, tzinfo=UTC), created=LONG_AGO)
    assert tokyo.end == datetime(2026, 11, 22, 15, tzinfo=UTC)
    kolkata = latest_period(
        "hourly", "Asia/Kolkata", datetime(2026, 11, 22, 10, 45, tzinfo=UTC), created=LONG_AGO
    )
    assert kolkata.start == datetime(2026, 11, 22, 9, 30, tzinfo=UTC)  # UTC+5:30: local hours are :30 UTC


def test_no_period_before_the_first_boundary_after_creation():
    created = local(2026, 11, 22, 14)
    assert latest_period("daily", "Europe/Rome", local(2026, 11, 22, 23), created=created) is None
    first = latest_period("daily", "Europe/Rome", local(2026, 11, 23, 0, 0, 1), created=created)
    assert first.label == "2026-11-22"


def test_once_covers_the_24_hours_before_creation_whenever_it_is_asked():
    created = datetime(2026, 11, 22, 13, 5, 7, 123456, tzinfo=UTC)
    for now in (created, created + timedelta(days=3)):
        period = latest_period("once", "Europe/Rome", now, created=created)
        assert period.end == created and period.start == created - timedelta(hours=24)
        assert period.label == "2026-11-22 14:05"
    assert from_micros(period.end_us) == created
    assert period.end_us == 1795352707123456
