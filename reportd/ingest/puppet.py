"""Puppet's report routes: the agent's ``PUT /puppet/v3/report/:nodename`` (path B)
and the ``http`` report processor's POST (path A). See spec/puppet.md.
"""

from __future__ import annotations

import time

from aiohttp import web

from reportd.auth import UPLOAD
from reportd.formats import Envelope, ReportError, parse
from reportd.ingest import accept_report, log_accepted, log_rejected, read_report_body
from reportd.model import utcnow
from reportd.web import CONFIG, DISPATCHER, identify, json_response, puppet_error


async def _puppet_ingest(request: web.Request, path_certname: str | None) -> web.Response:
    started = time.perf_counter()
    config = request.app[CONFIG]
    identity = await identify(request)
    if not identity.allows(UPLOAD) or (
        path_certname is not None and not identity.may_upload_for(path_certname)
    ):
        log_rejected(request, "auth", "forbidden", certname=path_certname, subject=identity.subject)
        raise _forbidden(request)
    environment = request.query.get("environment")
    if path_certname is not None and not environment:
        log_rejected(request, "validation", "missing environment", certname=path_certname)
        raise puppet_error(400, "The environment query parameter is required", "BAD_REQUEST")
    body = await read_report_body(request)
    if body is None:
        raise puppet_error(413, f"Report body exceeds {config.max_body_size} bytes", "REQUEST_TOO_LARGE")
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
        log_rejected(request, "parse", error.message, certname=path_certname)
        raise puppet_error(400, f"Could not parse report: {error.message}", error.kind) from None
    if path_certname is not None and report.certname != path_certname:
        message = f"Report host {report.certname!r} does not match node {path_certname!r}"
        log_rejected(request, "validation", message, certname=path_certname)
        raise puppet_error(400, message, "REPORT_HOST_MISMATCH")
    if not identity.may_upload_for(report.certname):
        log_rejected(request, "auth", "forbidden", certname=report.certname)
        raise _forbidden(request)

    accepted = await accept_report(request.app, report, envelope)
    log_accepted(request, report, accepted, len(body), started)
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


def setup_routes(app: web.Application) -> None:
    app.router.add_put("/puppet/v3/report/{nodename}", put_puppet_report)
    app.router.add_post("/puppet/v3/report", post_puppet_report)
    app.router.add_post("/reports/upload", post_puppet_report)
