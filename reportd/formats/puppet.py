"""Puppet reports, report_format 4 to 12: JSON/PSON (path B) and YAML (path A).

See spec/puppet.md. YAML bodies from Puppet's ``http`` report processor start
with ``!ruby/object:Puppet::Transaction::Report``, read as a plain mapping
(:mod:`reportd.formats.decode`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NoReturn

from reportd.formats import Envelope, fields
from reportd.formats.decode import json_data, yaml_data
from reportd.formats.fields import ReportError, parse_time, plus_seconds
from reportd.model import Event, Log, Report, ResourceStatus, SealedEvent, SealedLog, SealedResourceStatus
from reportd.status import derive_status

MIN_FORMAT, MAX_FORMAT = 4, 12
YAML_TYPES = ("application/x-yaml", "application/yaml", "text/yaml", "text/x-yaml")
_invalid = ReportError.invalid


def is_yaml(content_type: str, body: bytes) -> bool:
    return content_type in YAML_TYPES or body.lstrip()[:3] == b"---"


def decode(body: bytes, content_type: str) -> Any:
    """The body as data: JSON and PSON alike (PSON lets any bytes into strings), or YAML."""
    if is_yaml(content_type, body):
        return yaml_data(body)
    return json_data(body, lenient_utf8=True)


def parse(body: bytes, envelope: Envelope) -> Report:
    return from_data(decode(body, envelope.content_type), envelope)


def from_data(data: Any, envelope: Envelope) -> Report:
    if not isinstance(data, dict):
        raise ReportError("a report must be an object (a Puppet::Transaction::Report)")
    host = data.get("host")
    if not isinstance(host, str) or not host.strip():
        raise ReportError("host: required, a non-empty string")
    report_format = data.get("report_format")
    if type(report_format) is not int or not MIN_FORMAT <= report_format <= MAX_FORMAT:
        raise ReportError(
            f"report_format: expected an integer from {MIN_FORMAT} to {MAX_FORMAT}, got {report_format!r}",
            "UNSUPPORTED_REPORT_FORMAT",
        )
    if "time" not in data:
        raise ReportError("time: required")
    start_time, had_offset = parse_time(data["time"], "time")
    metrics = _metrics(data.get("metrics"))
    total = metrics.get("time", {}).get("total")
    get = data.get
    report = Report(
        certname=fields.certname(host.strip(), "host"),
        format="puppet",
        origin="Puppet",
        received_at=envelope.received_at,
        environment=fields.name(get("environment"), "environment") or envelope.environment,
        start_time=start_time,
        end_time=plus_seconds(start_time, total, "metrics.time.total"),
        transaction_uuid=fields.uuid_text(get("transaction_uuid"), "transaction_uuid"),
        catalog_uuid=fields.uuid_text(get("catalog_uuid"), "catalog_uuid"),
        code_id=fields.identifier(get("code_id"), "code_id"),
        job_id=fields.identifier(get("job_id"), "job_id", fields.MAX_NAME),
        configuration_version=fields.identifier(get("configuration_version"), "configuration_version"),
        report_format=report_format,
        puppet_version=fields.identifier(get("puppet_version"), "puppet_version", fields.MAX_NAME),
        agent_status=fields.optional_text(get("status"), "status", fields.MAX_NAME),
        transaction_completed=fields.flag(get("transaction_completed"), "transaction_completed", True),
        noop=fields.flag(get("noop"), "noop"),
        noop_pending=fields.flag(get("noop_pending"), "noop_pending"),
        corrective_change=fields.flag(get("corrective_change"), "corrective_change"),
        cached_catalog_status=fields.optional_text(
            get("cached_catalog_status"), "cached_catalog_status", fields.MAX_NAME
        ),
        server_used=fields.optional_text(
            get("server_used") or get("master_used"), "server_used", fields.MAX_NAME
        ),
        time_without_offset=not had_offset,
        metrics=metrics,
        logs=_logs(get("logs")),
        resource_statuses=_resource_statuses(get("resource_statuses")),
    )
    report.status = derive_status(report)
    return report


def _metrics(value: Any) -> dict[str, dict[str, float]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ReportError("metrics: expected an object")
    if len(value) > fields.MAX_METRIC_CATEGORIES:
        raise _invalid("metrics", f"has more than {fields.MAX_METRIC_CATEGORIES} categories")
    metrics: dict[str, dict[str, float]] = {}
    for category, metric in value.items():
        values = metric.get("values") if isinstance(metric, dict) else None
        if type(category) is not str or not isinstance(values, list) or len(values) > fields.MAX_METRIC_KEYS:
            _refuse_metrics(category, values)
        numbers = {}
        for entry in values:
            if type(entry) is not list or len(entry) != 3:
                raise ReportError(f"metrics.{category}.values: expected [name, label, number] entries")
            name, number = entry[0], entry[2]
            if not (
                type(name) is str
                and len(name) <= fields.MAX_NAME
                and (
                    type(number) is float or (type(number) is int and -_INT64_MAX - 1 <= number <= _INT64_MAX)
                )
            ):
                name = fields.metric_name(name, f"metrics.{category}")
                number = fields.number(number, f"metrics.{category}.{name}")
            numbers[name] = number
        metrics[category] = numbers
    return metrics


def _refuse_metrics(category: Any, values: Any) -> NoReturn:
    category = fields.metric_name(category, "metrics")
    if not isinstance(values, list):
        raise ReportError(f"metrics.{category}: expected an object with a values list")
    raise _invalid(f"metrics.{category}", f"has more than {fields.MAX_METRIC_KEYS} metrics")


def _logs(value: Any) -> tuple[Log, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ReportError("logs: expected a list")
    logs: list[Log] = []
    append = logs.append
    for index, entry in enumerate(value):
        if type(entry) is not dict:
            raise ReportError(f"logs[{index}]: expected an object with a level")
        get: Any = entry.get
        level, message, source = get("level"), get("message"), get("source")
        tags, when, file, line = get("tags") or [], get("time"), get("file"), get("line")
        try:
            valid = (
                type(level) is str and len(level) <= fields.MAX_NAME
                and type(message) is str and type(source) is str
                and (file is None or type(file) is str)
                and (line is None or (type(line) is int and -_INT64_MAX - 1 <= line <= _INT64_MAX))
                and type(tags) is list and (_join(tags) or True)
            )  # fmt: skip
        except TypeError:
            valid = False
        if not valid:
            where = f"logs[{index}]"
            level = fields.text(level, f"{where}.level", fields.MAX_NAME)
            message, source = _text(message, f"{where}.message"), _text(source, f"{where}.source")
            fields.string_list(tags, f"{where}.tags")
            fields.optional_text(file, f"{where}.file")
            line = None if line is None else fields.integer(line, f"{where}.line")
        log = Log(level, message, source, tuple(tags), _time(when, "logs", index), file, line)
        log.__class__ = SealedLog
        append(log)
    return tuple(logs)


def _time(value: Any, where: str, index: Any, suffix: str = "time") -> datetime | None:
    """A time as agents send it at once; anything else through the full reader (named on error)."""
    if value is None:
        return None
    return fields.quick_time(value) or fields.parse_time(value, f"{where}[{index}].{suffix}")[0]


def _text(value: Any, where: str) -> str:
    """A message or source: Puppet writes some as numbers or symbols; null is empty."""
    if value is None:
        return ""
    if type(value) is str:
        return value
    if type(value) in (int, float, bool):
        return str(value)
    raise _invalid(where, f"must be a string, not {type(value).__name__}")


_NUMBER_OR_NONE = (int, float, type(None))
_quick_time = fields.quick_time
_INT64_MAX = fields.INT64_MAX
_join = "".join


def _resource_statuses(value: Any) -> tuple[ResourceStatus, ...]:
    # The hot loop of ingest (tens to thousands of resources per report): plain
    # lookups and type checks inline; a field that fails them goes through its
    # reader for the error message.
    if value is None:
        return ()
    items: Any
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = [(None, entry) for entry in value]
    else:
        raise ReportError("resource_statuses: expected an object")
    statuses: list[ResourceStatus] = []
    append, sealed = statuses.append, SealedResourceStatus
    for key, entry in items:
        if type(entry) is not dict:
            raise ReportError(f"resource_statuses[{key}]: expected an object")
        get = entry.get
        resource_type, title = get("resource_type"), get("title")
        if type(resource_type) is not str or title is None:
            resource_type, title = _split_resource(get("resource") or key)
        file, line, when = get("file"), get("line"), get("time")
        evaluation_time, provider = get("evaluation_time"), get("provider_used")
        containment_path, tags = get("containment_path") or [], get("tags") or []
        change_count, out_of_sync_count = get("change_count") or 0, get("out_of_sync_count") or 0
        events = get("events")
        try:
            valid = (
                (file is None or type(file) is str)
                and (line is None or (type(line) is int and 0 <= line <= _INT64_MAX))
                and type(evaluation_time) in _NUMBER_OR_NONE
                and (provider is None or type(provider) is str)
                and type(change_count) is int and type(out_of_sync_count) is int
                # join raises TypeError unless every item is a string: a C-speed check of both lists
                and type(containment_path) is list and type(tags) is list
                and (_join(containment_path) or True) and (_join(tags) or True)
            )  # fmt: skip
        except TypeError:
            valid = False
        if not valid:
            _refuse_resource_fields(key, entry, resource_type)
        if when is None:
            moment = None
        else:
            moment = _quick_time(when) or parse_time(when, f"resource_statuses[{key}].time")[0]
        status = ResourceStatus(
            resource_type,
            title if type(title) is str else _title(title, key),
            file,
            line,
            tuple(containment_path),
            tuple(tags),
            moment,
            evaluation_time,
            provider,
            get("failed") is True,
            get("failed_to_restart") is True,
            get("changed") is True,
            get("out_of_sync") is True,
            get("skipped") is True,
            change_count,
            out_of_sync_count,
            get("corrective_change") is True,
            _events(events, key) if events else (),
        )
        status.__class__ = sealed  # see reportd.model.seal: made read-only while it is at hand
        append(status)
    return tuple(statuses)


def _refuse_resource_fields(key: Any, entry: dict, resource_type: str) -> NoReturn:
    where = f"resource_statuses[{key}]"
    fields.optional_text(entry.get("file"), f"{where}.file")
    if entry.get("line") is not None:
        fields.integer(entry["line"], f"{where}.line", 0)
    if entry.get("evaluation_time") is not None:
        fields.number(entry["evaluation_time"], f"{where}.evaluation_time")
    fields.optional_text(entry.get("provider_used"), f"{where}.provider_used")
    fields.string_list(entry.get("containment_path"), f"{where}.containment_path")
    fields.string_list(entry.get("tags"), f"{where}.tags")
    fields.integer(entry.get("change_count") or 0, f"{where}.change_count")
    fields.integer(entry.get("out_of_sync_count") or 0, f"{where}.out_of_sync_count")
    raise _invalid(where, "has a field of the wrong type")  # pragma: no cover - a reader raised above


def _title(title: Any, key: Any) -> str:
    # Puppet titles are strings; a number (an integer title in the manifest) reads as one.
    if type(title) in (int, float):
        return str(title)
    raise _invalid(f"resource_statuses[{key}].title", f"must be a string, not {type(title).__name__}")


def _split_resource(reference: Any) -> tuple[str, str]:
    if isinstance(reference, str) and reference.endswith("]") and "[" in reference:
        resource_type, _, title = reference[:-1].partition("[")
        return resource_type, title
    raise ReportError(f"resource_statuses[{reference}]: no resource_type and title")


_SCALARS = frozenset((str, int, float, bool, type(None), datetime))


def _events(value: Any, key: Any) -> tuple[Event, ...]:
    if not isinstance(value, list):
        raise ReportError(f"resource_statuses[{key}].events: expected a list")
    events = []
    for entry in value:
        if type(entry) is not dict:
            raise ReportError(f"resource_statuses[{key}].events: expected objects")
        get = entry.get
        status, prop, message, name = get("status"), get("property"), get("message"), get("name")
        previous, desired, historical = get("previous_value"), get("desired_value"), get("historical_value")
        redacted = get("redacted")
        # Values from the decoders are in range already: only containers need the walk.
        if not (
            type(status) is str
            and (prop is None or type(prop) is str)
            and (message is None or type(message) is str)
            and (name is None or type(name) is str)
            and (redacted is None or type(redacted) is bool)
            and type(previous) in _SCALARS
            and type(desired) in _SCALARS
            and type(historical) in _SCALARS
        ):
            where = f"resource_statuses[{key}].events"
            status = _text(status, f"{where}.status")
            fields.optional_text(prop, f"{where}.property")
            fields.optional_text(message, f"{where}.message")
            fields.optional_text(name, f"{where}.name")
            fields.flag(redacted, f"{where}.redacted")
            fields.plain(previous, f"{where}.previous_value")
            fields.plain(desired, f"{where}.desired_value")
            fields.plain(historical, f"{where}.historical_value")
        event = Event(
            status, prop, previous, desired, historical, message, name,
            _time(get("time"), f"resource_statuses[{key}].events", "", "time"),
            get("audited") is True, redacted, get("corrective_change") is True,
        )  # fmt: skip
        event.__class__ = SealedEvent
        events.append(event)
    return tuple(events)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
