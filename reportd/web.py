"""Application keys, error bodies of each API family, authentication and body reading."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from aiohttp import web

from reportd.auth import Authenticator, Identity

if TYPE_CHECKING:
    from reportd.parsing import Share

CONFIG = web.AppKey("config", "Config")
STORAGE = web.AppKey("storage", "Storage")
CONTEXT = web.AppKey("context", "PluginContext")
DISPATCHER = web.AppKey("dispatcher", "Dispatcher")
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
TELEMETRY = web.AppKey("telemetry", "Telemetry")
PARSER = web.AppKey("parser", "ReportParser")
BODY_BUDGET = web.AppKey("body_budget", "ByteBudget")
# aiohttp >= 3.14 warns about plain string keys in request storage.
IDENTITY = web.RequestKey("identity", Identity) if hasattr(web, "RequestKey") else "identity"

log = structlog.get_logger("reportd.web")


def json_response(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def json_error(status: int, body: Any, headers: dict[str, str] | None = None) -> web.HTTPException:
    """An exception carrying a JSON error body, for ``raise`` anywhere in a handler."""
    error = web.HTTPException(
        text=orjson.dumps(body).decode(), content_type="application/json", headers=headers
    )
    error.set_status(status)
    return error


def api_error(
    status: int, message: str, details: dict | None = None, headers: dict[str, str] | None = None
) -> web.HTTPException:
    """reportd's own API family: ``{"error": {"message", "details"}}``."""
    error: dict[str, Any] = {"message": message}
    if details:
        error["details"] = details
    return json_error(status, {"error": error}, headers)


def puppet_error(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None
) -> web.HTTPException:
    """puppetserver's error body; the agent logs ``message``."""
    return json_error(status, {"message": message, "issue_kind": kind}, headers)


async def identify(request: web.Request) -> Identity:
    identity = request.get(IDENTITY)
    if identity is None:
        identity = await request.app[AUTHENTICATOR].identify(request)
        request[IDENTITY] = identity
    return identity


async def require_permission(
    request: web.Request,
    permission: str,
    *,
    forbidden: Callable[[str], web.HTTPException] | None = None,
) -> Identity:
    """The caller's identity; a 403 unless it has ``permission`` (``forbidden(permission)``
    for an API family whose error body is not reportd's own)."""
    identity = await identify(request)
    if not identity.allows(permission):
        log.warning("request_forbidden", path=request.path, subject=identity.subject, missing=permission)
        if forbidden is not None:
            raise forbidden(permission)
        raise api_error(403, "Access denied", {"missing_permissions": [permission]})
    return identity


class BodyTooLarge(Exception):
    pass


async def read_body(request: web.Request, limit: int, share: Share | None = None) -> bytes:
    """The request body (already gunzipped by aiohttp), refusing more than ``limit`` bytes.

    With a ``share`` of the body budget, the share grows (waiting if need be)
    before the body does.
    """
    if request.content_length is not None and request.content_length > limit and not _encoded(request):
        raise BodyTooLarge
    chunks = bytearray()
    async for chunk in request.content.iter_chunked(256 * 1024):
        if len(chunks) + len(chunk) > limit:
            raise BodyTooLarge
        if share is not None and len(chunks) + len(chunk) > share.size:
            await share.grow_to(max(2 * share.size, len(chunks) + len(chunk)))
        chunks += chunk
    return bytes(chunks)


def _encoded(request: web.Request) -> bool:
    return request.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")


def base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"
