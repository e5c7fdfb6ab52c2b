"""The ``store`` processor: every report's summary and body, each node's latest status.

Also serves the query API: ``GET /api/v1/reports``, ``/api/v1/reports/{id}``,
``/api/v1/nodes`` and ``/api/v1/nodes/{certname}``. Written against reportd's
public plugin API only, as a third-party plugin would be.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import orjson
from aiohttp import web

from reportd import (
    INT64_MAX,
    RUN_STATUSES,
    PluginContext,
    Processor,
    Report,
    ReportError,
    ReportQuery,
    Setting,
    StoredReport,
    api_error,
    as_duration,
    as_positive_int,
    change_kind,
    drain,
    every,
    hookimpl,
    is_stale,
    is_yaml,
    json_response,
    public_base_url,
    query_integer,
    query_timestamp,
    require_permission,
)

from .store_commands import reports as reports_command

T = TypeVar("T")
NAME = "store"
VIEW = "view_reports"
MAX_LIMIT = 1000
SUMMARY_RESOURCE_KEYS = (
    "total", "changed", "failed", "failed_to_restart", "skipped", "out_of_sync",
    "restarted", "scheduled", "corrective_change",
)  # fmt: skip
# What only some wire formats have, shown with each report (Foreman's packed
# status_bits, Chef's run without a start, ...).
SUMMARY_EXTRA_KEYS = ("status", "status_bits", "reporter", "check_mode", "organization", "start_missing")


@hookimpl
def reportd_declare_settings():
    return {
        NAME: {
            "retention_days": Setting("14", as_positive_int, "days reports are kept"),
            "expire_interval": Setting("1h", as_duration, "how often old reports are deleted"),
            "expire_batch": Setting("1000", as_positive_int, "reports deleted per transaction"),
        }
    }


@hookimpl
def reportd_register_processors():
    return [StoreProcessor]


@hookimpl
def reportd_register_commands(cli: click.Group):
    cli.add_command(reports_command)


class StoreProcessor(Processor):
    name = NAME
    batch_size = 200

    async def process_batch(self, reports: Sequence[Report]) -> None:
        await self.context.storage.store_reports([stored_report(r) for r in reports])


def stored_report(report: Report) -> StoredReport:
    assert report.id is not None
    return StoredReport(
        id=report.id,
        certname=report.certname,
        environment=report.environment,
        status=report.status,
        change_kind=change_kind(report, report.status),
        noop=report.noop,
        format=report.format,
        origin=report.origin,
        transaction_uuid=report.transaction_uuid,
        job_id=report.job_id,
        configuration_version=report.configuration_version,
        run_time=report.run_time.timestamp(),
        start_time=report.start_time.timestamp() if report.start_time else None,
        end_time=report.end_time.timestamp() if report.end_time else None,
        received_at=report.received_at.timestamp(),
        summary=summary(report),
        organization=report.extra.get("organization"),
        organization_id=report.extra.get("organization_id"),
        location_id=report.extra.get("location_id"),
    )


def summary(report: Report) -> dict[str, Any]:
    resources = report.metrics.get("resources", {})
    return {
        "resources": {key: resources.get(key, 0) for key in SUMMARY_RESOURCE_KEYS},
        "events": report.metrics.get("events", {}),
        "run_seconds": report.metrics.get("time", {}).get("total"),
        # every metric, so a node's figures can be shown (and /metrics rebuilt) from its row
        "metrics": report.metrics,
        "transaction_completed": report.transaction_completed,
        "agent_status": report.agent_status,
        "noop_pending": report.noop_pending,
        "cached_catalog_status": report.cached_catalog_status,
        "puppet_version": report.puppet_version,
        "time_without_offset": report.time_without_offset,
        **{key: report.extra[key] for key in SUMMARY_EXTRA_KEYS if key in report.extra},
    }


@hookimpl
def reportd_add_routes(app: web.Application, context: PluginContext):
    api = StoreAPI(context)
    app.router.add_get("/api/v1/reports", api.list_reports)
    app.router.add_get("/api/v1/reports/{id}", api.get_report)
    app.router.add_get("/api/v1/nodes", api.list_nodes)
    app.router.add_get("/api/v1/nodes/{certname}", api.get_node)
    if NAME in context.processors:
        settings = context.plugin_settings(NAME)

        async def expiry(app: web.Application):
            async def expire() -> None:
                cutoff = time.time() - settings["retention_days"] * 86400
                batch = settings["expire_batch"]
                await drain(lambda: context.storage.expire_reports(cutoff, batch))

            async with every(settings["expire_interval"], expire, name="store-expiry"):
                yield

        app.cleanup_ctx.append(expiry)


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


class StoreAPI:
    def __init__(self, context: PluginContext) -> None:
        self.context = context

    def report_item(self, request: web.Request, row: StoredReport) -> dict[str, Any]:
        return {
            "id": row.id,
            "url": f"{public_base_url(request)}/api/v1/reports/{row.id}",
            "certname": row.certname,
            "environment": row.environment,
            "status": row.status,
            "change_kind": row.change_kind,
            "noop": row.noop,
            "format": row.format,
            "origin": row.origin,
            "transaction_uuid": row.transaction_uuid,
            "job_id": row.job_id,
            "configuration_version": row.configuration_version,
            "run_time": _iso(row.run_time),
            "start_time": _iso(row.start_time),
            "end_time": _iso(row.end_time),
            "received_at": _iso(row.received_at),
            "organization": row.organization,
            "organization_id": row.organization_id,
            "location_id": row.location_id,
            "summary": row.summary,
        }

    async def list_reports(self, request: web.Request) -> web.Response:
        await require_permission(request, VIEW)
        params = request.query
        limit = _limit(params)
        report_query = ReportQuery(
            certname=params.get("certname"),
            status=_status(params),
            environment=params.get("environment"),
            since=_param(params, "since", query_timestamp),
            until=_param(params, "until", query_timestamp),
            organization=params.get("organization"),
            organization_id=_param(params, "organization_id", query_integer),
            location_id=_param(params, "location_id", query_integer),
            limit=limit + 1,
            after=_decode_cursor(params.get("cursor")),
        )
        rows = await self.context.storage.query_reports(report_query)
        next_url = None
        if len(rows) > limit:
            rows = rows[:limit]
            cursor = _encode_cursor(rows[-1].run_time, rows[-1].id)
            next_url = public_base_url(request) + str(request.rel_url.update_query(cursor=cursor))
        return json_response({"items": [self.report_item(request, r) for r in rows], "next": next_url})

    async def get_report(self, request: web.Request) -> web.Response:
        await require_permission(request, VIEW)
        try:
            report_id = query_integer(request.match_info["id"], low=0)
        except ValueError:
            raise api_error(400, "report id must be an integer", {"id": "an integer from 0"}) from None
        row = await self.context.storage.get_report(report_id)
        if row is None:
            raise api_error(404, f"no report {report_id}")
        if request.query.get("format") == "raw":
            # The type the body was read as, never the one the client claimed (text/html...).
            return web.Response(body=row.body, content_type=_raw_type(row))
        try:
            report = await self.context.rebuild_report(row.id, row.envelope, row.body)
        except ReportError as error:
            raise api_error(500, f"stored report unreadable: {error.message}") from None
        # The report is encoded once, off the loop when large, and spliced into the answer.
        encoded = await self.context.run_large(len(row.body), report.to_json)
        item = orjson.dumps(self.report_item(request, row))
        return web.Response(body=b"".join((item[:-1], b',"report":', encoded, b"}")),
                            content_type="application/json")  # fmt: skip

    def node_item(self, request: web.Request, node, now: float) -> dict[str, Any]:
        interval = self.context.config.stale.interval(node.certname, node.environment)
        last = datetime.fromtimestamp(node.last_received_at, UTC)
        return {
            "certname": node.certname,
            "environment": node.environment,
            "status": node.status,
            "change_kind": node.change_kind,
            "stale": is_stale(last, datetime.fromtimestamp(now, UTC), interval),
            "expected_interval_seconds": interval,
            "run_time": _iso(node.run_time),
            "last_received_at": _iso(node.last_received_at),
            "report_id": node.report_id,
            "report_url": f"{public_base_url(request)}/api/v1/reports/{node.report_id}",
            "summary": node.summary,
        }

    async def list_nodes(self, request: web.Request) -> web.Response:
        await require_permission(request, VIEW)
        limit = _limit(request.query)
        rows = await self.context.storage.list_nodes(
            environment=request.query.get("environment"),
            status=_status(request.query),
            limit=limit + 1,
            after=request.query.get("cursor"),
        )
        next_url = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_url = public_base_url(request) + str(request.rel_url.update_query(cursor=rows[-1].certname))
        now = time.time()
        return json_response({"items": [self.node_item(request, n, now) for n in rows], "next": next_url})

    async def get_node(self, request: web.Request) -> web.Response:
        await require_permission(request, VIEW)
        node = await self.context.storage.get_node(request.match_info["certname"])
        if node is None:
            raise api_error(404, f"no node {request.match_info['certname']}")
        return json_response(self.node_item(request, node, time.time()))


def _param(params, name: str, read: Callable[[str], T]) -> T | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        return read(value)
    except ValueError as error:
        raise api_error(400, f"invalid {name}", {name: str(error)}) from None


def _raw_type(row: StoredReport) -> str:
    if row.format == "puppet":
        yaml = is_yaml(row.envelope.get("content_type") or "", row.body)
        return "application/yaml" if yaml else "application/json"  # PSON too
    if row.format in ("foreman", "chef"):
        return "application/json"
    return "application/octet-stream"


def _status(params) -> str | None:
    # Refused rather than matched against nothing: an empty answer to a misspelt status reads
    # as "no node has failed".
    status = params.get("status")
    if status is not None and status not in RUN_STATUSES:
        raise api_error(400, "invalid status", {"status": f"one of {', '.join(RUN_STATUSES)}"})
    return status


def _limit(params) -> int:
    limit = _param(params, "limit", lambda raw: query_integer(raw, low=1, high=MAX_LIMIT))
    return 100 if limit is None else limit


def _encode_cursor(run_time: float, report_id: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([run_time, report_id])).decode().rstrip("=")


def _decode_cursor(value: str | None) -> tuple[float, int] | None:
    if not value:
        return None
    try:
        run_time, report_id = orjson.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        if type(report_id) is not int or not 0 <= report_id <= INT64_MAX:
            raise ValueError("report id out of range")
        run_time = float(run_time)
        if not math.isfinite(run_time):
            raise ValueError("run time out of range")
        return run_time, report_id
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise api_error(400, "invalid cursor", {"cursor": "as given in a previous next URL"}) from None
