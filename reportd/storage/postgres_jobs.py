"""Postgres implementation of :class:`reportd.storage.jobs.JobStorage`.

The statements are :mod:`reportd.storage.jobs_sql`'s, each call one
transaction: the job's row is locked (``FOR UPDATE``) before anything of the
job changes, so instances sharing the database take turns per job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg

from reportd.storage.jobs_sql import SQLJobStorage, Steps, run_postgres

# A transaction chosen as a deadlock victim is simply run again.
RETRIES = 5

# Appended to the backend's MIGRATIONS list (its schema version 3).
MIGRATION = """
CREATE TABLE jobs (
    id BIGINT PRIMARY KEY,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    owner_login TEXT NOT NULL,
    environment TEXT,
    options BYTEA NOT NULL,
    description TEXT,
    timeout DOUBLE PRECISION,
    deadline DOUBLE PRECISION,
    timed_out INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION
);
CREATE INDEX jobs_deadline ON jobs (timed_out, deadline);
CREATE TABLE job_status (
    job_id BIGINT NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    enter_time DOUBLE PRECISION NOT NULL,
    exit_time DOUBLE PRECISION,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE job_nodes (
    job_id BIGINT NOT NULL,
    certname TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    error_kind TEXT,
    transaction_uuid TEXT,
    report_id BIGINT,
    start_time DOUBLE PRECISION,
    finish_time DOUBLE PRECISION,
    details BYTEA NOT NULL,
    message TEXT,
    result BYTEA,
    events BYTEA,
    PRIMARY KEY (job_id, certname)
);
CREATE INDEX job_nodes_state ON job_nodes (job_id, state);
CREATE TABLE job_events (
    id BIGSERIAL PRIMARY KEY,
    job_id BIGINT NOT NULL,
    type TEXT NOT NULL,
    timestamp DOUBLE PRECISION NOT NULL,
    certname TEXT,
    detail BYTEA NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX job_events_job ON job_events (job_id, id);
"""


class PostgresJobs(SQLJobStorage):
    """Mixed into the Postgres storage class; uses its connection helpers."""

    async def _run_job_steps(self, make: Callable[[], Steps], *, write: bool) -> Any:
        for attempt in range(RETRIES):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    return await run_postgres(conn, make())
            except asyncpg.DeadlockDetectedError:
                if attempt == RETRIES - 1:
                    raise
        raise AssertionError("unreachable")
