"""The application factory and the lifecycle of everything it owns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import pluggy
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from reportd.appkeys import AUTHENTICATOR, BODY_BUDGET, CONFIG, CONTEXT, PARSER, PIPELINE, STORAGE, TELEMETRY
from reportd.auth import VIEW_REPORTS, Authenticator
from reportd.config import Config, validate_plugin_sections
from reportd.context import PluginContext
from reportd.dispatch import RetryPolicy
from reportd.ingest import setup_ingest_routes
from reportd.jobs.api import JobsAPI
from reportd.jobs.tracker import NAME as JOBS_CONSUMER
from reportd.jobs.tracker import Tracker
from reportd.parsing import ByteBudget, ReportParser
from reportd.periodic import drain, every
from reportd.pipeline import Pipeline
from reportd.plugin_manager import declared_settings, known_plugin_names, processor_classes
from reportd.settings import ConfigError, did_you_mean
from reportd.storage import Storage, open_storage, unavailable_errors
from reportd.telemetry import Telemetry
from reportd.web import api_error, fail_truncated_deflate_bodies, json_response, require_permission

log = structlog.get_logger("reportd.app")

SPOOL_EXPIRY_INTERVAL = 600.0
SPOOL_EXPIRY_BATCH = 1000


@dataclass(frozen=True)
class Prepared:
    """The configuration checked against the loaded plugins."""

    settings: dict[str, dict[str, Any]]
    processor_classes: dict[str, type]


def prepare(config: Config, pm: pluggy.PluginManager) -> Prepared:
    """Validate plugin sections, the processor list and the blocked plugins' names.

    Raises one :class:`ConfigError` with every problem found.
    """
    problems: list[str] = []
    try:
        settings = validate_plugin_sections(config, declared_settings(pm))
    except ConfigError as error:
        problems += error.problems
        settings = {}
    classes = processor_classes(pm)
    for name in config.processors:
        if name == JOBS_CONSUMER:  # its deliveries are the internal job tracker's
            problems.append(f"{config.source}: [reportd] processors: {name!r} is reserved for job tracking")
        elif name not in classes:
            known = ", ".join(sorted(classes)) or "none"
            problems.append(
                f"{config.source}: [reportd] processors: no processor named {name!r}"
                f"{did_you_mean(name, classes)} (loaded: {known})"
            )
    plugins = known_plugin_names(pm, config.plugin_paths)
    for name in config.disabled_plugins:
        if name not in plugins:
            problems.append(
                f"{config.source}: [reportd] disabled_plugins: no plugin named {name!r}"
                f"{did_you_mean(name, plugins)} (see `reportd plugins`)"
            )
    if problems:
        raise ConfigError(*problems)
    return Prepared(settings, classes)


def create_app(
    config: Config, pm: pluggy.PluginManager, *, storage: Storage | None = None
) -> web.Application:
    """Build the application. No I/O happens until a runner starts it."""
    prepared = prepare(config, pm)
    fail_truncated_deflate_bodies()
    if storage is None:
        storage = open_storage(
            config.database_url,
            synchronous=config.sqlite_synchronous,
            exclusive=True,
            auto_migrate=config.auto_migrate,
        )
    parser = ReportParser(config.parse_workers)
    context = PluginContext(config, storage, prepared.settings, config.processors, Telemetry(), parser=parser)
    processors = [prepared.processor_classes[name](context) for name in config.processors]
    app = web.Application(client_max_size=config.max_body_size + 1, middlewares=[_error_answers])
    app.on_response_prepare.append(_close_after_unread_compressed_body)
    app.on_response_prepare.append(_security_headers)
    app[CONFIG] = config
    app[STORAGE] = storage
    app[CONTEXT] = context
    app[AUTHENTICATOR] = Authenticator(config, storage.find_token)
    app[TELEMETRY] = context.telemetry
    app[PARSER] = parser
    app[BODY_BUDGET] = ByteBudget(config.body_memory)
    # Job tracking is always on: its processor wants only the reports that carry a job_id.
    jobs = Tracker(context, pm)
    app[PIPELINE] = Pipeline(
        storage,
        [*processors, jobs.consumer],
        listed=config.processors,
        parser=parser,
        retry=RetryPolicy(config.max_attempts, config.retry_initial, config.retry_max),
        timeout=config.processor_timeout,
        telemetry=context.telemetry,
        cache_bytes=config.report_cache,
    )
    app.cleanup_ctx.append(_storage_lifecycle)
    app.cleanup_ctx.append(_make_plugin_lifecycle(pm))
    app.cleanup_ctx.append(jobs.lifecycle)
    app.cleanup_ctx.append(_dispatch_lifecycle)
    app.cleanup_ctx.append(_spool_expiry)
    setup_ingest_routes(app)
    app.router.add_get("/api/v1/queue", get_queue)
    app.router.add_get("/healthz", get_health)
    app.router.add_get("/api/openapi.json", _openapi_handler())
    JobsAPI(context, jobs).add_routes(app)
    pm.hook.reportd_add_routes(app=app, context=context)
    return app


@web.middleware
async def _error_answers(request: web.Request, handler) -> web.StreamResponse:
    """Whatever a handler (a plugin's included) fails with, the client gets a JSON answer:
    a 503 with Retry-After when the storage is unavailable, else a 500; the log has why."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except (HttpProcessingError, RequestPayloadError):
        # A body that does not decode (bad gzip): the stream cannot be read on, so the
        # connection closes after the answer.
        request.content.feed_eof()
        raise api_error(
            400, "the request body does not decode (or it ended early)", headers={"Connection": "close"}
        ) from None
    except unavailable_errors() as error:
        if isinstance(error, ConnectionError) and _client_gone(request):
            # The client left while the answer was being written: no fault of the storage's,
            # and no one to answer.
            log.info("client_disconnected", path=request.path, remote=request.remote)
            raise
        log.error("storage_unavailable", path=request.path, error=f"{type(error).__name__}: {error}")
        raise api_error(
            503, "the storage is unavailable; try again later", headers={"Retry-After": "30"}
        ) from None
    except Exception:
        log.exception("request_failed", method=request.method, path=request.path)
        raise api_error(500, "internal error (reportd logged it)") from None


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _close_after_unread_compressed_body(request: web.Request, response: web.StreamResponse) -> None:
    """An answer given before a compressed body was read (a refusal) ends the connection,
    as does one that says so (``Connection: close``: a body that came too slowly or broke off).

    aiohttp reads and drops such a body to reuse the connection, and a body that
    does not decode makes that read fail and the connection drop without an
    answer; closing on purpose is cleaner, and the client knows not to reuse it.
    """
    content = request.content
    unread = request.headers.get("Content-Encoding") and (
        not content.is_eof() or content.exception() is not None
    )
    if unread or response.headers.get("Connection", "").lower() == "close":
        content.feed_eof()
        response.force_close()
        response.headers["Connection"] = "close"


# reportd serves data, never pages: nothing it answers may run as a page of its origin, whatever
# a stored body holds or a browser would guess its type to be.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


async def _storage_lifecycle(app: web.Application) -> AsyncIterator[None]:
    await app[STORAGE].open()
    yield
    await app[STORAGE].close()
    app[PARSER].close()


def _make_plugin_lifecycle(pm: pluggy.PluginManager):
    async def plugin_lifecycle(app: web.Application) -> AsyncIterator[None]:
        context = app[CONTEXT]
        for result in pm.hook.reportd_startup(context=context):
            await _await_maybe(result)
        yield
        for impl in pm.hook.reportd_shutdown.get_hookimpls():
            try:
                await _await_maybe(impl.function(context=context))
            except Exception:
                log.exception("plugin_shutdown_failed", plugin=impl.plugin_name)

    return plugin_lifecycle


async def _await_maybe(value: Any) -> Any:
    if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
        return await value
    return value


async def _dispatch_lifecycle(app: web.Application) -> AsyncIterator[None]:
    pipeline = app[PIPELINE]
    pipeline.start()
    yield
    await pipeline.stop(app[CONFIG].shutdown_timeout)


async def _spool_expiry(app: web.Application) -> AsyncIterator[None]:
    """Forget delivered reports' idempotency keys after ``dedup_window``, in small batches."""
    storage, window = app[STORAGE], app[CONFIG].dedup_window

    async def expire() -> None:
        await drain(lambda: storage.expire_spool(time.time() - window, SPOOL_EXPIRY_BATCH))

    async with every(SPOOL_EXPIRY_INTERVAL, expire, name="spool-expiry"):
        yield


async def get_queue(request: web.Request) -> web.Response:
    await require_permission(request, VIEW_REPORTS)
    stats = await request.app[STORAGE].queue_stats()
    now = time.time()
    body = {}
    pipeline = request.app[PIPELINE]
    # Built-in processors (the job tracker) are listed only while they have pending or dead deliveries.
    built_in = [name for name in pipeline.processor_names if name not in pipeline.listed and name in stats]
    for name in [*pipeline.listed, *built_in]:
        entry = stats.get(name)
        oldest = entry.oldest_pending_at if entry else None
        body[name] = {
            "pending": entry.pending if entry else 0,
            "dead": entry.dead if entry else 0,
            "oldest_pending_seconds": round(now - oldest, 3) if oldest is not None else None,
        }
    return json_response({"processors": body})


def _openapi_handler() -> Callable[[web.Request], Awaitable[web.Response]]:
    """``GET /api/openapi.json``: the document shipped in the package, as it is, to anyone.

    Read when the application is built, so a package without it fails at start-up, not at a request.
    """
    document = resources.files("reportd").joinpath("openapi.json").read_bytes()

    async def get_openapi(request: web.Request) -> web.Response:
        response = web.Response(body=document, content_type="application/json")
        response.enable_compression()  # over 200 KB of indented JSON
        return response

    return get_openapi


async def get_health(request: web.Request) -> web.Response:
    """200 while reportd can take reports; 503 with the reason when its storage cannot."""
    reason = await request.app[STORAGE].health()
    if reason is not None:
        return json_response({"status": "unhealthy", "reason": reason}, status=503)
    return json_response({"status": "ok"})
