"""The normalized report: one shape for every wire format.

Parsers in :mod:`reportd.formats` turn a request body into a :class:`Report`;
processors only ever see this model. Field names are Puppet's and PuppetDB's
wire names wherever one exists. Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import FrozenInstanceError, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import orjson

# How the certname/time/status of a report can be trusted depends on its origin;
# these are the wire families reportd accepts.
FORMATS = ("puppet", "foreman", "chef")


@dataclass(slots=True)
class Event:
    status: str  # success | failure | noop | audit
    property: str | None = None
    previous_value: Any = None
    desired_value: Any = None
    historical_value: Any = None
    message: str | None = None
    name: str | None = None
    time: datetime | None = None
    audited: bool = False
    redacted: bool | None = None
    corrective_change: bool = False


@dataclass(slots=True)
class ResourceStatus:
    resource_type: str
    title: str
    file: str | None = None
    line: int | None = None
    containment_path: Sequence[str] = field(default_factory=list)
    tags: Sequence[str] = field(default_factory=list)
    time: datetime | None = None
    evaluation_time: float | None = None
    provider_used: str | None = None
    failed: bool = False
    failed_to_restart: bool = False
    changed: bool = False
    out_of_sync: bool = False
    skipped: bool = False
    change_count: int = 0
    out_of_sync_count: int = 0
    corrective_change: bool = False
    events: Sequence[Event] = field(default_factory=list)

    @property
    def resource(self) -> str:
        return f"{self.resource_type}[{self.title}]"


@dataclass(slots=True)
class Log:
    level: str
    message: str
    source: str
    tags: Sequence[str] = field(default_factory=list)
    time: datetime | None = None
    file: str | None = None
    line: int | None = None


@dataclass(slots=True)
class Report:
    """One configuration-management run, as reportd understands it.

    ``metrics`` is Puppet-shaped: ``{category: {key: value}}`` with categories
    such as ``resources``, ``time``, ``changes`` and ``events``. ``extra`` holds
    what only one wire format has (Foreman's ``status_bits``, Chef's
    ``organization``...). ``raw`` is the body exactly as received and
    ``envelope`` how it arrived (:class:`reportd.formats.Envelope` as a dict):
    together they rebuild this report.
    """

    certname: str
    format: str
    received_at: datetime
    environment: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    transaction_uuid: str | None = None
    catalog_uuid: str | None = None
    code_id: str | None = None
    job_id: str | None = None
    configuration_version: str | None = None
    report_format: int | None = None
    puppet_version: str | None = None
    origin: str | None = None
    agent_status: str | None = None
    transaction_completed: bool = True
    noop: bool = False
    noop_pending: bool = False
    corrective_change: bool = False
    cached_catalog_status: str | None = None
    server_used: str | None = None
    time_without_offset: bool = False
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    logs: Sequence[Log] = field(default_factory=list)
    resource_statuses: Sequence[ResourceStatus] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    raw: bytes = b""
    raw_content_type: str = "application/octet-stream"
    envelope: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    status: str = ""

    @property
    def run_time(self) -> datetime:
        """The time a node's runs are ordered by: the agent's, else receipt."""
        return self.end_time or self.start_time or self.received_at

    def metric(self, category: str, key: str, default: float = 0) -> float:
        return self.metrics.get(category, {}).get(key, default)

    def to_dict(self, *, include_raw: bool = False) -> dict[str, Any]:
        """The JSON-ready form served by the API (``raw`` left out unless asked)."""
        data = orjson.loads(self.to_json())
        if include_raw:
            data["raw"] = self.raw.decode("utf-8", "replace")
        return data

    def to_json(self) -> bytes:
        """:meth:`to_dict` encoded, without ``raw``; its parts are encoded natively by orjson."""
        return orjson.dumps({name: getattr(self, name) for name in _SERVED_FIELDS}, default=_encode_extra)


_SERVED_FIELDS = tuple(f.name for f in fields(Report) if f.name != "raw")


class FrozenDict(dict):
    """A dict that refuses changes: a sealed report's mappings (JSON encoders see a dict)."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a sealed report cannot be changed")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> Any:
        return (FrozenDict, (dict(self),))


class _Sealed:
    """What makes a model object's sealed twin refuse to change."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}: a sealed report cannot be changed")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}: a sealed report cannot be changed")

    def __reduce__(self) -> Any:  # pickle and copy: made as the model class, then sealed again
        model: Any = type(self).__mro__[2]
        return (
            _resealed,
            (type(self), model, {name: getattr(self, name) for name in model.__dataclass_fields__}),
        )


def _resealed(sealed: type, model: type, values: dict[str, Any]) -> Any:
    made = model(**values)
    made.__class__ = sealed
    return made


class SealedEvent(_Sealed, Event):
    __slots__ = ()
    __dataclass_fields__ = Event.__dataclass_fields__  # orjson looks in the class's own dict


class SealedResourceStatus(_Sealed, ResourceStatus):
    __slots__ = ()
    __dataclass_fields__ = ResourceStatus.__dataclass_fields__  # orjson looks in the class's own dict


class SealedLog(_Sealed, Log):
    __slots__ = ()
    __dataclass_fields__ = Log.__dataclass_fields__  # orjson looks in the class's own dict


class SealedReport(_Sealed, Report):
    __slots__ = ()
    __dataclass_fields__ = Report.__dataclass_fields__  # orjson looks in the class's own dict


def seal(report: Report) -> Report:
    """Make ``report`` read-only, in place: every processor gets this one object.

    Its lists become tuples, its mappings :class:`FrozenDict`, and it and its
    parts refuse assignment (``FrozenInstanceError``), so no processor can change
    what another sees. Values that are arbitrary JSON (an event's old and new
    value, a format's ``extra`` values) are the parser's own objects: read them only.
    About a microsecond per resource done here, after the parse: 2 to 5 % of ingest
    throughput at 50 resources (bench/ingest.py, paired runs). The Puppet parser seals
    each part as it makes it instead, which measured no slower than not sealing at all.
    """
    if isinstance(report, _Sealed):
        return report
    sealed_event, sealed_status, sealed_log = SealedEvent, SealedResourceStatus, SealedLog
    # The Puppet parser seals the parts as it makes them (while they are in the CPU's cache):
    # only what is not sealed yet is sealed here.
    for status in report.resource_statuses:  # the hot loop: tens to thousands per report
        if status.__class__ is sealed_status:
            continue
        events = status.events
        if events:
            for event in events:
                event.__class__ = sealed_event
            status.events = tuple(events)
        else:
            status.events = ()
        status.containment_path = tuple(status.containment_path)
        status.tags = tuple(status.tags)
        status.__class__ = sealed_status
    for log in report.logs:
        if log.__class__ is sealed_log:
            continue
        log.tags = tuple(log.tags)
        log.__class__ = sealed_log
    report.logs = tuple(report.logs)
    report.resource_statuses = tuple(report.resource_statuses)
    report.metrics = FrozenDict({c: FrozenDict(v) for c, v in report.metrics.items()})
    report.extra = FrozenDict(report.extra)
    report.envelope = FrozenDict(report.envelope)
    report.__class__ = SealedReport
    return report


def _encode_extra(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(type(value).__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)
