"""Faults: a full disk, PostgreSQL going away, a corrupt or unusable store, a stopped writer.

Real daemons and real failures: the disk fills because the process may not
write more (RLIMIT_FSIZE, which SQLite meets as "database or disk is full"),
PostgreSQL goes away because the TCP path to it is cut. Whatever happens, an
acknowledged report is never lost, and what was not stored is a 503 with a
JSON body and Retry-After, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import subprocess
import sys
import urllib.parse
import uuid

import aiohttp
import asyncpg
import orjson

from reportd.appkeys import STORAGE
from tests.support import LOCAL_PLUGINS, ini_for, sample
from tests.support.pg import fresh_database

BASE = orjson.loads(sample("agent-changes.json"))
JSON = {"Content-Type": "application/json"}


async def send_one(session: aiohttp.ClientSession, url: str, index: int) -> tuple[str, int, dict | None]:
    certname = f"fault{index:05d}.example.test"
    body = orjson.dumps({**BASE, "host": certname, "transaction_uuid": str(uuid.uuid4())})
    try:
        async with session.put(
            f"{url}/puppet/v3/report/{certname}?environment=production", data=body, headers=JSON
        ) as response:
            answer = await response.json() if response.content_type == "application/json" else None
            if response.status == 503:
                assert response.headers["Retry-After"] == "30"
            return certname, response.status, answer
    except aiohttp.ClientError:
        return certname, -1, None


async def health(session: aiohttp.ClientSession, url: str) -> tuple[int, dict]:
    async with session.get(f"{url}/healthz") as response:
        return response.status, await response.json()


async def stored_certnames(url: str) -> set[str]:
    found: set[str] = set()
    next_url = f"{url}/api/v1/reports?limit=1000"
    async with aiohttp.ClientSession() as session:
        while next_url:
            async with session.get(next_url) as response:
                page = await response.json()
            found |= {item["certname"] for item in page["items"]}
            next_url = page["next"]
    return found


async def until_drained(url: str, within: float = 60) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(int(within * 10)):
            async with session.get(f"{url}/api/v1/queue") as response:
                if all(p["pending"] == 0 for p in (await response.json())["processors"].values()):
                    return
            await asyncio.sleep(0.1)
    raise AssertionError("deliveries still pending")


def _file_size_limit(size: int):
    def limit() -> None:
        # the soft limit only: the test lifts it later, as freeing space would
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))

    return limit


async def test_a_full_disk_is_503_and_loses_nothing_acknowledged(daemon_factory, tmp_path):
    data_dir = tmp_path / "data"
    ini = ini_for(data_dir, processors="store")
    daemon = daemon_factory(ini).start(preexec_fn=_file_size_limit(3 * 1024 * 1024))
    answers = []
    async with aiohttp.ClientSession() as session:
        for start in range(0, 6000, 50):
            answers += await asyncio.gather(
                *(send_one(session, daemon.url, i) for i in range(start, start + 50))
            )
            if sum(1 for _, status, _ in answers if status == 503) >= 50:
                break
        refused = [a for a in answers if a[1] == 503]
        assert refused, "the disk never filled"
        assert all(a[1] in (200, 503) for a in answers)
        assert all(answer and answer["issue_kind"] == "SERVICE_UNAVAILABLE" for _, _, answer in refused)
        status, body = await health(session, daemon.url)
        assert status == 503
        assert body["reason"].startswith("SQLite refuses writes: ")

        # space again (the limit lifted): the same daemon takes reports without a restart
        unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        resource.prlimit(daemon.process.pid, resource.RLIMIT_FSIZE, unlimited)
        later = await asyncio.gather(*(send_one(session, daemon.url, i) for i in range(10_000, 10_020)))
        assert [status for _, status, _ in later] == [200] * 20
        # healthy again once no write failed for a while (the storage's error memory, 10 s)
        for _ in range(150):
            if (await health(session, daemon.url))[0] == 200:
                break
            await asyncio.sleep(0.1)
        assert (await health(session, daemon.url))[0] == 200
        answers += later
    acknowledged = {certname for certname, status, _ in answers if status == 200}
    daemon.kill()

    # room again: everything acknowledged is there, nothing refused was kept
    restarted = daemon_factory(ini, name="restarted").start()
    await until_drained(restarted.url)
    stored = await stored_certnames(restarted.url)
    assert stored == acknowledged
    async with aiohttp.ClientSession() as session:
        assert (await health(session, restarted.url))[0] == 200
    assert restarted.stop() == 0


class Cuttable:
    """A TCP path to PostgreSQL that the test can cut and mend (an outage as the daemon sees it)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.links):
            writer.transport.abort()
        await self.server.wait_closed()

    async def __aenter__(self) -> Cuttable:
        await self.open()
        return self

    async def __aexit__(self, *exc_info) -> None:
        # Left open, its listening socket outlived the test's loop and its ResourceWarning
        # failed whichever later test the collector happened to run in.
        await self.cut()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.links |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.links -= {writer, up_writer}


