"""The ``email`` plugin: report schedules (the API) and their digests by email.

``/api/v1/reports/schedules`` and ``/api/v1/reports/registries`` (spec/schedules.md,
seed 004) are served whenever the plugin is loaded. The scheduler, which mails each
schedule's digest once per period, runs only when ``[plugin:email] host`` names an
SMTP server: a daemon without one keeps the schedules and sends nothing. Block the
plugin (``disabled_plugins = reportd_plugins.email``) to have neither.

Also adds ``reportd schedules`` (list, runs, run ID --dry-run) to the command line.
Written against reportd's public plugin API only, as a third-party plugin would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
import orjson
import structlog
from aiohttp import web

from reportd import (
    EDITABLE,
    PluginContext,
    Schedule,
    ScheduleQuery,
    Setting,
    as_duration,
    as_path,
    as_positive_int,
    as_str,
    echo_json_lines,
    echo_table,
    hookimpl,
    json_error,
    json_response,
    one_of,
    query_integer,
    require_permission,
    run_with_context,
)

from .email_digest import message, render_text
from .email_periods import FREQUENCIES
from .email_scheduler import (
    Clock,
    EmailMetrics,
    Mailer,
    RetryPolicy,
    Scheduler,
    SMTPSettings,
    preview,
)

NAME = "email"
VIEW, EDIT = "view_schedules", "edit_schedules"
TYPES = ("generic", "failures")
SEND_VIA = ("email",)
MAX_PAGE = 1_000_000_000  # page x page_size must stay an offset the database takes
MAX_PAGE_SIZE = 1000
MAX_NAME = 200
READ_ONLY = ("id", "scheduled_at", "scheduled_by", "start_timestamp", "end_timestamp")
# Not the full RFC 5322 grammar: what a mail server takes as a recipient, without display names.
ADDRESS = re.compile(r"^[^@\s,;<>\"()\[\]]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*$")
FORBIDDEN = {"message": "Forbidden", "status": "error"}
log = structlog.get_logger("reportd_plugins.email")


@hookimpl
def reportd_declare_settings():
    return {
        NAME: {
            "host": Setting("", as_str, "SMTP server; empty: schedules are kept but nothing is sent"),
            "port": Setting("25", as_positive_int, "SMTP port (587 for STARTTLS submission, 465 for TLS)"),
            "security": Setting("auto", one_of("auto", "starttls", "tls", "none"), "TLS to the server"),
            "user": Setting("", as_str, "SMTP AUTH user; empty: no AUTH"),
            "password_file": Setting("", as_path, "file holding the SMTP password"),
            "from": Setting("", as_str, "sender address; empty: reportd@<this host's FQDN>"),
            "ca_file": Setting("", as_path, "CA bundle for the server's certificate; empty: system CAs"),
            "timeout": Setting("30s", as_duration, "longest wait for the connection and each SMTP reply"),
            "retry_initial": Setting("1m", as_duration, "first retry of a failed send"),
            "retry_max": Setting("1h", as_duration, "longest retry delay"),
            "max_attempts": Setting("10", as_positive_int, "sends of one period before it is given up"),
            "poll_interval": Setting("30s", as_duration, "how often schedules are checked"),
            "settle": Setting("1m", as_duration, "wait after a period's end for its last reports"),
            "claim_lease": Setting("10m", as_duration, "a period claimed by a dead daemon is free after"),
        }
    }


@dataclass
class EmailState:
    """The plugin's objects for one daemon, in ``context.state["email"]``.

    ``clock`` is what the API and the scheduler take the time from; tests replace
    it before the application starts.
    """

    metrics: EmailMetrics
    clock: Clock = field(default_factory=Clock)
    scheduler: Scheduler | None = None
    task: asyncio.Task | None = None
    soon: set[asyncio.Task] = field(default_factory=set)  # once schedules run at creation

    def run_soon(self, schedule: Schedule) -> None:
        """Run a new ``once`` schedule now rather than at the next poll (its claim keeps it single)."""
        if self.scheduler is None:
            return
        task = asyncio.create_task(self.scheduler.run_schedule(schedule), name=f"email-once-{schedule.id}")
        self.soon.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.soon.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("email_schedule_failed", error=repr(task.exception()))


def plugin_state(context: PluginContext) -> EmailState:
    state = context.state.get(NAME)
    if state is None:
        state = context.state[NAME] = EmailState(EmailMetrics(context.telemetry.registry))
    return state


def make_scheduler(
    context: PluginContext, smtp: SMTPSettings, clock: Clock, metrics: EmailMetrics
) -> Scheduler:
    settings = context.plugin_settings(NAME)
    return Scheduler(
        context.storage,
        Mailer(smtp),
        clock=clock,
        retry=RetryPolicy(settings["retry_initial"], settings["retry_max"], settings["max_attempts"]),
        metrics=metrics,
        poll_interval=settings["poll_interval"],
        lease=settings["claim_lease"],
        settle=settings["settle"],
    )


@hookimpl
async def reportd_startup(context: PluginContext):
    state = plugin_state(context)
    settings = context.plugin_settings(NAME)
    if not settings["host"]:
        log.info("email_scheduler_disabled", reason="[plugin:email] host is not set")
        return
    # In a thread: without a from, the sender is made of this host's FQDN, a DNS lookup.
    smtp = await asyncio.to_thread(SMTPSettings.from_settings, settings)
    state.scheduler = make_scheduler(context, smtp, state.clock, state.metrics)
    state.task = asyncio.create_task(state.scheduler.run_forever(), name="email-scheduler")


@hookimpl
async def reportd_shutdown(context: PluginContext):
    state = plugin_state(context)
    tasks = [*state.soon, *([state.task] if state.task is not None else [])]
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    state.task = None


# -- the API ------------------------------------------------------------------------


def _error(message: str, details: Mapping[str, Any] | None = None) -> web.HTTPException:
    body: dict[str, Any] = {"message": message, "status": "error"}
    if details:
        body["details"] = dict(details)
    return json_error(400, body)


def _ok(message: str, data: Any = None) -> web.Response:
    body: dict[str, Any] = {"data": data} if data is not None else {}
    return json_response({**body, "message": message, "status": "ok"})


async def _allow(request: web.Request, permission: str):
    return await require_permission(request, permission, forbidden=lambda _: json_error(403, FORBIDDEN))


def _owner(subject: str) -> str:
    """The token's name when a token was presented, else who the caller is (anonymous, cert:...)."""
    words = subject.split()
    for word in words:
        if word.startswith("token:"):
            return word.removeprefix("token:")
    return words[0] if words else "nobody"


