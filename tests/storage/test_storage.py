"""The storage contract (reportd.storage.Storage), run against every backend.

The PostgreSQL backend runs in a fresh schema per test, on the test server
(``pg_dsn``: tests/support/pg.py says which server that is).
"""

from __future__ import annotations

import asyncio
import uuid
import zlib

import asyncpg
import pytest

from reportd.auth import TokenRecord
from reportd.storage import (
    Accepted,
    Claim,
    DeliveryFailure,
    InboxEntry,
    ReportQuery,
    Storage,
    StoredReport,
    open_storage,
    postgres,
)
from reportd.storage.postgres import PostgresStorage
from reportd.storage.sqlite import SQLiteStorage
from tests.support.storage import T0, drop_schema, postgres_in_own_schema


@pytest.fixture(params=["sqlite", "postgres"])
async def storage(request, tmp_path):
    if request.param == "sqlite":
        backend: Storage = SQLiteStorage(tmp_path / "reportd.db")
        await backend.open()
        try:
            yield backend
        finally:
            await backend.close()
        return
    async with postgres_in_own_schema(request.getfixturevalue("pg_dsn")) as backend:
        yield backend


def entry(
    key: str, certname: str = "web1.example.test", *, received_at: float = T0, body: bytes = b""
) -> InboxEntry:
    return InboxEntry(
        idempotency_key=key,
        certname=certname,
        format="puppet",
        received_at=received_at,
        envelope={"certname": certname, "key": key, "nested": {"a": [1, 2.5, None]}},
        body=body or f"body of {key}".encode(),
    )


def report(
    report_id: int, certname: str = "web1.example.test", *, run_time: float = T0, **fields
) -> StoredReport:
    values = {
        "id": report_id,
        "certname": certname,
        "environment": "production",
        "status": "changed",
        "change_kind": "corrective",
        "noop": False,
        "format": "puppet",
        "origin": "agent",
        "transaction_uuid": f"uuid-{report_id}",
        "job_id": None,
        "configuration_version": "v1",
        "run_time": run_time,
        "start_time": run_time - 10,
        "end_time": run_time - 1,
        "received_at": run_time,
        "summary": {"resources": {"total": report_id}},
    }
    values.update(fields)
    return StoredReport(**values)


async def accept_and_store(storage: Storage, key: str, certname: str, run_time: float, **fields) -> int:
    accepted = await storage.accept(entry(key, certname, received_at=run_time), ["store"])
    await storage.store_reports([report(accepted.report_id, certname, run_time=run_time, **fields)])
    await storage.finish("store", [accepted.report_id])
    return accepted.report_id


# -- spool -------------------------------------------------------------------------------------------
async def test_accept_and_duplicate(storage):
    first = await storage.accept(entry("k1", body=b"hello" * 100), ["store", "other"])
    assert first.duplicate is False
    again = await storage.accept(entry("k1", body=b"something else"), ["store", "other"])
    assert again.report_id == first.report_id and again.duplicate is True
    second = await storage.accept(entry("k2"), ["store"])
    assert second.report_id != first.report_id and second.duplicate is False
    (spooled,) = await storage.load_spooled([first.report_id])
    assert spooled.report_id == first.report_id
    assert spooled.body == b"hello" * 100
    assert spooled.envelope == entry("k1").envelope
    # The duplicate made no second delivery.
    assert (await storage.queue_stats())["store"].pending == 2


async def test_accept_without_processors_keeps_no_body(storage):
    accepted = await storage.accept(entry("k1"), [])
    assert accepted.duplicate is False
    assert await storage.load_spooled([accepted.report_id]) == []
    assert await storage.queue_stats() == {}


async def test_concurrent_accepts_all_commit_with_distinct_ids(storage):
    results = await asyncio.gather(*(storage.accept(entry(f"k{n}"), ["store"]) for n in range(50)))
    ids = [r.report_id for r in results]
    assert len(set(ids)) == 50 and not any(r.duplicate for r in results)
    assert (await storage.queue_stats())["store"].pending == 50
    spooled = await storage.load_spooled(ids)
    assert {s.report_id: s.body for s in spooled} == {i: f"body of k{n}".encode() for n, i in enumerate(ids)}


