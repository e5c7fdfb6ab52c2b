"""The schedules storage written once for both SQL backends (see :mod:`reportd.storage.sql`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reportd.storage.schedules import (
    RUN_COLUMNS,
    RUN_FAILED,
    RUN_PENDING,
    SCHEDULE_COLUMNS,
    RunClaim,
    Schedule,
    ScheduleQuery,
    ScheduleRun,
    ScheduleStorage,
    schedule_from_row,
    schedule_row,
    update_values,
)
from reportd.storage.sql import SQLOperations, Steps, count, marks, row, rows, single, value

# The backends' schema version 4.
MIGRATION = """
CREATE TABLE schedules (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hosts TEXT NOT NULL,
    services TEXT,
    type TEXT NOT NULL,
    schedule TEXT NOT NULL,
    send_to TEXT NOT NULL,
    send_via TEXT NOT NULL,
    timezone TEXT NOT NULL,
    scheduled_at {int64} NOT NULL,
    scheduled_by TEXT NOT NULL,
    start_timestamp {int64},
    end_timestamp {int64},
    last_error TEXT
);
CREATE INDEX schedules_scheduled_at ON schedules (scheduled_at, id);
CREATE TABLE schedule_runs (
    schedule_id TEXT NOT NULL,
    period_start {int64} NOT NULL,
    period_end {int64} NOT NULL,
    state TEXT NOT NULL,
    owner TEXT,
    lease_until {float},
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at {float} NOT NULL,
    last_error TEXT,
    finished_at {float},
    PRIMARY KEY (schedule_id, period_start)
){without_rowid};
"""
#: No page limit: the largest both databases take.
_ALL_ROWS = 2**62


class SQLScheduleStorage(SQLOperations, ScheduleStorage):
    """:class:`ScheduleStorage` for both SQL backends."""

    async def create_schedule(self, schedule: Schedule) -> None:
        values = schedule_row(schedule)
        insert = f"INSERT INTO schedules ({SCHEDULE_COLUMNS}) VALUES ({marks(values)})"
        await self._run_steps(lambda: single(count(insert, *values)), write=True)

    async def get_schedule(self, schedule_id: str) -> Schedule | None:
        return await self._run_steps(lambda: _get_schedule(schedule_id), write=False)

    async def list_schedules(self, query: ScheduleQuery) -> tuple[list[Schedule], int]:
        return await self._run_steps(lambda: _list_schedules(query), write=False)

    async def update_schedule(self, schedule_id: str, changes: Mapping[str, Any]) -> Schedule | None:
        values = update_values(changes)
        return await self._run_steps(lambda: _update_schedule(schedule_id, values), write=True)

    async def delete_schedules(self, schedule_ids: Sequence[str]) -> list[str]:
        ids = list(dict.fromkeys(schedule_ids))
        return await self._run_steps(lambda: _delete_schedules(ids), write=True)

    async def claim_schedule_run(
        self, schedule_id: str, period_start: int, period_end: int, owner: str, now: float, lease: float
    ) -> RunClaim | None:
        # Concurrent claimers of one period (PostgreSQL): the loser of the insert waits on
        # the row, then re-checks the WHERE against the winner's lease and gets no row back.
        # Inserting from the schedule's row claims nothing for a deleted schedule.
        claim = row(
            f"INSERT INTO schedule_runs ({RUN_COLUMNS})"
            " SELECT ?, ?, ?, ?, ?, ?, 0, ?, NULL, NULL FROM schedules WHERE id = ?"
            " ON CONFLICT (schedule_id, period_start) DO UPDATE SET owner = excluded.owner,"
            " lease_until = excluded.lease_until WHERE schedule_runs.state = ?"
            " AND (schedule_runs.lease_until IS NULL OR schedule_runs.lease_until < ?)"
            " AND schedule_runs.next_attempt_at <= ? RETURNING period_end, attempts",
            schedule_id, period_start, period_end, RUN_PENDING, owner, float(now + lease), float(now),
            schedule_id, RUN_PENDING, float(now), float(now),
        )  # fmt: skip
        found = await self._run_steps(lambda: single(claim), write=True)
        return RunClaim(schedule_id, period_start, found[0], found[1]) if found else None

    async def finish_schedule_run(self, schedule_id: str, period_start: int, state: str, now: float) -> bool:
        return await self._run_steps(
            lambda: _finish_schedule_run(schedule_id, period_start, state, float(now)), write=True
        )

    async def fail_schedule_run(
        self, schedule_id: str, period_start: int, error: str, next_attempt_at: float, give_up: bool
    ) -> None:
        failed = (schedule_id, period_start, error[:2000], float(next_attempt_at), give_up)
        await self._run_steps(lambda: _fail_schedule_run(*failed), write=True)

    async def release_schedule_run(self, schedule_id: str, period_start: int, owner: str) -> None:
        release = count(
            "UPDATE schedule_runs SET lease_until = NULL WHERE schedule_id = ? AND period_start = ?"
            " AND owner = ? AND state = ?",
            schedule_id, period_start, owner, RUN_PENDING,
        )  # fmt: skip
        await self._run_steps(lambda: single(release), write=True)

    async def schedule_runs(self, schedule_id: str, limit: int) -> list[ScheduleRun]:
        select = rows(
            f"SELECT {RUN_COLUMNS} FROM schedule_runs WHERE schedule_id = ?"
            " ORDER BY period_start DESC LIMIT ?",
            schedule_id,
            limit,
        )
        found = await self._run_steps(lambda: single(select), write=False)
        return [ScheduleRun(*r) for r in found]


def _where(query: ScheduleQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column in ("id", "type", "schedule", "scheduled_by"):
        given = getattr(query, column)
        if given is not None:
            clauses.append(f"{column} = ?")
            params.append(given)
    if query.id_list is not None:
        clauses.append(f"id IN ({marks(query.id_list)})" if query.id_list else "FALSE")
        params.extend(query.id_list)
    if query.name is not None:
        # instr, not LIKE: a name filter with % or _ means those characters
        clauses.append("instr(lower(name), lower(?)) > 0")
        params.append(query.name)
    if query.scheduled_at_start is not None:
        clauses.append("scheduled_at >= ?")
        params.append(query.scheduled_at_start)
    if query.scheduled_at_end is not None:
        clauses.append("scheduled_at <= ?")
        params.append(query.scheduled_at_end)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


def _get_schedule(schedule_id: str) -> Steps:
    found = yield row(f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ?", schedule_id)
    return schedule_from_row(found) if found else None


def _list_schedules(query: ScheduleQuery) -> Steps:
    # One snapshot (the caller's read transaction): the page and the total agree.
    where, params = _where(query)
    total = yield value(f"SELECT count(*) FROM schedules {where}", *params)
    page = yield rows(
        f"SELECT {SCHEDULE_COLUMNS} FROM schedules {where} ORDER BY scheduled_at, id LIMIT ? OFFSET ?",
        *params,
        _ALL_ROWS if query.limit is None else query.limit,
        query.offset,
    )
    return [schedule_from_row(r) for r in page], total


def _update_schedule(schedule_id: str, values: Mapping[str, Any]) -> Steps:
    if values:
        sets = ", ".join(f"{column} = ?" for column in values)
        yield count(f"UPDATE schedules SET {sets} WHERE id = ?", *values.values(), schedule_id)
    return (yield from _get_schedule(schedule_id))


def _delete_schedules(ids: Sequence[str]) -> Steps:
    # All or none: the rows found are locked (PostgreSQL) until they are deleted.
    found = yield rows(f"SELECT id FROM schedules WHERE id IN ({marks(ids)}) ORDER BY id{{for_update}}", *ids)
    present = {r[0] for r in found}
    missing = [i for i in ids if i not in present]
    if not missing:
        yield count(f"DELETE FROM schedule_runs WHERE schedule_id IN ({marks(ids)})", *ids)
        yield count(f"DELETE FROM schedules WHERE id IN ({marks(ids)})", *ids)
    return missing


def _finish_schedule_run(schedule_id: str, period_start: int, state: str, now: float) -> Steps:
    updated = yield count(
        "UPDATE schedule_runs SET state = ?, finished_at = ?, lease_until = NULL, last_error = NULL"
        " WHERE schedule_id = ? AND period_start = ?",
        state, now, schedule_id, period_start,
    )  # fmt: skip
    micros = int(now * 1_000_000)
    yield count(
        "UPDATE schedules SET start_timestamp = coalesce(start_timestamp, ?), end_timestamp = ?,"
        " last_error = NULL WHERE id = ?",
        micros, micros, schedule_id,
    )  # fmt: skip
    return updated == 1


def _fail_schedule_run(
    schedule_id: str, period_start: int, error: str, next_attempt_at: float, give_up: bool
) -> Steps:
    yield count(
        "UPDATE schedule_runs SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?,"
        " lease_until = NULL, state = ? WHERE schedule_id = ? AND period_start = ? AND state = ?",
        error, next_attempt_at, RUN_FAILED if give_up else RUN_PENDING, schedule_id, period_start,
        RUN_PENDING,
    )  # fmt: skip
    yield count("UPDATE schedules SET last_error = ? WHERE id = ?", error, schedule_id)
