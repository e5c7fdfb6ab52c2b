"""Retention: old reports and silent nodes go, in batches; recent ones stay."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import zlib
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from reportd.appkeys import STORAGE
from reportd.periodic import drain
from reportd.storage.postgres import PostgresStorage
from tests.support import ini_for, sample, wait_until
from tests.support.pg import fresh_database


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request):
    """The ``[reportd]`` lines naming the backend: SQLite in the data dir, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield ""
        return
    async with fresh_database(request.getfixturevalue("pg_dsn")) as url:
        yield f"database = {url}\n"


def report(host: str, uuid: str, days_ago: float) -> bytes:
    data = orjson.loads(sample("agent-changes.json"))
    when = datetime.now(UTC) - timedelta(days=days_ago)
    return orjson.dumps({**data, "host": host, "transaction_uuid": uuid, "time": when.isoformat()})


async def test_expire_deletes_old_reports_in_batches_and_keeps_recent(aiohttp_client, make_app, database):
    client = await aiohttp_client(
        make_app(database, plugins="[plugin:store]\nretention_days = 14\nexpire_batch = 2\n")
    )
    storage = client.app[STORAGE]
    bodies = [
        ("old1.example.test", 30), ("old2.example.test", 20), ("old3.example.test", 15),
        ("new.example.test", 1), ("new.example.test", 20),
    ]  # fmt: skip
    for index, (host, days) in enumerate(bodies):
        response = await client.put(
            f"/puppet/v3/report/{host}?environment=production",
            data=report(host, f"00000000-0000-4000-8000-{index:012d}", days),
            headers={"Content-Type": "application/json"},
        )
        assert response.status == 200

    async def stored():
        return await storage.count_reports() == 5

    await wait_until(stored)
    cutoff = time.time() - 14 * 86400
    assert await storage.expire_reports(cutoff, 2) == 2  # one batch at a time
    assert await storage.expire_reports(cutoff, 2) == 2
    assert await storage.expire_reports(cutoff, 2) == 0
    remaining = (await (await client.get("/api/v1/reports")).json())["items"]
    assert [(r["certname"], r["run_time"][:10]) for r in remaining] == [
        ("new.example.test", (datetime.now(UTC) - timedelta(days=1)).date().isoformat())
    ]
    # nodes keep their latest status while they report; here every node was received just now
    nodes = (await (await client.get("/api/v1/nodes")).json())["items"]
    assert {n["certname"] for n in nodes} == {"old1.example.test", "old2.example.test", "old3.example.test",
                                             "new.example.test"}  # fmt: skip
    assert await storage.expire_reports(time.time() + 1, 10) == 1
    assert (await (await client.get("/api/v1/nodes")).json())["items"] == []


async def test_expire_command_applies_retention(aiohttp_client, make_app, tmp_path, database):
    data_dir = tmp_path / "data"
    client = await aiohttp_client(make_app(database, data_dir=data_dir))
    for index, days in enumerate((30, 20, 1)):
        response = await client.put(
            "/puppet/v3/report/lab-agent.example.test?environment=production",
            data=report("lab-agent.example.test", f"00000000-0000-4000-8000-{index:012d}", days),
            headers={"Content-Type": "application/json"},
        )
        assert response.status == 200
    storage = client.app[STORAGE]

    async def stored():
        return await storage.count_reports() == 3

    await wait_until(stored)
    await client.close()
    ini = tmp_path / "reportd.ini"
    ini.write_text(ini_for(data_dir, database) + "[plugin:store]\nretention_days = 14\n")
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "reportd", "--config", str(ini), "expire"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "deleted 2 reports and 0 spool entries"
    listing = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "reportd", "--config", str(ini), "reports"],
        capture_output=True,
        text=True,
    )
    assert len(listing.stdout.splitlines()) == 2  # the header and the one report left


async def seed_old_reports(url: str, count: int, run_time: float) -> None:
    """``count`` stored reports of 100 nodes, received and run at ``run_time``, written in bulk."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO inbox (idempotency_key, certname, format, received_at, envelope, body)"
            " SELECT 'old-' || g, 'old' || (g % 100) || '.example.test', 'puppet', $1, '\\x7b7d'::bytea,"
            " $2::bytea FROM generate_series(1, $3) g",
            run_time,
            zlib.compress(sample("agent-changes.json")),
            count,
        )
        await conn.execute(
            "INSERT INTO reports (id, certname, status, noop, format, run_time, received_at, summary)"
            " SELECT id, certname, 'changed', false, format, received_at, received_at, '\\x7b7d'::bytea"
            " FROM inbox WHERE idempotency_key LIKE 'old-%'"
        )
    finally:
        await conn.close()


async def test_ingest_goes_on_while_postgres_expires_a_large_batch(aiohttp_client, make_app, pg_dsn):
    async with fresh_database(pg_dsn) as url:
        client = await aiohttp_client(make_app(f"database = {url}\n"))
        storage = client.app[STORAGE]
        old = time.time() - 30 * 86400
        await seed_old_reports(url, 30_000, old)
        # One batch of everything: a single long transaction, the worst case for ingest.
        expiry = asyncio.create_task(storage.expire_reports(old + 1, 30_000))
        await asyncio.sleep(0.05)
        during, statuses = 0, []
        index = 0
        while not expiry.done() or index < 5:
            response = await client.put(
                "/puppet/v3/report/new.example.test?environment=production",
                data=report("new.example.test", f"00000000-0000-4000-8000-{index:012d}", 0),
                headers={"Content-Type": "application/json"},
            )
            statuses.append(response.status)
            during += not expiry.done()
            index += 1
        assert await expiry == 30_000
        assert set(statuses) == {200}
        assert during >= 3, f"only {during} reports were accepted while the expiry ran"

        async def stored():
            return await storage.count_reports() == index

        await wait_until(stored)  # the store went on too, and nothing new was expired


async def test_postgres_instances_expiring_together_share_the_work(tmp_path, pg_dsn):
    async with fresh_database(pg_dsn) as url:
        instances = [PostgresStorage(url), PostgresStorage(url)]
        for instance in instances:
            await instance.open()
        try:
            old = time.time() - 30 * 86400
            await seed_old_reports(url, 3000, old)
            totals = await asyncio.gather(
                *(drain(lambda s=s: s.expire_reports(old + 1, 100), pause=0) for s in instances)
            )
            assert sum(totals) == 3000  # disjoint batches: nothing deleted twice, no deadlock
            assert await instances[0].count_reports() == 0
            conn = await asyncpg.connect(url)
            try:
                assert await conn.fetchval("SELECT count(*) FROM inbox WHERE body IS NOT NULL") == 0
            finally:
                await conn.close()
        finally:
            for instance in instances:
                await instance.close()
