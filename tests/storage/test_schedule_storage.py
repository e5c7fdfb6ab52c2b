"""The schedules part of the storage contract, on SQLite and PostgreSQL; two instances on one database."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from reportd.storage.postgres import PostgresStorage
from reportd.storage.schedules import RUN_EMPTY, RUN_FAILED, RUN_PENDING, RUN_SENT, Schedule, ScheduleQuery
from reportd.storage.sqlite import SQLiteStorage
from tests.support.storage import drop_schema

T0 = 1_795_000_000.0
US = 1_000_000


@pytest.fixture
async def storage(open_instances):
    return await open_instances()


def schedule(n: int = 1, **fields) -> Schedule:
    values = dict(
        id=f"00000000-0000-4000-8000-{n:012d}", name=f"schedule {n}", hosts=("*.example.test",), services=None,
        type="generic", schedule="daily", send_to=("ops@example.test",), send_via="email",
        timezone="Europe/Rome", scheduled_at=int(T0 * US) + n, scheduled_by="alice",
    )  # fmt: skip
    values.update(fields)
    return Schedule(**values)


async def test_create_get_and_the_row_round_trips(storage):
    created = schedule(services=("production", "staging"), send_to=("a@x.test", "b@x.test"))
    await storage.create_schedule(created)
    assert await storage.get_schedule(created.id) == created
    assert await storage.get_schedule("nope") is None
    null_services = schedule(2)
    await storage.create_schedule(null_services)
    assert (await storage.get_schedule(null_services.id)).services is None


async def test_list_filters_pagination_and_total(storage):
    for n in range(1, 8):
        await storage.create_schedule(
            schedule(n, name=f"Nightly {n}" if n % 2 else f"hourly_{n}%", type="failures" if n > 5 else "generic",
                     schedule="hourly" if n == 3 else "daily", scheduled_by="bob" if n == 4 else "alice")
        )  # fmt: skip
    rows, total = await storage.list_schedules(ScheduleQuery())
    assert total == 7 and [s.name for s in rows][:2] == ["Nightly 1", "hourly_2%"]
    page, total = await storage.list_schedules(ScheduleQuery(limit=3, offset=3))
    assert total == 7 and [s.id[-1] for s in page] == ["4", "5", "6"]

    async def ids(**filters) -> list[str]:
        rows, total = await storage.list_schedules(ScheduleQuery(**filters))
        assert total == len(rows)
        return [s.id[-1] for s in rows]

    assert await ids(name="NIGHT") == ["1", "3", "5", "7"]
    assert await ids(name="_4%") == ["4"]  # % and _ are characters, not patterns
    assert await ids(name="%") == ["2", "4", "6"]
    assert await ids(type="failures") == ["6", "7"]
    assert await ids(schedule="hourly") == ["3"]
    assert await ids(scheduled_by="bob") == ["4"]
    assert await ids(id=schedule(5).id) == ["5"]
    assert await ids(id_list=[schedule(2).id, schedule(6).id, "unknown"]) == ["2", "6"]
    assert await ids(id_list=[]) == []
    assert await ids(scheduled_at_start=int(T0 * US) + 3, scheduled_at_end=int(T0 * US) + 5) == [
        "3",
        "4",
        "5",
    ]
    assert await ids(type="generic", name="nightly", scheduled_by="alice") == ["1", "3", "5"]


async def test_update_is_partial(storage):
    await storage.create_schedule(schedule())
    updated = await storage.update_schedule(
        schedule().id, {"send_to": ["a@x.test", "b@x.test"], "services": None}
    )
    assert updated == schedule(send_to=("a@x.test", "b@x.test"))
    assert await storage.get_schedule(schedule().id) == updated
    assert await storage.update_schedule("unknown", {"name": "x"}) is None
    with pytest.raises(ValueError, match="not editable: scheduled_by"):
        await storage.update_schedule(schedule().id, {"scheduled_by": "mallory"})


async def test_delete_is_all_or_nothing(storage):
    for n in (1, 2, 3):
        await storage.create_schedule(schedule(n))
    await storage.claim_schedule_run(schedule(1).id, 10, 20, "me", T0, 60)
    assert await storage.delete_schedules([schedule(1).id, "missing-a", schedule(2).id, "missing-b"]) == [
        "missing-a", "missing-b",
    ]  # fmt: skip
    assert (await storage.list_schedules(ScheduleQuery()))[1] == 3
    assert await storage.delete_schedules([schedule(1).id, schedule(2).id, schedule(1).id]) == []
    rows, total = await storage.list_schedules(ScheduleQuery())
    assert total == 1 and rows[0].id == schedule(3).id
    assert await storage.schedule_runs(schedule(1).id, 10) == []


async def test_a_period_is_claimed_once_and_a_dead_claim_expires(storage):
    await storage.create_schedule(schedule())
    sid = schedule().id
    first = await storage.claim_schedule_run(sid, 100, 200, "a", T0, lease=60)
    assert (first.period_start, first.period_end, first.attempts) == (100, 200, 0)
    assert await storage.claim_schedule_run(sid, 100, 200, "b", T0 + 59, lease=60) is None
    # a: gone without a word; its lease runs out and b takes the period over
    taken = await storage.claim_schedule_run(sid, 100, 200, "b", T0 + 61, lease=60)
    assert taken is not None and taken.attempts == 0
    (run,) = await storage.schedule_runs(sid, 10)
    assert (run.state, run.owner) == (RUN_PENDING, "b")
    assert await storage.finish_schedule_run(sid, 100, RUN_SENT, T0 + 62)
    assert await storage.claim_schedule_run(sid, 100, 200, "c", T0 + 10_000, lease=60) is None
    got = await storage.get_schedule(sid)
    assert got.start_timestamp == got.end_timestamp == int((T0 + 62) * US)
    # another period of the same schedule is a claim of its own
    assert await storage.claim_schedule_run(sid, 200, 300, "c", T0 + 100, lease=60) is not None
    await storage.finish_schedule_run(sid, 200, RUN_EMPTY, T0 + 101)
    got = await storage.get_schedule(sid)
    assert got.start_timestamp == int((T0 + 62) * US) and got.end_timestamp == int((T0 + 101) * US)
    assert [r.state for r in await storage.schedule_runs(sid, 10)] == [RUN_EMPTY, RUN_SENT]
    assert await storage.claim_schedule_run("no-such-schedule", 100, 200, "a", T0, lease=60) is None


async def test_a_failed_send_waits_for_its_retry_then_gives_up(storage):
    await storage.create_schedule(schedule())
    sid = schedule().id
    await storage.claim_schedule_run(sid, 100, 200, "a", T0, lease=600)
    await storage.fail_schedule_run(sid, 100, "SMTPDataError: 451 try later", T0 + 30, give_up=False)
    assert (await storage.get_schedule(sid)).last_error == "SMTPDataError: 451 try later"
    assert await storage.claim_schedule_run(sid, 100, 200, "b", T0 + 29, lease=600) is None
    again = await storage.claim_schedule_run(sid, 100, 200, "b", T0 + 30, lease=600)
    assert again.attempts == 1
    await storage.fail_schedule_run(sid, 100, "refused", T0 + 60, give_up=True)
    assert await storage.claim_schedule_run(sid, 100, 200, "b", T0 + 1000, lease=600) is None
    (run,) = await storage.schedule_runs(sid, 10)
    assert (run.state, run.attempts, run.last_error) == (RUN_FAILED, 2, "refused")
    # a later success clears the schedule's error
    await storage.claim_schedule_run(sid, 200, 300, "b", T0 + 2000, lease=600)
    await storage.finish_schedule_run(sid, 200, RUN_SENT, T0 + 2001)
    assert (await storage.get_schedule(sid)).last_error is None


async def test_a_released_claim_is_free_at_once_and_only_its_owner_releases_it(storage):
    await storage.create_schedule(schedule())
    sid = schedule().id
    await storage.claim_schedule_run(sid, 100, 200, "a", T0, lease=600)
    await storage.release_schedule_run(sid, 100, "b")  # not b's: the lease holds
    assert await storage.claim_schedule_run(sid, 100, 200, "b", T0 + 1, lease=600) is None
    await storage.release_schedule_run(sid, 100, "a")
    taken = await storage.claim_schedule_run(sid, 100, 200, "b", T0 + 2, lease=600)
    assert taken is not None and taken.attempts == 0  # a release is not a failed attempt
    await storage.finish_schedule_run(sid, 100, RUN_SENT, T0 + 3)
    await storage.release_schedule_run(sid, 100, "b")  # done: stays done
    assert (await storage.schedule_runs(sid, 10))[0].state == RUN_SENT
    assert await storage.claim_schedule_run(sid, 100, 200, "c", T0 + 4, lease=600) is None


async def test_two_instances_racing_for_one_period_one_wins(open_instances):
    one, two = await open_instances(), await open_instances()
    await one.create_schedule(schedule())
    for period in range(20):
        claims = await asyncio.gather(
            *(s.claim_schedule_run(schedule().id, period, period + 1, name, T0, 60)
              for s, name in ((one, "one"), (two, "two"), (one, "one-b"), (two, "two-b")))
        )  # fmt: skip
        assert sum(c is not None for c in claims) == 1, claims


async def test_schedules_and_their_runs_survive_the_copy_from_sqlite_to_postgres(tmp_path, pg_dsn):
    from reportd.storage.sqlite_to_postgres import copy_sqlite_to_postgres

    source = SQLiteStorage(tmp_path / "source.db")
    await source.open()
    await source.create_schedule(schedule(services=("production",)))
    await source.claim_schedule_run(schedule().id, 100, 200, "a", T0, 60)
    await source.finish_schedule_run(schedule().id, 100, RUN_SENT, T0 + 1)
    await source.claim_schedule_run(schedule().id, 200, 300, "a", T0 + 2, 60)
    expected = await source.get_schedule(schedule().id), await source.schedule_runs(schedule().id, 10)
    await source.close()
    dsn, schema = pg_dsn, f"t_{uuid.uuid4().hex}"
    try:
        await copy_sqlite_to_postgres(tmp_path / "source.db", PostgresStorage(dsn, schema=schema))
        target = PostgresStorage(dsn, schema=schema)
        await target.open()
        try:
            assert (
                await target.get_schedule(schedule().id),
                await target.schedule_runs(schedule().id, 10),
            ) == expected
            # the copied claim still holds: the period is not sent twice after the move
            assert await target.claim_schedule_run(schedule().id, 200, 300, "b", T0 + 3, 60) is None
            assert await target.claim_schedule_run(schedule().id, 100, 200, "b", T0 + 100, 60) is None
        finally:
            await target.close()
    finally:
        await drop_schema(dsn, schema)