async def test_concurrent_duplicates_share_one_id(storage):
    results = await asyncio.gather(*(storage.accept(entry("same"), ["store"]) for _ in range(10)))
    assert len({r.report_id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert (await storage.queue_stats())["store"].pending == 1


async def test_claim_leases(storage):
    ids = [(await storage.accept(entry(f"k{n}", received_at=T0 + n), ["store"])).report_id for n in range(3)]
    claims = await storage.claim("store", 2, now=T0 + 10, lease=30)
    assert [c.report_id for c in claims] == ids[:2] and all(c.attempts == 0 for c in claims)
    # Leased: not handed out again before the lease runs out.
    assert [c.report_id for c in await storage.claim("store", 10, now=T0 + 20, lease=30)] == ids[2:]
    assert await storage.claim("store", 10, now=T0 + 30, lease=30) == []
    # Not due yet: deliveries are due from their received time.
    assert await storage.claim("other", 10, now=T0 + 10, lease=30) == []
    # The lease ran out: claimable again.
    assert [c.report_id for c in await storage.claim("store", 10, now=T0 + 41, lease=30)] == ids[:2]


async def test_claim_only_due_deliveries(storage):
    late = await storage.accept(entry("late", received_at=T0 + 100), ["store"])
    early = await storage.accept(entry("early", received_at=T0), ["store"])
    assert [c.report_id for c in await storage.claim("store", 10, now=T0 + 50, lease=100)] == [
        early.report_id
    ]
    assert [c.report_id for c in await storage.claim("store", 10, now=T0 + 100, lease=5)] == [late.report_id]


async def test_concurrent_claims_are_disjoint(storage):
    ids = [
        r.report_id for r in await asyncio.gather(*(storage.accept(entry(f"k{n}"), ["p"]) for n in range(40)))
    ]
    batches = await asyncio.gather(*(storage.claim("p", 7, now=T0 + 1, lease=60) for _ in range(8)))
    claimed = [c.report_id for batch in batches for c in batch]
    assert len(claimed) == len(set(claimed)) == 40
    assert sorted(claimed) == sorted(ids)


async def test_finish_drops_body_when_no_delivery_remains(storage):
    accepted = await storage.accept(entry("k1"), ["a", "b"])
    rid = accepted.report_id
    await storage.finish("a", [rid])
    assert len(await storage.load_spooled([rid])) == 1  # b still needs it
    await storage.finish("b", [rid])
    assert await storage.load_spooled([rid]) == []
    assert await storage.queue_stats() == {}
    await storage.finish("a", [])  # nothing to do


async def test_finish_keeps_body_of_stored_report(storage):
    accepted = await storage.accept(entry("k1", body=b"original"), ["store"])
    await storage.store_reports([report(accepted.report_id)])
    await storage.finish("store", [accepted.report_id])
    stored = await storage.get_report(accepted.report_id)
    assert stored is not None and stored.body == b"original"
    assert stored.envelope == entry("k1").envelope


async def test_fail_dead_and_retry(storage):
    a = (await storage.accept(entry("a", received_at=T0), ["p", "q"])).report_id
    b = (await storage.accept(entry("b", received_at=T0 + 1), ["p"])).report_id
    await storage.claim("p", 10, now=T0 + 2, lease=60)
    await storage.fail(
        "p",
        [
            DeliveryFailure(a, attempts=1, error="boom", next_attempt_at=T0 + 100, dead=False),
            DeliveryFailure(b, attempts=5, error="x" * 5000, next_attempt_at=T0 + 100, dead=True),
        ],
    )
    await storage.fail("p", [])
    # The failure ended the lease but set the next attempt.
    assert await storage.claim("p", 10, now=T0 + 50, lease=60) == []
    claims = await storage.claim("p", 10, now=T0 + 100, lease=60)
    assert [(c.report_id, c.attempts) for c in claims] == [(a, 1)]
    stats = await storage.queue_stats()
    assert stats["p"].pending == 1 and stats["p"].dead == 1 and stats["p"].oldest_pending_at == T0
    assert stats["q"].pending == 1 and stats["q"].dead == 0
    (dead,) = await storage.dead_letters(None, 10)
    assert (dead.processor, dead.report_id, dead.certname, dead.attempts) == ("p", b, "web1.example.test", 5)
    assert dead.error == "x" * 2000
    assert await storage.dead_letters("q", 10) == []
    assert len(await storage.dead_letters("p", 10)) == 1
    assert await storage.retry("q", None, now=T0 + 200) == 0
    assert await storage.retry(None, [a], now=T0 + 200) == 0  # a is not dead
    assert await storage.retry("p", [b], now=T0 + 200) == 1
    assert await storage.dead_letters(None, 10) == []
    assert (await storage.queue_stats())["p"].pending == 2
    claims = await storage.claim("p", 10, now=T0 + 200, lease=60)
    assert (b, 0) in [(c.report_id, c.attempts) for c in claims]


async def test_retry_all(storage):
    ids = [(await storage.accept(entry(f"k{n}"), ["p", "q"])).report_id for n in range(3)]
    for name in ("p", "q"):
        await storage.fail(name, [DeliveryFailure(i, 3, "no", T0, dead=True) for i in ids])
    assert len(await storage.dead_letters(None, 10)) == 6
    assert len(await storage.dead_letters(None, 4)) == 4
    assert await storage.retry(None, None, now=T0) == 6
    assert await storage.retry(None, None, now=T0) == 0


async def test_queue_stats_oldest_pending(storage):
    assert await storage.queue_stats() == {}
    first = (await storage.accept(entry("a", received_at=T0 + 5), ["p"])).report_id
    await storage.accept(entry("b", received_at=T0 + 9), ["p"])
    assert (await storage.queue_stats())["p"].oldest_pending_at == T0 + 5
    await storage.finish("p", [first])
    stats = (await storage.queue_stats())["p"]
    assert (stats.pending, stats.dead, stats.oldest_pending_at) == (1, 0, T0 + 9)


async def test_expire_spool_forgets_only_delivered_entries(storage):
    done = (await storage.accept(entry("done", received_at=T0), ["p"])).report_id
    pending = (await storage.accept(entry("pending", received_at=T0), ["p"])).report_id
    recent = (await storage.accept(entry("recent", received_at=T0 + 100), ["p"])).report_id
    await storage.finish("p", [done, recent])
    assert await storage.record_run_start("chef", "n1", "run-old", T0 - 5, now=T0)
    assert await storage.record_run_start("chef", "n1", "run-new", None, now=T0 + 100)
    assert await storage.expire_spool(T0 + 50, batch=100) == 1
    assert await storage.expire_spool(T0 + 50, batch=100) == 0
    assert [s.report_id for s in await storage.load_spooled([done, pending, recent])] == [pending]
    assert not await storage.run_started("chef", "n1", "run-old")
    assert await storage.run_started("chef", "n1", "run-new")
    # The forgotten key can be accepted again, as a new report.
    again = await storage.accept(entry("done", received_at=T0 + 200), ["p"])
    assert again.duplicate is False and again.report_id not in (done, pending, recent)
    # A duplicate of a kept (delivered) entry is still recognised.
    assert (await storage.accept(entry("recent"), ["p"])).duplicate is True


async def test_expire_spool_batches(storage):
    ids = [(await storage.accept(entry(f"k{n}"), ["p"])).report_id for n in range(5)]
    await storage.finish("p", ids)
    assert await storage.expire_spool(T0 + 1, batch=2) == 2
    assert await storage.expire_spool(T0 + 1, batch=2) == 2
    assert await storage.expire_spool(T0 + 1, batch=2) == 1
    assert await storage.expire_spool(T0 + 1, batch=2) == 0


async def test_run_starts(storage):
    assert not await storage.run_started("chef", "n1", "r1")
    assert await storage.record_run_start("chef", "n1", "r1", T0, now=T0 + 1) is True
    assert await storage.record_run_start("chef", "n1", "r1", T0, now=T0 + 2) is False
    assert await storage.run_started("chef", "n1", "r1")
    assert not await storage.run_started("chef", "n2", "r1")
    assert not await storage.run_started("foreman", "n1", "r1")


# -- store -------------------------------------------------------------------------------------------
async def test_store_and_node_moves_forward_only(storage):
    newer = await accept_and_store(storage, "new", "n1", T0 + 100, status="failed")
    node = await storage.get_node("n1")
    assert node is not None and (node.report_id, node.status, node.run_time) == (newer, "failed", T0 + 100)
    # A late report of an older run goes into history only...
    older = await accept_and_store(storage, "old", "n1", T0, status="unchanged", environment="dev")
    node = await storage.get_node("n1")
    assert (node.report_id, node.status, node.environment, node.run_time) == (
        newer,
        "failed",
        "production",
        T0 + 100,
    )
    assert node.summary == {"resources": {"total": newer}}
    # ...though it was received last.
    assert node.last_received_at == T0 + 100
    assert [r.id for r in await storage.query_reports(ReportQuery(certname="n1"))] == [newer, older]
    assert await storage.get_node("nobody") is None


async def test_node_same_run_time_tie_breaks_by_report_id(storage):
    low = (await storage.accept(entry("a", "n1"), ["store"])).report_id
    high = (await storage.accept(entry("b", "n1"), ["store"])).report_id
    assert high > low
    await storage.store_reports([report(high, "n1", status="failed")])
    await storage.store_reports([report(low, "n1", status="unchanged")])
    node = await storage.get_node("n1")
    assert (node.report_id, node.status) == (high, "failed")
    # Both in one batch, in either order: the higher id wins.
    await storage.store_reports([report(high + 1000, "n2", status="failed"), report(high + 999, "n2")])
    assert (await storage.get_node("n2")).report_id == high + 1000


async def test_one_batch_with_several_runs_of_a_node_keeps_the_newest_run(storage):
    await storage.store_reports([report(1, "n1", run_time=T0 + 50, status="failed", received_at=T0 + 60)])
    batch = [
        report(2, "n1", run_time=T0 + 100, status="unchanged", received_at=T0 + 101),
        report(3, "n1", run_time=T0 + 10, status="changed", received_at=T0 + 500),  # late, old run
        report(4, "n1", run_time=T0 + 90, status="failed", received_at=T0 + 95),
        report(5, "n2", run_time=T0, status="noop"),
    ]
    await storage.store_reports(batch)
    node = await storage.get_node("n1")
    assert (node.report_id, node.status, node.run_time) == (2, "unchanged", T0 + 100)
    assert node.summary == {"resources": {"total": 2}}
    assert node.last_received_at == T0 + 500
    assert (await storage.get_node("n2")).status == "noop"
    assert await storage.count_reports() == 5


async def test_store_reports_is_idempotent(storage):
    rid = (await storage.accept(entry("a"), ["store"])).report_id
    await storage.store_reports([report(rid)])
    await storage.store_reports([report(rid, status="failed")])
    await storage.store_reports([])
    assert await storage.count_reports() == 1
    assert (await storage.query_reports(ReportQuery()))[0].status == "changed"


async def test_concurrent_node_updates_keep_the_newest(storage):
    times = [T0 + n for n in range(20)]
    ids = [(await storage.accept(entry(f"k{n}", "n1"), ["store"])).report_id for n in range(20)]
    pairs = list(zip(ids, times, strict=True))
    pairs.reverse()
    await asyncio.gather(*(storage.store_reports([report(i, "n1", run_time=t)]) for i, t in pairs))
    node = await storage.get_node("n1")
    assert (node.report_id, node.run_time) == (ids[-1], times[-1])


async def test_stored_report_round_trip(storage):
    rid = (await storage.accept(entry("a", "n1", body=b"\x00\xffraw"), ["store"])).report_id
    original = report(
        rid,
        "n1",
        run_time=T0 + 0.125,
        noop=True,
        job_id="job-7",
        start_time=None,
        end_time=None,
        organization="ACME",
        organization_id=3,
        location_id=2**40,
        summary={"events": {"failure": 0}, "text": "ünïcode"},
    )
    await storage.store_reports([original])
    (listed,) = await storage.query_reports(ReportQuery())
    assert listed == original
    full = await storage.get_report(rid)
    assert full.body == b"\x00\xffraw" and full.envelope == entry("a", "n1").envelope
    assert full == StoredReport(**{**original.__dict__, "envelope": full.envelope, "body": full.body})
    assert await storage.get_report(rid + 1) is None


async def test_query_reports_filters(storage):
    a = await accept_and_store(storage, "a", "n1", T0, status="failed", environment="prod", organization="O1")
    b = await accept_and_store(
        storage, "b", "n2", T0 + 10, status="changed", environment="dev", organization_id=7
    )
    c = await accept_and_store(
        storage, "c", "n1", T0 + 20, status="changed", environment="prod", location_id=9
    )

    async def ids(**kw):
        return [r.id for r in await storage.query_reports(ReportQuery(**kw))]

    assert await ids() == [c, b, a]
    assert await ids(certname="n1") == [c, a]
    assert await ids(status="changed") == [c, b]
    assert await ids(environment="prod") == [c, a]
    assert await ids(organization="O1") == [a]
    assert await ids(organization_id=7) == [b]
    assert await ids(location_id=9) == [c]
    assert await ids(since=T0 + 10) == [c, b]
    assert await ids(until=T0 + 10) == [a]
    assert await ids(since=T0 + 5, until=T0 + 15) == [b]
    assert await ids(certname="n1", status="failed") == [a]
    assert await ids(certname="nobody") == []
    assert await ids(limit=1) == [c]


async def test_query_reports_keyset_cursor(storage):
    # Three reports share one run time: the cursor breaks ties by id.
    times = [T0, T0 + 5, T0 + 5, T0 + 5, T0 + 9]
    ids = [await accept_and_store(storage, f"k{n}", f"n{n}", t) for n, t in enumerate(times)]
    expected = [r.id for r in await storage.query_reports(ReportQuery(limit=100))]
    assert expected == [ids[4], ids[3], ids[2], ids[1], ids[0]]
    seen, after = [], None
    while True:
        page = await storage.query_reports(ReportQuery(limit=2, after=after))
        if not page:
            break
        seen.extend(r.id for r in page)
        after = (page[-1].run_time, page[-1].id)
    assert seen == expected
    assert [r.id for r in await storage.query_reports(ReportQuery(after=(T0 + 5, ids[2])))] == [
        ids[1],
        ids[0],
    ]


async def test_list_nodes_filters_and_pagination(storage):
    for n in range(5):
        await accept_and_store(
            storage,
            f"k{n}",
            f"node{n}",
            T0 + n,
            environment="prod" if n % 2 else "dev",
            status="failed" if n < 2 else "changed",
        )
    names = [
        n.certname for n in await storage.list_nodes(environment=None, status=None, limit=100, after=None)
    ]
    assert names == [f"node{n}" for n in range(5)]
    page = await storage.list_nodes(environment=None, status=None, limit=2, after=None)
    assert [n.certname for n in page] == ["node0", "node1"]
    page = await storage.list_nodes(environment=None, status=None, limit=2, after="node1")
    assert [n.certname for n in page] == ["node2", "node3"]
    assert await storage.list_nodes(environment=None, status=None, limit=2, after="node4") == []
    prod = await storage.list_nodes(environment="prod", status=None, limit=100, after=None)
    assert [n.certname for n in prod] == ["node1", "node3"]
    failed = await storage.list_nodes(environment=None, status="failed", limit=100, after=None)
    assert [n.certname for n in failed] == ["node0", "node1"]
    both = await storage.list_nodes(environment="dev", status="failed", limit=100, after=None)
    assert [n.certname for n in both] == ["node0"]
    assert both[0].summary == {"resources": {"total": both[0].report_id}}


async def test_expire_reports(storage):
    old = [await accept_and_store(storage, f"old{n}", "silent", T0 + n) for n in range(3)]
    recent = await accept_and_store(storage, "recent", "busy", T0 + 100)
    # An old report still being delivered to another processor keeps its body for it.
    pending = (await storage.accept(entry("pending", "busy", received_at=T0 + 5), ["store", "p"])).report_id
    await storage.store_reports([report(pending, "busy", run_time=T0 + 5)])
    await storage.finish("store", [pending])
    assert await storage.count_reports() == 5

    assert await storage.expire_reports(T0 + 50, batch=2) == 2
    assert await storage.count_reports() == 3
    assert await storage.expire_reports(T0 + 50, batch=10) == 2
    assert await storage.expire_reports(T0 + 50, batch=10) == 0
    assert [r.id for r in await storage.query_reports(ReportQuery())] == [recent]
    for rid in old:
        assert await storage.get_report(rid) is None
    assert await storage.load_spooled(old) == []
    assert [s.report_id for s in await storage.load_spooled([pending])] == [pending]
    # The silent node is gone, the busy one stays.
    assert await storage.get_node("silent") is None
    assert (await storage.get_node("busy")).report_id == recent
    # The expired bodies are delivered and NULL: the spool's expiry now forgets them.
    assert await storage.expire_spool(T0 + 50, batch=100) == 3
    # The pending delivery still finishes and drops its body then.
    await storage.finish("p", [pending])
    assert await storage.load_spooled([pending]) == []


async def test_count_reports(storage):
    assert await storage.count_reports() == 0
    for n in range(3):
        await accept_and_store(storage, f"k{n}", "n1", T0 + n)
    assert await storage.count_reports() == 3


# -- tokens ------------------------------------------------------------------------------------------
async def test_tokens(storage):
    await storage.create_token("ci", "hash-ci", ["read", "admin"], now=T0)
    await storage.create_token("bare", "hash-bare", [], now=T0 + 1)
    with pytest.raises(KeyError):
        await storage.create_token("ci", "hash-other", ["read"], now=T0 + 2)
    assert await storage.find_token("hash-ci") == TokenRecord("ci", frozenset({"read", "admin"}))
    assert await storage.find_token("hash-bare") == TokenRecord("bare", frozenset())
    assert await storage.find_token("hash-other") is None
    await storage.create_token("brief", "hash-brief", ["read"], now=T0 + 3, expires_at=T0 + 90.5)
    # an expired token is still found: whoever asks compares the expiry with its own clock
    assert await storage.find_token("hash-brief") == TokenRecord("brief", frozenset({"read"}), T0 + 90.5)
    assert await storage.list_tokens() == [
        {"name": "bare", "permissions": [], "created_at": T0 + 1, "expires_at": None},
        {"name": "brief", "permissions": ["read"], "created_at": T0 + 3, "expires_at": T0 + 90.5},
        {"name": "ci", "permissions": ["admin", "read"], "created_at": T0, "expires_at": None},
    ]
    assert await storage.revoke_token("ci") is True
    assert await storage.revoke_token("ci") is False
    assert await storage.find_token("hash-ci") is None
    assert [t["name"] for t in await storage.list_tokens()] == ["bare", "brief"]


# -- backends ----------------------------------------------------------------------------------------
async def test_reopen_keeps_data_and_schema_version(storage):
    rid = (await storage.accept(entry("a"), ["p"])).report_id
    await storage.close()
    await storage.open()  # the migrations are applied once
    assert await storage.accept(entry("a"), ["p"]) == Accepted(rid, duplicate=True)
    assert (await storage.queue_stats())["p"].pending == 1


async def test_postgres_schema_version_and_body_compression(pg_dsn):
    dsn = pg_dsn
    schema = f"t_{uuid.uuid4().hex}"
    backend = PostgresStorage(dsn, schema=schema)
    try:
        await backend.open()
        try:
            body = b"compress me " * 1000
            rid = (await backend.accept(entry("a", body=body), ["p"])).report_id
        finally:
            await backend.close()
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
        try:
            versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_version ORDER BY version")]
            stored = await conn.fetchval("SELECT body FROM inbox WHERE id = $1", rid)
        finally:
            await conn.close()
        assert versions == list(range(1, len(postgres.MIGRATIONS) + 1)) and len(versions) >= 4
        assert zlib.decompress(stored) == body and len(stored) < len(body) // 10
    finally:
        await drop_schema(dsn, schema)


def test_open_storage_routes_urls(tmp_path):
    assert isinstance(open_storage(f"sqlite:///{tmp_path}/x.db"), SQLiteStorage)
    for url in ("postgresql://u@h:5432/db", "postgres://u@h/db"):
        backend = open_storage(url)
        assert isinstance(backend, PostgresStorage) and backend.dsn == url
    with pytest.raises(ValueError, match="unsupported database URL"):
        open_storage("mysql://u@h/db")


@pytest.fixture
async def pg_storage(pg_dsn):
    async with postgres_in_own_schema(pg_dsn) as backend:
        yield backend


async def test_postgres_concurrent_accepts_share_transactions(pg_storage, monkeypatch):
    sizes = []
    insert_batch = pg_storage._insert_batch

    async def recording(batch):
        sizes.append(len(batch))
        return await insert_batch(batch)

    monkeypatch.setattr(pg_storage, "_insert_batch", recording)
    await asyncio.gather(*(pg_storage.accept(entry(f"k{n}"), ["p"]) for n in range(50)))
    assert sum(sizes) == 50 and len(sizes) < 50


async def test_postgres_bad_entry_fails_alone(pg_storage):
    # PostgreSQL text cannot hold NUL: that entry fails, the others of its batch commit.
    results = await asyncio.gather(
        *(pg_storage.accept(entry(f"k{n}", "bad\x00name" if n == 3 else "ok"), ["p"]) for n in range(6)),
        return_exceptions=True,
    )
    assert isinstance(results[3], asyncpg.PostgresError)
    assert all(not isinstance(r, BaseException) for n, r in enumerate(results) if n != 3)
    assert (await pg_storage.queue_stats())["p"].pending == 5


async def test_postgres_close_commits_queued_accepts(pg_storage):
    tasks = [asyncio.create_task(pg_storage.accept(entry(f"k{n}"), ["p"])) for n in range(5)]
    await asyncio.sleep(0)
    await pg_storage.close()
    assert len({(await t).report_id for t in tasks}) == 5
    await pg_storage.open()
    assert (await pg_storage.queue_stats())["p"].pending == 5


async def test_postgres_close_gives_back_unfinished_leases(pg_storage):
    # What a stop cuts short is claimable by the other instances at once, not after the lease.
    for n in range(4):
        await pg_storage.accept(entry(f"k{n}"), ["p"])
    claims = await pg_storage.claim("p", 10, T0 + 1, 3600)
    ids = [c.report_id for c in claims]
    await pg_storage.finish("p", ids[:1])
    await pg_storage.fail("p", [DeliveryFailure(ids[1], 1, "boom", T0 + 2, dead=False)])
    other = PostgresStorage(pg_storage.dsn, schema=pg_storage.schema)
    await other.open()
    try:
        assert await other.claim("p", 10, T0 + 3, 60) == [Claim(ids[1], 1)]  # failed: due again
        await pg_storage.close()
        assert [c.report_id for c in await other.claim("p", 10, T0 + 4, 60)] == ids[2:]
        # a lease that ran out and was taken by another instance is not given back
        await pg_storage.open()
        assert len(await pg_storage.claim("p", 10, T0 + 100, 1)) == 3  # leased until T0 + 101
        assert len(await other.claim("p", 10, T0 + 102, 60)) == 3
        await pg_storage.close()
        assert await other.claim("p", 10, T0 + 103, 60) == []
    finally:
        await other.close()
        await pg_storage.open()  # the fixture closes it


async def test_finish_with_a_quote_in_the_processor_name(storage):
    rid = (await storage.accept(entry("a"), ["o'brien", "other"])).report_id
    await storage.finish("o'brien", [rid])
    stats = await storage.queue_stats()
    assert "o'brien" not in stats and stats["other"].pending == 1
