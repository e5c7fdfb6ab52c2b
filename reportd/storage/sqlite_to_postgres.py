"""Copy a SQLite store into PostgreSQL (``reportd db migrate-from-sqlite``).

The copy is generic: every table of the SQLite file (but its schema bookkeeping)
is copied into the PostgreSQL table of the same name, column by column, each
value converted to the PostgreSQL column's type (SQLite keeps booleans as
integers and has no BYTEA, say). So tables added by later migrations (jobs,
schedules, ...) are copied without this module knowing them.

Steps: the target is migrated to the *source's* schema version, so both have the
same tables; every table is copied with COPY in batches, inside one transaction
(a failed copy leaves the target as it was); the BIGSERIAL sequences are moved
past the copied ids (and past SQLite's AUTOINCREMENT high-water marks, so an id
SQLite had handed out is never handed out again); row counts are compared; the
transaction commits; then the remaining migrations bring the target up to date.

The source must not change during the copy: the daemon that writes it is stopped
(its lock file is checked).
"""

from __future__ import annotations

import datetime
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from reportd.storage import SchemaStatus, check_schema
from reportd.storage import sqlite as sqlite_backend
from reportd.storage.postgres import PostgresStorage, quote_ident

log = structlog.get_logger("reportd.storage.sqlite_to_postgres")

BATCH_ROWS = 5000
BATCH_BYTES = 32 * 1024 * 1024  # text and blob bytes per COPY, at most (about)
FETCH_ROWS = 500
# SQLite's own tables, and the schema version (written by the migrations on both sides).
SKIPPED_TABLES = frozenset({"schema_version", "sqlite_sequence"})


class MigrationError(RuntimeError):
    """The copy cannot be made (or did not come out identical); nothing was committed."""


@dataclass(frozen=True)
class CopiedTable:
    name: str
    rows: int


@dataclass(frozen=True)
class CopyResult:
    schema_version: int
    tables: list[CopiedTable]
    upgraded: list[int]  # the migrations applied to the target after the copy


def _to_bool(value: Any) -> bool:
    return bool(int(value)) if isinstance(value, (int, float, str)) else bool(value)


