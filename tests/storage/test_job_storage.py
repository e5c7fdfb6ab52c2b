"""The jobs part of the storage contract (reportd.storage.jobs.JobStorage), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from reportd.storage.postgres import PostgresStorage
from reportd.storage.sqlite import SQLiteStorage
from tests.support.storage import T0, deployed, drop_schema, new_job, outcome, postgres_in_own_schema


@pytest.fixture(params=["sqlite", "postgres"])
async def storage(request, tmp_path):
    """As tests/storage/test_storage.py's: SQLite in tmp_path, or PostgreSQL in a schema of its own."""
    if request.param == "sqlite":
        backend = SQLiteStorage(tmp_path / "reportd.db")
        await backend.open()
        yield backend
        await backend.close()
        return
    async with postgres_in_own_schema(request.getfixturevalue("pg_dsn")) as backend:
        yield backend


async def test_create_and_start(storage):
    job_id = await storage.create_job(new_job("a", "b", timeout=30), T0)
    assert job_id == 1
    job = await storage.get_job(job_id)
    assert (job.state, job.node_states, job.deadline, job.owner_login) == ("new", {"new": 2}, T0 + 30, "ops")
    assert [(s.state, s.enter_time, s.exit_time) for s in job.status] == [("new", T0, None)]
    assert await storage.start_job(job_id, T0 + 1)
    assert not await storage.start_job(job_id, T0 + 2)  # once
    job = await storage.get_job(job_id)
    assert job.state == "running" and job.node_states == {"ready": 2} and job.node_count == 2
    assert [(s.state, s.enter_time, s.exit_time) for s in job.status] == [
        ("new", T0, T0 + 1), ("ready", T0 + 1, T0 + 1), ("running", T0 + 1, None)
    ]  # fmt: skip
    assert await storage.create_job(new_job("c"), T0) == 2
    assert await storage.get_job(99) is None


async def test_outcomes_settle_nodes_and_the_job(storage):
    job_id = await deployed(storage, "a", "b")
    assert await storage.mark_node_running(job_id, "a", T0 + 2)
    assert not await storage.mark_node_running(job_id, "a", T0 + 2)  # someone has it already
    assert await storage.record_node_outcome(outcome(job_id, "a", 10), T0 + 7)
    assert not await storage.record_node_outcome(outcome(job_id, "a", 10), T0 + 8)  # the same report again
    assert (await storage.get_job(job_id)).state == "running"
    assert await storage.record_node_outcome(outcome(job_id, "b", 11, state="failed"), T0 + 9)
    job = await storage.get_job(job_id)
    assert (job.state, job.finished_at, job.node_states) == ("failed", T0 + 9, {"finished": 1, "failed": 1})
    nodes = await storage.job_nodes(job_id, with_events=True)
    a = nodes[0]
    assert (a.certname, a.state, a.report_id, a.start_time, a.finish_time, a.details, a.message) == (
        "a", "finished", 10, T0, T0 + 5, {"metrics": {"total": 3}}, "finished a"
    )  # fmt: skip
    assert a.events == [{"status": "success", "resource_title": "x"}] and a.result == {"status": "changed"}
    assert (await storage.job_nodes(job_id))[0].events is None
    events = await storage.job_events(job_id, 0)
    assert [(e.type, e.certname) for e in events] == [
        ("node_running", "a"), ("node_finished", "a"), ("node_failed", "b"), ("job_finished", None)
    ]  # fmt: skip
    assert [e.id for e in await storage.job_events(job_id, events[2].id)] == [events[2].id, events[3].id]
    # a newer run of a settled node replaces it; an older one does not
    assert await storage.record_node_outcome(outcome(job_id, "b", 12, start=T0 + 100), T0 + 110)
    assert not await storage.record_node_outcome(outcome(job_id, "b", 13, start=T0 + 50), T0 + 111)
    job = await storage.get_job(job_id)
    assert (job.state, job.node_states) == ("finished", {"finished": 2})


