"""Puppet reports, report_format 4 to 12: JSON/PSON (path B) and YAML (path A).

See spec/puppet.md. YAML bodies from Puppet's ``http`` report processor start
with ``!ruby/object:Puppet::Transaction::Report``; a safe loader with a
constructor for Ruby object tags reads them as plain mappings.
"""

from __future__ import annotations

from typing import Any

import orjson
import yaml

from reportd.formats import Envelope, ReportError, parse_time, plus_seconds
from reportd.model import Event, Log, Report, ResourceStatus
from reportd.status import derive_status

MIN_FORMAT, MAX_FORMAT = 4, 12
YAML_TYPES = ("application/x-yaml", "application/yaml", "text/yaml", "text/x-yaml")
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class RubyObjectLoader(_BaseLoader):
    """A safe YAML loader that reads ``!ruby/object:...`` and ``!ruby/sym`` tags as data."""


def _ruby_object(loader: yaml.Loader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


RubyObjectLoader.add_multi_constructor("!ruby/object:", _ruby_object)
RubyObjectLoader.add_multi_constructor("!ruby/sym", _ruby_object)
RubyObjectLoader.add_multi_constructor("!ruby/hash:", _ruby_object)
RubyObjectLoader.add_multi_constructor("!ruby/array:", _ruby_object)


def is_yaml(content_type: str, body: bytes) -> bool:
    return content_type in YAML_TYPES or body.lstrip()[:3] == b"---"


def decode(body: bytes, content_type: str) -> Any:
    """The body as Python data; JSON and PSON alike, or YAML."""
    if is_yaml(content_type, body):
        try:
            return yaml.load(body, Loader=RubyObjectLoader)
        except yaml.YAMLError as error:
            raise ReportError(f"malformed YAML: {_first_line(error)}") from None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        # PSON lets any bytes into strings; keep such reports rather than lose them.
        if "utf-8" not in str(error).lower():
            raise ReportError(f"malformed JSON: {error}") from None
    try:
        return orjson.loads(body.decode("utf-8", "replace"))
    except orjson.JSONDecodeError as error:
        raise ReportError(f"malformed JSON: {error}") from None


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
    environment = _optional_str(data, "environment") or envelope.environment
    report = Report(
        certname=host.strip(),
        format="puppet",
        origin="Puppet",
        received_at=envelope.received_at,
        environment=environment,
        start_time=start_time,
        end_time=plus_seconds(start_time, total, "metrics.time.total"),
        transaction_uuid=_optional_str(data, "transaction_uuid"),
        catalog_uuid=_optional_str(data, "catalog_uuid"),
        code_id=_optional_str(data, "code_id"),
        job_id=_optional_str(data, "job_id"),
        configuration_version=_optional_str(data, "configuration_version"),
        report_format=report_format,
        puppet_version=_optional_str(data, "puppet_version"),
        agent_status=_optional_str(data, "status"),
        transaction_completed=bool(data.get("transaction_completed", True)),
        noop=bool(data.get("noop", False)),
        noop_pending=bool(data.get("noop_pending", False)),
        corrective_change=bool(data.get("corrective_change", False)),
        cached_catalog_status=_optional_str(data, "cached_catalog_status"),
        server_used=_optional_str(data, "server_used") or _optional_str(data, "master_used"),
        time_without_offset=not had_offset,
        metrics=metrics,
        logs=_logs(data.get("logs")),
        resource_statuses=_resource_statuses(data.get("resource_statuses")),
    )
    report.status = derive_status(report)
    return report


def _optional_str(data: dict, key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ReportError(f"{key}: expected a string, got {type(value).__name__}")
    return str(value)


def _metrics(value: Any) -> dict[str, dict[str, float]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ReportError("metrics: expected an object")
    metrics: dict[str, dict[str, float]] = {}
    for category, metric in value.items():
        values = metric.get("values") if isinstance(metric, dict) else None
        if not isinstance(values, list):
            raise ReportError(f"metrics.{category}: expected an object with a values list")
        numbers: dict[str, float] = {}
        for entry in values:
            if (
                not isinstance(entry, list | tuple)
                or len(entry) != 3
                or isinstance(entry[2], bool)
                or not isinstance(entry[2], int | float)
            ):
                raise ReportError(f"metrics.{category}.values: expected [name, label, number] entries")
            numbers[str(entry[0])] = entry[2]
        metrics[str(category)] = numbers
    return metrics


def _time_or_none(value: Any, where: str):
    return None if value is None else parse_time(value, where)[0]


def _logs(value: Any) -> list[Log]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ReportError("logs: expected a list")
    logs = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(entry.get("level"), str):
            raise ReportError(f"logs[{index}]: expected an object with a level")
        line = entry.get("line")
        logs.append(
            Log(
                level=entry["level"],
                message=_text(entry.get("message")),
                source=_text(entry.get("source")),
                tags=list(entry.get("tags") or ()),
                time=_time_or_none(entry.get("time"), f"logs[{index}].time"),
                file=entry.get("file"),
                line=line if type(line) is int else None,
            )
        )
    return logs


def _text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)


def _resource_statuses(value: Any) -> list[ResourceStatus]:
    # The hot loop of ingest (tens to thousands of resources per report): plain
    # lookups, no copies of the decoded lists.
    if value is None:
        return []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = [(None, entry) for entry in value]
    else:
        raise ReportError("resource_statuses: expected an object")
    statuses = []
    append = statuses.append
    for key, entry in items:
        if type(entry) is not dict:
            raise ReportError(f"resource_statuses[{key}]: expected an object")
        get = entry.get
        resource_type, title = get("resource_type"), get("title")
        if type(resource_type) is not str or title is None:
            resource_type, title = _split_resource(get("resource") or key)
        line = get("line")
        evaluation_time = get("evaluation_time")
        when = get("time")
        events = get("events")
        append(
            ResourceStatus(
                resource_type,
                title if type(title) is str else str(title),
                get("file"),
                line if type(line) is int else None,
                get("containment_path") or [],
                get("tags") or [],
                None if when is None else parse_time(when, f"resource_statuses[{key}].time")[0],
                evaluation_time if isinstance(evaluation_time, int | float) else None,
                get("provider_used"),
                get("failed") is True,
                get("failed_to_restart") is True,
                get("changed") is True,
                get("out_of_sync") is True,
                get("skipped") is True,
                get("change_count") or 0,
                get("out_of_sync_count") or 0,
                get("corrective_change") is True,
                _events(events, key) if events else [],
            )
        )
    return statuses


def _split_resource(reference: Any) -> tuple[str, str]:
    if isinstance(reference, str) and reference.endswith("]") and "[" in reference:
        resource_type, _, title = reference[:-1].partition("[")
        return resource_type, title
    raise ReportError(f"resource_statuses[{reference}]: no resource_type and title")


def _events(value: Any, key: Any) -> list[Event]:
    if not value:
        return []
    if not isinstance(value, list):
        raise ReportError(f"resource_statuses[{key}].events: expected a list")
    events = []
    for entry in value:
        if not isinstance(entry, dict):
            raise ReportError(f"resource_statuses[{key}].events: expected objects")
        events.append(
            Event(
                status=_text(entry.get("status")),
                property=entry.get("property"),
                previous_value=entry.get("previous_value"),
                desired_value=entry.get("desired_value"),
                historical_value=entry.get("historical_value"),
                message=entry.get("message"),
                name=entry.get("name"),
                time=_time_or_none(entry.get("time"), f"resource_statuses[{key}].events.time"),
                audited=bool(entry.get("audited")),
                redacted=entry.get("redacted"),
                corrective_change=bool(entry.get("corrective_change")),
            )
        )
    return events


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
