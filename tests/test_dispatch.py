"""Per-processor durable delivery: retries, dead letters, timeouts, isolation."""

from __future__ import annotations

from collections import Counter

import orjson

from reportd.appkeys import PIPELINE, STORAGE
from tests.support import deliveries, sample, wait_until

URL = "/puppet/v3/report/{certname}?environment=production"


def report_body(index: int) -> tuple[str, bytes]:
    report = orjson.loads(sample("agent-changes.json"))
    certname = f"node{index:03d}.example.test"
    report["host"] = certname
    report["transaction_uuid"] = f"00000000-0000-4000-8000-{index:012d}"
    return certname, orjson.dumps(report)


async def send(client, count: int) -> list[str]:
    certnames = []
    for index in range(count):
        certname, body = report_body(index)
        response = await client.put(URL.format(certname=certname), data=body,
                                    headers={"Content-Type": "application/json"})  # fmt: skip
        assert response.status == 200
        certnames.append(certname)
    return certnames


async def queue(client) -> dict:
    return (await (await client.get("/api/v1/queue")).json())["processors"]


async def test_every_processor_gets_every_report_once(aiohttp_client, make_app, tmp_path):
    client = await aiohttp_client(make_app(processors="store, recorder"))
    response = await client.put(URL.format(certname="node000.example.test"), data=report_body(0)[1],
                                headers={"Content-Type": "application/json"})  # fmt: skip
    assert await response.json() == ["store", "recorder"]
    certnames = await send(client, 20)  # node000 again: a duplicate, delivered once
    await wait_until(lambda: _all_drained(client))
    delivered = deliveries(tmp_path)
    assert sorted(d["certname"] for d in delivered) == sorted(certnames)
    assert Counter(d["id"] for d in delivered).most_common(1)[0][1] == 1


async def _all_drained(client):
    return all(p["pending"] == 0 for p in (await queue(client)).values())


async def test_flaky_processor_is_retried_until_delivered_once_others_unaffected(
    aiohttp_client, make_app, tmp_path
):
    client = await aiohttp_client(
        make_app(processors="store, flaky, recorder", plugins="fail_times = 3\n"),
    )
    await send(client, 3)
    await wait_until(lambda: _all_drained(client))
    delivered = deliveries(tmp_path)
    by_processor = Counter(d["processor"] for d in delivered)
    assert by_processor == {"flaky": 3, "recorder": 3}
    assert len({d["id"] for d in delivered if d["processor"] == "flaky"}) == 3
    assert all(p["dead"] == 0 for p in (await queue(client)).values())
    items = (await (await client.get("/api/v1/reports")).json())["items"]
    assert len(items) == 3


async def test_always_failing_processor_is_dead_lettered_and_others_deliver(
    aiohttp_client, make_app, tmp_path
):
    client = await aiohttp_client(make_app("max_attempts = 3\n", processors="broken, store, recorder"))
    await send(client, 2)

    async def dead():
        stats = await queue(client)
        return stats["broken"]["dead"] == 2 and stats["broken"]["pending"] == 0 and stats

    stats = await wait_until(dead)
    assert stats["store"] == {"pending": 0, "dead": 0, "oldest_pending_seconds": None}
    assert len(deliveries(tmp_path)) == 2
    storage = client.app[STORAGE]
    letters = await storage.dead_letters("broken", 10)
    assert [(d.attempts, d.error) for d in letters] == [(3, "RuntimeError: broken processor")] * 2


async def test_permanent_error_is_dead_lettered_at_once(aiohttp_client, make_app):
    client = await aiohttp_client(make_app(processors="broken", plugins="permanent = true\n"))
    await send(client, 1)
    stats = await wait_until(lambda: _dead(client, "broken", 1))
    assert stats["broken"]["pending"] == 0
    storage = client.app[STORAGE]
    (letter,) = await storage.dead_letters("broken", 10)
    assert letter.attempts == 1
    assert letter.error == "PermanentError: this report can never be processed"


async def _dead(client, name, count):
    stats = await queue(client)
    return stats if stats[name]["dead"] == count else None


async def test_hanging_processor_times_out_and_does_not_block_others(aiohttp_client, make_app, tmp_path):
    client = await aiohttp_client(make_app("max_attempts = 2\n", processors="slow, recorder"))
    await send(client, 2)
    stats = await wait_until(lambda: _dead(client, "slow", 2))
    assert stats["recorder"]["pending"] == 0
    assert len(deliveries(tmp_path)) == 2
    storage = client.app[STORAGE]
    letters = await storage.dead_letters("slow", 10)
    assert {d.error for d in letters} == {"TimeoutError: processor took longer than 0.2s"}


async def test_retry_from_storage_redelivers_dead_letters(aiohttp_client, make_app, tmp_path):
    client = await aiohttp_client(make_app("max_attempts = 1\n", processors="broken"))
    await send(client, 1)
    await wait_until(lambda: _dead(client, "broken", 1))
    storage = client.app[STORAGE]
    assert await storage.retry("broken", None, 0) == 1
    stats = await queue(client)
    assert stats["broken"]["dead"] + stats["broken"]["pending"] == 1
    await wait_until(lambda: _dead(client, "broken", 1))


async def test_a_processor_that_cannot_start_is_retried_and_others_deliver(
    aiohttp_client, make_app, tmp_path
):
    client = await aiohttp_client(make_app(processors="store, unready", plugins="fail_times = 2\n"))
    await send(client, 2)
    await wait_until(lambda: _all_drained(client))
    unready = client.app[PIPELINE].dispatcher._workers["unready"].processor
    assert unready.starts == 3
    assert [d["processor"] for d in deliveries(tmp_path)] == ["unready", "unready"]
    assert len((await (await client.get("/api/v1/reports")).json())["items"]) == 2
