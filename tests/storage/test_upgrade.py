"""A store made by the previous release (schema version 5, tests/data/legacy) opened by this
one, on both databases: every row of every table is still there and reads as it did.

The dumps were made through that release's own storage API (then dumped by sqlite3 and
pg_dump), so they hold what a real installation holds: reports with their bodies in the
spool, nodes, pending and dead deliveries, tokens (one that expires), a Chef run start,
two jobs with nodes and events, and an email schedule with a failed run.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict
from typing import Any

import asyncpg
import pytest

from reportd.storage import ReportQuery, open_storage
from reportd.storage.schedules import ScheduleQuery
from tests.support import DATA, pg

LEGACY = DATA / "legacy"


@pytest.fixture(params=["sqlite", "postgres"])
async def legacy_store(request, tmp_path):
    """The URL of a database holding the previous release's store."""
    if request.param == "sqlite":
        path = tmp_path / "reportd.sqlite3"
        conn = sqlite3.connect(path)
        conn.executescript((LEGACY / "schema-5.sqlite.sql").read_text())
        conn.close()
        yield f"sqlite:///{path}"
        return
    async with pg.fresh_database(request.getfixturevalue("pg_dsn")) as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute((LEGACY / "schema-5.postgresql.sql").read_text())
        finally:
            await conn.close()
        yield url


async def everything(storage) -> dict[str, Any]:
    """Every row the storage API can read, in a form both databases give alike."""
    reports = await storage.query_reports(ReportQuery(limit=1000))
    full = [await storage.get_report(r.id) for r in reports]
    jobs, total_jobs = await storage.list_jobs(
        type=None, order_by=None, descending=False, limit=None, offset=0
    )
    schedules, total_schedules = await storage.list_schedules(ScheduleQuery())
    return {
        "reports": [asdict(r) for r in full],
        "nodes": [
            asdict(n) for n in await storage.list_nodes(environment=None, status=None, limit=1000, after=None)
        ],
        "queue": {name: asdict(stats) for name, stats in (await storage.queue_stats()).items()},
        "dead": [asdict(d) for d in await storage.dead_letters(None, 1000)],
        "spooled": [asdict(s) for s in await storage.load_spooled([r.id for r in reports])],
        "tokens": await storage.list_tokens(),
        "token": asdict(await storage.find_token("hash-of-ci")),
        "run_started": await storage.run_started(
            "chef", "chef1.example.test", "11111111-1111-4111-8111-111111111111"
        ),
        "jobs": [asdict(j) for j in jobs],
        "total_jobs": total_jobs,
        "job_nodes": {
            j.id: [asdict(n) for n in await storage.job_nodes(j.id, with_events=True)] for j in jobs
        },
        "job_events": {j.id: [asdict(e) for e in await storage.job_events(j.id, 0)] for j in jobs},
        "schedules": [asdict(s) for s in schedules],
        "total_schedules": total_schedules,
        "schedule_runs": [asdict(r) for r in await storage.schedule_runs("d1", 100)],
    }


async def test_every_row_of_the_previous_release_survives(legacy_store):
    storage = open_storage(legacy_store)  # auto_migrate, as the daemon opens it
    await storage.open()
    try:
        status = await storage.schema_status()
        assert status.current == status.latest
        rows = await everything(storage)
    finally:
        await storage.close()

    assert [(r["id"], r["certname"]) for r in rows["reports"]] == [
        (6, "db1.example.test"), (5, "web2.example.test"), (4, "web1.example.test"),
        (3, "db1.example.test"), (2, "web2.example.test"), (1, "web1.example.test"),
    ]  # fmt: skip
    assert all(r["body"] and r["envelope"]["format"] == r["format"] for r in rows["reports"])
    assert len(rows["spooled"]) == 6 and all(s["body"] for s in rows["spooled"])
    assert [(n["certname"], n["status"]) for n in rows["nodes"]] == [
        ("db1.example.test", "unchanged"), ("web1.example.test", "changed"), ("web2.example.test", "failed"),
    ]  # fmt: skip
    assert {name: (q["pending"], q["dead"]) for name, q in rows["queue"].items()} == {
        "broken": (0, 6),
        "later": (6, 0),
    }
    assert [(d["processor"], d["report_id"], d["attempts"]) for d in rows["dead"]] == [
        ("broken", report_id, 10) for report_id in range(1, 7)
    ]
    assert [(t["name"], t["permissions"], t["expires_at"]) for t in rows["tokens"]] == [
        ("agents", ["upload_config_reports"], None),
        ("ci", ["admin", "view_reports"], 2600000000.0),
    ]
    assert rows["token"]["name"] == "ci"
    assert rows["run_started"] is True
    assert rows["total_jobs"] == 2 and [(j["id"], j["state"]) for j in rows["jobs"]] == [
        (1, "running"),
        (81, "finished"),
    ]
    assert sum(len(nodes) for nodes in rows["job_nodes"].values()) == 3
    assert sum(len(events) for events in rows["job_events"].values()) == 4
    assert rows["total_schedules"] == 1 and rows["schedules"][0]["name"] == "db daily"
    assert [(r["state"], r["attempts"], r["last_error"]) for r in rows["schedule_runs"]] == [
        ("pending", 1, "SMTPConnectError: refused")
    ]
