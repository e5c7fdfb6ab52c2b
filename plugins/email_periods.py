"""The periods a schedule covers, computed in its own timezone (spec/schedules.md "Periods").

Wall-clock boundaries (local midnight, Monday, the 1st) are found in the local
time and converted to UTC, so a local day is 23 or 25 hours long across a DST
change; an hour is floored in local time with its ``fold``, so the repeated hour
of an autumn night is two periods, not one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

ONCE, HOURLY, DAILY, WEEKLY, MONTHLY = "once", "hourly", "daily", "weekly", "monthly"
FREQUENCIES = (ONCE, HOURLY, DAILY, WEEKLY, MONTHLY)
ONCE_COVERS = timedelta(hours=24)


@dataclass(frozen=True)
class Period:
    """``[start, end)`` in UTC; ``label`` names it in the schedule's timezone."""

    start: datetime
    end: datetime
    label: str

    @property
    def start_us(self) -> int:
        return _micros(self.start)

    @property
    def end_us(self) -> int:
        return _micros(self.end)


def _micros(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    # A zone whose midnight falls in a DST gap: the wall time is taken with the
    # offset before the change, which lands just after the gap, as clocks do.
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def latest_period(frequency: str, timezone: str, now: datetime, *, created: datetime) -> Period | None:
    """The most recent period that has ended by ``now``, or None (none ended since ``created``).

    Only that one: periods missed while the daemon was down are not sent one by
    one, the latest stands for them. A period that ended before the schedule was
    created is not its business. ``once`` covers the 24 hours before creation.
    """
    zone = ZoneInfo(timezone)
    if frequency == ONCE:
        local = created.astimezone(zone)
        return Period(created - ONCE_COVERS, created, local.strftime("%Y-%m-%d %H:%M"))
    local_now = now.astimezone(zone)
    today = local_now.date()
    if frequency == HOURLY:
        floor = local_now.replace(minute=0, second=0, microsecond=0)
        end = floor.astimezone(UTC)
        start = end - timedelta(hours=1)
        period = Period(start, end, start.astimezone(zone).strftime("%Y-%m-%d %H:00"))
    elif frequency == DAILY:
        day = today - timedelta(days=1)
        period = Period(_midnight(day, zone), _midnight(today, zone), day.isoformat())
    elif frequency == WEEKLY:
        monday = today - timedelta(days=today.weekday())
        first = monday - timedelta(days=7)
        year, week, _ = first.isocalendar()
        period = Period(_midnight(first, zone), _midnight(monday, zone), f"{year}-W{week:02d} (from {first})")
    elif frequency == MONTHLY:
        first = today.replace(day=1)
        previous = (first - timedelta(days=1)).replace(day=1)
        period = Period(_midnight(previous, zone), _midnight(first, zone), previous.strftime("%Y-%m"))
    else:
        raise ValueError(f"unknown frequency {frequency!r}")
    if period.end <= created:
        return None
    return period
