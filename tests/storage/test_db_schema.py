"""Schema migrations as an operator runs them: ``reportd db status|upgrade`` and ``auto_migrate``.

Every test runs on SQLite and on PostgreSQL (a fresh database on the test server, tests/support/pg.py).
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys

import asyncpg
import pytest
from click.testing import CliRunner, Result

from reportd.auth import TokenRecord
from reportd.cli import cli
from reportd.storage import SchemaError, open_storage, postgres, sqlite
from tests.support import ini_for
from tests.support.pg import fresh_database

LATEST = len(sqlite.MIGRATIONS)


def test_both_backends_have_the_same_versions():
    assert len(postgres.MIGRATIONS) == LATEST >= 5  # 5: tokens.expires_at


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'reportd.sqlite3'}"
        return
    async with fresh_database(request.getfixturevalue("pg_dsn")) as url:
        yield url


def run(ini_path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(ini_path), *args])


def write_ini(tmp_path, database_url: str, extra: str = ""):
    path = tmp_path / "reportd.ini"
    path.write_text(ini_for(tmp_path, f"database = {database_url}\n{extra}"))
    return path


def versions(database_url: str) -> list[int]:
    """The schema_version rows, read behind reportd's back."""
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            return [row[0] for row in conn.execute("SELECT version FROM schema_version ORDER BY version")]

    async def read() -> list[int]:
        conn = await asyncpg.connect(database_url)
        try:
            return [row[0] for row in await conn.fetch("SELECT version FROM schema_version ORDER BY version")]
        finally:
            await conn.close()

    return asyncio.run(read())


def add_version(database_url: str, version: int) -> None:
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        return

    async def write() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
        finally:
            await conn.close()

    asyncio.run(write())


def test_db_status_and_upgrade(database_url, tmp_path):
    ini = write_ini(tmp_path, database_url, "auto_migrate = false\n")
    status = run(ini, "db", "status")
    assert status.exit_code == 0, status.output
    assert f"schema version: 0 (this reportd: {LATEST})" in status.output
    assert f"pending migrations: {', '.join(map(str, range(1, LATEST + 1)))}" in status.output

    upgrade = run(ini, "db", "upgrade")
    assert upgrade.exit_code == 0, upgrade.output
    assert (
        f"schema version 0 -> {LATEST}: applied {', '.join(map(str, range(1, LATEST + 1)))}" in upgrade.output
    )
    assert versions(database_url) == list(range(1, LATEST + 1))

    again = run(ini, "db", "upgrade")
    assert again.exit_code == 0 and f"schema version {LATEST}: up to date" in again.output
    assert versions(database_url) == list(range(1, LATEST + 1))
    status = run(ini, "db", "status")
    assert status.exit_code == 0 and "up to date" in status.output and "pending" not in status.output
    # with the schema current, auto_migrate = false is no obstacle
    assert run(ini, "queue").exit_code == 0


async def test_upgrade_applies_only_the_pending_migrations(database_url):
    storage = open_storage(database_url)
    assert await storage.upgrade(up_to=2) == [1, 2]
    status = await storage.schema_status()
    assert (status.current, status.latest, status.pending) == (2, LATEST, list(range(3, LATEST + 1)))
    assert await storage.upgrade() == list(range(3, LATEST + 1))
    assert (await storage.schema_status()).pending == []


async def test_tokens_made_before_expiry_existed_never_expire(database_url):
    storage = open_storage(database_url)
    assert await storage.upgrade(up_to=4) == [1, 2, 3, 4]
    insert = "INSERT INTO tokens (name, token_hash, permissions, created_at) VALUES ('old', 'hash-old', 'admin', 1)"
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            conn.execute(insert)
    else:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(insert)
        finally:
            await conn.close()
    assert await storage.upgrade() == list(range(5, LATEST + 1))
    await storage.open()
    try:
        assert await storage.find_token("hash-old") == TokenRecord("old", frozenset({"admin"}), None)
        assert [t["expires_at"] for t in await storage.list_tokens()] == [None]
    finally:
        await storage.close()


async def test_concurrent_upgrades_apply_each_migration_once(database_url):
    results = await asyncio.gather(*(open_storage(database_url).upgrade() for _ in range(3)))
    assert sorted(v for applied in results for v in applied) == list(range(1, LATEST + 1))
    assert await asyncio.to_thread(versions, database_url) == list(range(1, LATEST + 1))


async def test_without_auto_migrate_an_old_schema_is_refused_and_left_alone(database_url):
    await open_storage(database_url).upgrade(up_to=2)
    storage = open_storage(database_url, auto_migrate=False)
    with pytest.raises(
        SchemaError, match=r"version 2, this reportd needs version \d+: run `reportd db upgrade`"
    ):
        await storage.open()
    assert await asyncio.to_thread(versions, database_url) == [1, 2]
    # the default migrates, and the data of the old version stays
    storage = open_storage(database_url)
    await storage.open()
    try:
        await storage.create_token("ci", "hash", ["view_reports"], 1.0)
    finally:
        await storage.close()
    assert await asyncio.to_thread(versions, database_url) == list(range(1, LATEST + 1))


def test_serve_without_auto_migrate_refuses_a_fresh_database(database_url, tmp_path):
    ini = write_ini(tmp_path, database_url, "auto_migrate = false\n")
    result = subprocess.run(
        [sys.executable, "-m", "reportd", "--config", str(ini), "serve", "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Error: the database schema has not been created" in result.stderr
    assert "run `reportd db upgrade`" in result.stderr
    assert "listening" not in result.stdout


async def test_a_newer_schema_is_always_refused(database_url, tmp_path):
    await open_storage(database_url).upgrade()
    await asyncio.to_thread(add_version, database_url, LATEST + 1)
    for auto_migrate in (True, False):
        storage = open_storage(database_url, auto_migrate=auto_migrate)
        with pytest.raises(SchemaError, match=f"version {LATEST + 1}, newer than this reportd knows"):
            await storage.open()
    with pytest.raises(SchemaError, match="newer than this reportd knows"):
        await open_storage(database_url).upgrade()
    ini = write_ini(tmp_path, database_url)
    for args in (("db", "upgrade"), ("db", "status"), ("reports",)):
        result = await asyncio.to_thread(run, ini, *args)
        assert result.exit_code == 1, (args, result.output)
        assert "newer than this reportd" in result.output
    assert await asyncio.to_thread(versions, database_url) == [*range(1, LATEST + 1), LATEST + 1]


async def test_the_database_password_never_reaches_the_log_or_output(daemon_factory, tmp_path, pg_dsn):
    async with fresh_database(pg_dsn) as url:
        # trust authentication here: the server never asks for the password, so any one connects
        scheme, rest = url.split("://", 1)
        user, host_and_db = rest.split("@", 1)
        with_password = f"{scheme}://{user}:pw-in-netloc@{host_and_db}"
        daemon = daemon_factory(ini_for(tmp_path, f"database = {with_password}\n")).start()
        assert daemon.stop() == 0
        log = daemon.log_path.read_text()
        assert "pw-in-netloc" not in log
        (listening,) = [line for line in log.splitlines() if '"event": "listening"' in line]
        assert f'"database": "{scheme}://{user}:***@{host_and_db}"' in listening

        as_parameter = f"{url}?password=pw-as-parameter&application_name=reportd"
        status = await asyncio.to_thread(run, write_ini(tmp_path, as_parameter), "db", "status")
        assert status.exit_code == 0, status.output
        assert "pw-as-parameter" not in status.output
        assert f"database: {url}?password=***&application_name=reportd\n" in status.output