async def test_mark_node_running_keeps_to_the_concurrency(storage):
    job_id = await storage.create_job(new_job("a", "b", "c", concurrency=2), T0)
    await storage.start_job(job_id, T0 + 1)
    assert await storage.mark_node_running(job_id, "a", T0 + 2)
    assert await storage.mark_node_running(job_id, "b", T0 + 2)
    assert not await storage.mark_node_running(job_id, "c", T0 + 2)  # two in flight already
    assert (await storage.get_job(job_id)).node_states == {"running": 2, "ready": 1}
    await storage.record_node_outcome(outcome(job_id, "a", 1), T0 + 3)
    assert await storage.mark_node_running(job_id, "c", T0 + 4)  # a slot is free again


async def test_a_job_whose_nodes_reported_before_it_started_ends_when_it_starts(storage):
    job_id = await storage.create_job(new_job("a"), T0)  # reportd went down before starting it
    await storage.record_node_outcome(outcome(job_id, "a", 1), T0 + 1)
    assert (await storage.get_job(job_id)).state == "new"
    assert await storage.start_job(job_id, T0 + 2)
    job = await storage.get_job(job_id)
    assert (job.state, job.node_states) == ("finished", {"finished": 1})
    assert [s.state for s in job.status] == ["new", "ready", "running", "finished"]


async def test_unknown_job_and_outside_nodes(storage):
    assert await storage.record_node_outcome(outcome(81, "x", 1), T0)
    job = await storage.get_job(81)
    assert (job.state, job.owner_login, job.environment, job.deadline) == (
        "finished",
        "unknown",
        "production",
        None,
    )
    assert [s.state for s in job.status] == ["new", "ready", "running", "finished"]
    assert await storage.create_job(new_job("y"), T0) == 82  # deploys continue above report-created ids
    # a job that reports created takes in every node that reports, and its verdict follows them
    assert await storage.record_node_outcome(outcome(81, "x2", 2, state="failed"), T0 + 1)
    job = await storage.get_job(81)
    assert (job.state, job.node_states) == ("failed", {"finished": 1, "failed": 1})


async def test_a_node_outside_a_deployed_scope_does_not_join_the_job(storage):
    job_id = await deployed(storage, "in")
    assert await storage.record_node_outcome(outcome(job_id, "out", 2, state="failed"), T0 + 3)
    assert not await storage.record_node_outcome(outcome(job_id, "out", 2, state="failed"), T0 + 4)  # again
    job = await storage.get_job(job_id)
    assert (job.state, job.node_states) == ("running", {"ready": 1})
    assert [n.certname for n in await storage.job_nodes(job_id)] == ["in"]
    (event,) = await storage.job_events(job_id, 0)
    assert (event.type, event.certname, event.timestamp) == ("node_outside_scope", "out", T0 + 3)
    assert event.detail == {"report_id": 2, "state": "failed", "metrics": {"total": 3}}
    assert event.message == f"out is not in the scope of job {job_id}: its report is not counted (failed out)"
    # the node of the scope decides alone, and a later report from outside changes nothing
    assert await storage.record_node_outcome(outcome(job_id, "in", 3), T0 + 5)
    assert await storage.record_node_outcome(outcome(job_id, "out", 4, state="failed", start=T0 + 9), T0 + 10)
    job = await storage.get_job(job_id)
    assert (job.state, job.node_states) == ("finished", {"finished": 1})
    events = await storage.job_events(job_id, 0)
    assert [(e.type, e.certname) for e in events] == [
        ("node_outside_scope", "out"), ("node_finished", "in"), ("job_finished", None), ("node_outside_scope", "out")
    ]  # fmt: skip


async def test_timeouts_are_applied_once(storage):
    job_id = await deployed(storage, "a", "b", "c", seconds=10)
    await storage.record_node_outcome(outcome(job_id, "a", 1), T0 + 2)
    await storage.fail_node_start(job_id, "b", "ssh failed", T0 + 3)
    assert await storage.next_job_deadline() == T0 + 10
    assert await storage.expire_job_timeouts(T0 + 9) == []
    results = await asyncio.gather(*(storage.expire_job_timeouts(T0 + 11) for _ in range(4)))
    assert sorted(map(tuple, results)) == [(), (), (), (job_id,)]
    assert await storage.next_job_deadline() is None
    job = await storage.get_job(job_id)
    assert (job.state, job.node_states) == ("failed", {"finished": 1, "errored": 2})
    c = (await storage.job_nodes(job_id))[2]
    assert (c.state, c.error_kind, c.finish_time) == ("errored", "timeout", T0 + 11)
    assert c.message == "Puppet run on c timed out: no report within the job's timeout of 10 seconds"
    # a report received after the deadline is attached; the verdict stands
    await storage.record_node_outcome(outcome(job_id, "c", 5, received_at=T0 + 12), T0 + 12)
    c = (await storage.job_nodes(job_id))[2]
    assert (c.state, c.report_id, c.details["metrics"]) == ("errored", 5, {"total": 3})
    # the report a trigger thought had failed settles its node
    await storage.record_node_outcome(outcome(job_id, "b", 6, received_at=T0 + 4), T0 + 13)
    assert (await storage.job_nodes(job_id))[1].state == "finished"
    assert [e.type for e in await storage.job_events(job_id, 0)].count("job_finished") == 1


