"""Foreman-style report upload: ``POST /api/config_reports`` and friends (spec/foreman.md).

Answers in Foreman's shapes: 201 with the stored report, 403 exactly as
Foreman's (seed 000), 415 for a non-JSON body, 422 with Foreman's validation
body, also for a duplicate ``reported_at``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from aiohttp import web

from reportd.appkeys import PARSER
from reportd.auth import UPLOAD
from reportd.formats import Envelope, ReportError, as_count, foreman, with_origin
from reportd.ingest import Refusal, accept_report, log_accepted, refusals, request_body
from reportd.model import Report, utcnow
from reportd.web import identify, json_error, json_response

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


def _render(refusal: Refusal) -> web.HTTPException:
    if refusal.status == 400 and refusal.kind != "MALFORMED" and refusal.reason == "validation":
        return _validation_error(refusal.field or "report", refusal.problem)
    if refusal.status == 403 and refusal.kind == "MISSING_PERMISSION":
        return json_error(403, FORBIDDEN)
    error: dict[str, Any] = {"message": refusal.message}
    if refusal.status == 403:
        error = {"message": "Access denied", "details": refusal.message}
    return json_error(refusal.status, {"error": error}, refusal.headers)


def _scope_ids(query: Mapping[str, str], document: dict[str, Any]) -> dict[str, int | None]:
    ids: dict[str, int | None] = {}
    for name in SCOPE_PARAMETERS:
        value = query.get(name, document.get(name))
        if value is None or value == "":
            ids[name] = None
            continue
        number = as_count(value if type(value) is int else str(value))
        if number is None:
            raise ReportError.invalid(name, "must be an Integer")
        ids[name] = number
    return ids


def parse_upload(body: bytes, query: Mapping[str, str], received_at: datetime) -> tuple[Report, Envelope]:
    """The report of one upload and how it arrived; the scope ids come from the query, else the body."""
    document = foreman.decode(body)
    envelope = Envelope(
        format="foreman",
        content_type="application/json",
        received_at=received_at,
        params=_scope_ids(query, document),
    )
    return with_origin(foreman.from_data(document, envelope), body, envelope), envelope


async def post_config_report(request: web.Request) -> web.Response:
    started = time.perf_counter()
    async with refusals(request, _render):
        identity = await identify(request)
        if not identity.allows(UPLOAD):
            raise Refusal(403, "missing upload_config_reports", reason="auth", kind="MISSING_PERMISSION")
        if request.content_type != "application/json":
            given = request.headers.get("Content-Type", "")
            raise Refusal(
                415,
                f"Media type in 'Content-Type: {given[:100]}' is unsupported in API v2 for POST and PUT"
                " requests. Please use 'Content-Type: application/json'.",
                reason="validation",
            )
        async with request_body(request) as body:
            try:
                report, envelope = await request.app[PARSER].run(
                    len(body), False, parse_upload, body, dict(request.query), utcnow()
                )
            except ReportError as error:
                raise Refusal.of(error) from None
            if not identity.may_upload_for(report.certname):
                raise Refusal(
                    403, f"{identity.subject} may not upload reports for {report.certname}", reason="auth"
                )
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
