"""SQLite implementation of :class:`reportd.storage.jobs.JobStorage`.

The statements are :mod:`reportd.storage.jobs_sql`'s; writes run in the writer
thread's group transaction (one writer: no locks needed), reads in a deferred
transaction of a reader connection so that one answer is one snapshot.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from reportd.storage.jobs_sql import SQLJobStorage, Steps, run_sqlite

# Appended to the backend's MIGRATIONS list (its schema version 3).
MIGRATION = """
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    owner_login TEXT NOT NULL,
    environment TEXT,
    options BLOB NOT NULL,
    description TEXT,
    timeout REAL,
    deadline REAL,
    timed_out INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX jobs_deadline ON jobs (timed_out, deadline);
CREATE TABLE job_status (
    job_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    enter_time REAL NOT NULL,
    exit_time REAL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE job_nodes (
    job_id INTEGER NOT NULL,
    certname TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL,
    error_kind TEXT,
    transaction_uuid TEXT,
    report_id INTEGER,
    start_time REAL,
    finish_time REAL,
    details BLOB NOT NULL,
    message TEXT,
    result BLOB,
    events BLOB,
    PRIMARY KEY (job_id, certname)
) WITHOUT ROWID;
CREATE INDEX job_nodes_state ON job_nodes (job_id, state);
CREATE TABLE job_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    type TEXT NOT NULL,
    timestamp REAL NOT NULL,
    certname TEXT,
    detail BLOB NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX job_events_job ON job_events (job_id, id)
"""


class SQLiteJobs(SQLJobStorage):
    """Mixed into the SQLite storage class; uses its connection helpers."""

    async def _run_job_steps(self, make: Callable[[], Steps], *, write: bool) -> Any:
        if write:
            return await self._write(lambda conn: run_sqlite(conn, make()))
        return await self._read(lambda conn: _in_snapshot(conn, make))


def _in_snapshot(conn: sqlite3.Connection, make: Callable[[], Steps]) -> Any:
    conn.execute("BEGIN")
    try:
        return run_sqlite(conn, make())
    finally:
        conn.execute("COMMIT")
