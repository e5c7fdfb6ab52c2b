"""Slow and many clients against a real ``reportd serve``: header and body deadlines, the connection cap."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import ssl
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
import pytest
import trustme

from reportd.config import CORE_SETTINGS
from reportd.connections import FD_RESERVE
from tests.support import ROOT, Daemon, ini_for, sample

pytestmark = pytest.mark.slow  # every test here runs real connections for seconds

REPORT = orjson.loads(sample("agent-changes.json"))
CLIENT_TIMEOUT = 5.0
# A partial request head: the blank line that would end it never comes.
PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: reportd.example.test\r\n"


def unique_report() -> tuple[str, bytes]:
    """A report path and body no one sent before (unique host and transaction_uuid)."""
    certname = f"node-{uuid.uuid4().hex[:12]}.example.test"
    body = orjson.dumps({**REPORT, "host": certname, "transaction_uuid": str(uuid.uuid4())})
    return f"/puppet/v3/report/{certname}?environment=production", body


async def open_put(port: int, path: str, length: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that has sent the head of a report PUT of ``length`` bytes, and no body yet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"PUT {path} HTTP/1.1\r\nHost: reportd.example.test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
    )
    return reader, writer


async def put_report(url: str, *, ssl_context: ssl.SSLContext | None = None) -> int:
    """One agent run's upload, on a connection of its own as an agent makes it."""
    path, body = unique_report()
    connector = aiohttp.TCPConnector(force_close=True, ssl=ssl_context if ssl_context else True)
    async with (
        aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
        ) as session,
        session.put(url + path, data=body, headers={"Content-Type": "application/json"}) as response,
    ):
        assert await response.json() == ["store"], await response.text()
        return response.status


async def get_health(url: str) -> int:
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
        ) as session,
        session.get(url + "/healthz") as response,
    ):
        return response.status


async def closed_by_server(reader: asyncio.StreamReader, wait: float) -> bytes | None:
    """What the server sent before closing within ``wait`` seconds, or None if it is still open."""
    received = b""
    deadline = time.monotonic() + wait
    try:
        while (left := deadline - time.monotonic()) > 0:
            chunk = await asyncio.wait_for(reader.read(65536), left)
            if not chunk:
                return received
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        return received
    return None


async def drip(writer: asyncio.StreamWriter, piece: bytes, interval: float) -> None:
    """Send ``piece`` every ``interval`` seconds until the connection breaks."""
    try:
        while not writer.is_closing():
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(interval)
    except ConnectionError:
        pass


async def close(*writers: asyncio.StreamWriter) -> None:
    """Close and wait: a socket whose close is still pending when the test's loop ends is
    reported unclosed (a ResourceWarning) in whichever test runs next."""
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    return int(lines[0].split()[1]), await reader.readexactly(length)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_sockets(pid: int) -> int:
    """The daemon's TCP connections to clients (its sockets, less the listener and asyncio's own pair)."""
    sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed since it was listed
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return sockets - 3


def log_lines(daemon: Daemon) -> list[dict]:
    return [orjson.loads(line) for line in daemon.log_path.read_bytes().splitlines() if line.startswith(b"{")]


# -- request heads ----------------------------------------------------------------------------


async def test_a_request_head_sent_slowly_is_cut_after_header_timeout(daemon_factory, tmp_path):
    daemon = daemon_factory(ini_for(tmp_path, "header_timeout = 1s\n")).start()
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    started = time.monotonic()
    writer.write(PARTIAL_HEAD)
    dripping = asyncio.create_task(drip(writer, b"X-Slow: 1\r\n", 0.2))
    answer = await closed_by_server(reader, 5.0)
    elapsed = time.monotonic() - started
    dripping.cancel()
    await close(writer)
    assert answer == b"", "cut without an answer"
    assert 0.9 <= elapsed <= 2.5, elapsed
    events = [line for line in log_lines(daemon) if line["event"] == "request_head_timeout"]
    assert len(events) == 1 and events[0]["remote"] == "127.0.0.1", events
    assert await get_health(daemon.url) == 200


