"""SQL written once for both backends: statements as data, run by each backend's executor.

An operation that needs more than one statement is a generator of :class:`Query`
objects: it yields a statement, receives its result and decides on the next one.
The backends only drive such generators (:func:`run_sqlite` inside a SQLite
transaction, :func:`run_postgres` inside an asyncpg one), so what an operation
does cannot drift apart between SQLite and PostgreSQL.

Statements are written in the dialect both share, with ``?`` placeholders
(numbered ``$n`` for PostgreSQL) and a few markers that each dialect renders:

* ``{for_update}`` locks the rows read and ``{skip_locked}`` also skips rows
  another transaction holds (PostgreSQL; SQLite's single writer needs no lock);
* ``instr(haystack, needle)`` is PostgreSQL's ``strpos``.

Table definitions (:func:`ddl`) name their column types by what they hold:
``{int64}``, ``{bool}``, ``{float}``, ``{blob}``, ``{serial_pk}`` (an increasing integer key
never reused), and end a clustered table with ``{without_rowid}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

SQLITE = "sqlite"
POSTGRES = "postgresql"


@dataclass(frozen=True)
class Query:
    sql: str
    params: Sequence[Any] = ()
    fetch: str = "all"  # all | one | value | count | many
    postgres_only: bool = False


#: An operation: yields queries, receives each one's result, returns the operation's.
Steps = Generator[Query, Any, Any]


def rows(sql: str, *params: Any) -> Query:
    """Every row, as tuples."""
    return Query(sql, params, "all")


def row(sql: str, *params: Any) -> Query:
    """The first row as a tuple, or None."""
    return Query(sql, params, "one")


def value(sql: str, *params: Any) -> Query:
    """The first column of the first row, or None."""
    return Query(sql, params, "value")


def count(sql: str, *params: Any) -> Query:
    """How many rows the statement changed."""
    return Query(sql, params, "count")


def many(sql: str, param_rows: Sequence[Sequence[Any]]) -> Query:
    """The statement once per parameter row."""
    return Query(sql, param_rows, "many")


def marks(values: Sequence[Any]) -> str:
    """``?, ?, ?``: one placeholder per value (``FALSE``-safe callers check emptiness)."""
    return ", ".join("?" * len(values))


def single(query: Query) -> Steps:
    """The one-statement operation."""
    return (yield query)


# -- table definitions ------------------------------------------------------------------

_TYPES = {
    SQLITE: {
        "int64": "INTEGER",
        "bool": "INTEGER",
        "float": "REAL",
        "blob": "BLOB",
        "serial_pk": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "without_rowid": " WITHOUT ROWID",
    },
    POSTGRES: {
        "int64": "BIGINT",
        "bool": "BOOLEAN",
        "float": "DOUBLE PRECISION",
        "blob": "BYTEA",
        "serial_pk": "BIGSERIAL PRIMARY KEY",
        "without_rowid": "",
    },
}


def ddl(script: str, dialect: str) -> str:
    """``script`` with its type markers rendered for ``dialect``."""
    return script.format_map(_TYPES[dialect])


# -- executors ----------------------------------------------------------------------------


def run_sqlite(conn: Any, steps: Steps) -> Any:
    """Drive ``steps`` on a sqlite3 connection (inside the caller's transaction)."""
    try:
        query = next(steps)
        while True:
            query = steps.send(_sqlite_execute(conn, query))
    except StopIteration as stop:
        return stop.value


def _sqlite_execute(conn: Any, query: Query) -> Any:
    if query.postgres_only:
        return None
    sql = query.sql.replace("{for_update}", "").replace("{skip_locked}", "")
    if query.fetch == "many":
        conn.executemany(sql, query.params)
        return None
    cursor = conn.execute(sql, tuple(query.params))
    if query.fetch == "all":
        return cursor.fetchall()
    if query.fetch == "one":
        return cursor.fetchone()
    if query.fetch == "value":
        found = cursor.fetchone()
        return found[0] if found else None
    return cursor.rowcount


_INSTR = re.compile(r"\binstr\(")


def postgres_sql(sql: str) -> str:
    """A statement as PostgreSQL reads it: ``$n`` placeholders, markers rendered."""
    sql = sql.replace("{for_update}", " FOR UPDATE").replace("{skip_locked}", " FOR UPDATE SKIP LOCKED")
    sql = _INSTR.sub("strpos(", sql)
    parts = sql.split("?")
    return "".join(part + (f"${n}" if n < len(parts) else "") for n, part in enumerate(parts, start=1))


async def run_postgres(conn: Any, steps: Steps) -> Any:
    """Drive ``steps`` on an asyncpg connection (inside the caller's transaction)."""
    try:
        query = next(steps)
        while True:
            query = steps.send(await _postgres_execute(conn, query))
    except StopIteration as stop:
        return stop.value


async def _postgres_execute(conn: Any, query: Query) -> Any:
    sql = postgres_sql(query.sql)
    if query.fetch == "many":
        await conn.executemany(sql, query.params)
        return None
    if query.fetch == "all":
        return [tuple(found) for found in await conn.fetch(sql, *query.params)]
    if query.fetch == "one":
        found = await conn.fetchrow(sql, *query.params)
        return tuple(found) if found is not None else None
    if query.fetch == "value":
        return await conn.fetchval(sql, *query.params)
    status = await conn.execute(sql, *query.params)
    return int(status.rsplit(" ", 1)[-1])


class SQLOperations:
    """Mixed into both storage classes: what the shared implementations run their steps with."""

    async def _run_steps(self, make: Callable[[], Steps], *, write: bool) -> Any:
        """Run the generator ``make()`` returns in one transaction (again from the start on retry).

        A read (``write`` False) sees one snapshot from its first statement to its last.
        """
        raise NotImplementedError
