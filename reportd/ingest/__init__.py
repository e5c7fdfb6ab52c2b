"""Ingest: authenticate, read, parse at the edge, spool durably, answer.

One module per family of clients (:mod:`.puppet`, :mod:`.foreman`,
:mod:`.chef`), each answering in its family's own shapes. The steps they share
are here and raise :class:`Refusal` for anything they will not accept; each
family renders a refusal in its own error body. Everything ends in
:func:`accept_report`, which answers only once the report is committed and
never waits for processors.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from reportd.appkeys import BODY_BUDGET, CONFIG, PARSER, PIPELINE, TELEMETRY
from reportd.formats import Envelope, ReportError
from reportd.formats.fields import certname_problem
from reportd.model import Report
from reportd.storage import Accepted, unavailable_errors
from reportd.web import BodyTimeout, BodyTooLarge, read_body

log = structlog.get_logger("reportd.ingest")

#: Content-Encodings aiohttp decodes before reportd reads the body.
ENCODINGS = frozenset({"", "identity", "gzip", "x-gzip", "deflate"})
RETRY_AFTER_SECONDS = 30


class Refusal(Exception):
    """A request reportd will not accept, with what to answer (rendered per family).

    ``reason`` labels ``reportd_rejected_total`` and the log line: auth, size,
    encoding, timeout, parse, validation or unavailable.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        reason: str,
        kind: str = "BAD_REQUEST",
        field: str | None = None,
        problem: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.kind = kind
        self.field = field
        self.problem = problem or message
        self.headers = headers

    @classmethod
    def of(cls, error: ReportError, prefix: str = "") -> Refusal:
        """A report that does not parse or validate: 400 (Foreman answers 422 for fields)."""
        reason = "parse" if error.kind == "MALFORMED" else "validation"
        return cls(
            400,
            prefix + error.message,
            reason=reason,
            kind=error.kind,
            field=error.field,
            problem=error.problem,
        )


@contextlib.asynccontextmanager
async def refusals(
    request: web.Request, render: Callable[[Refusal], web.HTTPException], **log_fields: Any
) -> AsyncIterator[None]:
    """Turn a :class:`Refusal` raised inside into the family's error answer, logged and counted."""
    try:
        yield
    except Refusal as refusal:
        log_rejected(request, refusal.reason, refusal.message, status=refusal.status, **log_fields)
        raise render(refusal) from None


async def accept_report(app: web.Application, report: Report, envelope: Envelope) -> Accepted:
    """Hand ``report`` to the pipeline, which answers once it is spooled durably.

    Storage that cannot commit (a full disk, a database that is down) is a 503:
    nothing was acknowledged, so nothing is lost.
    """
    try:
        return await app[PIPELINE].accept(report, envelope)
    except unavailable_errors() as error:
        log.error("report_not_spooled", certname=report.certname, error=f"{type(error).__name__}: {error}")
        raise Refusal(
            503,
            "reportd cannot store reports right now; send it again later"
            " (should it have been stored after all, the second send is recognised as a duplicate)",
            reason="unavailable",
            kind="SERVICE_UNAVAILABLE",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from None


@contextlib.asynccontextmanager
async def request_body(request: web.Request) -> AsyncIterator[bytes]:
    """The decoded body, held against ``body_memory`` until the block ends.

    Refuses (415) an encoding reportd does not decode, (413) a body larger than
    ``max_body_size`` once decoded, and (400) a compressed body that does not
    decode (bad gzip, a bad CRC, trailing garbage).
    """
    config = request.app[CONFIG]
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ENCODINGS:
        raise Refusal(
            415,
            f"Content-Encoding {encoding[:40]!r} is not supported (use gzip, deflate or none)",
            reason="encoding",
            kind="UNSUPPORTED_ENCODING",
        )
    limit = config.max_body_size
    declared = request.content_length
    if declared is not None and declared > limit and encoding in ("", "identity"):
        raise Refusal(413, _too_large(limit), reason="size", kind="REQUEST_TOO_LARGE")
    async with request.app[BODY_BUDGET].hold() as share:
        try:
            body = await read_body(request, limit, share)
        except BodyTooLarge:
            raise Refusal(413, _too_large(limit), reason="size", kind="REQUEST_TOO_LARGE") from None
        except BodyTimeout as timeout:
            raise Refusal(
                408,
                timeout.message,
                reason="timeout",
                kind="REQUEST_TIMEOUT",
                headers={"Connection": "close"},
            ) from None
        except (HttpProcessingError, RequestPayloadError):
            # The rest of the stream cannot be read either: answer, then close the connection
            # (aiohttp would otherwise try to read past the error to reuse it, and fail).
            request.content.feed_eof()
            raise Refusal(
                400,
                f"the body does not decode as {encoding or 'sent'} (or it ended early)",
                reason="encoding",
                kind="MALFORMED",
                headers={"Connection": "close"},
            ) from None
        yield body


def _too_large(limit: int) -> str:
    return f"Report body exceeds {limit} bytes ([reportd] max_body_size)"


async def parse_report(request: web.Request, body: bytes, envelope: Envelope, prefix: str = "") -> Report:
    """The report in ``body``, parsed off the loop when large; a :class:`Refusal` when it is not one."""
    try:
        return await request.app[PARSER].parse(body, envelope)
    except ReportError as error:
        raise Refusal.of(error, prefix) from None


def check_certname(name: str, what: str) -> None:
    """A certname from a URL: refused (400) unless it is one Puppet would issue."""
    problem = certname_problem(name)
    if problem is not None:
        raise Refusal(400, f"{what} {name[:300]!r} {problem}", reason="validation", kind="BAD_CERTNAME")


def log_rejected(request: web.Request, reason: str, message: str, **fields) -> None:
    """Log and count a refused request."""
    request.app[TELEMETRY].rejected.labels(reason).inc()
    log.warning(
        "report_rejected", reason=reason, path=request.path, remote=request.remote, error=message, **fields
    )


def log_accepted(request: web.Request, report: Report, accepted: Accepted, size: int, started: float) -> None:
    """Log and count an accepted report (one canonical line per report)."""
    elapsed = time.perf_counter() - started
    telemetry = request.app[TELEMETRY]
    telemetry.received.labels(report.format, "duplicate" if accepted.duplicate else "accepted").inc()
    telemetry.ingest_seconds.observe(elapsed)
    telemetry.report_bytes.observe(size)
    log.info(
        "report_accepted",
        certname=report.certname,
        report_id=accepted.report_id,
        format=report.format,
        transaction_uuid=report.transaction_uuid,
        status=report.status,
        duplicate=accepted.duplicate,
        bytes=size,
        ms=round(elapsed * 1000, 2),
    )


def setup_ingest_routes(app: web.Application) -> None:
    from reportd.ingest import chef, foreman, puppet

    puppet.setup_routes(app)
    foreman.setup_routes(app)
    chef.setup_routes(app)