async def test_a_connection_that_sends_nothing_is_cut_but_an_idle_keep_alive_one_is_not(
    daemon_factory, tmp_path
):
    daemon = daemon_factory(ini_for(tmp_path, "header_timeout = 1s\n")).start()
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    request = b"GET /healthz HTTP/1.1\r\nHost: reportd.example.test\r\n\r\n"
    writer.write(request)
    assert (await read_response(reader))[0] == 200
    # Twice the header timeout with nothing sent: the silent connection is cut, the
    # keep-alive one (its request done) is idle and keeps aiohttp's keep-alive timeout.
    assert await closed_by_server(silent_reader, 2.0) == b""
    await asyncio.sleep(0.5)
    writer.write(request)
    assert await read_response(reader) == (200, b'{"status":"ok"}')
    await close(writer, silent_writer)


@pytest.mark.parametrize(
    ("request_bytes", "status", "message"),
    [
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad\x01Header: y\r\n\r\n",
            400,
            "malformed request: Invalid header token",
        ),
        (b"GARBAGE\r\n\r\n", 400, "malformed request: Invalid method encountered"),
        (
            b"PUT /puppet/v3/report/a.example.test?environment=production HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}",
            415,
            "the request's Content-Encoding is not supported (use gzip, deflate or none)",
        ),
    ],
    ids=["bad-header", "not-http", "brotli"],
)
async def test_what_the_http_parser_refuses_is_answered_in_json(
    daemon_factory, tmp_path, request_bytes, status, message
):
    daemon = daemon_factory(ini_for(tmp_path)).start()
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(request_bytes)
    answer = await closed_by_server(reader, 5.0)
    await close(writer)
    head, _, body = (answer or b"").partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == str(status).encode(), answer
    assert b"Content-Type: application/json" in head
    assert orjson.loads(body)["message"].startswith(message)


# -- request bodies ---------------------------------------------------------------------------


async def test_a_slow_body_is_cut_with_408_while_an_agent_is_served(daemon_factory, tmp_path):
    daemon = daemon_factory(ini_for(tmp_path, "body_timeout_base = 1s\nmin_body_rate = 64KiB\n")).start()
    path, body = unique_report()
    started = time.monotonic()
    reader, writer = await open_put(daemon.port, path, len(body))
    dripping = asyncio.create_task(drip(writer, b" ", 0.1))
    # Meanwhile an agent uploads its report, and is answered at once.
    agent_started = time.monotonic()
    assert await put_report(daemon.url) == 200
    assert time.monotonic() - agent_started < 1.0
    answer = await closed_by_server(reader, 5.0)
    elapsed = time.monotonic() - started
    dripping.cancel()
    await close(writer)
    assert answer is not None, "the slow body is still being read"
    assert 0.9 <= elapsed <= 2.5, elapsed
    if answer:  # writable when it was cut: a 408 and its JSON body, then closed
        head, _, error = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer
        assert orjson.loads(error)["issue_kind"] == "REQUEST_TIMEOUT"
    events = [line for line in log_lines(daemon) if line["event"] == "request_body_timeout"]
    assert len(events) == 1 and events[0]["bytes"] < 2000, events


async def test_a_slow_body_on_the_foreman_route_is_refused_in_foreman_shape(daemon_factory, tmp_path):
    daemon = daemon_factory(ini_for(tmp_path, "body_timeout_base = 1s\nmin_body_rate = 64KiB\n")).start()
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(
        b"POST /api/reports HTTP/1.1\r\nHost: reportd.example.test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000\r\n\r\n{"
    )
    await writer.drain()
    answer = await closed_by_server(reader, 5.0)  # nothing more is sent: the body is late at once
    await close(writer)
    head, _, error = (answer or b"").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert b"Connection: close" in head
    assert orjson.loads(error)["error"]["message"].startswith("The request body came too slowly")
    rejected = [line for line in log_lines(daemon) if line["event"] == "report_rejected"]
    assert [(line["reason"], line["status"]) for line in rejected] == [("timeout", 408)]


