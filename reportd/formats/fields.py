"""What a value must be before the report model holds it: the readers every parser uses.

A report that passes ingest is one every processor can handle, whoever wrote
the processor: strings are strings (without NUL, which PostgreSQL and PuppetDB
refuse), names and identifiers are short, counters are integers within SQL's
64-bit range, numbers are finite, times convert to UTC, and free-form values
(event values, Chef run lists) are plain JSON data nested at most
:data:`MAX_DEPTH` deep, so that every JSON encoder (and orjson's 255-level
limit) takes them. Each reader raises :class:`ReportError` naming the field.

The decoders guarantee the rest: valid UTF-8 without lone surrogates, no NUL
(see :mod:`reportd.formats.decode`).
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Deepest nesting of any value a report may carry (a Puppet report itself is 6 deep).
MAX_DEPTH = 64
#: Certnames (Puppet's own limit), environments, metric names, short identifiers.
MAX_NAME = 255
#: Longer identifiers: configuration versions, code ids, resource types, paths.
MAX_IDENTIFIER = 4096
#: Keys of one metrics category (Puppet's ``time`` has one per resource type).
MAX_METRIC_KEYS = 1000
#: Metric categories of one report.
MAX_METRIC_CATEGORIES = 100
_DIGITS = 19  # enough for INT64_MAX; longer digit strings are refused before int() sees them
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class ReportError(ValueError):
    """The body is not a report reportd can accept; the message says why (a 4xx).

    ``field`` and ``problem`` name the offending field for families whose error
    bodies list fields (Foreman's ``{"errors": {"host": ["can't be blank"]}}``).
    """

    def __init__(
        self, message: str, kind: str = "BAD_REPORT", *, field: str | None = None, problem: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.field = field
        self.problem = problem or message

    @classmethod
    def invalid(cls, field: str, problem: str, kind: str = "VALIDATION") -> ReportError:
        return cls(f"{field}: {problem}", kind, field=field, problem=problem)


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# -- names ---------------------------------------------------------------------
# Puppet's rule (Puppet::SSL::Certificate name validation): printable ASCII
# except "/", lower case, not "." or "..", at most 255 characters.
_CERTNAME = re.compile(r"[ -.0-~]{1,255}")


def certname_problem(name: Any) -> str | None:
    """Why ``name`` is not a valid certname, or None when it is."""
    if type(name) is not str:
        return f"must be a string, not {_type(name)}"
    if not name:
        return "can't be blank"
    if len(name) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters"
    if not _CERTNAME.fullmatch(name):
        return "may only contain printable ASCII characters other than '/'"
    if name != name.lower():
        return "must be lower case"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    return None


def certname(value: Any, field: str = "certname") -> str:
    problem = certname_problem(value)
    if problem is not None:
        raise ReportError.invalid(field, problem)
    return value


def name(value: Any, field: str) -> str | None:
    """A short name shown in labels and lists (an environment): no control characters."""
    if value is None:
        return None
    value = text(value, field, MAX_NAME)
    if not value.isprintable():
        raise ReportError.invalid(field, "must not contain control characters")
    return value


# -- scalars -------------------------------------------------------------------
def text(value: Any, field: str, limit: int | None = None) -> str:
    if type(value) is not str:
        raise ReportError.invalid(field, f"must be a string, not {_type(value)}")
    if limit is not None and len(value) > limit:
        raise ReportError.invalid(field, f"is longer than {limit} characters")
    return value


def optional_text(value: Any, field: str, limit: int | None = None) -> str | None:
    return None if value is None else text(value, field, limit)


def identifier(value: Any, field: str, limit: int = MAX_IDENTIFIER) -> str | None:
    """A string, or an integer kept as its decimal string (Puppet's configuration_version)."""
    if value is None:
        return None
    if type(value) is int:
        return str(value)
    return text(value, field, limit)


def uuid_text(value: Any, field: str) -> str | None:
    """A UUID in canonical form (PuppetDB refuses anything else), or None."""
    if value is None:
        return None
    value = text(value, field, 64)
    if _CANONICAL_UUID.fullmatch(value):  # what agents send: no need to rewrite it
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ReportError.invalid(field, "must be a UUID") from None


def flag(value: Any, field: str, default: bool = False) -> bool:
    if value is None:
        return default
    if type(value) is not bool:
        raise ReportError.invalid(field, f"must be true or false, not {_type(value)}")
    return value


def integer(value: Any, field: str, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
    if type(value) is not int:
        raise ReportError.invalid(field, f"must be an integer, not {_type(value)}")
    if not low <= value <= high:
        raise ReportError.invalid(field, f"must be an integer from {low} to {high}")
    return value


def as_count(value: Any) -> int | None:
    """A non-negative 64-bit integer from an int or a string of ASCII digits, else None."""
    if type(value) is int:
        return value if 0 <= value <= INT64_MAX else None
    if type(value) is str:
        value = value.strip()
        if value.isascii() and value.isdigit() and len(value) <= _DIGITS:
            number = int(value)
            return number if number <= INT64_MAX else None
    return None


def count(value: Any, field: str) -> int:
    number = as_count(value)
    if number is None:
        raise ReportError.invalid(field, f"must be a whole number from 0 to {INT64_MAX}")
    return number


def number(value: Any, field: str) -> int | float:
    """A finite number: what a metric, a duration or a gauge may be."""
    kind = type(value)
    if kind is float:
        if math.isfinite(value):
            return value
        raise ReportError.invalid(field, "must be a finite number")
    if kind is int:
        return integer(value, field)
    raise ReportError.invalid(field, f"must be a number, not {_type(value)}")


def string_list(value: Any, field: str) -> list[str]:
    """Tags, containment paths: a list of strings (None is an empty list)."""
    if value is None:
        return []
    if type(value) is not list:
        raise ReportError.invalid(field, f"must be a list of strings, not {_type(value)}")
    for item in value:
        if type(item) is not str:
            raise ReportError.invalid(field, f"must be a list of strings, found {_type(item)}")
    return value


_PLAIN_SCALARS = frozenset((str, int, float, bool, type(None), datetime))


def plain(value: Any, field: str) -> Any:
    """A free-form value (an event's previous and desired values, a Chef run list).

    JSON data: strings, finite numbers (integers in 64-bit range, unsigned
    included), booleans, null, lists and string-keyed objects, nested at most
    :data:`MAX_DEPTH` deep. Scalars, by far the common case, return at once.
    """
    if type(value) in _PLAIN_SCALARS and _plain_scalar(value):
        return value
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is list:
            children = item
        elif kind is dict:
            for key in item:
                if type(key) is not str:
                    raise ReportError.invalid(field, f"has a {_type(key)} key; keys must be strings")
            children = item.values()
        elif kind in _PLAIN_SCALARS and _plain_scalar(item):
            continue
        elif kind is float or kind is int:
            raise ReportError.invalid(field, "has a number out of range (NaN, infinite or beyond 64 bits)")
        else:
            raise ReportError.invalid(field, f"has a value of type {_type(item)}")
        if depth > MAX_DEPTH:
            raise ReportError.invalid(field, f"is nested deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)
    return value


def _plain_scalar(value: Any) -> bool:
    kind = type(value)
    if kind is int:
        return INT64_MIN <= value <= 2**64 - 1
    if kind is float:
        return math.isfinite(value)
    return True


# -- times ---------------------------------------------------------------------
def parse_time(value: Any, field_name: str) -> tuple[datetime, bool]:
    """A UTC datetime from any time format real clients send, and whether it had an offset.

    ISO-8601 with or without offset, ``Z``, Ruby's ``Time#to_s``
    (``2024-05-01 12:00:00 +0200``) and ``2010-11-19 02:39:04 UTC``. A time
    without an offset is taken as UTC; the caller flags the report. A time that
    is not between years 1 and 9999 once in UTC is refused.
    """
    if type(value) is str:
        if len(value) > 64:
            raise ReportError.invalid(field_name, "is not a time (too long)")
        try:
            parsed = _fromisoformat(value)
        except ValueError:
            parsed = _parse_time_slowly(value, field_name)
    elif isinstance(value, datetime):
        parsed = value
    else:
        raise ReportError.invalid(field_name, f"expected a time string, got {_type(value)}")
    if parsed.tzinfo is UTC:  # what fromisoformat gives for +00:00 and Z: most agents
        return parsed, True
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC), False
    try:
        return parsed.astimezone(UTC), True
    except OverflowError:
        raise ReportError.invalid(field_name, f"{value!s} is out of range in UTC") from None


_fromisoformat = datetime.fromisoformat


def quick_time(value: Any) -> datetime | None:
    """The common case at once: an ISO-8601 string with an offset, in UTC; else None.

    Agents write their local offset (``+01:00``) on every resource, event and log
    line: converting here spares the second parse :func:`parse_time` would make.
    """
    if type(value) is str and len(value) <= 64:
        try:
            parsed = _fromisoformat(value)
        except ValueError:
            return None
        zone = parsed.tzinfo
        if zone is UTC:
            return parsed
        if zone is not None:
            try:
                return parsed.astimezone(UTC)
            except OverflowError:
                return None
    return None


def _parse_time_slowly(value: str, field_name: str) -> datetime:
    text = value.strip()
    if text.endswith(" UTC"):
        text = text[:-4] + "+00:00"
    try:
        return _fromisoformat(text)
    except ValueError:
        raise ReportError.invalid(field_name, f"not a time: {value!r}") from None


def optional_time(value: Any, field_name: str) -> datetime | None:
    return None if value is None else parse_time(value, field_name)[0]


def plus_seconds(start: datetime, seconds: Any, field_name: str) -> datetime | None:
    """``start`` plus a run's duration; None without one, a ReportError when absurd."""
    # A tuple: `int | float` would be built anew at each call.
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return None
    try:
        return start + timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        raise ReportError.invalid(field_name, f"{seconds!r} seconds is out of range") from None


# -- metrics -------------------------------------------------------------------
def metric_name(value: Any, field: str) -> str:
    if type(value) is not str:
        if type(value) is int:
            return str(value)
        raise ReportError.invalid(field, f"names must be strings, not {_type(value)}")
    if len(value) > MAX_NAME:
        raise ReportError.invalid(field, f"a name is longer than {MAX_NAME} characters")
    return value


def metric_values(entries: dict[Any, Any], field: str) -> dict[str, int | float]:
    """One category's ``{key: number}``, every number finite and every key a short name."""
    if len(entries) > MAX_METRIC_KEYS:
        raise ReportError.invalid(field, f"has more than {MAX_METRIC_KEYS} metrics")
    values: dict[str, int | float] = {}
    for key, value in entries.items():
        key = metric_name(key, field)
        values[key] = number(value, f"{field}.{key}")
    return values
