"""``reportd db migrate-from-sqlite``: a SQLite store filled by the real daemon, copied into PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid

import asyncpg
import orjson
from click.testing import CliRunner, Result

from reportd.appkeys import STORAGE
from reportd.cli import cli
from reportd.storage import InboxEntry, ReportQuery, Storage, open_storage
from reportd.storage.postgres import PostgresStorage
from reportd.storage.sqlite import SQLiteStorage
from reportd.storage.sqlite_to_postgres import copy_sqlite_to_postgres
from tests.support import sample, wait_until
from tests.support.storage import T0, deployed, new_job, outcome

BASE = orjson.loads(sample("agent-changes.json"))
HOSTS = ("web1.example.test", "web2.example.test", "db1.example.test")


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


async def fill(aiohttp_client, make_app, data_dir) -> None:
    """Reports (stored, with one dead letter each), pending deliveries, tokens, run starts."""
    client = await aiohttp_client(
        make_app(processors="store, broken", plugins="permanent = true\n", data_dir=data_dir)
    )
    storage = client.app[STORAGE]
    for index in range(9):
        host = HOSTS[index % 3]
        body = orjson.dumps({**BASE, "host": host, "transaction_uuid": str(uuid.uuid4()), "noop": index == 4})
        response = await client.put(
            f"/puppet/v3/report/{host}?environment=production",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        assert response.status == 200

    async def settled():
        stats = await storage.queue_stats()
        return "store" not in stats and stats["broken"].dead == 9 and await storage.count_reports() == 9

    await wait_until(settled)
    await client.close()

    storage = SQLiteStorage(data_dir / "reportd.sqlite3")
    await storage.open()
    try:
        for n in range(3):  # waiting for a processor that is not running now
            entry = InboxEntry(f"later-{n}", "later.example.test", "puppet", 1_700_000_000.0 + n,
                               {"content_type": "application/json"}, b'{"later": %d}' % n)  # fmt: skip
            await storage.accept(entry, ["later"])
        await storage.create_token(
            "ci", "hash-of-ci", ["view_reports", "admin"], 1_700_000_000.5, 1_900_000_000.25
        )
        await storage.create_token("agents", "hash-of-agents", ["upload_config_reports"], 1_700_000_001.0)
        assert await storage.record_run_start("chef", "chef1.example.test", "run-1", 1_700_000_002.25, 1.0)
        assert await storage.record_run_start("chef", "chef1.example.test", "run-2", None, 2.0)
    finally:
        await storage.close()


async def contents(storage: Storage) -> dict:
    """Everything the storage interface shows of a store."""
    reports = await storage.query_reports(ReportQuery(limit=1000))
    return {
        "reports": reports,
        "bodies": [await storage.get_report(r.id) for r in reports],
        "nodes": await storage.list_nodes(environment=None, status=None, limit=1000, after=None),
        "tokens": await storage.list_tokens(),
        "token": await storage.find_token("hash-of-ci"),
        "queue": await storage.queue_stats(),
        "dead": await storage.dead_letters(None, 1000),
        "runs": [await storage.run_started("chef", "chef1.example.test", r) for r in ("run-1", "run-2", "x")],
        "spooled": await storage.load_spooled(list(range(1, 20))),
    }


def sqlite_rows(path) -> dict[str, list[tuple]]:
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables
                if t not in ("sqlite_sequence", "schema_version")}  # fmt: skip


async def postgres_rows(url: str, tables) -> dict[str, list[tuple]]:
    conn = await asyncpg.connect(url)
    try:
        rows = {}
        for table in tables:
            records = await conn.fetch(f'SELECT * FROM "{table}"')
            # SQLite's side has integers for booleans; bytes compare as bytes on both.
            rows[table] = sorted(
                (tuple(int(v) if isinstance(v, bool) else v for v in r.values()) for r in records), key=repr
            )
        return rows
    finally:
        await conn.close()


async def test_migrate_from_sqlite_copies_everything(aiohttp_client, make_app, tmp_path, pg_database):
    data_dir = tmp_path / "data"
    await fill(aiohttp_client, make_app, data_dir)
    path = data_dir / "reportd.sqlite3"
    source = SQLiteStorage(path)
    await source.open()
    try:
        expected = await contents(source)
    finally:
        await source.close()
    assert len(expected["reports"]) == 9 and len(expected["dead"]) == 9 and len(expected["nodes"]) == 3
    assert expected["queue"]["later"].pending == 3 and expected["runs"] == [True, True, False]

    result = await asyncio.to_thread(run, "db", "migrate-from-sqlite", str(path), "--to", pg_database)
    assert result.exit_code == 0, result.output
    assert "inbox: 12 rows" in result.output and "deliveries: 12 rows" in result.output
    assert "reports: 9 rows" in result.output and "tokens: 2 rows" in result.output

    raw = await asyncio.to_thread(sqlite_rows, path)
    assert set(raw) >= {"inbox", "deliveries", "reports", "nodes", "tokens", "run_starts"}
    assert await postgres_rows(pg_database, raw) == raw  # every row, every value

    target = open_storage(pg_database, auto_migrate=False)  # the copy left the schema current
    await target.open()
    try:
        assert await contents(target) == expected
        assert sum(r.noop for r in expected["reports"]) == 1
        # the sequence moved past the copied ids: a new report gets a fresh one
        entry = InboxEntry("after-migration", "new.example.test", "puppet", 1_800_000_000.0, {}, b"{}")
        accepted = await target.accept(entry, ["store"])
        assert not accepted.duplicate and accepted.report_id == 13
        claims = await target.claim("later", 10, 2_000_000_000.0, 60)
        assert [c.report_id for c in claims] == [10, 11, 12]
    finally:
        await target.close()


async def job_contents(storage: Storage, job_ids) -> dict:
    """Everything the job API shows of the given jobs."""
    return {
        "list": await storage.list_jobs(type=None, order_by=None, descending=False, limit=None, offset=0),
        "jobs": [await storage.get_job(j) for j in job_ids],
        "nodes": [await storage.job_nodes(j, with_events=True) for j in job_ids],
        "events": [await storage.job_events(j, 0) for j in job_ids],
        "last_event": [await storage.last_job_event(j) for j in job_ids],
        "deadline": await storage.next_job_deadline(),
        "resumable": await storage.resumable_jobs(),
    }


async def test_migrate_from_sqlite_copies_jobs(tmp_path, pg_database):
    path = tmp_path / "reportd.sqlite3"
    source = SQLiteStorage(path)
    await source.open()
    try:
        deploy = await deployed(source, "a", "b", "c", seconds=10)
        assert await source.mark_node_running(deploy, "a", T0 + 2)
        assert await source.record_node_outcome(outcome(deploy, "a", 1), T0 + 3)
        assert await source.record_node_outcome(outcome(deploy, "b", 2, state="failed"), T0 + 4)
        assert await source.expire_job_timeouts(T0 + 11) == [deploy]  # c errors by timeout
        assert await source.record_node_outcome(outcome(81, "x", 3), T0 + 12)  # a report-created job
        job_ids = [deploy, 81]
        expected = await job_contents(source, job_ids)
    finally:
        await source.close()
    assert expected["list"][1] == 2 and [j.state for j in expected["jobs"]] == ["failed", "finished"]
    assert [(n.certname, n.state, n.error_kind) for n in expected["nodes"][0]] == [
        ("a", "finished", None), ("b", "failed", None), ("c", "errored", "timeout")
    ]  # fmt: skip
    assert [e.type for e in expected["events"][0]] == [
        "node_running", "node_finished", "node_failed", "node_errored", "job_finished"
    ]  # fmt: skip
    copied_event_ids = [e.id for events in expected["events"] for e in events]
    assert copied_event_ids == sorted(copied_event_ids) and len(set(copied_event_ids)) == 7

    result = await asyncio.to_thread(run, "db", "migrate-from-sqlite", str(path), "--to", pg_database)
    assert result.exit_code == 0, result.output
    assert "jobs: 2 rows" in result.output and "job_nodes: 4 rows" in result.output
    assert "job_events: 7 rows" in result.output

    raw = await asyncio.to_thread(sqlite_rows, path)
    job_tables = {t: rows for t, rows in raw.items() if t.startswith("job")}
    assert set(job_tables) >= {"jobs", "job_status", "job_nodes", "job_events"}
    assert all(job_tables.values())  # every jobs table has rows to compare
    assert await postgres_rows(pg_database, job_tables) == job_tables  # every row, every value

    target = open_storage(pg_database, auto_migrate=False)
    await target.open()
    try:
        assert await job_contents(target, job_ids) == expected  # jobs, nodes, events: ids and order
        assert await target.expire_job_timeouts(T0 + 100) == []  # the timeout is not applied again
        # no collision: a new deploy continues above the copied jobs, new events above the copied ones
        later = await target.create_job(new_job("d"), T0 + 20)
        assert later == 82
        assert await target.start_job(later, T0 + 21)
        assert await target.record_node_outcome(outcome(later, "d", 4), T0 + 22)
        new_events = await target.job_events(later, 0)
        assert [e.type for e in new_events] == ["node_finished", "job_finished"]
        assert min(e.id for e in new_events) > max(copied_event_ids)
        after = await job_contents(target, job_ids)
        assert after["list"] == (expected["list"][0] + [await target.get_job(later)], 3)
        del after["list"], expected["list"]
        assert after == expected  # the copied jobs are untouched
    finally:
        await target.close()


async def test_migrate_from_sqlite_refuses_a_nonempty_target_unless_replacing(tmp_path, pg_database):
    path = tmp_path / "reportd.sqlite3"
    source = SQLiteStorage(path)
    await source.open()
    try:
        await source.create_token("old", "hash-old", ["admin"], 1.0)
    finally:
        await source.close()
    target = PostgresStorage(pg_database)
    await target.open()
    try:
        await target.create_token("new", "hash-new", ["admin"], 2.0)
    finally:
        await target.close()

    refused = await asyncio.to_thread(run, "db", "migrate-from-sqlite", str(path), "--to", pg_database)
    assert refused.exit_code == 1
    assert "holds data already (tokens): give --replace" in refused.output
    replaced = await asyncio.to_thread(
        run, "db", "migrate-from-sqlite", str(path), "--to", pg_database, "--replace"
    )
    assert replaced.exit_code == 0, replaced.output
    await target.open()
    try:
        assert [t["name"] for t in await target.list_tokens()] == ["old"]
    finally:
        await target.close()


async def test_migrate_from_sqlite_refuses_while_a_daemon_uses_the_store(tmp_path, pg_database):
    path = tmp_path / "reportd.sqlite3"
    daemon_storage = SQLiteStorage(path, exclusive=True)  # what `reportd serve` holds
    await daemon_storage.open()
    try:
        result = await asyncio.to_thread(run, "db", "migrate-from-sqlite", str(path), "--to", pg_database)
    finally:
        await daemon_storage.close()
    assert result.exit_code == 1 and f"a reportd is running on {path}: stop it first" in result.output
    status = await PostgresStorage(pg_database).schema_status()
    assert status.current == 0  # nothing was done to the target


async def test_migrate_from_sqlite_needs_a_postgresql_target(tmp_path):
    result = await asyncio.to_thread(run, "--data-dir", str(tmp_path), "db", "migrate-from-sqlite", "x.db")
    assert result.exit_code == 1 and "no PostgreSQL database: give --to" in result.output


async def test_migrate_from_sqlite_copies_in_batches(tmp_path, pg_database):
    path = tmp_path / "reportd.sqlite3"
    source = SQLiteStorage(path)
    await source.open()
    try:
        for n in range(12):
            await source.create_token(f"t{n:02d}", f"hash-{n}", ["view_reports"], float(n))
        expected = await source.list_tokens()
    finally:
        await source.close()
    seen: list[tuple[str, int]] = []
    result = await copy_sqlite_to_postgres(
        path, PostgresStorage(pg_database), batch_rows=5, progress=lambda t, n: seen.append((t, n))
    )
    assert [(t.name, t.rows) for t in result.tables if t.name == "tokens"] == [("tokens", 12)]
    assert [n for t, n in seen if t == "tokens"] == [5, 10, 12]
    target = PostgresStorage(pg_database)
    await target.open()
    try:
        assert await target.list_tokens() == expected
    finally:
        await target.close()
