"""The listener: a cap on open connections, deadlines for request heads and bodies, accept backoff.

aiohttp bounds neither how many connections are open nor how long a request
head or body may take to arrive, and asyncio's accept loop, out of file
descriptors, logs and retries in a tight loop. Measured with bench/connections.py
against the reportd before this module, at systemd's default soft limit of 1,024
files: 1,100 slow-header and 1,000 slow-body connections held it at 99% CPU,
118 of 150 /healthz probes timed out, and asyncio wrote "socket.accept() out of
system resource" 10,800 times a second (111 MB of log in 30 s). With a high
limit, the same connections stayed open for as long as the attacker liked.

So reportd accepts connections itself (:class:`ConnectionGuard`) and hands each
one to aiohttp's protocol through a :class:`Connection` that knows which phase
it is in. A request head late by ``header_timeout`` is cut; at
``max_connections`` the connection that has waited longest for its head (or
idled longest between requests) is closed to make room, else one whose request
body arrives slower than ``min_body_rate``; with none of those, accepting
pauses until a connection closes, instead of spinning. Request bodies are paced by
:class:`BodyPace`, which :func:`reportd.web.read_body` uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import resource
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import StreamReader, web

if TYPE_CHECKING:
    from reportd.config import Config

log = structlog.get_logger("reportd.connections")

# Open files reportd needs besides client connections: the listeners, the database
# (SQLite and its WAL, or PostgreSQL's pool), the metrics worker, plugins' HTTP and
# SMTP clients, the command plugin's pipes, log files.
FD_RESERVE = 256
# Accepts per wake-up of a listener, so a flood of connections cannot hold the loop.
ACCEPT_BATCH = 64
# Connections waiting to be accepted (the kernel caps it at net.core.somaxconn, 4096 by
# default). At the cap an attacker's surplus waits there; when it overflows, the kernel
# drops new SYNs and a healthy client's connect() retries after 1 s, then 3 s: measured,
# with 1,100 connections over the cap, agents' p99 2.7 s at 1024, 1.5 s at 4096.
LISTEN_BACKLOG = 4096
# Out of files or memory, accepting again right away fails the same way: wait,
# doubling the wait while it keeps failing.
ACCEPT_BACKOFF_INITIAL = 0.01
ACCEPT_BACKOFF_MAX = 1.0
# At the cap, a connection is closed to make room only once it has been in its phase
# (waiting for a head, idle, or sending its body slower than min_body_rate) this long,
# so a healthy client whose head is on its way over a slow link (a TLS handshake is two
# round trips first) is not cut, and an attacker that reconnects as fast as it is cut
# makes reportd accept and close at most max_connections / this many a second. Healthy
# clients meanwhile wait in the listen backlog behind the attacker's surplus, which
# drains at that rate: shorter is quicker for them on a fast network, riskier on a slow one.
EVICTION_MIN_AGE = 0.25
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Phase(Enum):
    HEAD = "head"  # waiting for a request head: since accept, or since the first byte of the next one
    REQUEST = "request"  # the application is handling a request
    BODY = "body"  # the application is reading the request body (read_body)
    IDLE = "idle"  # keep-alive, between requests


@dataclass(frozen=True)
class Limits:
    max_connections: int
    header_timeout: float
    body_timeout_base: float
    min_body_rate: int  # bytes per second

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        return cls(
            max_connections=config.max_connections,
            header_timeout=config.header_timeout,
            body_timeout_base=config.body_timeout_base,
            min_body_rate=config.min_body_rate,
        )


def raise_open_file_limit(max_connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; fail unless the cap fits in it.

    systemd starts services with a soft limit of 1,024 (and a high hard one) unless
    the unit says otherwise, and each connection is one open file.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + FD_RESERVE
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise RuntimeError(
            f"max_connections = {max_connections} needs {needed} open files ({FD_RESERVE} more for the"
            f" database and files), but the limit is {soft}: lower max_connections or raise the limit"
            " (LimitNOFILE= in the systemd unit, ulimit -n)"
        )
    return soft


def open_listeners(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for ``host:port``, as asyncio's create_server makes them."""
    infos = socket.getaddrinfo(
        host or None, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in listeners:
            sock.close()
        raise
    return listeners


class Connection(asyncio.Protocol):
    """One accepted connection: its phase, for the guard, and aiohttp's protocol it feeds.

    Every transport callback is passed on to aiohttp's ``RequestHandler``
    unchanged; this only counts bytes and notices the first byte of a request
    after an idle spell.
    """

    __slots__ = (
        "body",
        "bytes_received",
        "cut_reason",
        "guard",
        "handler",
        "opening",
        "peer",
        "phase",
        "released",
        "request_bytes_mark",
        "since",
        "timer",
        "transport",
    )

    def __init__(self, guard: ConnectionGuard, handler: asyncio.Protocol, peer: Any, now: float) -> None:
        self.guard = guard
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.peer = peer
        self.phase = Phase.HEAD
        self.since = now
        self.bytes_received = 0
        self.request_bytes_mark = 0
        self.body: StreamReader | None = None  # of the request being handled
        self.timer: asyncio.TimerHandle | None = None
        self.opening: asyncio.Task | None = None
        self.cut_reason: str | None = None
        self.released = False

    @property
    def remote(self) -> str | None:
        return self.peer[0] if isinstance(self.peer, tuple) else None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # a stream
        if self.released:  # cut during its TLS handshake, as the handshake completed
            transport.abort()
            return
        self.transport = transport
        self.guard._opened(self)
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.phase is Phase.IDLE:
            self.guard._enter(self, Phase.HEAD)
        self.bytes_received += len(data)
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            if self.transport is not None:
                self.handler.connection_lost(exc)
        finally:
            self.guard._release(self)
            self.guard._forget(self)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()


# The request's connection, kept with the request: its transport may be gone before
# read_body asks (a connection cut while its request waited for body memory).
CONNECTION = web.RequestKey("connection", Connection) if hasattr(web, "RequestKey") else "connection"


class ConnectionGuard:
    """Accepts connections for an aiohttp server within :class:`Limits`."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._loop: asyncio.AbstractEventLoop | None = None
        self._protocol_factory: Callable[[], asyncio.Protocol] | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self._listeners: list[socket.socket] = []
        self._by_transport: dict[asyncio.Transport | None, Connection] = {}
        # Insertion order is the order connections entered the phase: the first is the oldest.
        self._phases: dict[Phase, dict[Connection, None]] = {phase: {} for phase in Phase}
        self._reading = False
        self._paused_for: str | None = None  # "limit" or "backoff"
        self._resume_handle: asyncio.TimerHandle | None = None
        self._backoff = ACCEPT_BACKOFF_INITIAL
        self._limit_logged = False
        self.open = 0

    # -- wiring ---------------------------------------------------------------------
    def install(self, app: web.Application) -> None:
        """Before the app is frozen: the middleware that tells the guard when a request runs.
        (The caller keeps the guard as ``app[CONNECTIONS]``, where body readers find it.)"""
        app.middlewares.insert(0, self._middleware)  # outermost: it must see every request

    async def start(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = LISTEN_BACKLOG,
    ) -> list[tuple[str, int]]:
        """Listen on ``host:port`` (raises OSError); returns the bound addresses."""
        self._loop = asyncio.get_running_loop()
        self._protocol_factory = protocol_factory
        self._ssl_context = ssl_context
        self._listeners = open_listeners(host, port, backlog)
        self._resume_accepting()
        return [sock.getsockname()[:2] for sock in self._listeners]

    def stop(self) -> None:
        """Close the listeners and the connections still in their TLS handshake.

        Established connections are aiohttp's to close (AppRunner.cleanup), so that
        requests in flight can finish.
        """
        self._pause_accepting(None)
        for sock in self._listeners:
            sock.close()
        self._listeners = []
        for conn in list(self._phases[Phase.HEAD]):
            if conn.opening is not None and conn.transport is None:
                conn.opening.cancel()

    def connection_of(self, request: web.BaseRequest) -> Connection | None:
        transport = request.transport
        return None if transport is None else self._by_transport.get(transport)

    # -- accepting --------------------------------------------------------------------
    def _resume_accepting(self) -> None:
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        self._paused_for = None
        if not self._reading and self._listeners:
            assert self._loop is not None
            for sock in self._listeners:
                self._loop.add_reader(sock.fileno(), self._accept, sock)
            self._reading = True

    def _pause_accepting(self, reason: str | None, delay: float | None = None) -> None:
        """Stop watching the listeners: pending connections wait in the kernel's backlog."""
        assert self._loop is not None
        if self._reading:
            for sock in self._listeners:
                self._loop.remove_reader(sock.fileno())
            self._reading = False
        self._paused_for = reason
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        if delay is not None:
            self._resume_handle = self._loop.call_later(delay, self._resume_accepting)

    def _accept(self, listener: socket.socket) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for _ in range(ACCEPT_BATCH):
            victim = None
            if self.open >= self.limits.max_connections:
                victim = self._eviction_candidate(now)
                if victim is None:
                    self._wait_for_room(now)
                    return
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                self._limit_logged = False  # no one is waiting: the next time at the cap is news
                return
            except ConnectionAbortedError:
                continue
            except OSError as error:
                self._accept_failed(error)
                return
            self._backoff = ACCEPT_BACKOFF_INITIAL
            # Only now that someone is known to be waiting for it.
            self._evict(victim)
            self._open(sock, peer)

    def _accept_failed(self, error: OSError) -> None:
        assert self._loop is not None
        delay = self._backoff
        self._backoff = min(self._backoff * 2, ACCEPT_BACKOFF_MAX)
        out_of_resources = error.errno in _OUT_OF_RESOURCES
        log.error(
            "accept_failed",
            error=error.strerror or str(error),
            errno=errno.errorcode.get(error.errno or 0, error.errno),
            open_connections=self.open,
            retry_seconds=delay,
        )
        if out_of_resources:
            # Another connection's file is the surest way in for the next one.
            self._evict(self._eviction_candidate(self._loop.time()))
        self._pause_accepting("backoff", delay)

    def _wait_for_room(self, now: float) -> None:
        """At the cap with no connection to close: stop accepting until there may be one.

        Woken by a connection that closes, or when the oldest one waiting for its head
        (or idle) is old enough, or to look again for a body fallen behind its rate.
        """
        waiting = self._oldest_waiting()
        delay = EVICTION_MIN_AGE if waiting is None else waiting.since + EVICTION_MIN_AGE - now
        if not self._limit_logged:
            self._limit_logged = True
            log.warning(
                "connection_limit_reached", max_connections=self.limits.max_connections, open=self.open
            )
        self._pause_accepting("limit", max(0.0, delay))

    def _oldest_waiting(self) -> Connection | None:
        """The connection that has waited longest for a request head, or idled longest."""
        oldest = None
        for phase in (Phase.HEAD, Phase.IDLE):
            first = next(iter(self._phases[phase]), None)
            if first is not None and (oldest is None or first.since < oldest.since):
                oldest = first
        return oldest

    def _eviction_candidate(self, now: float) -> Connection | None:
        """The oldest connection waiting for a head or idle, else the oldest request whose
        body is arriving slower than ``min_body_rate``.

        A request is judged by its body whether or not the application reads it yet:
        one waiting for body memory (reportd.parsing.ByteBudget) holds its connection
        as surely as one being read.
        """
        oldest = self._oldest_waiting()
        if oldest is not None and now - oldest.since >= EVICTION_MIN_AGE:
            return oldest
        for phase in (Phase.BODY, Phase.REQUEST):
            for conn in self._phases[phase]:
                elapsed = now - conn.since
                if elapsed < EVICTION_MIN_AGE:
                    break  # the rest entered the phase later still
                if conn.body is None or conn.body.is_eof():
                    continue
                if (conn.bytes_received - conn.request_bytes_mark) / elapsed < self.limits.min_body_rate:
                    return conn
        return None

    def _evict(self, conn: Connection | None) -> None:
        if conn is None:
            return
        log.warning(
            "connection_evicted",
            remote=conn.remote,
            phase=conn.phase.value,
            seconds=round(asyncio.get_running_loop().time() - conn.since, 3),
            max_connections=self.limits.max_connections,
        )
        self._cut(conn, "evicted")

    def _open(self, sock: socket.socket, peer: Any) -> None:
        assert self._loop is not None and self._protocol_factory is not None
        sock.setblocking(False)
        conn = Connection(self, self._protocol_factory(), peer, self._loop.time())
        self.open += 1
        self._enter(conn, Phase.HEAD)
        conn.opening = self._loop.create_task(self._connect(conn, sock))

    async def _connect(self, conn: Connection, sock: socket.socket) -> None:
        assert self._loop is not None
        tls = self._ssl_context is not None
        try:
            # The handshake is part of the first request's head: it gets the same time.
            await self._loop.connect_accepted_socket(
                lambda: conn,
                sock,
                ssl=self._ssl_context,
                ssl_handshake_timeout=self.limits.header_timeout if tls else None,
                ssl_shutdown_timeout=self.limits.header_timeout if tls else None,
            )
        except asyncio.CancelledError:
            pass  # cut, or the server is stopping; asyncio closed the socket
        except Exception as error:
            # Debug, as asyncio itself does: scanners and health checks fail handshakes all day.
            log.debug("connection_setup_failed", remote=conn.remote, error=str(error) or type(error).__name__)
        finally:
            conn.opening = None
            if conn.transport is None:
                self._release(conn)

    # -- phases -----------------------------------------------------------------------
    def _opened(self, conn: Connection) -> None:
        self._by_transport[conn.transport] = conn

    def _enter(self, conn: Connection, phase: Phase) -> None:
        assert self._loop is not None
        if conn.released:
            return
        self._phases[conn.phase].pop(conn, None)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        conn.phase = phase
        conn.since = self._loop.time()
        self._phases[phase][conn] = None
        if phase is Phase.HEAD:
            # A request's bytes count from its first one (for BodyPace and the logs).
            conn.request_bytes_mark = conn.bytes_received
            conn.timer = self._loop.call_at(
                conn.since + self.limits.header_timeout, self._head_timed_out, conn
            )

    def _head_timed_out(self, conn: Connection) -> None:
        conn.timer = None
        log.warning(
            "request_head_timeout",
            remote=conn.remote,
            seconds=self.limits.header_timeout,
            bytes=conn.bytes_received - conn.request_bytes_mark,
        )
        self._cut(conn, "header_timeout")

    def _cut(self, conn: Connection, reason: str) -> None:
        conn.cut_reason = reason
        if conn.transport is not None:
            conn.transport.abort()
        elif conn.opening is not None:
            conn.opening.cancel()
        # The slot is free now; the file is closed on the loop's next pass.
        self._release(conn)

    def _release(self, conn: Connection) -> None:
        if conn.released:
            return
        conn.released = True
        self.open -= 1
        del self._phases[conn.phase][conn]
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        if self._paused_for == "limit":
            self._resume_accepting()

    def _forget(self, conn: Connection) -> None:
        # Only once the transport is done: until then a request of a connection that
        # was cut may still reach the middleware, which must know it was.
        if conn.transport is not None:
            self._by_transport.pop(conn.transport, None)

    # -- requests ---------------------------------------------------------------------
    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        conn = self.connection_of(request)
        if request.transport is None or (conn is not None and conn.released):
            # Gone (cut, or the client left) after its head arrived and before this
            # request's turn: there is no one to answer.
            raise web.HTTPRequestTimeout()
        if conn is None:
            return await handler(request)
        if conn.phase is not Phase.HEAD:
            # Pipelined behind the previous request: its first byte is not known, and
            # counting from the previous one would credit this body with that one's.
            conn.request_bytes_mark = conn.bytes_received
        self._enter(conn, Phase.REQUEST)
        conn.body = request.content
        request[CONNECTION] = conn
        try:
            return await handler(request)
        except web.HTTPRequestTimeout as timeout:
            await self._answer_and_close(request, conn, timeout)
            raise
        except ConnectionError:
            if not conn.released:
                raise  # not about this client's connection
            # Gone mid-request (cut, or the client left): there is no one to answer, and
            # aiohttp would log the handler's ConnectionResetError as an error with a traceback.
            if conn.cut_reason is None:
                log.warning(
                    "client_disconnected",
                    path=request.path,
                    remote=conn.remote,
                    bytes=conn.bytes_received - conn.request_bytes_mark,
                )
            raise web.HTTPRequestTimeout() from None
        finally:
            conn.body = None
            if conn.cut_reason is None:
                self._enter(conn, Phase.IDLE)

    async def _answer_and_close(
        self, request: web.Request, conn: Connection, answer: web.HTTPException
    ) -> None:
        """Send a 408 while the connection is still writable, then close it.

        The rest of the body is never read: aiohttp would otherwise read and discard
        it, as slowly as the client sends it, for up to 10 s more.
        """
        conn.cut_reason = "body_timeout"
        transport = request.transport
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(ConnectionError):
                await answer.prepare(request)
                await answer.write_eof()
        if conn.transport is not None and not conn.transport.is_closing():
            conn.transport.close()  # after what is buffered is sent

    def body_started(self, conn: Connection) -> None:
        self._enter(conn, Phase.BODY)

    def body_done(self, conn: Connection) -> None:
        if conn.phase is Phase.BODY:
            self._enter(conn, Phase.REQUEST)


class BodyPace:
    """When a request body must have arrived: ``body_timeout_base`` plus its bytes so far
    at ``min_body_rate``.

    Bytes are counted on the wire when the connection is the guard's, so a gzip
    body is held to its compressed size, not to what it inflates to; otherwise
    (an app served another way) they are the body's bytes as read.
    """

    def __init__(
        self, request: web.BaseRequest, base: float, rate: int, guard: ConnectionGuard | None
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        self.base = base
        self.rate = rate
        self.guard = guard
        self.conn = request.get(CONNECTION) if guard is not None else None
        if self.guard is not None and self.conn is not None:
            self.guard.body_started(self.conn)

    def received(self, bytes_read: int) -> int:
        if self.conn is not None:
            return self.conn.bytes_received - self.conn.request_bytes_mark
        return bytes_read

    def deadline(self, bytes_read: int) -> float:
        return self.started + self.base + self.received(bytes_read) / self.rate

    def seconds(self) -> float:
        return self.loop.time() - self.started

    def cut_by_reportd(self) -> bool:
        """Whether the guard closed this connection (it logged why)."""
        return self.conn is not None and self.conn.cut_reason is not None

    def done(self) -> None:
        if self.guard is not None and self.conn is not None:
            self.guard.body_done(self.conn)
