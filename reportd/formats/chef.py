"""Chef runs: the reporting protocol's end of run and the data collector's run_converge.

spec/chef.md. Both carry a client-generated ``run_id`` (a UUID), kept as the
report's ``transaction_uuid``, so a run reported both ways is one report.
``Envelope.params["protocol"]`` says which body this is.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from reportd.formats import Envelope, decode_json_object, fields
from reportd.formats.decode import json_data
from reportd.formats.fields import ReportError, as_count, parse_time
from reportd.model import Event, Log, Report, ResourceStatus
from reportd.status import derive_status

REPORTING, DATA_COLLECTOR = "reporting", "data_collector"
END_FIELDS = ("action", "status", "start_time", "end_time", "resources", "run_list", "total_res_count")
RUN_STATUSES = ("success", "failure", "started")
RESOURCE_STATUSES = ("updated", "up-to-date", "skipped", "failed", "unprocessed")


def decode(body: bytes) -> dict[str, Any]:
    return decode_json_object(body, ReportError("the body must be a JSON object"))


def valid_run_id(value: Any) -> str | None:
    """The run id in canonical form, or None when it is not a UUID."""
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def parse(body: bytes, envelope: Envelope) -> Report:
    return from_data(decode(body), envelope)


def from_data(data: dict[str, Any], envelope: Envelope) -> Report:
    """The report from an already decoded body, of the protocol ``envelope`` names."""
    if envelope.params.get("protocol") == DATA_COLLECTOR:
        return _from_run_converge(data, envelope)
    return _from_end_of_run(data, envelope)


def _time(data: dict, key: str) -> tuple[datetime, bool]:
    value = data.get(key)
    if not isinstance(value, str):
        raise ReportError(f"{key}: required, a time string")
    return parse_time(value, key)


def _from_end_of_run(data: dict[str, Any], envelope: Envelope) -> Report:
    missing = [name for name in END_FIELDS if name not in data]
    if missing:
        raise ReportError(f"missing required fields: {', '.join(missing)}")
    if data["action"] != "end":
        raise ReportError(f"action: expected 'end', got {data['action']!r}")
    if data["status"] not in RUN_STATUSES:
        raise ReportError(f"status: expected one of {', '.join(RUN_STATUSES)}, got {data['status']!r}")
    if not isinstance(data["resources"], list):
        raise ReportError("resources: expected an array")
    run_id = valid_run_id(envelope.params.get("run_id"))
    if run_id is None:
        raise ReportError("run_id: not a UUID")
    start, start_offset = _time(data, "start_time")
    end, end_offset = _time(data, "end_time")
    total = _count(data["total_res_count"], "total_res_count")

    statuses = []
    for index, entry in enumerate(data["resources"]):
        _check_resource(entry, index)
        statuses.append(
            ResourceStatus(
                resource_type=entry["type"],
                title=_scalar_text(entry.get("name"), f"resources[{index}].name"),
                tags=[tag for tag in (entry.get("cookbook_name"),) if isinstance(tag, str)],
                evaluation_time=_seconds(entry.get("duration")),
                changed=True,
                out_of_sync=True,
                change_count=1,
                out_of_sync_count=1,
                # The reporting protocol lists updated resources; `result` is the action taken.
                events=[_action_event(entry, "success", _scalar_text(entry.get("delta"), "delta"), end)],
            )
        )
    logs = []
    exception = (data.get("data") or {}).get("exception") if isinstance(data.get("data"), dict) else None
    if isinstance(exception, dict):
        logs.append(_exception_log(exception, end))
    changed = len(statuses)
    failed = data["status"] == "failure"
    report = Report(
        certname=fields.certname(envelope.path_certname or "", "node"),
        format="chef",
        origin="Chef",
        received_at=envelope.received_at,
        start_time=start,
        end_time=end,
        transaction_uuid=run_id,
        agent_status=data["status"],
        time_without_offset=not (start_offset and end_offset),
        metrics={
            "resources": {"total": total, "changed": changed, "out_of_sync": changed, "failed": int(failed)},
            "events": {"total": changed, "success": changed},
            "time": {"total": max(0.0, (end - start).total_seconds())},
            "changes": {"total": changed},
        },
        logs=logs,
        resource_statuses=statuses,
        extra=_extra(envelope, run_list=_json_string(data.get("run_list"), "run_list"),
                     expanded_run_list=_json_string(data.get("expanded_run_list"), "expanded_run_list")),
    )  # fmt: skip
    report.status = derive_status(report)
    return report


def _from_run_converge(data: dict[str, Any], envelope: Envelope) -> Report:
    if data.get("message_type") != "run_converge":
        raise ReportError(f"message_type: expected run_converge, got {data.get('message_type')!r}")
    node = data.get("node_name")
    if not isinstance(node, str) or not node:
        raise ReportError("node_name: required")
    node = fields.certname(node.lower(), "node_name")
    run_id = valid_run_id(data.get("run_id"))
    if run_id is None:
        raise ReportError("run_id: not a UUID")
    if data.get("status") not in RUN_STATUSES:
        raise ReportError(f"status: expected success or failure, got {data.get('status')!r}")
    start, start_offset = _time(data, "start_time")
    end, end_offset = _time(data, "end_time")
    resources = data.get("resources") or []
    if not isinstance(resources, list):
        raise ReportError("resources: expected an array")

    statuses, logs = [], []
    counts = dict.fromkeys(RESOURCE_STATUSES, 0)
    time_by_type: dict[str, float] = {}
    for index, entry in enumerate(resources):
        _check_resource(entry, index)
        status = entry.get("status")
        if status not in RESOURCE_STATUSES:
            raise ReportError(
                f"resources[{index}].status: {status!r} is not one of {', '.join(RESOURCE_STATUSES)}"
            )
        counts[status] += 1
        seconds = _seconds(entry.get("duration"))
        if seconds is not None:
            time_by_type[entry["type"]] = time_by_type.get(entry["type"], 0.0) + seconds
        statuses.append(_converged_resource(entry, status, seconds, end))
        if status == "failed":
            message = _scalar_text(entry.get("error_message"), f"resources[{index}].error_message")
            logs.append(Log("err", message or "failed", statuses[-1].resource, time=end))
    error = data.get("error")
    if isinstance(error, dict):
        logs.append(_exception_log(error, end))

    updated, failed = counts["updated"], counts["failed"]
    skipped = counts["skipped"] + counts["unprocessed"]
    total = data.get("total_resource_count", len(resources))
    report = Report(
        certname=node,
        format="chef",
        origin="Chef",
        received_at=envelope.received_at,
        environment=fields.name(data.get("policy_group"), "policy_group"),
        start_time=start,
        end_time=end,
        transaction_uuid=run_id,
        agent_status=data["status"],
        time_without_offset=not (start_offset and end_offset),
        metrics={
            "resources": {"total": _count(total, "total_resource_count"), "changed": updated,
                          "out_of_sync": updated + failed, "failed": failed, "skipped": skipped},
            "events": {"total": updated + failed, "success": updated, "failure": failed},
            "time": {**time_by_type, "total": max(0.0, (end - start).total_seconds())},
            "changes": {"total": updated},
        },
        logs=logs,
        resource_statuses=statuses,
        extra=_extra(
            envelope,
            organization=fields.name(data.get("organization_name"), "organization_name"),
            run_list=fields.plain(data.get("run_list"), "run_list"),
            expanded_run_list=fields.plain(data.get("expanded_run_list"), "expanded_run_list"),
            policy_name=fields.name(data.get("policy_name"), "policy_name"),
            policy_group=fields.name(data.get("policy_group"), "policy_group"),
            chef_server_fqdn=fields.name(data.get("chef_server_fqdn"), "chef_server_fqdn"),
            source=fields.name(data.get("source"), "source"),
            entity_uuid=fields.optional_text(data.get("entity_uuid"), "entity_uuid", fields.MAX_NAME),
        ),
    )  # fmt: skip
    report.status = derive_status(report)
    return report


def _converged_resource(entry: dict, status: str, seconds: float | None, end: datetime) -> ResourceStatus:
    events = []
    if status in ("updated", "failed"):
        message = _scalar_text(entry.get("error_message"), "error_message") or _scalar_text(
            entry.get("delta"), "delta"
        )
        events.append(_action_event(entry, "success" if status == "updated" else "failure", message, end))
    # The Chef status is kept as a tag; `unprocessed` (never reached after a
    # failure) is what Puppet calls skipped.
    tags = [
        status,
        *(t for t in (entry.get("cookbook_name"), entry.get("recipe_name")) if isinstance(t, str)),
    ]
    return ResourceStatus(
        resource_type=entry["type"],
        title=_scalar_text(entry.get("name"), "name"),
        tags=tags,
        evaluation_time=seconds,
        failed=status == "failed",
        changed=status == "updated",
        out_of_sync=status in ("updated", "failed"),
        skipped=status in ("skipped", "unprocessed"),
        change_count=int(status == "updated"),
        out_of_sync_count=int(status in ("updated", "failed")),
        events=events,
    )


def _action_event(entry: dict, status: str, message: str, when: datetime) -> Event:
    """A resource's action as an event: ``result`` is the action taken (create, restart)."""
    action = _scalar_text(entry.get("result"), "result")
    return Event(
        status=status,
        property=action,
        previous_value=fields.plain(entry.get("before"), "before"),
        desired_value=fields.plain(entry.get("after"), "after"),
        message=message or action,
        name=action,
        time=when,
    )