def _to_bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _to_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _to_timestamp(value: Any) -> datetime.datetime:
    if isinstance(value, (int, float)):
        return datetime.datetime.fromtimestamp(value, datetime.UTC)
    moment = datetime.datetime.fromisoformat(_to_text(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


# PostgreSQL data types (information_schema's names) to the conversion of a SQLite value.
CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "boolean": _to_bool,
    "bytea": _to_bytes,
    "smallint": int,
    "integer": int,
    "bigint": int,
    "double precision": float,
    "real": float,
    "numeric": float,
    "text": _to_text,
    "character varying": _to_text,
    "json": _to_text,
    "jsonb": _to_text,
    "timestamp with time zone": _to_timestamp,
    "timestamp without time zone": lambda v: _to_timestamp(v).replace(tzinfo=None),
}


def _converter(table: str, column: str, data_type: str) -> Callable[[Any], Any]:
    try:
        convert = CONVERTERS[data_type]
    except KeyError:
        raise MigrationError(f"{table}.{column}: no conversion to PostgreSQL type {data_type}") from None

    def nullable(value: Any) -> Any:
        return None if value is None else convert(value)

    return nullable


def _check_not_in_use(path: Path) -> None:
    """Refuse while a daemon holds the SQLite store's lock file (it could still write)."""
    lock_path = path.with_name(path.name + ".lock")
    if not lock_path.exists():
        return
    fd = os.open(lock_path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MigrationError(f"a reportd is running on {path}: stop it first") from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_source(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise MigrationError(f"{path}: no such file")
    _check_not_in_use(path)
    # Read-only, but not immutable: a WAL left by a stopped daemon is read, not lost.
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as error:
        conn.close()
        raise MigrationError(f"{path}: not a SQLite database ({error})") from None
    return conn


def _source_tables(conn: sqlite3.Connection) -> dict[str, list[str]]:
    names = [
        row[0]
        for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        if row[0] not in SKIPPED_TABLES and not row[0].startswith("sqlite_")
    ]
    return {
        name: [row[1] for row in conn.execute(f"PRAGMA table_info({quote_ident(name)})")] for name in names
    }


async def _target_columns(conn: asyncpg.Connection) -> dict[str, dict[str, str]]:
    rows = await conn.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
    )
    tables: dict[str, dict[str, str]] = {}
    for table, column, data_type in rows:
        tables.setdefault(table, {})[column] = data_type
    return tables


async def _dependency_order(conn: asyncpg.Connection, tables: Iterable[str]) -> list[str]:
    """``tables`` with every table after the ones its foreign keys reference."""
    edges = await conn.fetch(
        "SELECT c.relname, r.relname FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
        " JOIN pg_class r ON r.oid = k.confrelid"
        " WHERE k.contype = 'f' AND k.connamespace = current_schema()::regnamespace"
    )
    references: dict[str, set[str]] = {}
    for table, referenced in edges:
        if table != referenced:
            references.setdefault(table, set()).add(referenced)
    ordered: list[str] = []
    remaining = sorted(tables)
    while remaining:
        ready = [t for t in remaining if not (references.get(t, set()) & set(remaining))]
        if not ready:
            raise MigrationError(f"circular foreign keys between {', '.join(remaining)}")
        ordered.extend(ready)
        remaining = [t for t in remaining if t not in ready]
    return ordered


async def _reset_sequences(conn: asyncpg.Connection, high_water: dict[str, int]) -> None:
    rows = await conn.fetch(
        "SELECT table_name, column_name, pg_get_serial_sequence(quote_ident(table_schema) || '.'"
        " || quote_ident(table_name), column_name) FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND column_default LIKE 'nextval(%'"
    )
    for table, column, sequence in rows:
        if sequence is None:
            continue
        copied = await conn.fetchval(f"SELECT max({quote_ident(column)}) FROM {quote_ident(table)}")
        last = max(copied or 0, high_water.get(table, 0))
        # is_called false: the next value is 1 on an empty table, as on a fresh one.
        await conn.execute("SELECT setval($1, $2, $3)", sequence, max(last, 1), last > 0)


async def copy_sqlite_to_postgres(
    sqlite_path: str | Path,
    target: PostgresStorage,
    *,
    replace: bool = False,
    batch_rows: int = BATCH_ROWS,
    progress: Callable[[str, int], None] | None = None,
) -> CopyResult:
    """Copy the store at ``sqlite_path`` into ``target`` (not opened); see the module docstring.

    A target that holds rows already is refused, or emptied first with ``replace``.
    """
    path = Path(sqlite_path)
    source = _open_source(path)
    try:
        source_version = sqlite_backend.read_schema_version(source)
        if source_version == 0:
            raise MigrationError(f"{path}: not a reportd store (no schema version)")
        check_schema(SchemaStatus(source_version, len(sqlite_backend.MIGRATIONS)), migrating=True)
        target_status = await target.schema_status()
        if target_status.current > source_version:
            raise MigrationError(
                f"the PostgreSQL schema is version {target_status.current}, newer than the SQLite"
                f" store's ({source_version}): upgrade the SQLite store first (`reportd db upgrade`"
                " with its configuration), then copy"
            )
        check_schema(target_status, migrating=True)
        await target.upgrade(up_to=source_version)
        source_tables = _source_tables(source)
        high_water = dict(source.execute("SELECT name, seq FROM sqlite_sequence").fetchall()) if (
            source.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone()
        ) else {}  # fmt: skip
        conn = await target.connect()
        try:
            async with conn.transaction():
                copied = await _copy_tables(conn, source, source_tables, replace, batch_rows, progress)
                await _reset_sequences(conn, high_water)
                for table in copied:
                    count = f"SELECT count(*) FROM {quote_ident(table.name)}"
                    in_target = await conn.fetchval(count)
                    (in_source,) = source.execute(count).fetchone()
                    if not in_target == in_source == table.rows:
                        raise MigrationError(
                            f"{table.name}: {in_source} rows in SQLite, {table.rows} copied,"
                            f" {in_target} in PostgreSQL; nothing was committed"
                        )
        finally:
            await conn.close()
    finally:
        source.close()
    upgraded = await target.upgrade()
    log.info(
        "sqlite_copied_to_postgres",
        source=str(path),
        schema_version=source_version,
        rows={t.name: t.rows for t in copied},
        upgraded=upgraded,
    )
    return CopyResult(source_version, copied, upgraded)


async def _copy_tables(
    conn: asyncpg.Connection,
    source: sqlite3.Connection,
    source_tables: dict[str, list[str]],
    replace: bool,
    batch_rows: int,
    progress: Callable[[str, int], None] | None,
) -> list[CopiedTable]:
    target_tables = await _target_columns(conn)
    missing = sorted(set(source_tables) - set(target_tables))
    if missing:
        raise MigrationError(f"tables in the SQLite store but not in PostgreSQL: {', '.join(missing)}")
    order = await _dependency_order(conn, source_tables)
    nonempty = [t for t in order if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {quote_ident(t)})")]
    if nonempty and not replace:
        raise MigrationError(
            f"the PostgreSQL database holds data already ({', '.join(nonempty)}):"
            " give --replace to empty it first, or name another database"
        )
    if nonempty:
        await conn.execute(f"TRUNCATE {', '.join(quote_ident(t) for t in order)}")
    copied = []
    for table in order:
        columns = source_tables[table]
        target_types = target_tables[table]
        unknown = [c for c in columns if c not in target_types]
        if unknown:
            raise MigrationError(f"{table}: columns not in PostgreSQL: {', '.join(unknown)}")
        converters = [_converter(table, c, target_types[c]) for c in columns]
        select = f"SELECT {', '.join(quote_ident(c) for c in columns)} FROM {quote_ident(table)}"
        cursor = source.execute(select)
        rows = 0
        records: list[tuple] = []
        size = 0
        while True:
            fetched = cursor.fetchmany(min(FETCH_ROWS, batch_rows))
            for row in fetched:
                records.append(tuple(convert(v) for convert, v in zip(converters, row, strict=True)))
                size += sum(len(v) for v in row if isinstance(v, (bytes, str)))
            # Bounded by rows and by bytes: bodies can be megabytes each.
            if records and (not fetched or len(records) >= batch_rows or size >= BATCH_BYTES):
                await conn.copy_records_to_table(table, records=records, columns=columns)
                rows += len(records)
                records, size = [], 0
                if progress is not None:
                    progress(table, rows)
            if not fetched:
                break
        copied.append(CopiedTable(table, rows))
    return copied
