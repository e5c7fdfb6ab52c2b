"""Query-parameter values, read the same way by every API: strict, bounded, never a 500.

Each reader raises :class:`ValueError` whose message says what was expected;
the API turns it into its family's 400.
"""

from __future__ import annotations

import re

from reportd.formats.fields import INT64_MAX, INT64_MIN, ReportError, parse_time

_INTEGER = re.compile(r"-?[0-9]{1,19}")


def integer(raw: str, *, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
    """A decimal integer from ``low`` to ``high`` (64-bit by default); no signs, spaces or ``_``."""
    if not _INTEGER.fullmatch(raw) or not low <= (number := int(raw)) <= high:
        raise ValueError(f"an integer from {low} to {high}")
    return number


def timestamp(raw: str) -> float:
    """An ISO-8601 time (an offset, else UTC) as UNIX seconds."""
    try:
        return parse_time(raw, "time")[0].timestamp()
    except ReportError:
        raise ValueError("an ISO-8601 time, such as 2026-11-23T17:23:01Z") from None