def _exception_log(exception: dict, when: datetime) -> Log:
    kind = _scalar_text(exception.get("class"), "exception.class") or "Exception"
    message = f"{kind}: {_scalar_text(exception.get('message'), 'exception.message')}".strip()
    return Log("err", message, "Chef", tags=["err"], time=when)


def _count(value: Any, name: str) -> int:
    count = as_count(value)
    if count is None:
        raise ReportError(f"{name}: expected a count, got {value!r}")
    return count


def _seconds(duration: Any) -> float | None:
    """Chef durations are milliseconds, as a string."""
    milliseconds = as_count(duration)
    return None if milliseconds is None else milliseconds / 1000


def _scalar_text(value: Any, name: str) -> str:
    """Chef's names, actions and messages: strings, or numbers read as strings; null is empty."""
    if value is None:
        return ""
    if type(value) is str:
        return value
    if type(value) in (int, float, bool):
        return str(value)
    raise ReportError.invalid(name, f"must be a string, not {type(value).__name__}")


def _check_resource(entry: Any, index: int) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        raise ReportError(f"resources[{index}]: expected an object with a type")
    fields.text(entry["type"], f"resources[{index}].type", fields.MAX_IDENTIFIER)
    tags = [entry.get("cookbook_name"), entry.get("recipe_name")]
    if any(tag is not None and type(tag) is not str for tag in tags):
        raise ReportError.invalid(f"resources[{index}]", "cookbook_name and recipe_name must be strings")


def _json_string(value: Any, name: str) -> Any:
    """The reporting protocol sends run lists as JSON inside a string."""
    if not isinstance(value, str):
        return value
    try:
        return fields.plain(json_data(value.encode()), name)
    except ReportError as error:
        raise ReportError(f"{name}: not a JSON-encoded string ({error.message})") from None


def _extra(envelope: Envelope, **values: Any) -> dict[str, Any]:
    extra = {key: value for key, value in values.items() if value is not None}
    extra.setdefault("organization", envelope.params.get("organization"))
    extra["protocol"] = envelope.params.get("protocol", REPORTING)
    if envelope.params.get("start_missing"):
        extra["start_missing"] = True
    return {key: value for key, value in extra.items() if value is not None}