async def test_a_body_sent_at_the_floor_rate_is_not_cut(daemon_factory, tmp_path):
    # 4 KiB/s floor after 0.5 s: 16 KiB at 8 KiB/s takes 2 s, four times the base.
    daemon = daemon_factory(ini_for(tmp_path, "body_timeout_base = 0.5s\nmin_body_rate = 4KiB\n")).start()
    path, body = unique_report()
    body = body[:-1] + b" " * (16384 - len(body)) + b"}"
    reader, writer = await open_put(daemon.port, path, len(body))
    for offset in range(0, len(body), 820):
        writer.write(body[offset : offset + 820])
        await writer.drain()
        await asyncio.sleep(0.1)
    status, answer = await asyncio.wait_for(read_response(reader), 5)
    await close(writer)
    assert (status, orjson.loads(answer)) == (200, ["store"])


# -- the connection cap -----------------------------------------------------------------------


async def test_at_the_cap_agents_are_served_while_slow_heads_hold_twice_as_many(daemon_factory, tmp_path):
    daemon = daemon_factory(ini_for(tmp_path, "max_connections = 20\nheader_timeout = 60s\n")).start()
    pid = daemon.process.pid
    stop = asyncio.Event()
    cut = 0

    async def attacker() -> None:
        # Reconnects as soon as it is cut, as a slowloris does.
        nonlocal cut
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.write(PARTIAL_HEAD)
            while not stop.is_set() and await closed_by_server(reader, 0.2) is None:
                pass
            cut += not stop.is_set()
            await close(writer)

    attackers = [asyncio.create_task(attacker()) for _ in range(40)]
    try:
        await asyncio.sleep(1.0)
        cpu_before, at = cpu_seconds(pid), time.monotonic()
        for _ in range(3):
            started = time.monotonic()
            assert await get_health(daemon.url) == 200
            assert await put_report(daemon.url) == 200
            assert time.monotonic() - started < 3.0
            # The cap, and those just evicted whose files close on the loop's next pass.
            assert client_sockets(pid) <= 20 + 5
        await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - at)))
        cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - at)
    finally:
        stop.set()
        await asyncio.gather(*attackers)
    assert cut >= 40, "connections were closed to make room"
    assert cpu < 0.5, f"the daemon used {cpu:.0%} of a CPU"
    assert daemon.stop() == 0
    lines = log_lines(daemon)
    # One line when the cap is reached; evictions are warnings, 10 per 10 s at most, then counted.
    assert len([line for line in lines if line["event"] == "connection_limit_reached"]) == 1
    evicted = [line for line in lines if line["event"] == "connection_evicted"]
    assert len(evicted) == 10 and evicted[0]["phase"] == "head", evicted
    (summary,) = [line for line in lines if line["event"] == "log_messages_suppressed"]
    assert summary["similar_to"] == "connection_evicted" and summary["suppressed"] >= cut - 10, summary
    assert len(lines) <= 30, [line["event"] for line in lines]


