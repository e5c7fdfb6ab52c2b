"""Run status and node staleness: the one derivation everybody uses (node-status.md)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reportd.model import Report

FAILED = "failed"
NOOP_PENDING = "noop_pending"
NOOP = "noop"
CHANGED = "changed"
UNCHANGED = "unchanged"
RUN_STATUSES = (FAILED, NOOP_PENDING, NOOP, CHANGED, UNCHANGED)
CATALOG_FAILURE_SOURCE = "Puppet"


def derive_status(report: Report) -> str:
    """The run's status; the first matching row of node-status.md wins."""
    if _failed(report):
        return FAILED
    if report.noop:
        if report.noop_pending or _has_event(report, "noop"):
            return NOOP_PENDING
        return NOOP
    if _changed(report):
        return CHANGED
    return UNCHANGED


def change_kind(report: Report, status: str) -> str | None:
    """``corrective`` or ``intentional`` for a changed run, else None."""
    if status != CHANGED:
        return None
    corrective = report.corrective_change or any(r.corrective_change for r in report.resource_statuses)
    return "corrective" if corrective else "intentional"


def is_stale(last_received_at: datetime, now: datetime, interval_seconds: float) -> bool:
    return (now - last_received_at).total_seconds() > interval_seconds


def _failed(report: Report) -> bool:
    if report.agent_status in ("failed", "failure") or not report.transaction_completed:
        return True
    if report.cached_catalog_status == "on_failure":
        return True
    if report.metric("resources", "failed") > 0 or report.metric("resources", "failed_to_restart") > 0:
        return True
    if any(r.failed or r.failed_to_restart for r in report.resource_statuses):
        return True
    # A catalog that could not be compiled or retrieved: Puppet says so at err
    # level and applies nothing.
    return not report.resource_statuses and any(
        log.level == "err" and log.source == CATALOG_FAILURE_SOURCE for log in report.logs
    )


def _changed(report: Report) -> bool:
    if report.agent_status == "changed":
        return True
    if report.metric("resources", "changed") > 0:
        return True
    return any(r.changed for r in report.resource_statuses)


def _has_event(report: Report, status: str) -> bool:
    return any(event.status == status for r in report.resource_statuses for event in r.events)
