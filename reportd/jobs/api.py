"""The orchestrator API: ``/orchestrator/v1/jobs...`` and ``/orchestrator/v1/command/...``.

Shapes and error bodies are PE orchestrator's (seed 002, spec jobs.md): errors
are ``{"kind": "puppetlabs.orchestrator/<kind>", "msg", "details"}``, ids and
links are absolute URLs (:func:`reportd.web.public_base_url`).
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from reportd.formats.fields import certname_problem
from reportd.jobs.tracker import MAX_ID_DIGITS, is_job_id, iso
from reportd.storage.jobs import (
    JOB_ORDER_COLUMNS,
    NODE_FAILED,
    NODE_FINISHED,
    NODE_RUNNING,
    NODE_STATES,
    NewJob,
)
from reportd.web import (
    BodyTimeout,
    BodyTooLarge,
    json_error,
    json_response,
    public_base_url,
    read_body,
    require_permission,
)

if TYPE_CHECKING:
    from reportd.context import PluginContext
    from reportd.jobs.tracker import Tracker
    from reportd.storage.jobs import JobNodeRecord, JobRecord

VIEW_JOBS = "view_jobs"
EDIT_JOBS = "edit_jobs"
PREFIX = "/orchestrator/v1"
MAX_COMMAND_BODY = 1024 * 1024
JOB_TYPES = ("deploy", "task", "plan")
DEPLOY_FLAGS = ("noop", "enforce_environment", "debug", "trace", "evaltrace")
DEPLOY_KEYS = {"environment", "scope", "concurrency", "timeout", "description", "target", *DEPLOY_FLAGS}
INTEGER = re.compile(r"-?[0-9]+")


def orchestrator_error(
    status: int, kind: str, msg: str, details: dict | None = None, headers: dict[str, str] | None = None
) -> web.HTTPException:
    return json_error(
        status, {"kind": f"puppetlabs.orchestrator/{kind}", "msg": msg, "details": details or {}}, headers
    )


def validation_error(msg: str, **details: Any) -> web.HTTPException:
    return orchestrator_error(400, "validation-error", msg, details)


def _not_permitted(permission: str) -> web.HTTPException:
    return orchestrator_error(
        403,
        "not-permitted",
        f"Permission denied: this request needs the {permission} permission",
        {"missing_permissions": [permission]},
    )


async def require(request: web.Request, permission: str):
    return await require_permission(request, permission, forbidden=_not_permitted)


def _integer(value: str | None, name: str, *, minimum: int = 0) -> int | None:
    if value is None:
        return None
    # Not int(): it takes "1_000" and " 7", and a huge number would overflow the database.
    if not INTEGER.fullmatch(value) or len(value.lstrip("-")) > MAX_ID_DIGITS:
        raise validation_error(f"{name} must be an integer, got {value!r}", **{name: value})
    number = int(value)
    if number < minimum:
        raise validation_error(f"{name} must be at least {minimum}, got {number}", **{name: value})
    return number


def _job_id(request: web.Request) -> int:
    raw = request.match_info["job_id"]
    if not is_job_id(raw):
        raise validation_error(f"The job id must be an integer, got {raw!r}", job_id=raw)
    return int(raw)


def _owner(subject: str) -> tuple[str, str]:
    first = subject.split()[0] if subject else "anonymous"
    kind, _, name = first.partition(":")
    return (first, name) if name else (first, kind)


class JobsAPI:
    def __init__(self, context: PluginContext, tracker: Tracker) -> None:
        self.context = context
        self.storage = context.storage
        self.tracker = tracker

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(f"{PREFIX}/jobs", self.list_jobs)
        app.router.add_get(f"{PREFIX}/jobs/{{job_id}}", self.get_job)
        app.router.add_get(f"{PREFIX}/jobs/{{job_id}}/nodes", self.get_nodes)
        app.router.add_get(f"{PREFIX}/jobs/{{job_id}}/report", self.get_report)
        app.router.add_get(f"{PREFIX}/jobs/{{job_id}}/events", self.get_events)
        app.router.add_post(f"{PREFIX}/command/deploy", self.deploy)
        app.router.add_post(f"{PREFIX}/command/stop", self.stop)

    def _base(self, request: web.Request) -> str:
        return public_base_url(request)

    def job_url(self, request: web.Request, job_id: int) -> str:
        return f"{self._base(request)}{PREFIX}/jobs/{job_id}"

    def job_body(self, request: web.Request, job: JobRecord) -> dict[str, Any]:
        url = self.job_url(request, job.id)
        return {
            "id": url,
            "name": str(job.id),
            "type": job.type,
            "state": job.state,
            "command": job.type,
            "description": job.description,
            "options": dict(job.options),
            "owner": {"id": job.owner_id, "login": job.owner_login},
            "timestamp": iso(job.updated_at),
            "created_timestamp": iso(job.created_at),
            "finished_timestamp": iso(job.finished_at),
            "environment": {"name": job.environment},
            "timeout": job.timeout,
            "node_count": job.node_count,
            "node_states": {state: job.node_states.get(state, 0) for state in NODE_STATES},
            "status": [
                {"state": s.state, "enter_time": iso(s.enter_time), "exit_time": iso(s.exit_time)}
                for s in job.status
            ],
            "nodes": {"id": f"{url}/nodes"},
            "report": {"id": f"{url}/report"},
            "events": {"id": f"{url}/events"},
        }

    async def _job(self, request: web.Request) -> JobRecord:
        job_id = _job_id(request)
        job = await self.storage.get_job(job_id)
        if job is None:
            raise orchestrator_error(
                404, "unknown-job", f"No job exists with id {job_id}", {"job_id": job_id}
            )
        return job

    def _next_events(self, request: web.Request, job_id: int, last: int | None, start: int) -> dict:
        following = last + 1 if last is not None else start
        return {"id": f"{self.job_url(request, job_id)}/events?start={following}", "event": str(following)}

    # -- reads -------------------------------------------------------------------
    async def list_jobs(self, request: web.Request) -> web.Response:
        await require(request, VIEW_JOBS)
        query = request.query
        limit = _integer(query.get("limit"), "limit")
        offset = _integer(query.get("offset"), "offset") or 0
        order_by = query.get("order_by")
        if order_by is not None and order_by not in JOB_ORDER_COLUMNS:
            raise validation_error(
                f"order_by must be one of {', '.join(JOB_ORDER_COLUMNS)}, got {order_by!r}", order_by=order_by
            )
        order = query.get("order", "asc" if order_by else "desc").lower()
        if order not in ("asc", "desc"):
            raise validation_error(f"order must be asc or desc, got {order!r}", order=order)
        job_type = query.get("type")
        if job_type is not None and job_type not in JOB_TYPES:
            raise validation_error(
                f"type must be one of {', '.join(JOB_TYPES)}, got {job_type!r}", type=job_type
            )
        jobs, total = await self.storage.list_jobs(
            type=job_type, order_by=order_by, descending=order == "desc", limit=limit, offset=offset
        )
        return json_response(
            {
                "items": [self.job_body(request, job) for job in jobs],
                "pagination": {
                    "limit": limit,
                    "offset": offset,
                    "total": total,
                    "order_by": order_by,
                    "order": order,
                    "type": job_type,
                },
            }
        )

    async def get_job(self, request: web.Request) -> web.Response:
        await require(request, VIEW_JOBS)
        return json_response(self.job_body(request, await self._job(request)))

    def node_body(self, request: web.Request, node: JobNodeRecord, now: float) -> dict[str, Any]:
        details = dict(node.details)
        if node.state == NODE_RUNNING and node.start_time is not None:
            details = {"run-time": max(0, round(now - node.start_time))}
        if node.report_id is not None:
            details["report-url"] = f"{self._base(request)}/api/v1/reports/{node.report_id}"
        if node.state in (NODE_FINISHED, NODE_FAILED) and node.message:
            details["message"] = node.message
        duration = None
        if node.start_time is not None and node.finish_time is not None:
            duration = round(max(0.0, node.finish_time - node.start_time), 3)
        return {
            "name": node.certname,
            "state": node.state,
            "timestamp": iso(node.updated_at),
            "transaction_uuid": node.transaction_uuid,
            "start_timestamp": iso(node.start_time),
            "finish_timestamp": iso(node.finish_time),
            "duration": duration,
            "details": details,
            "result": node.result,
            "message": node.message,
        }

    async def get_nodes(self, request: web.Request) -> web.Response:
        await require(request, VIEW_JOBS)
        job = await self._job(request)
        nodes = await self.storage.job_nodes(job.id)
        last = await self.storage.last_job_event(job.id)
        now = time.time()
        return json_response(
            {
                "items": [self.node_body(request, node, now) for node in nodes],
                "next-events": self._next_events(request, job.id, last, 0),
            }
        )

    async def get_report(self, request: web.Request) -> web.Response:
        await require(request, VIEW_JOBS)
        job = await self._job(request)
        nodes = await self.storage.job_nodes(job.id, with_events=True)
        return json_response(
            {
                "items": [
                    {
                        "node": node.certname,
                        "state": node.state,
                        "timestamp": iso(node.updated_at),
                        "events": list(node.events or ()),
                    }
                    for node in nodes
                ]
            }
        )

    async def get_events(self, request: web.Request) -> web.Response:
        await require(request, VIEW_JOBS)
        start = _integer(request.query.get("start"), "start") or 0
        job = await self._job(request)
        events = await self.storage.job_events(job.id, start)
        return json_response(
            {
                "items": [
                    {
                        "id": str(event.id),
                        "type": event.type,
                        "timestamp": iso(event.timestamp),
                        "details": {"node": event.certname, "detail": event.detail},
                        "message": event.message,
                    }
                    for event in events
                ],
                "next-events": self._next_events(request, job.id, events[-1].id if events else None, start),
            }
        )

    # -- commands ----------------------------------------------------------------
    async def _command_body(self, request: web.Request) -> dict[str, Any]:
        try:
            raw = await read_body(request, MAX_COMMAND_BODY)
        except BodyTooLarge:
            raise orchestrator_error(
                413, "request-too-large", f"The body exceeds {MAX_COMMAND_BODY} bytes"
            ) from None
        except BodyTimeout as timeout:
            raise orchestrator_error(
                408, "request-timeout", timeout.message, headers={"Connection": "close"}
            ) from None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise validation_error(f"The body is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise validation_error("The body must be a JSON object")
        return body

    async def deploy(self, request: web.Request) -> web.Response:
        identity = await require(request, EDIT_JOBS)
        body = await self._command_body(request)
        job = self._parse_deploy(body, identity.subject)
        job_id = await self.tracker.deploy(job)
        return json_response({"job": {"id": self.job_url(request, job_id), "name": str(job_id)}}, status=202)

    def _parse_deploy(self, body: dict[str, Any], subject: str) -> NewJob:
        unknown = sorted(set(body) - DEPLOY_KEYS)
        if unknown:
            raise validation_error(f"Unknown key {unknown[0]!r} in the deploy command", key=unknown[0])
        environment = body.get("environment")
        if not isinstance(environment, str) or not environment.strip():
            raise validation_error(
                "environment is required: the name of a Puppet environment", environment=environment
            )
        scope = body.get("scope")
        if not isinstance(scope, dict) or set(scope) != {"nodes"}:
            raise validation_error(
                'scope must be {"nodes": [certname, ...]} (applications, queries and node groups are'
                " not supported)",
                scope=scope,
            )
        nodes = scope["nodes"]
        if not isinstance(nodes, list) or not all(isinstance(n, str) and n.strip() for n in nodes):
            raise validation_error("scope.nodes must be a list of certnames", nodes=nodes)
        nodes = list(dict.fromkeys(n.strip() for n in nodes))
        if not nodes:
            raise orchestrator_error(400, "empty-target", "The deploy names no nodes (scope.nodes is empty)")
        invalid = {node: problem for node in nodes if (problem := certname_problem(node)) is not None}
        if invalid:
            # A node whose name no certificate can carry would never report: only errored at the timeout.
            node, problem = next(iter(invalid.items()))
            raise validation_error(f"scope.nodes: {node[:300]!r} {problem}", nodes=sorted(invalid)[:100])
        flags = {}
        for flag in DEPLOY_FLAGS:
            value = body.get(flag, flag == "enforce_environment")
            if not isinstance(value, bool):
                raise validation_error(f"{flag} must be true or false, got {value!r}", **{flag: value})
            flags[flag] = value
        concurrency = body.get("concurrency")
        if concurrency is not None and (type(concurrency) is not int or concurrency < 1):
            raise validation_error(
                f"concurrency must be a positive integer, got {concurrency!r}", concurrency=concurrency
            )
        timeout = body.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < 10**9
        ):
            raise validation_error(
                f"timeout must be a positive number of seconds, got {timeout!r}", timeout=timeout
            )
        description = body.get("description")
        if description is not None and not isinstance(description, str):
            raise validation_error("description must be a string", description=description)
        target = body.get("target")
        if target is not None and not isinstance(target, str):
            raise validation_error("target must be a string", target=target)
        owner_id, owner_login = _owner(subject)
        options = {
            "concurrency": concurrency,
            "noop": flags["noop"],
            "trace": flags["trace"],
            "debug": flags["debug"],
            "scope": {"nodes": nodes},
            "enforce_environment": flags["enforce_environment"],
            "environment": environment.strip(),
            "evaltrace": flags["evaltrace"],
            "target": target,
        }
        return NewJob(
            type="deploy",
            owner_id=owner_id,
            owner_login=owner_login,
            environment=environment.strip(),
            options=options,
            description=description,
            timeout=float(timeout) if timeout is not None else self.tracker.default_timeout,
            nodes=nodes,
        )

    async def stop(self, request: web.Request) -> web.Response:
        await require(request, EDIT_JOBS)
        body = await self._command_body(request)
        raw = body.get("job")
        if isinstance(raw, bool) or not isinstance(raw, str | int) or not is_job_id(str(raw)):
            raise validation_error(f'job must be a job id such as "81", got {raw!r}', job=raw)
        job_id = int(raw)
        job = await self.tracker.stop(job_id)
        if job is None:
            raise orchestrator_error(
                404, "unknown-job", f"No job exists with id {job_id}", {"job_id": job_id}
            )
        return json_response(
            {
                "job": {
                    "id": self.job_url(request, job_id),
                    "name": str(job_id),
                    "state": job.state,
                    "nodes": {state: job.node_states.get(state, 0) for state in NODE_STATES},
                }
            },
            status=202,
        )
