"""What ``reportd check-config`` verifies beyond the file itself: everything ``serve``
would otherwise fail on at start (the data directory, the database and its schema,
the TLS files), each problem one line naming what, where and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import ssl
import tempfile
from pathlib import Path

from reportd.config import Config, redacted_url
from reportd.settings import ConfigError
from reportd.storage import SchemaError, SchemaStatus, check_schema, open_storage, unavailable_errors

CONNECT_TIMEOUT = 10.0


async def storage_check(config: Config) -> tuple[list[str], str | None]:
    """Problems with the database, and a line on its schema when it could be read."""
    where = f"{config.source}: [reportd] database"
    url = config.database_url
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        problem = _writable_directory(path.parent)
        if problem is not None:
            key = "database" if config.database else "data_dir"
            return [f"{config.source}: [reportd] {key}: {path.parent} {problem}"], None
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            status = await open_storage(url).schema_status()
    except TimeoutError:
        return [f"{where}: {redacted_url(url)} does not answer within {CONNECT_TIMEOUT:.0f}s"], None
    except _unreachable() as error:
        return [f"{where}: cannot open {redacted_url(url)}: {describe(error)}"], None
    try:
        check_schema(status, migrating=config.auto_migrate)
    except SchemaError as error:
        return [f"{where}: {error}"], None
    return [], _schema_line(status, config.auto_migrate)


def _unreachable() -> tuple[type[Exception], ...]:
    """What opening a database raises when it cannot be reached or used."""
    return (*unavailable_errors(), ssl.SSLError)


def _schema_line(status: SchemaStatus, auto_migrate: bool) -> str:
    if not status.pending:
        return f"schema version {status.current}, up to date"
    when = "at start (auto_migrate)" if auto_migrate else "by `reportd db upgrade`"
    return f"schema version {status.current}, {len(status.pending)} migrations to apply {when}"


def _writable_directory(directory: Path) -> str | None:
    """Why reportd could not keep its files in ``directory`` (None: it can).

    Tried, not guessed from permission bits (root passes every access() check,
    even on a read-only file system): a file is made and removed in the
    directory, or in the nearest existing parent when the directory is yet to
    be created.
    """
    existing = directory
    while not existing.exists():
        if existing.parent == existing:
            return "cannot be created"
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot be created: {existing} is not a directory"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".reportd-check-"):
            pass
    except OSError as error:
        verb = "is not writable" if existing == directory else f"cannot be created in {existing}"
        return f"{verb}: {error.strerror or error}"
    return None


def tls_check(config: Config) -> list[str]:
    """The certificate, its key, the CA and the CRL load, and the key matches the certificate."""
    if not config.tls_enabled:
        return []
    from reportd.tls import ServerTLS

    try:
        ServerTLS(config)
    except ConfigError as error:
        return error.problems
    return []


def describe(error: BaseException) -> str:
    """An operational error as one readable clause (no class paths, no traceback)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror + (f": {error.filename}" if error.filename else "")
    if isinstance(error, sqlite3.Error):
        return str(error)
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    name = type(error).__name__
    if type(error).__module__.startswith("reportd") and text:  # ours say it all
        return text
    with contextlib.suppress(ImportError):
        import asyncpg

        if isinstance(error, asyncpg.PostgresError | asyncpg.InterfaceError):
            return text or name
    return f"{name}: {text}" if text else name
