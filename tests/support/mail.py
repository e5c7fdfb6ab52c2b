"""Helpers of the email schedule tests: Puppet reports made to order, a clock, an SMTP server.

Named ``mail``, not ``email``: tests/support/jobs_agent.py runs as a script from this
folder, and a module here named ``email`` would shadow the standard library's.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from zoneinfo import ZoneInfo

import orjson
import pytest
from aiosmtpd.controller import Controller
from reportd_plugins.store import stored_report

from reportd.formats import Envelope, parse
from reportd.storage import InboxEntry, Storage
from reportd.storage.schedules import Schedule
from tests.support import free_port


def puppet_report(
    certname: str,
    at: datetime,
    *,
    status: str = "unchanged",
    environment: str = "production",
    failed: tuple[tuple[str, str], ...] = (),
    errors: tuple[str, ...] = (),
    noop_pending: bool = False,
) -> bytes:
    """A Puppet 7 report (format 12) whose run ends at ``at``; ``failed`` is (file, message) pairs."""
    resources = {}
    for title, message in failed:
        resources[f"File[{title}]"] = {
            "title": title, "resource": f"File[{title}]", "resource_type": "File", "failed": True,
            "failed_to_restart": False, "changed": False, "out_of_sync": True, "skipped": False,
            "change_count": 0, "out_of_sync_count": 1, "containment_path": ["Stage[main]"], "tags": ["file"],
            "corrective_change": False,
            "events": [{"status": "failure", "message": message, "property": "content", "audited": False}],
        }  # fmt: skip
    if status == "changed":
        resources["File[/etc/motd]"] = {
            "title": "/etc/motd", "resource": "File[/etc/motd]", "resource_type": "File", "failed": False,
            "failed_to_restart": False, "changed": True, "out_of_sync": True, "skipped": False,
            "change_count": 1, "out_of_sync_count": 1, "containment_path": [], "tags": [],
            "corrective_change": False,
            "events": [{"status": "success", "message": "content changed", "property": "content"}],
        }  # fmt: skip
    counts = [
        ["total", "Total", len(resources) + 5],
        ["failed", "Failed", len(failed)],
        ["changed", "Changed", 1 if status == "changed" else 0],
    ]
    body = {
        "host": certname,
        "time": (at - timedelta(seconds=2)).isoformat(),
        "configuration_version": 1,
        "transaction_uuid": str(uuid.uuid4()),
        "report_format": 12,
        "puppet_version": "7.23.0",
        "status": status,
        "transaction_completed": True,
        "noop": noop_pending,
        "noop_pending": noop_pending,
        "environment": environment,
        "logs": [
            {"level": "err", "message": m, "source": "Puppet", "tags": ["err"], "time": at.isoformat()}
            for m in errors
        ],
        "metrics": {
            "resources": {"name": "resources", "label": "Resources", "values": counts},
            "time": {"name": "time", "label": "Time", "values": [["total", "Total", 2.0]]},
        },
        "resource_statuses": resources,
        "corrective_change": False,
        "cached_catalog_status": "not_used",
    }
    return orjson.dumps(body)


async def ingest(storage: Storage, body: bytes, received_at: datetime | None = None) -> int:
    """Spool and store one Puppet report as the daemon does (the store keeps its body)."""
    certname = orjson.loads(body)["host"]
    received = received_at or datetime.now(UTC)
    envelope = Envelope("puppet", "application/json", received, path_certname=certname)
    report = parse(body, envelope)
    accepted = await storage.accept(
        InboxEntry(str(uuid.uuid4()), certname, "puppet", received.timestamp(), envelope.to_dict(), body),
        ["store"],
    )
    report.id = accepted.report_id
    await storage.store_reports([stored_report(report)])
    await storage.finish("store", [accepted.report_id])
    return accepted.report_id


class ManualClock:
    """Time that moves only when the test says; a scheduler's sleep waits for the test."""

    def __init__(self, start: datetime) -> None:
        self.moment = start.timestamp()

    def now(self) -> float:
        return self.moment

    def set(self, moment: datetime) -> None:
        self.moment = moment.timestamp()

    def advance(self, seconds: float) -> None:
        self.moment += seconds

    async def sleep(self, seconds: float) -> None:
        await asyncio.Event().wait()  # the test calls tick() itself


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage
    encrypted: bool  # the session ran over TLS (STARTTLS or implicit)


@dataclass
class SMTPRecorder:
    """The aiosmtpd handler: keeps what it accepts; refuses DATA while ``refuse`` is set."""

    refuse: str | None = None
    received: list[Received] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):
        if self.refuse:
            return self.refuse
        parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.received.append(
            Received(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                parsed,
                server.transport.get_extra_info("ssl_object") is not None,
            )
        )
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server():
    handler = SMTPRecorder()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller, handler
    finally:
        controller.stop()


def parts(message: EmailMessage) -> tuple[str, str]:
    """The text and the HTML alternative of a digest."""
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    return text.get_content(), html.get_content()


SID = "5f0c6a4e-2b1d-4c3e-9a8b-7d6e5f4a3b2c"


def local(*args) -> datetime:
    return datetime(*args, tzinfo=ROME)


def a_schedule(**fields) -> Schedule:
    values = dict(
        id=SID, name="web <nightly>", hosts=("*.web.example.test", "db1.example.test", "ghost.example.test"),
        services=None, type="generic", schedule="daily", send_to=("ops@example.test", "lead@example.test"),
        send_via="email", timezone="Europe/Rome", scheduled_at=micros(local(2026, 11, 22, 12)), scheduled_by="alice",
    )  # fmt: skip
    values.update(fields)
    return Schedule(**values)


ROME = ZoneInfo("Europe/Rome")


def micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)