async def test_at_the_cap_with_no_connection_to_close_new_ones_wait_without_spinning(
    daemon_factory, tmp_path
):
    # Bodies that keep up with min_body_rate are never closed to make room.
    ini = "max_connections = 20\nbody_timeout_base = 30s\nmin_body_rate = 10\n"
    daemon = daemon_factory(ini_for(tmp_path, ini)).start()
    pid = daemon.process.pid
    writers, drips = [], []
    for _ in range(20):
        path, _ = unique_report()
        reader, writer = await open_put(daemon.port, path, 100000)
        writers.append((reader, writer))
        drips.append(asyncio.create_task(drip(writer, b" " * 10, 0.2)))
    await asyncio.sleep(0.5)
    waiting = [await asyncio.open_connection("127.0.0.1", daemon.port) for _ in range(10)]
    for _, writer in waiting:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: reportd.example.test\r\n\r\n")
    cpu_before, lines_before, at = cpu_seconds(pid), len(log_lines(daemon)), time.monotonic()
    await asyncio.sleep(2.5)
    cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - at)
    new_lines = log_lines(daemon)[lines_before:]
    assert client_sockets(pid) == 20
    # The ones waiting in the backlog were neither answered nor refused.
    assert [await closed_by_server(reader, 0.01) for reader, _ in waiting] == [None] * 10
    assert cpu < 0.1, f"the daemon used {cpu:.0%} of a CPU"
    assert len(new_lines) <= 3, new_lines
    # A slot frees: the first one waiting gets it.
    for task in drips[:1]:
        task.cancel()
    writers[0][1].transport.abort()
    assert await asyncio.wait_for(read_response(waiting[0][0]), 3) == (200, b'{"status":"ok"}')
    for task in drips:
        task.cancel()
    await close(*(writer for _, writer in writers + waiting))


async def test_at_the_cap_requests_waiting_for_body_memory_with_trickling_bodies_make_room(
    daemon_factory, tmp_path
):
    # The first body overdraws body_memory (70 kB of 64 KiB sent at once, more to come);
    # the others wait for it before keeping their first bytes, each holding a connection.
    ini = "max_connections = 10\nbody_memory = 64KiB\nmin_body_rate = 1KiB\nbody_timeout_base = 30s\n"
    daemon = daemon_factory(ini_for(tmp_path, ini)).start()
    clients, drips = [], []
    for index in range(10):
        path, _ = unique_report()
        reader, writer = await open_put(daemon.port, path, 200000 if index == 0 else 60000)
        if index == 0:
            writer.write(b" " * 70000)
        # The first, being read, keeps up with min_body_rate; those waiting trickle.
        drips.append(asyncio.create_task(drip(writer, b" " * (1024 if index == 0 else 10), 0.2)))
        clients.append((reader, writer))
        if index == 0:
            await asyncio.sleep(0.3)
    await asyncio.sleep(0.5)
    started = time.monotonic()
    assert await get_health(daemon.url) == 200
    assert time.monotonic() - started < 2.0
    assert await closed_by_server(clients[0][0], 0.01) is None, "the body keeping up is still being read"
    for task in drips:
        task.cancel()
    await close(*(writer for _, writer in clients))  # before stop() blocks this loop
    assert daemon.stop() == 0
    lines = log_lines(daemon)
    evicted = [line for line in lines if line["event"] == "connection_evicted"]
    assert [line["phase"] for line in evicted] == ["body"], evicted
    assert not [line for line in lines if line["level"] == "error"], lines


# -- open file limit --------------------------------------------------------------------------


