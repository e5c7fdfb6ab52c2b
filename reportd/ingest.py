"""Ingest: authenticate, read, parse at the edge, spool durably, answer.

:func:`accept_report` is the one path every wire format takes after parsing:
it answers only once the report is committed, and never waits for processors.
"""

from __future__ import annotations

import hashlib
import time

import structlog
from aiohttp import web

from reportd.auth import UPLOAD
from reportd.formats import Envelope, ReportError, parse
from reportd.model import Report, utcnow
from reportd.storage import Accepted, InboxEntry
from reportd.web import (
    CONFIG,
    DISPATCHER,
    STORAGE,
    BodyTooLarge,
    identify,
    json_response,
    puppet_error,
    read_body,
)

log = structlog.get_logger("reportd.ingest")


def idempotency_key(report: Report) -> str:
    """Same certname and run id: the same report (spec README, "Idempotent ingest")."""
    if report.transaction_uuid:
        return f"{report.format}:{report.certname}:{report.transaction_uuid}"
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
    accepted = await app[STORAGE].accept(entry, dispatcher.processor_names)
    report.id = accepted.report_id
    if not accepted.duplicate:
        dispatcher.submit(report)
    return accepted


def _log_rejected(request: web.Request, reason: str, message: str, **fields) -> None:
    log.warning(
        "report_rejected",
        reason=reason,
        path=request.path,
        remote=request.remote,
        error=message,
        **fields,
    )


async def _puppet_ingest(request: web.Request, path_certname: str | None) -> web.Response:
    started = time.perf_counter()
    config = request.app[CONFIG]
    identity = await identify(request)
    if not identity.allows(UPLOAD) or (
        path_certname is not None and not identity.may_upload_for(path_certname)
    ):
        _log_rejected(request, "auth", "forbidden", certname=path_certname, subject=identity.subject)
        raise _forbidden(request)
    environment = request.query.get("environment")
    if path_certname is not None and not environment:
        _log_rejected(request, "validation", "missing environment", certname=path_certname)
        raise puppet_error(400, "The environment query parameter is required", "BAD_REQUEST")
    try:
        body = await read_body(request, config.max_body_size)
    except BodyTooLarge:
        _log_rejected(request, "size", "body too large", certname=path_certname)
        raise puppet_error(
            413, f"Report body exceeds {config.max_body_size} bytes", "REQUEST_TOO_LARGE"
        ) from None
    envelope = Envelope(
        format="puppet",
        content_type=request.content_type,
        received_at=utcnow(),
        path_certname=path_certname,
        environment=environment,
    )
    try:
        report = parse(body, envelope)
    except ReportError as error:
        _log_rejected(request, "parse", error.message, certname=path_certname)
        raise puppet_error(400, f"Could not parse report: {error.message}", error.kind) from None
    if path_certname is not None and report.certname != path_certname:
        message = f"Report host {report.certname!r} does not match node {path_certname!r}"
        _log_rejected(request, "validation", message, certname=path_certname)
        raise puppet_error(400, message, "REPORT_HOST_MISMATCH")
    if not identity.may_upload_for(report.certname):
        _log_rejected(request, "auth", "forbidden", certname=report.certname)
        raise _forbidden(request)

    accepted = await accept_report(request.app, report, envelope)
    log.info(
        "report_accepted",
        certname=report.certname,
        report_id=accepted.report_id,
        transaction_uuid=report.transaction_uuid,
        status=report.status,
        duplicate=accepted.duplicate,
        bytes=len(body),
        ms=round((time.perf_counter() - started) * 1000, 2),
    )
    # Puppet agents require a JSON array: puppetserver answers the processor names.
    return json_response(request.app[DISPATCHER].processor_names)


def _forbidden(request: web.Request) -> web.HTTPException:
    return puppet_error(
        403,
        f"Forbidden request: {request.path} (method {request.method})",
        "FORBIDDEN",
    )


async def put_puppet_report(request: web.Request) -> web.Response:
    return await _puppet_ingest(request, request.match_info["nodename"])


async def post_puppet_report(request: web.Request) -> web.Response:
    return await _puppet_ingest(request, None)


def setup_ingest_routes(app: web.Application) -> None:
    app.router.add_put("/puppet/v3/report/{nodename}", put_puppet_report)
    app.router.add_post("/puppet/v3/report", post_puppet_report)
    app.router.add_post("/reports/upload", post_puppet_report)
