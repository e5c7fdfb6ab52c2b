"""PostgreSQL for tests: the server named by ``REPORTD_TEST_PG_DSN``, a fresh database per test.

Without the variable the tests that need it fail (they do not skip): CI sets it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

PG_DSN_VARIABLE = "REPORTD_TEST_PG_DSN"


def pg_dsn() -> str:
    dsn = os.environ.get(PG_DSN_VARIABLE)
    if not dsn:
        pytest.fail(
            f"{PG_DSN_VARIABLE} is not set: this test needs a PostgreSQL server, e.g."
            f" {PG_DSN_VARIABLE}=postgresql://postgres@127.0.0.1:5432/test (CI always sets it)",
            pytrace=False,
        )
    return dsn


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """The URL of a new, empty database on the test server; dropped afterwards."""
    dsn = pg_dsn()
    name = f"reportd_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield dsn.rsplit("/", 1)[0] + "/" + name
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