async def test_a_report_received_before_the_deadline_settles_its_node(storage):
    job_id = await deployed(storage, "a", "b", seconds=10)
    await storage.record_node_outcome(outcome(job_id, "b", 2), T0 + 2)
    await storage.expire_job_timeouts(T0 + 20)  # reportd was down: a's report is processed late
    assert (await storage.get_job(job_id)).state == "failed"
    await storage.record_node_outcome(outcome(job_id, "a", 1, received_at=T0 + 9), T0 + 21)
    job = await storage.get_job(job_id)
    assert (job.state, job.node_states) == ("finished", {"finished": 2})


async def test_stop(storage):
    job_id = await deployed(storage, "a", "b", "c")
    await storage.mark_node_running(job_id, "a", T0 + 2)
    job = await storage.stop_job(job_id, T0 + 3)
    assert (job.state, job.node_states) == ("stopping", {"running": 1, "skipped": 2})
    assert not await storage.mark_node_running(job_id, "b", T0 + 4)
    await storage.record_node_outcome(outcome(job_id, "a", 1), T0 + 5)
    job = await storage.get_job(job_id)
    assert (job.state, job.finished_at) == ("stopped", T0 + 5)
    assert [s.state for s in job.status][-2:] == ["stopping", "stopped"]
    assert (await storage.stop_job(job_id, T0 + 6)).state == "stopped"
    assert await storage.stop_job(404, T0) is None


async def test_list_jobs_and_resumable(storage):
    await storage.create_job(new_job("a", environment="staging"), T0)  # 1, never started
    two = await deployed(storage, "a")
    three = await deployed(storage, "b")
    await storage.mark_node_running(three, "b", T0 + 2)
    assert await storage.resumable_jobs() == [1, two]
    jobs, total = await storage.list_jobs(type=None, order_by=None, descending=True, limit=2, offset=0)
    assert ([j.id for j in jobs], total) == ([3, 2], 3)
    jobs, _ = await storage.list_jobs(type=None, order_by=None, descending=False, limit=2, offset=0)
    assert [j.id for j in jobs] == [1, 2]
    jobs, _ = await storage.list_jobs(
        type=None, order_by="environment", descending=False, limit=None, offset=0
    )
    assert [j.id for j in jobs] == [2, 3, 1]
    jobs, _ = await storage.list_jobs(type=None, order_by="state", descending=False, limit=None, offset=1)
    assert [j.id for j in jobs] == [2, 3]  # new, running, running
    assert (await storage.list_jobs(type="task", order_by=None, descending=True, limit=None, offset=0)) == (
        [],
        0,
    )


async def test_event_ids_increase_across_jobs(storage):
    first = await deployed(storage, "a")
    second = await deployed(storage, "b")
    await storage.record_node_outcome(outcome(first, "a", 1), T0 + 2)
    await storage.record_node_outcome(outcome(second, "b", 2), T0 + 2)
    ids = [e.id for e in await storage.job_events(first, 0)] + [
        e.id for e in await storage.job_events(second, 0)
    ]
    assert ids == sorted(ids) and len(set(ids)) == 4


async def test_concurrent_outcomes_end_the_job_once(storage):
    nodes = [f"n{i:02d}" for i in range(20)]
    job_id = await deployed(storage, *nodes)
    await asyncio.gather(
        *(storage.record_node_outcome(outcome(job_id, n, i + 1), T0 + 3) for i, n in enumerate(nodes))
    )
    job = await storage.get_job(job_id)
    assert (job.state, job.node_states) == ("finished", {"finished": 20})
    types = [e.type for e in await storage.job_events(job_id, 0)]
    assert types.count("job_finished") == 1 and types.count("node_finished") == 20


