"""Puppet's report routes: the agent's ``PUT /puppet/v3/report/:nodename`` (path B)
and the ``http`` report processor's POST (path A). See spec/puppet.md.
"""

from __future__ import annotations

import time

from aiohttp import web

from reportd.appkeys import PIPELINE
from reportd.auth import UPLOAD
from reportd.formats import Envelope, fields
from reportd.formats.fields import ReportError
from reportd.ingest import (
    Refusal,
    accept_report,
    check_certname,
    log_accepted,
    parse_report,
    refusals,
    request_body,
)
from reportd.model import utcnow
from reportd.web import identify, json_response, puppet_error


def _render(refusal: Refusal) -> web.HTTPException:
    return puppet_error(refusal.status, refusal.message, refusal.kind, refusal.headers)


async def _puppet_ingest(request: web.Request, path_certname: str | None) -> web.Response:
    started = time.perf_counter()
    async with refusals(request, _render, certname=path_certname):
        if path_certname is not None:
            check_certname(path_certname, "Node name")
        identity = await identify(request)
        # Decided from the URL and the certificate, before the body is read.
        if not identity.allows(UPLOAD) or (
            path_certname is not None and not identity.may_upload_for(path_certname)
        ):
            raise _forbidden(request, identity.subject)
        environment = request.query.get("environment")
        if path_certname is not None and not environment:
            raise Refusal(400, "The environment query parameter is required", reason="validation")
        try:
            fields.name(environment, "environment")
        except ReportError as error:
            raise Refusal.of(error) from None
        async with request_body(request) as body:
            envelope = Envelope(
                format="puppet",
                content_type=request.content_type,
                received_at=utcnow(),
                path_certname=path_certname,
                environment=environment,
            )
            report = await parse_report(request, body, envelope, "Could not parse report: ")
            if path_certname is not None and report.certname != path_certname:
                message = f"Report host {report.certname!r} does not match node {path_certname!r}"
                raise Refusal(400, message, reason="validation", kind="REPORT_HOST_MISMATCH")
            if not identity.may_upload_for(report.certname):
                raise _forbidden(request, identity.subject)
            accepted = await accept_report(request.app, report, envelope)
    log_accepted(request, report, accepted, len(body), started)
    # Puppet agents require a JSON array: puppetserver answers the processor names.
    return json_response(request.app[PIPELINE].listed)


def _forbidden(request: web.Request, subject: str) -> Refusal:
    return Refusal(
        403,
        f"Forbidden request: {request.path} (method {request.method})",
        reason="auth",
        kind="FORBIDDEN",
    )


async def put_puppet_report(request: web.Request) -> web.Response:
    return await _puppet_ingest(request, request.match_info["nodename"])


async def post_puppet_report(request: web.Request) -> web.Response:
    return await _puppet_ingest(request, None)


def setup_routes(app: web.Application) -> None:
    app.router.add_put("/puppet/v3/report/{nodename}", put_puppet_report)
    app.router.add_post("/puppet/v3/report", post_puppet_report)
    app.router.add_post("/reports/upload", post_puppet_report)