def _strings(value: Any, *, allow_empty: bool = False) -> list[str] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        return None
    if not value and not allow_empty:
        return None
    return [v.strip() for v in value]


def validate_attrs(attrs: Any, *, partial: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """The schedule fields in ``attrs``, checked; and a problem per bad field."""
    if not isinstance(attrs, dict):
        return {}, {"attrs": "required: an object of schedule fields"}
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key in attrs:
        if key in READ_ONLY:
            errors[key] = "read-only: set by reportd"
        elif key not in EDITABLE:
            errors[key] = "unknown field"
    if partial and not attrs:
        errors["attrs"] = "nothing to update: give at least one field"
    defaults = (
        {} if partial else {"type": "generic", "schedule": "daily", "send_via": "email", "services": None}
    )
    required = () if partial else ("name", "hosts", "send_to", "timezone")
    for key in required:
        if key not in attrs:
            errors[key] = "required"
    merged = {**defaults, **{k: v for k, v in attrs.items() if k in EDITABLE}}
    for key, value in merged.items():
        problem = None
        if key == "name":
            if not isinstance(value, str) or not 1 <= len(value.strip()) <= MAX_NAME:
                problem = f"a string of 1 to {MAX_NAME} characters"
            else:
                value = value.strip()
        elif key == "hosts":
            value = _strings(value)
            if value is None:
                problem = "a non-empty list of certnames or shell globs"
        elif key == "services":
            if value is not None:
                value = _strings(value, allow_empty=True)
                if value is None:
                    problem = "null (every environment) or a list of environment names"
                elif not value:
                    value = None  # an empty list reads as "no filter", as null does
        elif key in ("type", "schedule", "send_via"):
            choices = {"type": TYPES, "schedule": FREQUENCIES, "send_via": SEND_VIA}[key]
            if value not in choices:
                problem = f"one of {', '.join(choices)}"
        elif key == "send_to":
            if isinstance(value, str):
                value = [value]
            addresses = _strings(value)
            bad = [a for a in addresses or () if not ADDRESS.match(a)]
            if addresses is None:
                problem = "a non-empty list of email addresses"
            elif bad:
                problem = f"not an email address: {', '.join(bad)}"
            value = addresses
        elif key == "timezone":
            problem = _timezone_problem(value)
        if problem:
            errors[key] = problem
        else:
            values[key] = value
    return values, errors


def _timezone_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return "an IANA timezone name, e.g. Europe/Rome"
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown timezone {value!r} (an IANA name, e.g. Europe/Rome)"
    return None


async def _json(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None


async def _attrs(request: web.Request, failure: str, *, partial: bool) -> dict[str, Any]:
    """The checked schedule fields of a ``{"attrs": {...}}`` body; a 400 saying ``failure`` if bad."""
    body = await _json(request)
    if not isinstance(body, dict):
        raise _error(failure, {"attrs": 'the body must be {"attrs": {...}}'})
    values, errors = validate_attrs(body.get("attrs"), partial=partial)
    if errors:
        raise _error(failure, errors)
    return values


def _int_param(params, name: str, errors: dict[str, str], *, minimum: int | None = None, maximum=None):
    raw = params.get(name)
    if raw is None:
        return None
    try:
        value = query_integer(raw)  # 64-bit: a larger number is no valid page, time or size either
    except ValueError:
        errors[name] = "an integer"
        return None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        errors[name] = f"an integer from {minimum}" + (f" to {maximum}" if maximum is not None else "")
        return None
    return value


class SchedulesAPI:
    def __init__(self, context: PluginContext) -> None:
        self.context = context

    @property
    def storage(self):
        return self.context.storage

    async def list(self, request: web.Request) -> web.Response:
        await _allow(request, VIEW)
        params = request.query
        errors: dict[str, str] = {}
        paginate = params.get("paginate", "").strip().lower()
        if paginate not in ("true", "false", "1", "0"):
            errors["paginate"] = "required: true or false"
        paginated = paginate in ("true", "1")
        page = page_size = None
        if paginated:
            for key in ("page", "page_size"):
                if key not in params:
                    errors[key] = "required when paginate is true"
            page = _int_param(params, "page", errors, minimum=1)
            if page is not None and page > MAX_PAGE:
                errors["page"] = f"an integer from 1 to {MAX_PAGE}"
            page_size = _int_param(params, "page_size", errors, minimum=1, maximum=MAX_PAGE_SIZE)
        start = _int_param(params, "scheduled_at_start", errors)
        # The seed's name is scheduled_by_end; scheduled_at_end is accepted as well.
        end = _int_param(params, "scheduled_by_end", errors)
        if end is None:
            end = _int_param(params, "scheduled_at_end", errors)
        if errors:
            raise _error("Error with pagination fields", errors)
        id_list = None
        if "id_list" in params:
            id_list = [i.strip() for raw in params.getall("id_list") for i in raw.split(",") if i.strip()]
        query = ScheduleQuery(
            id=params.get("id"),
            id_list=id_list,
            name=params.get("name"),
            type=params.get("type"),
            schedule=params.get("schedule"),
            scheduled_at_start=start,
            scheduled_at_end=end,
            scheduled_by=params.get("scheduled_by"),
            limit=page_size if paginated else None,
            offset=(page - 1) * page_size if paginated and page and page_size else 0,
        )
        rows, total = await self.storage.list_schedules(query)
        pagination = {"page": page, "page_size": page_size, "total": total}
        if not paginated:
            pagination = {"page": 1, "page_size": len(rows), "total": total}
        data = {"registries": [s.to_api() for s in rows], "pagination": pagination}
        return _ok("List of report schedules", data)

    async def get(self, request: web.Request) -> web.Response:
        await _allow(request, VIEW)
        schedule = await self.storage.get_schedule(request.match_info["id"])
        if schedule is None:
            raise _error("Error retrieving schedules")
        return _ok("Report schedule retrieved", {"schedule": schedule.to_api()})

    async def create(self, request: web.Request) -> web.Response:
        identity = await _allow(request, EDIT)
        values = await _attrs(request, "Error creating new schedule", partial=False)
        clock = plugin_state(self.context).clock
        schedule = Schedule(
            id=str(uuid.uuid4()),
            name=values["name"],
            hosts=tuple(values["hosts"]),
            services=tuple(values["services"]) if values["services"] is not None else None,
            type=values["type"],
            schedule=values["schedule"],
            send_to=tuple(values["send_to"]),
            send_via=values["send_via"],
            timezone=values["timezone"],
            scheduled_at=int(clock.now() * 1_000_000),
            scheduled_by=_owner(identity.subject),
        )
        await self.storage.create_schedule(schedule)
        log.info("schedule_created", schedule_id=schedule.id, by=schedule.scheduled_by)
        if schedule.schedule == "once":
            plugin_state(self.context).run_soon(schedule)
        return _ok("Report schedule created succesfully", {"schedule": schedule.to_api()})

    async def update(self, request: web.Request) -> web.Response:
        await _allow(request, EDIT)
        values = await _attrs(request, "Error updating schedule", partial=True)
        schedule_id = request.match_info["id"]
        updated = await self.storage.update_schedule(schedule_id, values)
        if updated is None:
            raise _error("Error updating schedule", {"id": f"no schedule {schedule_id}"})
        log.info("schedule_updated", schedule_id=schedule_id, fields=sorted(values))
        return _ok("Report schedule updated succesfully", {"schedule": updated.to_api()})

    async def delete(self, request: web.Request) -> web.Response:
        await _allow(request, EDIT)
        body = await _json(request)
        ids = body.get("schedules_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
            raise _error(
                "Error deleting report schedules", {"schedules_ids": "a non-empty list of schedule ids"}
            )
        missing = await self.storage.delete_schedules(ids)
        if missing:
            raise _error(
                "Error deleting report schedules", {"schedules_ids": f"unknown: {', '.join(missing)}"}
            )
        log.info("schedules_deleted", schedule_ids=ids)
        return json_response({"message": "Schedules succesfully deleted", "status": "ok"})


@hookimpl
def reportd_add_routes(app: web.Application, context: PluginContext):
    plugin_state(context)  # the counters exist (at zero) from the first scrape on
    api = SchedulesAPI(context)
    app.router.add_get("/api/v1/reports/schedules", api.list)
    app.router.add_post("/api/v1/reports/schedules", api.create)
    app.router.add_get("/api/v1/reports/schedules/{id}", api.get)
    app.router.add_put("/api/v1/reports/schedules/{id}", api.update)
    app.router.add_delete("/api/v1/reports/registries", api.delete)


# -- the command line ----------------------------------------------------------------


def _micros_iso(micros: int | None) -> str:
    if micros is None:
        return "-"
    return datetime.fromtimestamp(micros / 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@hookimpl
def reportd_register_commands(cli: click.Group):
    @cli.group(short_help="Email digest schedules: list, runs, send one now.")
    def schedules() -> None:
        """Email report schedules: list them, their runs, preview or send a digest."""

    @schedules.command("list", short_help="Every schedule and its last run.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
    def schedules_list(as_json: bool) -> None:
        """Every schedule, with its last execution and its last send error."""
        rows, _ = run_with_context(lambda c: c.storage.list_schedules(ScheduleQuery()))
        if as_json:
            echo_json_lines({**s.to_api(), "last_error": s.last_error} for s in rows)
            return
        echo_table(
            ("ID", "SCHEDULE", "TYPE", "TIMEZONE", "LAST RUN", "NAME", "SEND TO", "LAST ERROR"),
            [(s.id, s.schedule, s.type, s.timezone, _micros_iso(s.end_timestamp), s.name,
              ", ".join(s.send_to), s.last_error) for s in rows],
            empty="no schedules (create one with POST /api/v1/reports/schedules)",
        )  # fmt: skip

    @schedules.command("runs", short_help="A schedule's periods and how they went.")
    @click.argument("schedule_id")
    @click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
    def schedules_runs(schedule_id: str, limit: int, as_json: bool) -> None:
        """A schedule's periods: sent, empty, pending (with attempts) or failed."""

        async def job(context: PluginContext):
            if await context.storage.get_schedule(schedule_id) is None:
                raise click.ClickException(f"no schedule {schedule_id}")
            return await context.storage.schedule_runs(schedule_id, limit)

        runs = run_with_context(job)
        if as_json:
            echo_json_lines(
                {"period_start": _micros_iso(r.period_start), "period_end": _micros_iso(r.period_end),
                 "state": r.state, "attempts": r.attempts, "last_error": r.last_error}
                for r in runs
            )  # fmt: skip
            return
        echo_table(
            ("PERIOD START", "PERIOD END", "STATE", "ATTEMPTS", "LAST ERROR"),
            [(_micros_iso(r.period_start), _micros_iso(r.period_end), r.state, r.attempts, r.last_error)
             for r in runs],
            empty=f"no runs of schedule {schedule_id} yet",
        )  # fmt: skip

    @schedules.command("run", short_help="Print or send a schedule's latest digest now.")
    @click.argument("schedule_id")
    @click.option("--dry-run", is_flag=True, help="print the digest instead of sending it")
    @click.option("--html", "show_html", is_flag=True, help="with --dry-run: the whole MIME message")
    def schedules_run(schedule_id: str, dry_run: bool, show_html: bool) -> None:
        """Build the digest of the schedule's latest ended period now; print it or send it.

        Sending this way does not mark the period: the scheduler still sends it in its turn.
        """

        async def job(context: PluginContext):
            schedule = await context.storage.get_schedule(schedule_id)
            if schedule is None:
                raise click.ClickException(f"no schedule {schedule_id}")
            now = time.time()
            digest = await preview(context.storage, schedule, now)
            settings = context.plugin_settings(NAME)
            smtp = SMTPSettings.from_settings(settings)  # without a from: a DNS lookup, once
            mail = message(digest, smtp.sender, now)
            if dry_run:
                return (
                    mail.as_string() if show_html else f"Subject: {digest.subject}\n\n{render_text(digest)}"
                )
            if not settings["host"]:
                raise click.ClickException("[plugin:email] host is not set: nothing to send with")
            await Mailer(smtp).send(mail)
            return f"sent to {', '.join(schedule.send_to)}: {digest.subject}"

        click.echo(run_with_context(job))