async def test_postgresql_down_for_seconds_is_503_and_loses_nothing_acknowledged(
    daemon_factory, tmp_path, pg_dsn
):
    server = urllib.parse.urlsplit(pg_dsn)  # the test server: the local one or a throwaway cluster
    async with fresh_database(pg_dsn) as database, Cuttable((server.hostname, server.port)) as proxy:
        through_proxy = database.replace(f"{server.hostname}:{server.port}", f"127.0.0.1:{proxy.port}")
        assert through_proxy != database
        ini = (
            f"[reportd]\ndatabase = {through_proxy}\ndata_dir = {tmp_path}\nprocessors = store\n"
            f"plugin_paths = {LOCAL_PLUGINS}\nretry_initial = 0.05s\nretry_max = 0.5s\n"
        )
        # started from a thread: the proxy runs on this test's event loop
        daemon = await asyncio.to_thread(daemon_factory(ini).start)
        answers: list[tuple[str, int, dict | None]] = []
        health_during: list[int] = []
        async with aiohttp.ClientSession() as session:

            async def load(start: int, count: int) -> None:
                for index in range(start, start + count):
                    answers.append(await send_one(session, daemon.url, index))
                    await asyncio.sleep(0.005)

            sending = asyncio.create_task(load(0, 1500))
            await asyncio.sleep(1.0)
            await proxy.cut()
            await asyncio.sleep(3.5)
            health_during.append((await health(session, daemon.url))[0])
            await asyncio.sleep(3.5)
            await proxy.open()  # on the same port: the daemon reconnects by itself
            await sending
            statuses = {status for _, status, _ in answers}
            assert statuses <= {200, 503}
            assert 503 in statuses and 200 in statuses
            assert all(a and a["issue_kind"] == "SERVICE_UNAVAILABLE" for _, s, a in answers if s == 503)
            assert health_during == [503]
            for _ in range(50):
                if (await health(session, daemon.url))[0] == 200:
                    break
                await asyncio.sleep(0.1)
            assert (await health(session, daemon.url))[0] == 200
        acknowledged = {certname for certname, status, _ in answers if status == 200}
        unavailable = {certname for certname, status, _ in answers if status == 503}
        await until_drained(daemon.url)
        stored = await stored_certnames(daemon.url)
        # Nothing acknowledged is lost. A 503 may still have been stored: the commit can
        # succeed as the connection drops (a resend is recognised as a duplicate).
        assert stored >= acknowledged
        assert stored - acknowledged <= unavailable
        assert await asyncio.to_thread(daemon.stop) == 0
        conn = await asyncpg.connect(database)
        try:
            assert await conn.fetchval("SELECT count(*) FROM reports") == len(stored)
        finally:
            await conn.close()


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reportd", *args, "serve", "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_a_corrupt_store_stops_serve_with_one_line(tmp_path):
    (tmp_path / "reportd.sqlite3").write_bytes(b"this is not a database" * 500)
    result = _serve("--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr == f"Error: cannot open {tmp_path / 'reportd.sqlite3'}: file is not a database\n"


def test_an_unusable_data_dir_stops_serve_with_one_line(tmp_path):
    result = _serve("--data-dir", "/proc/reportd-cannot-be-here")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: cannot use /proc/reportd-cannot-be-here: ")
    assert result.stderr.count("\n") == 1


async def test_healthz_is_503_while_the_writer_is_stopped(aiohttp_client, make_app):
    client = await aiohttp_client(make_app())
    assert (await client.get("/healthz")).status == 200
    storage = client.app[STORAGE]
    await asyncio.to_thread(storage._writer.stop)
    response = await client.get("/healthz")
    assert response.status == 503
    assert (await response.json())["reason"].startswith("the SQLite writer stopped")
    response = await client.put(
        "/puppet/v3/report/a.example.test?environment=production",
        data=orjson.dumps({**BASE, "host": "a.example.test"}),
        headers=JSON,
    )
    assert response.status == 503
    assert response.headers["Retry-After"] == "30"
    assert (await response.json())["issue_kind"] == "SERVICE_UNAVAILABLE"
