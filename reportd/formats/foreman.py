"""Foreman-style config reports (``POST /api/config_reports``): spec/foreman.md.

Sent by Foreman's Puppet report processor, Foreman's Ansible callback and
chef-handler-foreman. The body has no resources: six status counters, flat
metrics (``{"resources": {"total": 3}, "time": {"total": 1.2}}``) and logs in
Foreman's nested shape.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from reportd.formats import Envelope, decode_json_object, fields
from reportd.formats.fields import ReportError, as_count, parse_time, plus_seconds
from reportd.model import Log, Report
from reportd.status import derive_status

COUNTERS = ("applied", "restarted", "failed", "failed_restarts", "skipped", "pending")
LEVELS = ("debug", "info", "notice", "warning", "err", "alert", "emerg", "crit")
ENVELOPES = ("config_report", "report")
BITS_PER_COUNTER, COUNTER_MAX = 10, 1023
# Older Foreman Ansible callbacks: datetime.now().strftime("%Y-%m-%d %H:%M:%S %f")
_ANSIBLE_OLD_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (\d{6})$")


def status_bits(counters: dict[str, int]) -> int:
    """Foreman's packed status: 10 bits per counter, clamped at 1023, applied lowest."""
    packed = 0
    for index, name in enumerate(COUNTERS):
        packed |= min(max(counters.get(name, 0), 0), COUNTER_MAX) << (BITS_PER_COUNTER * index)
    return packed


def unpack_status_bits(packed: int) -> dict[str, int]:
    return {name: (packed >> (BITS_PER_COUNTER * i)) & COUNTER_MAX for i, name in enumerate(COUNTERS)}


def decode(body: bytes) -> dict[str, Any]:
    return decode_json_object(body, ReportError.invalid("report", "must be a Hash"))


def report_object(data: dict[str, Any]) -> dict[str, Any]:
    for name in ENVELOPES:
        if name in data:
            report = data[name]
            if not isinstance(report, dict):
                raise ReportError.invalid(name, "must be a Hash")
            return report
    raise ReportError.invalid("report", "can't be blank")


def parse(body: bytes, envelope: Envelope) -> Report:
    return from_data(decode(body), envelope)


def from_data(document: dict[str, Any], envelope: Envelope) -> Report:
    """The report from an already decoded body (``{"config_report": {...}}``)."""
    data = report_object(document)
    host = data.get("host")
    if not isinstance(host, str) or not host.strip():
        raise ReportError.invalid("host", "can't be blank")
    certname = fields.certname(host.strip().lower(), "host")
    reported_at, had_offset = _reported_at(data.get("reported_at"))
    counters = _counters(data.get("status"))
    metrics = _metrics(data.get("metrics"))
    logs = _logs(data.get("logs"))
    reporter = fields.optional_text(data.get("reporter"), "reporter", fields.MAX_NAME)
    check_mode = fields.flag(data.get("check_mode"), "check_mode")

    resources = metrics.setdefault("resources", {})
    for counter, key in (("applied", "changed"), ("restarted", "restarted"), ("failed", "failed"),
                         ("failed_restarts", "failed_to_restart"), ("skipped", "skipped")):  # fmt: skip
        resources.setdefault(key, counters[counter])
    if counters["pending"]:
        metrics.setdefault("events", {}).setdefault("noop", counters["pending"])
    total = metrics.get("time", {}).get("total")
    end_time = plus_seconds(reported_at, total, "metrics")
    start_time = reported_at
    if reporter == "ansible" and end_time is not None:
        # Foreman's Ansible callback reports when the play ended, not when it began.
        start_time, end_time = reported_at - (end_time - reported_at), reported_at
    changed = counters["applied"] + counters["restarted"] > 0
    failed = counters["failed"] + counters["failed_restarts"] > 0
    report = Report(
        certname=certname,
        format="foreman",
        origin=_origin(reporter, logs),
        received_at=envelope.received_at,
        environment=envelope.environment,
        start_time=start_time,
        end_time=end_time,
        agent_status="failed" if failed else "changed" if changed else "unchanged",
        # A check-mode run, or one that only has pending (noop) changes, changed nothing.
        noop=check_mode or (counters["pending"] > 0 and not changed and not failed),
        noop_pending=counters["pending"] > 0,
        time_without_offset=not had_offset,
        metrics=metrics,
        logs=logs,
        extra={
            "reported_at": reported_at.isoformat(),
            "status": counters,
            "status_bits": status_bits(counters),
            **({"reporter": reporter} if reporter is not None else {}),
            **({"check_mode": check_mode} if "check_mode" in data else {}),
            **{key: value for key, value in envelope.params.items() if value is not None},
        },
    )
    report.status = derive_status(report)
    return report


