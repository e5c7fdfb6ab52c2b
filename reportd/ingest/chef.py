"""Chef: the reporting protocol (``/organizations/ORG/reports/nodes/NODE/runs``,
spec/chef.md) and the data collector (``POST /data-collector/v0/``).

Error bodies are Chef's: ``{"error": ["..."]}``.
"""

from __future__ import annotations

import time

from aiohttp import web

from reportd.auth import UPLOAD, Identity
from reportd.formats import Envelope, ReportError, chef, parse, parse_time
from reportd.ingest import accept_report, log_accepted, log_rejected, read_report_body
from reportd.model import utcnow
from reportd.web import CONFIG, STORAGE, base_url, identify, json_error, json_response

PROTOCOL_HEADER = "X-Ops-Reporting-Protocol-Version"
PROTOCOL_VERSION = "0.1.0"
RUNS = "/organizations/{org}/reports/nodes/{node}/runs"


def chef_error(status: int, message: str) -> web.HTTPException:
    return json_error(status, {"error": [message]})


async def _authorized(request: web.Request, certname: str | None) -> Identity:
    identity = await identify(request)
    if not identity.allows(UPLOAD) or (certname is not None and not identity.may_upload_for(certname)):
        log_rejected(request, "auth", "forbidden", certname=certname, subject=identity.subject)
        raise chef_error(403, f"{identity.subject} may not upload reports for {certname or 'this node'}")
    return identity


def _check_protocol(request: web.Request) -> None:
    # What the real reporting server answers: 404 without the header, 406 for another version.
    version = request.headers.get(PROTOCOL_HEADER)
    if version is None:
        log_rejected(request, "validation", f"no {PROTOCOL_HEADER}")
        raise chef_error(404, f"{PROTOCOL_HEADER} header is required")
    if version != PROTOCOL_VERSION:
        log_rejected(request, "validation", f"{PROTOCOL_HEADER}: {version}")
        raise chef_error(
            406, f"reporting protocol version {version} is not supported (use {PROTOCOL_VERSION})"
        )


async def _body(request: web.Request) -> bytes:
    body = await read_report_body(request)
    if body is None:
        raise chef_error(413, f"body exceeds {request.app[CONFIG].max_body_size} bytes")
    return body


def _decode(request: web.Request, body: bytes) -> dict:
    try:
        return chef.decode(body)
    except ReportError as error:
        log_rejected(request, "parse", error.message)
        raise chef_error(400, error.message) from None


def _start_time(data: dict) -> float | None:
    if not isinstance(data.get("start_time"), str):
        return None
    try:
        return parse_time(data["start_time"], "start_time")[0].timestamp()
    except ReportError as error:
        raise chef_error(400, error.message) from None


async def _accept(request: web.Request, body: bytes, envelope: Envelope, node: str, started: float) -> None:
    try:
        report = parse(body, envelope)
    except ReportError as error:
        log_rejected(request, "parse", error.message, certname=node)
        raise chef_error(400, error.message) from None
    accepted = await accept_report(request.app, report, envelope)
    log_accepted(request, report, accepted, len(body), started)


async def start_run(request: web.Request) -> web.Response:
    node, org = request.match_info["node"], request.match_info["org"]
    await _authorized(request, node)
    _check_protocol(request)
    data = _decode(request, await _body(request))
    if data.get("action") != "start":
        raise chef_error(400, f"action: expected 'start', got {data.get('action')!r}")
    run_id = chef.valid_run_id(data.get("run_id"))
    if run_id is None:
        log_rejected(request, "validation", "run_id is not a UUID", certname=node)
        raise chef_error(400, f"run_id {data.get('run_id')!r} is not a UUID")
    started_at = _start_time(data)
    if not await request.app[STORAGE].record_run_start("chef", node, run_id, started_at, time.time()):
        raise chef_error(409, "Report already exists")
    uri = f"{base_url(request)}{RUNS.format(org=org, node=node)}/{run_id}"
    return json_response({"uri": uri}, status=201)


async def end_run(request: web.Request) -> web.Response:
    started = time.perf_counter()
    node, org = request.match_info["node"], request.match_info["org"]
    await _authorized(request, node)
    _check_protocol(request)
    body = await _body(request)
    run_id = chef.valid_run_id(request.match_info["run_id"])
    if run_id is None:
        raise chef_error(400, f"run_id {request.match_info['run_id']!r} is not a UUID")
    # The start may have been lost: the run is accepted whole and flagged.
    start_missing = not await request.app[STORAGE].run_started("chef", node, run_id)
    envelope = Envelope(
        format="chef",
        content_type="application/json",  # Chef sends gzip without saying it is JSON
        received_at=utcnow(),
        path_certname=node,
        params={"protocol": chef.REPORTING, "organization": org, "run_id": run_id,
                "start_missing": start_missing},
    )  # fmt: skip
    await _accept(request, body, envelope, node, started)
    return json_response({}, status=201)


async def data_collector(request: web.Request) -> web.Response:
    started = time.perf_counter()
    await _authorized(request, None)
    body = await _body(request)
    data = _decode(request, body)
    message_type = data.get("message_type")
    node = data.get("node_name")
    if not isinstance(node, str) or not node:
        raise chef_error(400, "node_name: required")
    identity = await _authorized(request, node)
    run_id = chef.valid_run_id(data.get("run_id"))
    if run_id is None:
        raise chef_error(400, f"run_id {data.get('run_id')!r} is not a UUID")
    if message_type == "run_start":
        started_at = _start_time(data)
        await request.app[STORAGE].record_run_start("chef", node, run_id, started_at, time.time())
        return json_response({})
    if message_type != "run_converge":
        log_rejected(request, "validation", f"message_type {message_type!r}", subject=identity.subject)
        raise chef_error(400, f"message_type {message_type!r} is not supported (run_start, run_converge)")
    envelope = Envelope(
        format="chef",
        content_type="application/json",
        received_at=utcnow(),
        params={"protocol": chef.DATA_COLLECTOR},
    )
    await _accept(request, body, envelope, node, started)
    return json_response({})


def setup_routes(app: web.Application) -> None:
    app.router.add_post(RUNS, start_run)
    app.router.add_post(RUNS + "/{run_id}", end_run)
    app.router.add_post("/data-collector/v0/", data_collector)
    app.router.add_post("/data-collector/v0", data_collector)
