"""Nothing acknowledged is lost: kill -9, restart, graceful stop (real daemon processes)."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from tests.support import deliveries, ini_for, sample

BASE = orjson.loads(sample("agent-changes.json"))


def body(index: int) -> tuple[str, bytes]:
    certname = f"burst{index:04d}.example.test"
    return certname, orjson.dumps(
        {**BASE, "host": certname, "transaction_uuid": f"00000000-0000-4000-8000-{index:012d}"}
    )


async def burst(
    url: str, count: int, concurrency: int = 32, progress: asyncio.Event | None = None, threshold: int = 0
) -> list[str]:
    """Send reports concurrently; return the certnames that were acknowledged with 200.

    ``progress`` is set once ``threshold`` reports have been acknowledged.
    """
    acknowledged: list[str] = []
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def one(index: int) -> None:
            certname, data = body(index)
            async with semaphore:
                try:
                    async with session.put(f"{url}/puppet/v3/report/{certname}?environment=production",
                                           data=data, headers={"Content-Type": "application/json"}) as response:  # fmt: skip
                        if response.status == 200 and await response.json() is not None:
                            acknowledged.append(certname)
                            if progress is not None and len(acknowledged) >= threshold:
                                progress.set()
                except aiohttp.ClientError:
                    pass  # the daemon may die mid-request: such a report was never acknowledged

        await asyncio.gather(*(one(i) for i in range(count)))
    return acknowledged


async def all_certnames(url: str) -> set[str]:
    seen: set[str] = set()
    async with aiohttp.ClientSession() as session:
        next_url = f"{url}/api/v1/reports?limit=1000"
        while next_url:
            async with session.get(next_url) as response:
                page = await response.json()
            seen.update(item["certname"] for item in page["items"])
            next_url = page["next"]
    return seen


async def queue(url: str) -> dict:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/api/v1/queue") as response:
        return (await response.json())["processors"]


async def drained(url: str, within: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if all(p["pending"] == 0 for p in (await queue(url)).values()):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"deliveries still pending: {await queue(url)}")


async def test_kill_9_right_after_a_burst_loses_nothing_acknowledged(daemon_factory, tmp_path):
    data_dir = tmp_path / "data"
    daemon = daemon_factory(ini_for(data_dir, processors="store, recorder")).start()
    acknowledged = await burst(daemon.url, 400)
    daemon.kill()  # the instant after the last acknowledgement
    assert len(acknowledged) == 400

    restarted = daemon_factory(daemon.config_path.read_text(), name="restarted").start()
    await drained(restarted.url)
    assert await all_certnames(restarted.url) >= set(acknowledged)
    recorded = {d["certname"] for d in deliveries(data_dir) if d["processor"] == "recorder"}
    assert recorded >= set(acknowledged)
    assert restarted.stop() == 0


async def test_kill_9_mid_burst_keeps_every_acknowledged_report(daemon_factory, tmp_path):
    data_dir = tmp_path / "data"
    daemon = daemon_factory(ini_for(data_dir)).start()
    progress = asyncio.Event()
    sending = asyncio.create_task(burst(daemon.url, 3000, concurrency=48, progress=progress, threshold=300))
    await progress.wait()
    daemon.kill()
    acknowledged = await sending
    assert 300 <= len(acknowledged) < 3000, "the kill should land mid-burst"

    restarted = daemon_factory(daemon.config_path.read_text(), name="restarted").start()
    await drained(restarted.url)
    assert await all_certnames(restarted.url) >= set(acknowledged)
    assert restarted.stop() == 0


async def test_pending_deliveries_resume_after_restart(daemon_factory, tmp_path):
    data_dir = tmp_path / "data"
    # `flaky` fails every report many times, so deliveries are still pending at the stop
    ini = ini_for(data_dir, "retry_initial = 1s\nretry_max = 1s\n", processors="store, flaky",
                  plugins="fail_times = 2\n").replace("retry_initial = 0.05s\nretry_max = 0.2s\n", "")  # fmt: skip
    daemon = daemon_factory(ini).start()
    acknowledged = await burst(daemon.url, 5)
    assert (await queue(daemon.url))["flaky"]["pending"] == 5
    assert daemon.stop() == 0
    assert not [d for d in deliveries(data_dir) if d["processor"] == "flaky"]

    restarted = daemon_factory(ini, name="restarted").start()  # a fresh process: attempts start over
    await drained(restarted.url)
    flaky = [d["certname"] for d in deliveries(data_dir) if d["processor"] == "flaky"]
    assert sorted(flaky) == sorted(acknowledged)
    assert restarted.stop() == 0


async def test_sigterm_finishes_requests_in_flight_and_exits_0(daemon_factory, tmp_path):
    data_dir = tmp_path / "data"
    daemon = daemon_factory(ini_for(data_dir)).start()
    progress = asyncio.Event()
    sending = asyncio.create_task(burst(daemon.url, 3000, concurrency=32, progress=progress, threshold=200))
    await progress.wait()
    daemon.process.terminate()
    acknowledged = await sending
    assert daemon.process.wait(30) == 0
    log = daemon.log_path.read_text()
    assert '"event": "stopping"' in log and '"event": "stopped"' in log

    restarted = daemon_factory(daemon.config_path.read_text(), name="restarted").start()
    await drained(restarted.url)
    assert await all_certnames(restarted.url) >= set(acknowledged)
    assert restarted.stop() == 0
