"""Postgres implementation of :class:`reportd.storage.schedules.ScheduleStorage`."""

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

# Appended to the backend's MIGRATIONS list (its schema version 4).
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
    scheduled_at BIGINT NOT NULL,
    scheduled_by TEXT NOT NULL,
    start_timestamp BIGINT,
    end_timestamp BIGINT,
    last_error TEXT
);
CREATE INDEX schedules_scheduled_at ON schedules (scheduled_at, id);
CREATE TABLE schedule_runs (
    schedule_id TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    period_end BIGINT NOT NULL,
    state TEXT NOT NULL,
    owner TEXT,
    lease_until DOUBLE PRECISION,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    last_error TEXT,
    finished_at DOUBLE PRECISION,
    PRIMARY KEY (schedule_id, period_start)
);
"""


def _where(query: ScheduleQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []

    def param(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    for column in ("id", "type", "schedule", "scheduled_by"):
        value = getattr(query, column)
        if value is not None:
            clauses.append(f"{column} = {param(value)}")
    if query.id_list is not None:
        clauses.append(f"id = ANY({param(list(query.id_list))}::text[])")
    if query.name is not None:
        # strpos, not LIKE: a name filter with % or _ means those characters
        clauses.append(f"strpos(lower(name), lower({param(query.name)})) > 0")
    if query.scheduled_at_start is not None:
        clauses.append(f"scheduled_at >= {param(query.scheduled_at_start)}")
    if query.scheduled_at_end is not None:
        clauses.append(f"scheduled_at <= {param(query.scheduled_at_end)}")
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


class PostgresSchedules(ScheduleStorage):
    """Mixed into the Postgres storage class; uses its connection helpers."""

    async def create_schedule(self, schedule: Schedule) -> None:
        row = schedule_row(schedule)
        marks = ", ".join(f"${n}" for n in range(1, len(row) + 1))
        await self.pool.execute(f"INSERT INTO schedules ({SCHEDULE_COLUMNS}) VALUES ({marks})", *row)  # type: ignore[attr-defined]

    async def get_schedule(self, schedule_id: str) -> Schedule | None:
        row = await self.pool.fetchrow(  # type: ignore[attr-defined]
            f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1", schedule_id
        )
        return schedule_from_row(row) if row else None

    async def list_schedules(self, query: ScheduleQuery) -> tuple[list[Schedule], int]:
        where, params = _where(query)
        n = len(params)
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):  # type: ignore[attr-defined]
            # one snapshot: the page and the total agree
            total = await conn.fetchval(f"SELECT count(*) FROM schedules {where}", *params)
            rows = await conn.fetch(
                f"SELECT {SCHEDULE_COLUMNS} FROM schedules {where}"
                f" ORDER BY scheduled_at, id LIMIT ${n + 1} OFFSET ${n + 2}",
                *params,
                query.limit,
                query.offset,
            )
        return [schedule_from_row(r) for r in rows], total

    async def update_schedule(self, schedule_id: str, changes: Mapping[str, Any]) -> Schedule | None:
        values = update_values(changes)
        if not values:
            return await self.get_schedule(schedule_id)
        sets = ", ".join(f"{k} = ${n}" for n, k in enumerate(values, start=2))
        row = await self.pool.fetchrow(  # type: ignore[attr-defined]
            f"UPDATE schedules SET {sets} WHERE id = $1 RETURNING {SCHEDULE_COLUMNS}",
            schedule_id,
            *values.values(),
        )
        return schedule_from_row(row) if row else None

    async def delete_schedules(self, schedule_ids: Sequence[str]) -> list[str]:
        ids = list(dict.fromkeys(schedule_ids))
        async with self.pool.acquire() as conn, conn.transaction():  # type: ignore[attr-defined]
            found = {
                r[0]
                for r in await conn.fetch(
                    "SELECT id FROM schedules WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE", ids
                )
            }
            missing = [i for i in ids if i not in found]
            if not missing:
                await conn.execute("DELETE FROM schedule_runs WHERE schedule_id = ANY($1::text[])", ids)
                await conn.execute("DELETE FROM schedules WHERE id = ANY($1::text[])", ids)
            return missing

    async def claim_schedule_run(
        self, schedule_id: str, period_start: int, period_end: int, owner: str, now: float, lease: float
    ) -> RunClaim | None:
        # Concurrent claimers of one period: the loser of the insert waits on the row,
        # then re-checks the WHERE against the winner's lease and gets no row back.
        row = await self.pool.fetchrow(  # type: ignore[attr-defined]
            f"INSERT INTO schedule_runs ({RUN_COLUMNS})"
            " SELECT $1, $2, $3, $4, $5, $6, 0, $7, NULL, NULL FROM schedules WHERE id = $1"
            " ON CONFLICT (schedule_id, period_start) DO UPDATE SET owner = excluded.owner,"
            " lease_until = excluded.lease_until WHERE schedule_runs.state = $4"
            " AND (schedule_runs.lease_until IS NULL OR schedule_runs.lease_until < $7)"
            " AND schedule_runs.next_attempt_at <= $7 RETURNING period_end, attempts",
            schedule_id, period_start, period_end, RUN_PENDING, owner, now + lease, now,
        )  # fmt: skip
        return RunClaim(schedule_id, period_start, row[0], row[1]) if row else None

    async def finish_schedule_run(self, schedule_id: str, period_start: int, state: str, now: float) -> bool:
        micros = int(now * 1_000_000)
        async with self.pool.acquire() as conn, conn.transaction():  # type: ignore[attr-defined]
            status = await conn.execute(
                "UPDATE schedule_runs SET state = $1, finished_at = $2, lease_until = NULL, last_error = NULL"
                " WHERE schedule_id = $3 AND period_start = $4",
                state, now, schedule_id, period_start,
            )  # fmt: skip
            await conn.execute(
                "UPDATE schedules SET start_timestamp = coalesce(start_timestamp, $1), end_timestamp = $1,"
                " last_error = NULL WHERE id = $2",
                micros,
                schedule_id,
            )
        return status.endswith(" 1")

    async def fail_schedule_run(
        self, schedule_id: str, period_start: int, error: str, next_attempt_at: float, give_up: bool
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():  # type: ignore[attr-defined]
            await conn.execute(
                "UPDATE schedule_runs SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2,"
                " lease_until = NULL, state = $3 WHERE schedule_id = $4 AND period_start = $5 AND state = $6",
                error[:2000], next_attempt_at, RUN_FAILED if give_up else RUN_PENDING, schedule_id,
                period_start, RUN_PENDING,
            )  # fmt: skip
            await conn.execute(
                "UPDATE schedules SET last_error = $1 WHERE id = $2", error[:2000], schedule_id
            )

    async def release_schedule_run(self, schedule_id: str, period_start: int, owner: str) -> None:
        await self.pool.execute(  # type: ignore[attr-defined]
            "UPDATE schedule_runs SET lease_until = NULL WHERE schedule_id = $1 AND period_start = $2"
            " AND owner = $3 AND state = $4",
            schedule_id, period_start, owner, RUN_PENDING,
        )  # fmt: skip

    async def schedule_runs(self, schedule_id: str, limit: int) -> list[ScheduleRun]:
        rows = await self.pool.fetch(  # type: ignore[attr-defined]
            f"SELECT {RUN_COLUMNS} FROM schedule_runs WHERE schedule_id = $1"
            " ORDER BY period_start DESC LIMIT $2",
            schedule_id,
            limit,
        )
        return [ScheduleRun(*row) for row in rows]
