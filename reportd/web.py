"""Application keys, error bodies of each API family, authentication, body reading, public URLs."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from reportd.appkeys import (
    AUTHENTICATOR,
    CONFIG,
    CONNECTIONS,
)
from reportd.auth import Identity, in_networks
from reportd.connections import BodyPace

if TYPE_CHECKING:
    from reportd.parsing import Share

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


class BodyTimeout(web.HTTPRequestTimeout):
    """The body came slower than ``min_body_rate``: answered 408 (puppetserver's error shape)
    while the connection is writable, and the connection is closed."""

    def __init__(self, received: int, seconds: float) -> None:
        message = f"The request body came too slowly: {received} bytes in {seconds:.1f} s"
        self.message = message
        super().__init__(
            text=orjson.dumps({"message": message, "issue_kind": "REQUEST_TIMEOUT"}).decode(),
            content_type="application/json",
        )
        self.force_close()


class BodyInterrupted(web.HTTPBadRequest):
    """The connection ended before the body did (the client left, or reportd cut it).

    An HTTP error rather than the ConnectionResetError aiohttp raises, which is an
    OSError, as the storage's faults are: the client's leaving is no fault of the
    storage's. No one is left to read the answer.
    """


async def read_body(request: web.Request, limit: int, share: Share | None = None) -> bytes:
    """The request body (already gunzipped by aiohttp), refusing more than ``limit`` bytes.

    With a ``share`` of the body budget, the share grows with the body, before
    each chunk is kept (waiting if need be).

    Raises :class:`BodyTimeout` once the body is later than ``body_timeout_base``
    plus its bytes so far at ``min_body_rate``: a client that trickles a body would
    otherwise hold its connection, and this request, for as long as it likes. Time
    waiting here for the budget counts too, so that bodies which each wait for
    another's share cannot hold each other forever. Raises :class:`BodyInterrupted`
    when the connection ends first.
    """
    if request.content_length is not None and request.content_length > limit and not _encoded(request):
        raise BodyTooLarge
    content = request.content
    if content.is_eof():  # all of it came with the head (most agents' reports): nothing to pace
        body = content.read_nowait(-1)
        if len(body) > limit:
            raise BodyTooLarge
        if share is not None:
            await share.grow_to(len(body))
        return body
    config = request.app[CONFIG]
    guard = request.app.get(CONNECTIONS) if isinstance(request, web.Request) else None
    pace = BodyPace(request, config.body_timeout_base, config.min_body_rate, guard)
    chunks = bytearray()
    try:
        while True:
            try:
                # What has arrived already (an agent's whole report, often) is taken
                # without the timer a wait needs.
                chunk = content.read_nowait(256 * 1024)
                if not chunk and not content.at_eof():
                    async with asyncio.timeout_at(pace.deadline(len(chunks))):
                        chunk = await content.read(256 * 1024)
            except TimeoutError:
                received, seconds = pace.received(len(chunks)), pace.seconds()
                log.warning(
                    "request_body_timeout",
                    path=request.path,
                    remote=request.remote,
                    bytes=received,
                    seconds=round(seconds, 3),
                    min_body_rate=config.min_body_rate,
                )
                raise BodyTimeout(received, seconds) from None
            except ConnectionError:
                if not pace.cut_by_reportd():
                    log.warning(
                        "client_disconnected",
                        path=request.path,
                        remote=request.remote,
                        bytes=pace.received(len(chunks)),
                    )
                raise BodyInterrupted() from None
            if not chunk:
                return bytes(chunks)
            if len(chunks) + len(chunk) > limit:
                raise BodyTooLarge
            if share is not None:
                await share.grow_to(len(chunks) + len(chunk))
            chunks += chunk
    finally:
        pace.done()


def fail_truncated_deflate_bodies() -> None:
    """Make a deflate body that ends before its stream does fail the handler's read, as other bad bodies do.

    aiohttp (3.14) raises that error from its parser when the body ends, outside the body's stream: the
    handler then waits for the rest of a body that never comes (until the client gives up), or, when the
    body came with the headers, the request is dropped for aiohttp's own plain-text 400.
    """
    from aiohttp import http_parser

    buffer = http_parser.DeflateBuffer
    if getattr(buffer.feed_eof, "reportd", False):
        return
    feed_eof = buffer.feed_eof

    def feed_eof_or_fail(self) -> None:
        try:
            feed_eof(self)
        except http_parser.ContentEncodingError as error:
            self.set_exception(error)

    feed_eof_or_fail.reportd = True  # type: ignore[attr-defined]
    buffer.feed_eof = feed_eof_or_fail  # type: ignore[method-assign]


def _encoded(request: web.Request) -> bool:
    return request.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")


def public_base_url(request: web.Request) -> str:
    """reportd's URL for the absolute URLs in an answer, without a trailing slash.

    ``[reportd] base_url`` when set. Else, for a peer in ``trusted_proxies``, the
    URL the proxy says the client used (``X-Forwarded-Proto`` and
    ``X-Forwarded-Host``, else its ``Host``). Else the address the request came
    in on, with the listener's scheme: the ``Host`` and ``X-Forwarded-*`` of any
    other client are not used, since they would put any name into the links.
    """
    config = request.app[CONFIG]
    if config.base_url:
        return config.base_url
    if config.trusted_proxies and in_networks(request.remote, config.trusted_proxies):
        proto = _first(request.headers.get("X-Forwarded-Proto")).lower()
        host = _first(request.headers.get("X-Forwarded-Host")) or request.headers.get("Host", "")
        if _HOST.fullmatch(host):
            return f"{proto if proto in ('http', 'https') else request.scheme}://{host}"
    return _listener_url(request)


_HOST = re.compile(r"[A-Za-z0-9.\-_]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def _first(value: str | None) -> str:
    """The first of a comma-separated header's values: what the proxy nearest the client set."""
    return (value or "").split(",")[0].strip()


def _listener_url(request: web.Request) -> str:
    scheme = request.scheme  # from the connection: https on a TLS listener
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple):
        host, port = sockname[0], sockname[1]
    else:
        host, port = request.app[CONFIG].listen
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if address.version == 6 and address.ipv4_mapped:  # a dual-stack listener
            address = address.ipv4_mapped
        host = f"[{address}]" if address.version == 6 else str(address)
    default_port = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" if port == default_port else f"{scheme}://{host}:{port}"


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's protocol, answering what its parser refuses (before any handler runs)
    with a JSON body, as reportd answers everything else, instead of plain text.

    A Content-Encoding aiohttp cannot decode (br, zstd) is refused there too: 415,
    as an encoding reportd does not decode is refused at its routes.
    """

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)  # logs, and raises if the answer started
        if isinstance(exc, ContentEncodingError):
            status = 415
            error = {
                "message": "the request's Content-Encoding is not supported (use gzip, deflate or none)",
                "issue_kind": "UNSUPPORTED_ENCODING",
            }
        elif isinstance(exc, HttpProcessingError) and 400 <= status < 500:
            first_line = (str(exc.message).splitlines() or ["bad request"])[0].rstrip(":")
            error = {"message": f"malformed request: {first_line}", "issue_kind": "MALFORMED"}
        else:
            return plain
        response = json_response(error, status=status)
        response.force_close()
        return response


def protocol_factory(server: web.Server) -> Callable[[], RequestHandler]:
    """What makes each connection's protocol for ``server``: aiohttp's, answering its own
    refusals in JSON (:class:`JsonErrorRequestHandler`)."""
    loop = asyncio.get_running_loop()
    # The arguments aiohttp's Server passes its handlers (access_log and the like).
    options = getattr(server, "_kwargs", {})
    return lambda: JsonErrorRequestHandler(server, loop=loop, **options)