def _reported_at(value: Any) -> tuple[datetime, bool]:
    if not isinstance(value, str) or not value.strip():
        raise ReportError.invalid("reported_at", "can't be blank")
    old = _ANSIBLE_OLD_TIME.match(value.strip())
    if old:
        value = f"{old.group(1)}.{old.group(2)}"
    try:
        return parse_time(value, "reported_at")
    except ReportError:
        raise ReportError.invalid("reported_at", "is not a valid time") from None


def _counters(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ReportError.invalid("status", "must be a Hash")
    counters = dict.fromkeys(COUNTERS, 0)
    for key, raw in value.items():
        if key not in counters:
            raise ReportError.invalid("status", f"has an unknown counter {key!r}")
        number = as_count(raw)
        if number is None:
            raise ReportError.invalid("status", f"{key} must be a whole number from 0 to {fields.INT64_MAX}")
        counters[key] = number
    return counters


def _metrics(value: Any) -> dict[str, dict[str, float]]:
    if not isinstance(value, dict):
        raise ReportError.invalid("metrics", "must be a Hash")
    if len(value) > fields.MAX_METRIC_CATEGORIES:
        raise ReportError.invalid("metrics", f"has more than {fields.MAX_METRIC_CATEGORIES} categories")
    metrics: dict[str, dict[str, float]] = {}
    for category, entries in value.items():
        if isinstance(entries, dict) and isinstance(entries.get("values"), list):
            entries = {e[0]: e[2] for e in entries["values"] if isinstance(e, list) and len(e) == 3}
        if not isinstance(entries, dict):
            raise ReportError.invalid("metrics", f"{category} must be a Hash")
        numbers = {}
        for key, number in entries.items():
            if type(number) is str:
                # Foreman's clients send some figures as strings ("1.23")
                try:
                    number = float(number) if len(number) <= 64 else None
                except ValueError:
                    number = None
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise ReportError.invalid("metrics", f"{category}.{key} must be a number")
            numbers[key] = number
        category = fields.metric_name(category, "metrics")
        try:
            metrics[category] = fields.metric_values(numbers, f"metrics.{category}")
        except ReportError as error:
            raise ReportError.invalid("metrics", error.problem) from None
    return metrics


def _logs(value: Any) -> list[Log]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ReportError.invalid("logs", "must be an Array")
    logs = []
    for index, item in enumerate(value):
        entry = item.get("log") if isinstance(item, dict) else None
        if not isinstance(entry, dict):
            raise ReportError.invalid("logs", f'entry {index} must be {{"log": {{...}}}}')
        level = entry.get("level")
        if level not in LEVELS:
            raise ReportError.invalid("logs", f"level {level!r} is not one of {', '.join(LEVELS)}")
        messages, sources = entry.get("messages") or {}, entry.get("sources") or {}
        if not isinstance(messages, dict) or not isinstance(sources, dict):
            raise ReportError.invalid("logs", f"entry {index} needs messages and sources objects")
        message, source = messages.get("message"), sources.get("source")
        logs.append(Log(level=level, message=_text(message, "message"), source=_text(source, "source")))
    return logs


def _text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if type(value) is str:
        return value
    if type(value) in (int, float, bool):
        return str(value)
    raise ReportError.invalid("logs", f"a {name} must be a string, not {type(value).__name__}")


def _origin(reporter: Any, logs: list[Log]) -> str | None:
    if reporter == "ansible":
        return "Ansible"
    if logs and "Puppet" in logs[-1].source:
        return "Puppet"
    if any(log.source == "Chef" for log in logs):
        return "Chef"
    return None
