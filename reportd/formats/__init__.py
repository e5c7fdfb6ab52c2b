"""Wire formats: each module turns a request body into a :class:`reportd.model.Report`.

Parsing is deterministic given the body and its :class:`Envelope` (how it
arrived), so the spool keeps only those two and the dispatcher can rebuild the
very same report after a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from reportd.model import Report


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


@dataclass(frozen=True)
class Envelope:
    """What the request said about the body, besides the body itself."""

    format: str
    content_type: str
    received_at: datetime
    path_certname: str | None = None
    environment: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "content_type": self.content_type,
            "received_at": self.received_at.timestamp(),
            "path_certname": self.path_certname,
            "environment": self.environment,
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Envelope:
        return cls(
            format=data["format"],
            content_type=data["content_type"],
            received_at=datetime.fromtimestamp(data["received_at"], UTC),
            path_certname=data.get("path_certname"),
            environment=data.get("environment"),
            params=data.get("params") or {},
        )


Parser = Callable[[bytes, Envelope], Report]


def parsers() -> dict[str, Parser]:
    """The parser of each wire format, by :attr:`Envelope.format`."""
    from reportd.formats import chef, foreman, puppet

    return {"puppet": puppet.parse, "foreman": foreman.parse, "chef": chef.parse}


def parse(body: bytes, envelope: Envelope) -> Report:
    """Parse ``body`` as its envelope says; raises :class:`ReportError`."""
    try:
        parser = parsers()[envelope.format]
    except KeyError:
        raise ReportError(f"unknown report format {envelope.format!r}") from None
    return with_origin(parser(body, envelope), body, envelope)


def with_origin(report: Report, body: bytes, envelope: Envelope) -> Report:
    """Attach what the report was parsed from: together they rebuild it after a restart."""
    report.raw = body
    report.raw_content_type = envelope.content_type
    report.envelope = envelope.to_dict()
    return report


def as_count(value: Any) -> int | None:
    """A non-negative integer from an int or a string of ASCII digits, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    return None


def plus_seconds(start: datetime, seconds: Any, field_name: str) -> datetime | None:
    """``start`` plus a run's duration; None without one, a ReportError when absurd."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return None
    try:
        return start + timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        raise ReportError.invalid(field_name, f"{seconds!r} seconds is out of range") from None


def decode_json_object(body: bytes, not_an_object: ReportError) -> dict[str, Any]:
    """A JSON body that must be an object: ``MALFORMED`` when not JSON, else ``not_an_object``."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ReportError(f"malformed JSON: {error}", "MALFORMED") from None
    if not isinstance(data, dict):
        raise not_an_object
    return data


def parse_time(value: Any, field_name: str) -> tuple[datetime, bool]:
    """A UTC datetime from any time format real clients send, and whether it had an offset.

    ISO-8601 with or without offset, ``Z``, Ruby's ``Time#to_s``
    (``2024-05-01 12:00:00 +0200``) and ``2010-11-19 02:39:04 UTC``. A time
    without an offset is taken as UTC; the caller flags the report.
    """
    if type(value) is str:
        try:
            parsed = _fromisoformat(value)
        except ValueError:
            parsed = _parse_time_slowly(value, field_name)
    elif isinstance(value, datetime):
        parsed = value
    else:
        raise ReportError(f"{field_name}: expected a time string, got {type(value).__name__}")
    if parsed.tzinfo is UTC:  # what fromisoformat gives for +00:00 and Z: most agents
        return parsed, True
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC), False
    return parsed.astimezone(UTC), True


_fromisoformat = datetime.fromisoformat


def _parse_time_slowly(value: str, field_name: str) -> datetime:
    text = value.strip()
    if text.endswith(" UTC"):
        text = text[:-4] + "+00:00"
    try:
        return _fromisoformat(text)
    except ValueError:
        raise ReportError(f"{field_name}: not a time: {value!r}") from None
