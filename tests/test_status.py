"""The run status derivation of node-status.md, one case per row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reportd.model import Event, Log, Report, ResourceStatus
from reportd.status import change_kind, derive_status, is_stale

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)


def make(**fields) -> Report:
    fields.setdefault("format", "puppet")
    return Report(certname="n.example.test", received_at=NOW, **fields)


def resource(**fields) -> ResourceStatus:
    return ResourceStatus(resource_type="File", title="/x", **fields)


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        (make(agent_status="failed"), "failed"),
        (make(agent_status="changed", transaction_completed=False), "failed"),
        (make(agent_status="changed", resource_statuses=[resource(failed=True)]), "failed"),
        (make(agent_status="unchanged", resource_statuses=[resource(failed_to_restart=True)]), "failed"),
        (make(agent_status="unchanged", metrics={"resources": {"failed": 1}}), "failed"),
        (make(agent_status="unchanged", logs=[Log("err", "Could not retrieve catalog", "Puppet")]), "failed"),
        (make(agent_status="unchanged", cached_catalog_status="on_failure", resource_statuses=[resource()]), "failed"),
        (make(agent_status="failure", format="chef"), "failed"),
        (make(agent_status="unchanged", noop=True, noop_pending=True), "noop_pending"),
        (make(agent_status="unchanged", noop=True, resource_statuses=[resource(events=[Event("noop")])]),
         "noop_pending"),
        (make(agent_status="unchanged", noop=True), "noop"),
        (make(agent_status="changed"), "changed"),
        (make(agent_status=None, resource_statuses=[resource(changed=True)]), "changed"),
        (make(agent_status="unchanged"), "unchanged"),
        (make(agent_status="unchanged", logs=[Log("err", "boom", "/Stage[main]/X")], resource_statuses=[resource()]),
         "unchanged"),
    ],
)  # fmt: skip
def test_derive_status(report, expected):
    assert derive_status(report) == expected


def test_change_kind():
    assert change_kind(make(corrective_change=True), "changed") == "corrective"
    assert change_kind(make(resource_statuses=[resource(corrective_change=True)]), "changed") == "corrective"
    assert change_kind(make(), "changed") == "intentional"
    assert change_kind(make(corrective_change=True), "unchanged") is None


def test_is_stale():
    assert is_stale(NOW - timedelta(hours=3), NOW, 7200)
    assert not is_stale(NOW - timedelta(minutes=30), NOW, 7200)
