"""Retention: old reports and silent nodes go, in batches; recent ones stay."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import orjson

from reportd.web import STORAGE
from tests.conftest import ini_for, sample, wait_until


def report(host: str, uuid: str, days_ago: float) -> bytes:
    data = orjson.loads(sample("agent-changes.json"))
    when = datetime.now(UTC) - timedelta(days=days_ago)
    return orjson.dumps({**data, "host": host, "transaction_uuid": uuid, "time": when.isoformat()})


async def test_expire_deletes_old_reports_in_batches_and_keeps_recent(aiohttp_client, make_app, tmp_path):
    client = await aiohttp_client(make_app(plugins="[plugin:store]\nretention_days = 14\nexpire_batch = 2\n"))
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


async def test_expire_command_applies_retention(aiohttp_client, make_app, tmp_path):
    data_dir = tmp_path / "data"
    client = await aiohttp_client(make_app(data_dir=data_dir))
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
    ini.write_text(ini_for(data_dir) + "[plugin:store]\nretention_days = 14\n")
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
    assert len(listing.stdout.splitlines()) == 1
