"""Chef: the reporting protocol (``/organizations/ORG/reports/nodes/NODE/runs``,
spec/chef.md) and the data collector (``POST /data-collector/v0/``).

Error bodies are Chef's: ``{"error": ["..."]}``. Chef node names may have
capitals; like Foreman with its hosts, reportd lowercases them, since they
share the certname namespace with Puppet's nodes.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from reportd.appkeys import PARSER, STORAGE
from reportd.auth import UPLOAD, Identity
from reportd.formats import Envelope, ReportError, chef, fields, parse_time, with_origin
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
from reportd.storage import unavailable_errors
from reportd.web import identify, json_error, json_response, public_base_url

PROTOCOL_HEADER = "X-Ops-Reporting-Protocol-Version"
PROTOCOL_VERSION = "0.1.0"
RUNS = "/organizations/{org}/reports/nodes/{node}/runs"


def chef_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.HTTPException:
    return json_error(status, {"error": [message]}, headers)


def _render(refusal: Refusal) -> web.HTTPException:
    return chef_error(refusal.status, refusal.message, refusal.headers)


async def _authorized(request: web.Request, certname: str | None) -> Identity:
    identity = await identify(request)
    if not identity.allows(UPLOAD):
        who = "this client" if identity.subject == "nobody" else identity.subject
        raise Refusal(
            403,
            f"{who} may not upload reports: that takes a node certificate, a token with"
            " upload_config_reports, or an address in anonymous_networks",
            reason="auth",
        )
    if certname is not None and not identity.may_upload_for(certname):
        message = f"{identity.subject} may only upload its own reports, not {certname}'s"
        raise Refusal(403, message, reason="auth")
    return identity


def _path_names(request: web.Request) -> tuple[str, str]:
    """The node (a certname, lowercased) and organization of a reporting URL."""
    node, org = request.match_info["node"].lower(), request.match_info["org"]
    check_certname(node, "node")
    try:
        fields.name(org, "organization")
    except ReportError as error:
        raise Refusal.of(error) from None
    return node, org


def _check_protocol(request: web.Request) -> None:
    # What the real reporting server answers: 404 without the header, 406 for another version.
    version = request.headers.get(PROTOCOL_HEADER)
    if version is None:
        raise Refusal(404, f"{PROTOCOL_HEADER} header is required", reason="validation")
    if version != PROTOCOL_VERSION:
        raise Refusal(
            406,
            f"reporting protocol version {version[:40]} is not supported (use {PROTOCOL_VERSION})",
            reason="validation",
        )


async def _decode(request: web.Request, body: bytes) -> dict[str, Any]:
    try:
        return await request.app[PARSER].run(len(body), False, chef.decode, body)
    except ReportError as error:
        raise Refusal.of(error) from None


def _start_time(data: dict) -> float | None:
    if not isinstance(data.get("start_time"), str):
        return None
    try:
        return parse_time(data["start_time"], "start_time")[0].timestamp()
    except ReportError as error:
        raise Refusal.of(error) from None


def _run_id(value: Any) -> str:
    run_id = chef.valid_run_id(value)
    if run_id is None:
        shown = value[:100] if isinstance(value, str) else value if isinstance(value, int) else type(value)
        raise Refusal(400, f"run_id {shown!r} is not a UUID", reason="validation")
    return run_id


async def _storage(call) -> Any:
    try:
        return await call
    except unavailable_errors():
        raise Refusal(
            503, "reportd cannot store reports right now", reason="unavailable", headers={"Retry-After": "30"}
        ) from None


async def start_run(request: web.Request) -> web.Response:
    async with refusals(request, _render):
        node, org = _path_names(request)
        await _authorized(request, node)
        _check_protocol(request)
        async with request_body(request) as body:
            data = await _decode(request, body)
        if data.get("action") != "start":
            action = data.get("action")
            raise Refusal(400, f"action: expected 'start', got {str(action)[:40]!r}", reason="validation")
        run_id = _run_id(data.get("run_id"))
        started_at = _start_time(data)
        storage = request.app[STORAGE]
        if not await _storage(storage.record_run_start("chef", node, run_id, started_at, time.time())):
            raise Refusal(409, "Report already exists", reason="validation")
    uri = f"{public_base_url(request)}{RUNS.format(org=org, node=node)}/{run_id}"
    return json_response({"uri": uri}, status=201)


async def end_run(request: web.Request) -> web.Response:
    started = time.perf_counter()
    async with refusals(request, _render):
        node, org = _path_names(request)
        await _authorized(request, node)
        _check_protocol(request)
        run_id = _run_id(request.match_info["run_id"])
        async with request_body(request) as body:
            # The start may have been lost: the run is accepted whole and flagged.
            start_missing = not await _storage(request.app[STORAGE].run_started("chef", node, run_id))
            envelope = Envelope(
                format="chef",
                content_type="application/json",  # Chef sends gzip without saying it is JSON
                received_at=utcnow(),
                path_certname=node,
                params={"protocol": chef.REPORTING, "organization": org, "run_id": run_id,
                        "start_missing": start_missing},
            )  # fmt: skip
            report = await parse_report(request, body, envelope)
            accepted = await accept_report(request.app, report, envelope)
    log_accepted(request, report, accepted, len(body), started)
    return json_response({}, status=201)


async def data_collector(request: web.Request) -> web.Response:
    started = time.perf_counter()
    async with refusals(request, _render):
        await _authorized(request, None)
        async with request_body(request) as body:
            data = await _decode(request, body)
            message_type = data.get("message_type")
            node = data.get("node_name")
            if not isinstance(node, str) or not node:
                raise Refusal(400, "node_name: required", reason="validation")
            node = node.lower()
            check_certname(node, "node_name")
            await _authorized(request, node)
            run_id = _run_id(data.get("run_id"))
            if message_type == "run_start":
                started_at = _start_time(data)
                await _storage(
                    request.app[STORAGE].record_run_start("chef", node, run_id, started_at, time.time())
                )
                return json_response({})
            if message_type != "run_converge":
                shown = str(message_type)[:40]
                raise Refusal(
                    400,
                    f"message_type {shown!r} is not supported (run_start, run_converge)",
                    reason="validation",
                )
            envelope = Envelope(
                format="chef",
                content_type="application/json",
                received_at=utcnow(),
                params={"protocol": chef.DATA_COLLECTOR},
            )
            try:
                report = await request.app[PARSER].run(len(body), False, _converged, data, body, envelope)
            except ReportError as error:
                raise Refusal.of(error) from None
            accepted = await accept_report(request.app, report, envelope)
    log_accepted(request, report, accepted, len(body), started)
    return json_response({})


def _converged(data: dict[str, Any], body: bytes, envelope: Envelope):
    return with_origin(chef.from_data(data, envelope), body, envelope)


def setup_routes(app: web.Application) -> None:
    app.router.add_post(RUNS, start_run)
    app.router.add_post(RUNS + "/{run_id}", end_run)
    app.router.add_post("/data-collector/v0/", data_collector)
    app.router.add_post("/data-collector/v0", data_collector)
