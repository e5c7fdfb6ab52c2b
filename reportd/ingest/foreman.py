"""Foreman-style report upload: ``POST /api/config_reports`` and friends (spec/foreman.md).

Answers in Foreman's shapes: 201 with the stored report, 403 exactly as
Foreman's (seed 000), 415 for a non-JSON body, 422 with Foreman's validation
body, also for a duplicate ``reported_at``.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from reportd.auth import UPLOAD
from reportd.formats import Envelope, ReportError, as_count, foreman, with_origin
from reportd.ingest import accept_report, log_accepted, log_rejected, read_report_body
from reportd.model import utcnow
from reportd.web import CONFIG, identify, json_error, json_response

PATHS = ("/api/reports", "/api/v2/reports", "/api/config_reports", "/api/v2/config_reports")
SCOPE_PARAMETERS = ("location_id", "organization_id")
FORBIDDEN = {
    "error": {
        "message": "Access denied",
        "details": f"Missing one of the required permissions: {UPLOAD}",
        "missing_permissions": [UPLOAD],
    }
}


def _validation_error(field: str, problem: str) -> web.HTTPException:
    # Rails' humanized attribute name: "reported_at" -> "Reported at"
    human = field.replace("_", " ").capitalize()
    body = {"error": {"id": None, "errors": {field: [problem]}, "full_messages": [f"{human} {problem}"]}}
    return json_error(422, body)


def _message_error(status: int, message: str) -> web.HTTPException:
    return json_error(status, {"error": {"message": message}})


def _scope_ids(request: web.Request, document: dict[str, Any]) -> dict[str, int | None]:
    ids: dict[str, int | None] = {}
    for name in SCOPE_PARAMETERS:
        value = request.query.get(name, document.get(name))
        if value is None or value == "":
            ids[name] = None
            continue
        number = as_count(value if isinstance(value, int) else str(value))
        if number is None:
            raise _validation_error(name, "must be an Integer")
        ids[name] = number
    return ids


async def post_config_report(request: web.Request) -> web.Response:
    started = time.perf_counter()
    identity = await identify(request)
    if not identity.allows(UPLOAD):
        log_rejected(request, "auth", "missing upload_config_reports", subject=identity.subject)
        raise json_error(403, FORBIDDEN)
    if request.content_type != "application/json":
        log_rejected(request, "validation", f"content type {request.content_type}")
        given = request.headers.get("Content-Type", "")
        raise _message_error(
            415,
            f"Media type in 'Content-Type: {given}' is unsupported in API v2 for POST and PUT requests."
            " Please use 'Content-Type: application/json'.",
        )
    body = await read_report_body(request)
    if body is None:
        raise _message_error(413, f"Report body exceeds {request.app[CONFIG].max_body_size} bytes")
    try:
        document = foreman.decode(body)
        envelope = Envelope(
            format="foreman",
            content_type="application/json",
            received_at=utcnow(),
            params=_scope_ids(request, document),
        )
        report = with_origin(foreman.from_data(document, envelope), body, envelope)
    except ReportError as error:
        log_rejected(request, "parse" if error.kind == "MALFORMED" else "validation", error.message)
        if error.kind == "MALFORMED":
            raise _message_error(400, error.message) from None
        raise _validation_error(error.field or "report", error.problem) from None
    if not identity.may_upload_for(report.certname):
        log_rejected(request, "auth", "certificate of another node", certname=report.certname)
        raise json_error(
            403,
            {"error": {"message": "Access denied",
                       "details": f"{identity.subject} may not upload reports for {report.certname}"}},
        )  # fmt: skip

    accepted = await accept_report(request.app, report, envelope)
    log_accepted(request, report, accepted, len(body), started)
    if accepted.duplicate:
        # Foreman's uniqueness validation of reported_at per host; the report is stored once.
        raise _validation_error("reported_at", "has already been taken")
    return json_response(
        {
            "id": accepted.report_id,
            "host": report.certname,
            "reported_at": report.extra["reported_at"].replace("+00:00", "Z"),
            # what Foreman answers: the counters decoded from the packed bits (so clamped)
            "status": foreman.unpack_status_bits(report.extra["status_bits"]),
            "origin": report.origin,
        },
        status=201,
    )


def setup_routes(app: web.Application) -> None:
    for path in PATHS:
        app.router.add_post(path, post_config_report)
        # chef-handler-foreman joins the URL's path and "/api/reports" with a slash of its own
        app.router.add_post("/" + path, post_config_report)
