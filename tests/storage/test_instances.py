"""Several reportd instances on one PostgreSQL database (real daemons, real PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import aiohttp
import orjson
import pytest

from tests.support import LOCAL_PLUGINS, deliveries, sample

BASE = orjson.loads(sample("agent-changes.json"))


@pytest.fixture
def database(pg_database):
    """A database of its own for this test, on the test server (tests/support/pg.py)."""
    return pg_database


def ini(database: str, data_dir, extra: str = "") -> str:
    return (
        f"[reportd]\ndatabase = {database}\ndata_dir = {data_dir}\nprocessors = store, recorder\n"
        f"plugin_paths = {LOCAL_PLUGINS}\nretry_initial = 0.05s\nretry_max = 0.2s\n{extra}"
        f"[plugin:testprocs]\npath = {data_dir / 'deliveries.jsonl'}\n"
    )


async def send(urls: list[str], count: int, progress: asyncio.Event | None = None) -> list[str]:
    """Reports spread over the instances; the certnames that were acknowledged."""
    acknowledged: list[str] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:

        async def one(index: int) -> None:
            certname = f"multi{index:05d}.example.test"
            body = orjson.dumps({**BASE, "host": certname, "transaction_uuid": str(uuid.uuid4())})
            url = urls[index % len(urls)]
            try:
                async with session.put(f"{url}/puppet/v3/report/{certname}?environment=production", data=body,
                                       headers={"Content-Type": "application/json"}) as response:  # fmt: skip
                    if response.status == 200:
                        acknowledged.append(certname)
                        if progress is not None and len(acknowledged) >= count // 4:
                            progress.set()
            except aiohttp.ClientError:
                pass  # the instance died: never acknowledged

        await asyncio.gather(*(one(i) for i in range(count)))
    return acknowledged


async def pending(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/api/v1/queue") as response:
        return sum(p["pending"] for p in (await response.json())["processors"].values())


async def until_drained(url: str, within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if await pending(url) == 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{await pending(url)} deliveries still pending")


async def test_two_instances_deliver_each_report_exactly_once(daemon_factory, database, tmp_path):
    first = daemon_factory(ini(database, tmp_path), name="first").start()
    second = daemon_factory(ini(database, tmp_path), name="second").start()
    acknowledged = await send([first.url, second.url], 300)
    assert len(acknowledged) == 300
    await until_drained(first.url, 60)
    recorded = Counter(d["certname"] for d in deliveries(tmp_path))
    assert set(recorded) == set(acknowledged)
    assert max(recorded.values()) == 1  # each delivery claimed by exactly one instance
    by_instance = {
        d.log_path.stem: d.log_path.read_text().count('"report_accepted"') for d in (first, second)
    }
    assert by_instance["first"] > 0 and by_instance["second"] > 0
    assert first.stop() == 0 and second.stop() == 0


async def test_kill_9_of_one_instance_loses_nothing(daemon_factory, database, tmp_path):
    # A short processor timeout, so the dead instance's leases run out soon (2 x 1 s + 30 s).
    extra = "processor_timeout = 1s\n"
    first = daemon_factory(ini(database, tmp_path, extra), name="first").start()
    second = daemon_factory(ini(database, tmp_path, extra), name="second").start()
    progress = asyncio.Event()
    sending = asyncio.create_task(send([first.url, second.url], 1200, progress))
    await progress.wait()
    first.kill()
    acknowledged = await sending
    assert 300 <= len(acknowledged) < 1200
    await until_drained(second.url, 90)
    recorded = {d["certname"] for d in deliveries(tmp_path)}
    assert set(acknowledged) <= recorded  # at least once: the survivor delivered what the dead one held
    async with aiohttp.ClientSession() as session:
        seen: set[str] = set()
        next_url = f"{second.url}/api/v1/reports?limit=1000"
        while next_url:
            async with session.get(next_url) as response:
                page = await response.json()
            seen.update(item["certname"] for item in page["items"])
            next_url = page["next"]
    assert set(acknowledged) <= seen
    assert second.stop() == 0