@pytest.fixture
async def two_instances(pg_dsn):
    """Two PostgreSQL storages on one schema, as two reportd instances sharing a database."""
    dsn = pg_dsn
    schema = f"t_{uuid.uuid4().hex}"
    first, second = PostgresStorage(dsn, schema=schema), PostgresStorage(dsn, schema=schema)
    try:
        await first.open()
        await second.open()
        yield first, second
    finally:
        await first.close()
        await second.close()
        await drop_schema(dsn, schema)


async def test_two_postgres_instances_share_jobs(two_instances):
    """Instances on one database: each node's outcome and each timeout counted once."""
    first, second = both = two_instances
    nodes = [f"n{i:02d}" for i in range(30)]
    job_id = await deployed(first, *nodes, seconds=10)
    timed = await deployed(second, "late", seconds=5)
    await asyncio.gather(
        *(both[i % 2].record_node_outcome(outcome(job_id, n, i + 1), T0 + 3) for i, n in enumerate(nodes)),
        *(both[i % 2].expire_job_timeouts(T0 + 6) for i in range(6)),
    )
    job = await second.get_job(job_id)
    assert (job.state, job.node_states) == ("finished", {"finished": 30})
    assert [e.type for e in await first.job_events(job_id, 0)].count("job_finished") == 1
    late = await first.job_events(timed, 0)
    assert [e.type for e in late] == ["node_errored", "job_finished"]
    concurrent = await asyncio.gather(*(both[i % 2].create_job(new_job("z"), T0) for i in range(6)))
    assert sorted(concurrent) == list(range(timed + 1, timed + 7))


async def test_two_postgres_instances_keep_to_one_concurrency(two_instances):
    both = two_instances
    nodes = [f"n{i}" for i in range(8)]
    job_id = await both[0].create_job(new_job(*nodes, concurrency=3), T0)
    await both[0].start_job(job_id, T0 + 1)
    started = await asyncio.gather(
        *(both[i % 2].mark_node_running(job_id, n, T0 + 2) for i, n in enumerate(nodes))
    )
    assert started.count(True) == 3
    assert (await both[1].get_job(job_id)).node_states == {"running": 3, "ready": 5}


async def test_a_batch_of_outcomes_is_one_transaction(storage):
    first = await deployed(storage, "a", "b")
    second = await deployed(storage, "c")
    batch = [outcome(second, "c", 1), outcome(first, "a", 2), outcome(500, "x", 3), outcome(first, "a", 2)]
    assert await storage.record_node_outcomes(batch, T0 + 5) == [True, True, True, False]
    assert (await storage.get_job(second)).state == "finished"
    assert (await storage.get_job(first)).node_states == {"finished": 1, "ready": 1}
    assert (await storage.get_job(500)).owner_login == "unknown"
    assert await storage.record_node_outcomes([], T0) == []


async def test_postgres_batches_over_the_same_jobs_do_not_deadlock(two_instances):
    first, second = two_instances
    jobs = [await deployed(first, *(f"n{i}" for i in range(10))) for _ in range(3)]
    batches = []
    for i in range(10):
        order = jobs if i % 2 else list(reversed(jobs))  # opposite orders in concurrent batches
        batches.append([outcome(j, f"n{i}", 100 * j + i) for j in order])
    await asyncio.gather(
        *((first, second)[i % 2].record_node_outcomes(b, T0 + 3) for i, b in enumerate(batches))
    )
    for job_id in jobs:
        job = await second.get_job(job_id)
        assert (job.state, job.node_states) == ("finished", {"finished": 10})
        assert [e.type for e in await first.job_events(job_id, 0)].count("job_finished") == 1


async def test_last_job_event(storage):
    job_id = await deployed(storage, "a")
    assert await storage.last_job_event(job_id) is None
    await storage.record_node_outcome(outcome(job_id, "a", 1), T0 + 2)
    events = await storage.job_events(job_id, 0)
    assert await storage.last_job_event(job_id) == events[-1].id
    assert await storage.last_job_event(404) is None
