"""What the storage tests share: a fixed clock origin, PostgreSQL storages in throwaway schemas, jobs made to order."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg

from reportd.storage.jobs import NewJob, NodeOutcome
from reportd.storage.postgres import PostgresStorage, quote_ident

T0 = 1_700_000_000.0


async def drop_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    finally:
        await conn.close()


def new_job(
    *nodes: str, timeout: float | None = 60.0, environment: str = "production", concurrency: int | None = None
) -> NewJob:
    return NewJob(
        type="deploy",
        owner_id="token:ops",
        owner_login="ops",
        environment=environment,
        options={"scope": {"nodes": list(nodes)}, "concurrency": concurrency},
        description="test",
        timeout=timeout,
        nodes=list(nodes),
    )


def outcome(job_id: int, certname: str, report_id: int, *, state: str = "finished", start: float = T0, **kw):
    values = {
        "job_id": job_id,
        "certname": certname,
        "report_id": report_id,
        "transaction_uuid": f"uuid-{report_id}",
        "state": state,
        "environment": "production",
        "start_time": start,
        "finish_time": start + 5,
        "metrics": {"total": 3},
        "message": f"{state} {certname}",
        "result": {"status": "changed"},
        "events": [{"status": "success", "resource_title": "x"}],
        "received_at": start + 6,
    }
    values.update(kw)
    return NodeOutcome(**values)


async def deployed(storage, *nodes: str, seconds: float | None = 60.0) -> int:
    job_id = await storage.create_job(new_job(*nodes, timeout=seconds), T0)
    assert await storage.start_job(job_id, T0 + 1)
    return job_id


@contextlib.asynccontextmanager
async def postgres_in_own_schema(dsn: str) -> AsyncIterator[PostgresStorage]:
    """An open PostgreSQL storage in a schema of its own on ``dsn``'s server, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex}"
    backend = PostgresStorage(dsn, schema=schema)
    try:
        await backend.open()
        try:
            yield backend
        finally:
            await backend.close()
    finally:
        await drop_schema(dsn, schema)
