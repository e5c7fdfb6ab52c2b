"""Ingest: authenticate, read, parse at the edge, spool durably, answer.

One module per family of clients (:mod:`.puppet`, :mod:`.foreman`,
:mod:`.chef`), each answering in its family's own shapes. They all end in
:func:`accept_report`, which answers only once the report is committed and
never waits for processors.
"""

from __future__ import annotations

import hashlib
import time

import structlog
from aiohttp import web

from reportd.formats import Envelope
from reportd.model import Report
from reportd.storage import Accepted, InboxEntry
from reportd.web import CONFIG, DISPATCHER, STORAGE, TELEMETRY, BodyTooLarge, read_body

log = structlog.get_logger("reportd.ingest")


def idempotency_key(report: Report) -> str:
    """The same run sent twice is one report (spec README, "Idempotent ingest").

    Puppet's ``transaction_uuid`` and Chef's ``run_id`` identify a run;
    Foreman-style uploads have only the host and ``reported_at``.
    """
    if report.transaction_uuid:
        return f"{report.format}:{report.certname}:{report.transaction_uuid}"
    if report.format == "foreman" and "reported_at" in report.extra:
        return f"foreman:{report.certname}:{report.extra['reported_at']}"
    return f"{report.format}:{report.certname}:sha256:{hashlib.sha256(report.raw).hexdigest()}"


async def accept_report(app: web.Application, report: Report, envelope: Envelope) -> Accepted:
    """Durably spool ``report`` (group-committed), then hand it to the dispatcher."""
    dispatcher = app[DISPATCHER]
    entry = InboxEntry(
        idempotency_key=idempotency_key(report),
        certname=report.certname,
        format=envelope.format,
        received_at=envelope.received_at.timestamp(),
        envelope=envelope.to_dict(),
        body=report.raw,
    )
    # Only a report of a job also goes to the internal job tracker: the others pay nothing.
    for_jobs = report.job_id is not None
    processors = dispatcher.processor_names
    if for_jobs:
        processors += dispatcher.internal_names
    accepted = await app[STORAGE].accept(entry, processors)
    report.id = accepted.report_id
    if not accepted.duplicate:
        dispatcher.submit(report, internal=for_jobs)
    return accepted


async def read_report_body(request: web.Request) -> bytes | None:
    """The body, or None when it is larger than ``max_body_size`` (the caller answers 413)."""
    try:
        return await read_body(request, request.app[CONFIG].max_body_size)
    except BodyTooLarge:
        log_rejected(request, "size", "body too large")
        return None


def log_rejected(request: web.Request, reason: str, message: str, **fields) -> None:
    """Log and count a refused request (reason: auth, size, parse or validation)."""
    request.app[TELEMETRY].rejected.labels(reason).inc()
    log.warning(
        "report_rejected", reason=reason, path=request.path, remote=request.remote, error=message, **fields
    )


def log_accepted(request: web.Request, report: Report, accepted: Accepted, size: int, started: float) -> None:
    """Log and count an accepted report (one canonical line per report)."""
    elapsed = time.perf_counter() - started
    telemetry = request.app[TELEMETRY]
    telemetry.received.labels(report.format, "duplicate" if accepted.duplicate else "accepted").inc()
    telemetry.ingest_seconds.observe(elapsed)
    telemetry.report_bytes.observe(size)
    log.info(
        "report_accepted",
        certname=report.certname,
        report_id=accepted.report_id,
        format=report.format,
        transaction_uuid=report.transaction_uuid,
        status=report.status,
        duplicate=accepted.duplicate,
        bytes=size,
        ms=round(elapsed * 1000, 2),
    )


def setup_ingest_routes(app: web.Application) -> None:
    from reportd.ingest import chef, foreman, puppet

    puppet.setup_routes(app)
    foreman.setup_routes(app)
    chef.setup_routes(app)
