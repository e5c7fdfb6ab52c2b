"""SQLite implementation of :class:`reportd.storage.schedules.ScheduleStorage`."""

from __future__ import annotations

import sqlite3
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
    scheduled_at INTEGER NOT NULL,
    scheduled_by TEXT NOT NULL,
    start_timestamp INTEGER,
    end_timestamp INTEGER,
    last_error TEXT
);
CREATE INDEX schedules_scheduled_at ON schedules (scheduled_at, id);
CREATE TABLE schedule_runs (
    schedule_id TEXT NOT NULL,
    period_start INTEGER NOT NULL,
    period_end INTEGER NOT NULL,
    state TEXT NOT NULL,
    owner TEXT,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    finished_at REAL,
    PRIMARY KEY (schedule_id, period_start)
) WITHOUT ROWID
"""


def _where(query: ScheduleQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column in ("id", "type", "schedule", "scheduled_by"):
        value = getattr(query, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.id_list is not None:
        clauses.append(f"id IN ({','.join('?' * len(query.id_list))})" if query.id_list else "0")
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


class SQLiteSchedules(ScheduleStorage):
    """Mixed into the SQLite storage class; uses its connection helpers."""

    async def create_schedule(self, schedule: Schedule) -> None:
        row = schedule_row(schedule)
        await self._write(  # type: ignore[attr-defined]
            lambda c: c.execute(
                f"INSERT INTO schedules ({SCHEDULE_COLUMNS}) VALUES ({','.join('?' * len(row))})", row
            )
        )

    async def get_schedule(self, schedule_id: str) -> Schedule | None:
        def job(conn: sqlite3.Connection) -> Schedule | None:
            row = conn.execute(f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ?", (schedule_id,))
            found = row.fetchone()
            return schedule_from_row(found) if found else None

        return await self._read(job)  # type: ignore[attr-defined]

    async def list_schedules(self, query: ScheduleQuery) -> tuple[list[Schedule], int]:
        where, params = _where(query)

        def job(conn: sqlite3.Connection) -> tuple[list[Schedule], int]:
            # one read transaction: the page and the total agree
            conn.execute("BEGIN")
            try:
                (total,) = conn.execute(f"SELECT count(*) FROM schedules {where}", params).fetchone()
                rows = conn.execute(
                    f"SELECT {SCHEDULE_COLUMNS} FROM schedules {where}"
                    " ORDER BY scheduled_at, id LIMIT ? OFFSET ?",
                    [*params, -1 if query.limit is None else query.limit, query.offset],
                ).fetchall()
            finally:
                conn.execute("COMMIT")
            return [schedule_from_row(r) for r in rows], total

        return await self._read(job)  # type: ignore[attr-defined]

    async def update_schedule(self, schedule_id: str, changes: Mapping[str, Any]) -> Schedule | None:
        values = update_values(changes)

        def job(conn: sqlite3.Connection) -> Schedule | None:
            if values:
                conn.execute(
                    f"UPDATE schedules SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                    [*values.values(), schedule_id],
                )
            row = conn.execute(
                f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ?", (schedule_id,)
            ).fetchone()
            return schedule_from_row(row) if row else None

        return await self._write(job)  # type: ignore[attr-defined]

    async def delete_schedules(self, schedule_ids: Sequence[str]) -> list[str]:
        ids = list(dict.fromkeys(schedule_ids))

        def job(conn: sqlite3.Connection) -> list[str]:
            # The writer runs this job alone inside its transaction: check and delete are atomic.
            marks = ",".join("?" * len(ids))
            found = {r[0] for r in conn.execute(f"SELECT id FROM schedules WHERE id IN ({marks})", ids)}
            missing = [i for i in ids if i not in found]
            if not missing:
                conn.execute(f"DELETE FROM schedule_runs WHERE schedule_id IN ({marks})", ids)
                conn.execute(f"DELETE FROM schedules WHERE id IN ({marks})", ids)
            return missing

        return await self._write(job)  # type: ignore[attr-defined]

    async def claim_schedule_run(
        self, schedule_id: str, period_start: int, period_end: int, owner: str, now: float, lease: float
    ) -> RunClaim | None:
        def job(conn: sqlite3.Connection) -> RunClaim | None:
            if conn.execute("SELECT 1 FROM schedules WHERE id = ?", (schedule_id,)).fetchone() is None:
                return None
            row = conn.execute(
                f"INSERT INTO schedule_runs ({RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 0, ?, NULL, NULL)"
                " ON CONFLICT (schedule_id, period_start) DO UPDATE SET owner = excluded.owner,"
                " lease_until = excluded.lease_until WHERE schedule_runs.state = ?"
                " AND (schedule_runs.lease_until IS NULL OR schedule_runs.lease_until < ?)"
                " AND schedule_runs.next_attempt_at <= ? RETURNING period_end, attempts",
                (schedule_id, period_start, period_end, RUN_PENDING, owner, now + lease, now,
                 RUN_PENDING, now, now),
            ).fetchone()  # fmt: skip
            return RunClaim(schedule_id, period_start, row[0], row[1]) if row else None

        return await self._write(job)  # type: ignore[attr-defined]

    async def finish_schedule_run(self, schedule_id: str, period_start: int, state: str, now: float) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            updated = conn.execute(
                "UPDATE schedule_runs SET state = ?, finished_at = ?, lease_until = NULL, last_error = NULL"
                " WHERE schedule_id = ? AND period_start = ?",
                (state, now, schedule_id, period_start),
            ).rowcount
            micros = int(now * 1_000_000)
            conn.execute(
                "UPDATE schedules SET start_timestamp = coalesce(start_timestamp, ?), end_timestamp = ?,"
                " last_error = NULL WHERE id = ?",
                (micros, micros, schedule_id),
            )
            return updated == 1

        return await self._write(job)  # type: ignore[attr-defined]

    async def fail_schedule_run(
        self, schedule_id: str, period_start: int, error: str, next_attempt_at: float, give_up: bool
    ) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE schedule_runs SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?,"
                " lease_until = NULL, state = ? WHERE schedule_id = ? AND period_start = ? AND state = ?",
                (error[:2000], next_attempt_at, RUN_FAILED if give_up else RUN_PENDING, schedule_id,
                 period_start, RUN_PENDING),
            )  # fmt: skip
            conn.execute("UPDATE schedules SET last_error = ? WHERE id = ?", (error[:2000], schedule_id))

        await self._write(job)  # type: ignore[attr-defined]

    async def release_schedule_run(self, schedule_id: str, period_start: int, owner: str) -> None:
        await self._write(  # type: ignore[attr-defined]
            lambda c: c.execute(
                "UPDATE schedule_runs SET lease_until = NULL WHERE schedule_id = ? AND period_start = ?"
                " AND owner = ? AND state = ?",
                (schedule_id, period_start, owner, RUN_PENDING),
            )
        )

    async def schedule_runs(self, schedule_id: str, limit: int) -> list[ScheduleRun]:
        def job(conn: sqlite3.Connection) -> list[ScheduleRun]:
            rows = conn.execute(
                f"SELECT {RUN_COLUMNS} FROM schedule_runs WHERE schedule_id = ?"
                " ORDER BY period_start DESC LIMIT ?",
                (schedule_id, limit),
            )
            return [ScheduleRun(*row) for row in rows]

        return await self._read(job)  # type: ignore[attr-defined]
