"""The database schema of both backends, version by version, in :func:`reportd.storage.sql.ddl` types.

Version N is ``MIGRATIONS[N - 1]``; a database records the versions it has in
``schema_version``. A released version is never edited: a change is a new one.
"""

from __future__ import annotations

from reportd.storage import jobs_sql, schedules_sql

MIGRATIONS: list[str] = [
    """
    CREATE TABLE inbox (
        id {serial_pk},
        idempotency_key TEXT NOT NULL UNIQUE,
        certname TEXT NOT NULL,
        format TEXT NOT NULL,
        received_at {float} NOT NULL,
        envelope {blob} NOT NULL,
        body {blob}
    );
    CREATE INDEX inbox_received ON inbox (received_at);
    CREATE TABLE deliveries (
        processor TEXT NOT NULL,
        report_id {int64} NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at {float} NOT NULL,
        lease_until {float},
        last_error TEXT,
        PRIMARY KEY (processor, report_id)
    ){without_rowid};
    CREATE INDEX deliveries_due ON deliveries (processor, state, next_attempt_at);
    CREATE INDEX deliveries_report ON deliveries (report_id);
    CREATE TABLE reports (
        id {int64} PRIMARY KEY,
        certname TEXT NOT NULL,
        environment TEXT,
        status TEXT NOT NULL,
        change_kind TEXT,
        noop {bool} NOT NULL,
        format TEXT NOT NULL,
        origin TEXT,
        transaction_uuid TEXT,
        job_id TEXT,
        configuration_version TEXT,
        run_time {float} NOT NULL,
        start_time {float},
        end_time {float},
        received_at {float} NOT NULL,
        summary {blob} NOT NULL
    );
    CREATE INDEX reports_time ON reports (run_time, id);
    CREATE INDEX reports_certname ON reports (certname, run_time, id);
    CREATE INDEX reports_status ON reports (status, run_time, id);
    CREATE INDEX reports_environment ON reports (environment, run_time, id);
    CREATE TABLE nodes (
        certname TEXT PRIMARY KEY,
        environment TEXT,
        status TEXT NOT NULL,
        change_kind TEXT,
        report_id {int64} NOT NULL,
        run_time {float} NOT NULL,
        last_received_at {float} NOT NULL,
        summary {blob} NOT NULL
    );
    CREATE TABLE tokens (
        name TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        permissions TEXT NOT NULL,
        created_at {float} NOT NULL
    );
    """,
    # Chef starts runs before it ends them; Foreman and Chef reports carry an
    # organization and location to filter on.
    """
    CREATE TABLE run_starts (
        format TEXT NOT NULL,
        certname TEXT NOT NULL,
        run_id TEXT NOT NULL,
        started_at {float},
        received_at {float} NOT NULL,
        PRIMARY KEY (format, certname, run_id)
    ){without_rowid};
    CREATE INDEX run_starts_received ON run_starts (received_at);
    ALTER TABLE reports ADD COLUMN organization TEXT;
    ALTER TABLE reports ADD COLUMN organization_id {int64};
    ALTER TABLE reports ADD COLUMN location_id {int64};
    """,
    jobs_sql.MIGRATION,
    schedules_sql.MIGRATION,
    # Tokens may expire (NULL: never).
    "ALTER TABLE tokens ADD COLUMN expires_at {float}",
]
