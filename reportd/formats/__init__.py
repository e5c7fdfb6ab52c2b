"""Wire formats: each module turns a request body into a :class:`reportd.model.Report`.

Parsing is deterministic given the body and its :class:`Envelope` (how it
arrived), so the spool keeps only those two and the dispatcher can rebuild the
very same report after a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reportd.formats.decode import json_data
from reportd.formats.fields import ReportError, as_count, parse_time, plus_seconds
from reportd.model import Report

__all__ = [
    "Envelope",
    "ReportError",
    "as_count",
    "decode_json_object",
    "parse",
    "parse_time",
    "parsers",
    "plus_seconds",
    "with_origin",
]


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


def decode_json_object(body: bytes, not_an_object: ReportError) -> dict[str, Any]:
    """A JSON body that must be an object: ``MALFORMED`` when not JSON, else ``not_an_object``."""
    data = json_data(body)
    if not isinstance(data, dict):
        raise not_an_object
    return data