def open_file_limit(soft: int, hard: int):
    """For Daemon.start(preexec_fn=...): the limit systemd's LimitNOFILE= or `ulimit -n` would set."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return limit


def test_the_soft_open_file_limit_is_raised_to_the_hard_one(daemon_factory, tmp_path):
    daemon = daemon_factory(ini_for(tmp_path))
    daemon.start(preexec_fn=open_file_limit(1024, 4096))  # systemd's default soft limit
    limits = Path(f"/proc/{daemon.process.pid}/limits").read_text()
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert line.split()[3:5] == ["4096", "4096"]


def test_serve_refuses_to_start_when_max_connections_does_not_fit_the_open_file_limit(
    daemon_factory, tmp_path
):
    daemon = daemon_factory(ini_for(tmp_path, "max_connections = 1000\n"))
    with pytest.raises(RuntimeError, match="reportd exited 1"):
        daemon.start(preexec_fn=open_file_limit(1024, 1024))
    assert daemon.log_path.read_text().strip().splitlines() == [
        "Error: max_connections = 1000 needs 1256 open files (256 more for the database and files),"
        " but the limit is 1024: lower max_connections or raise the limit (LimitNOFILE= in the systemd"
        " unit, ulimit -n)"
    ]


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
    leaf.private_key_pem.write_to_path(str(directory / "server.key"))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return directory, client


async def test_over_tls_a_stalled_handshake_is_cut_after_header_timeout(daemon_factory, tmp_path, server_tls):
    directory, client = server_tls
    extra = (
        f"tls_cert = {directory / 'server.pem'}\ntls_key = {directory / 'server.key'}\nheader_timeout = 1s\n"
    )
    daemon = daemon_factory(ini_for(tmp_path, extra), scheme="https").start()
    # TCP only: no ClientHello ever comes.
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    started = time.monotonic()
    assert await put_report(daemon.url, ssl_context=client) == 200
    assert await closed_by_server(reader, 4.0) == b""
    assert 0.9 <= time.monotonic() - started <= 2.5
    await close(writer)
    # A TLS connection whose head stalls after the handshake is cut as well.
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port, ssl=client)
    writer.write(PARTIAL_HEAD)
    assert await closed_by_server(reader, 4.0) == b""
    await close(writer)


def test_the_systemd_unit_has_room_for_the_default_cap():
    unit = (ROOT / "systemd" / "reportd.service").read_text()
    (limit,) = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("LimitNOFILE=")]
    assert int(limit) >= int(CORE_SETTINGS["max_connections"].default) + FD_RESERVE


# A server out of file descriptors long before its cap (64 open files, cap 10,000): what
# asyncio's own accept loop answered with a flood of log lines and a busy loop.
OUT_OF_FILES_SERVER = """
import asyncio, resource, sys
from aiohttp import web
from reportd.appkeys import CONNECTIONS
from reportd.connections import ConnectionGuard, Limits
from reportd.log import configure_logging

async def health(request):
    return web.json_response({"status": "ok"})

async def main():
    configure_logging("info", "json")
    app = web.Application()
    app.router.add_get("/healthz", health)
    guard = ConnectionGuard(Limits(max_connections=10_000, header_timeout=60.0, body_timeout_base=10.0,
                                   min_body_rate=65536))
    app[CONNECTIONS] = guard
    guard.install(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    [(_, port)] = await guard.start(runner.server, "127.0.0.1", 0)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    print(port, file=sys.stderr, flush=True)
    await asyncio.sleep(float(sys.argv[1]))
    guard.stop()
    await runner.cleanup()

asyncio.run(main())
"""


async def test_out_of_files_the_accept_loop_backs_off_and_makes_room_instead_of_spinning():
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OUT_OF_FILES_SERVER, "6",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    port = int(await asyncio.wait_for(server.stderr.readline(), 20))
    held = []
    for _ in range(100):  # far more than 64 files
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(PARTIAL_HEAD)
        held.append((reader, writer))
    await asyncio.sleep(1.0)
    cpu_before, at = cpu_seconds(server.pid), time.monotonic()
    await asyncio.sleep(2.0)
    cpu = (cpu_seconds(server.pid) - cpu_before) / (time.monotonic() - at)
    # Out of files, the oldest connection waiting for its head made room for this one.
    assert await get_health(f"http://127.0.0.1:{port}") == 200
    output, _ = await asyncio.wait_for(server.communicate(), 20)
    await close(*(writer for _, writer in held))
    assert server.returncode == 0
    lines = [orjson.loads(line) for line in output.splitlines()]
    failed = [line for line in lines if line["event"] == "accept_failed"]
    assert 1 <= len(failed) <= 10 and failed[0]["errno"] == "EMFILE", failed
    assert cpu < 0.2, f"the server used {cpu:.0%} of a CPU"
    assert len(lines) <= 40, [line["event"] for line in lines]
