"""SQLite storage: one WAL database file, one writer thread with group commit.

Every write is a job submitted to the writer thread. The thread takes all the
jobs that queued up while it was busy and runs them in one transaction, each
inside its own savepoint (so one failing job does not undo the others), then
commits once. With ``synchronous=FULL`` that one commit is one fsync for the
whole group: concurrent ingest requests share it. Reads use their own
connections on a small thread pool; WAL lets them run beside the writer.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import queue
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from reportd.storage import (
    Accepted,
    Claim,
    DeliveryFailure,
    InboxEntry,
    SchemaStatus,
    SpooledReport,
    Storage,
    StorageUnavailable,
    StoredReport,
    check_schema,
    schema,
)
from reportd.storage.jobs_sql import SQLJobStorage
from reportd.storage.rows import (
    NEWER_RUN_SET,
    NODE_COLUMNS,
    REPORT_COLUMNS,
    node_row,
    report_row,
)
from reportd.storage.schedules_sql import SQLScheduleStorage
from reportd.storage.sql import SQLITE, Steps, ddl, run_sqlite
from reportd.storage.store_sql import SQLStoreOperations

T = TypeVar("T")
MAX_GROUP = 512
#: Seconds a write error keeps /healthz unhealthy: a full disk lets some small writes
#: through, and their commits say nothing of the reports it refuses.
ERROR_MEMORY = 10.0
COMPRESSION_LEVEL = 1  # fast: the writer thread compresses every body it stores

MIGRATIONS: list[str] = [ddl(script, SQLITE) for script in schema.MIGRATIONS]


class SQLiteStorage(SQLJobStorage, SQLScheduleStorage, SQLStoreOperations, Storage):
    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "full",
        exclusive: bool = False,
        auto_migrate: bool = True,
    ):
        self.path = Path(path)
        self._synchronous = synchronous.upper()
        self._exclusive = exclusive
        self._auto_migrate = auto_migrate
        self._writer: _Writer | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._lock_fd: int | None = None

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._exclusive:
                self._lock_fd = _lock(self.path.with_name(self.path.name + ".lock"))
        except OSError as error:
            raise StorageUnavailable(f"cannot use {self.path.parent}: {error.strerror or error}") from None
        self._writer = _Writer(self.path, self._synchronous)
        self._writer.start()
        try:
            await self._write(lambda conn: _migrate(conn, apply=self._auto_migrate))
        except (OSError, sqlite3.Error, StorageUnavailable) as error:
            cause = self._writer.failure or error
            await self.close()
            raise StorageUnavailable(f"cannot open {self.path}: {cause}") from None
        except BaseException:
            await self.close()
            raise
        if self._exclusive:
            # The only daemon on this file: leases left by a crashed one are void.
            await self._write(lambda c: c.execute("UPDATE deliveries SET lease_until = NULL"))
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sqlite-read")

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._writer.stop)
            self._writer = None
        if self._readers is not None:
            self._readers.shutdown(wait=True)
            self._readers = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def schema_status(self) -> SchemaStatus:
        def read() -> SchemaStatus:
            if not self.path.exists():
                return SchemaStatus(0, len(MIGRATIONS))
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                return SchemaStatus(read_schema_version(conn), len(MIGRATIONS))
            finally:
                conn.close()

        return await asyncio.to_thread(read)

    async def upgrade(self, up_to: int | None = None) -> list[int]:
        def run() -> list[int]:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None)
            try:
                conn.execute("PRAGMA busy_timeout = 10000")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    applied = _migrate(conn, apply=True, up_to=up_to)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return applied
            finally:
                conn.close()

        return await asyncio.to_thread(run)

    def _write(self, job: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        assert self._writer is not None, "storage is not open"
        return self._writer.submit(job)

    async def health(self) -> str | None:
        writer = self._writer
        if writer is None:
            return "the storage is closed"
        if writer.failure is not None or not writer.is_alive():
            return f"the SQLite writer stopped: {writer.failure or 'unknown reason'}"
        if writer.last_error is not None and time.monotonic() - writer.last_error[1] < ERROR_MEMORY:
            return f"SQLite refuses writes: {writer.last_error[0]}"
        return None

    async def _run_steps(self, make: Callable[[], Steps], *, write: bool) -> Any:
        if write:  # in the writer's transaction: the only writer, so no locks are needed
            return await self._write(lambda conn: run_sqlite(conn, make()))
        return await self._read(lambda conn: _in_snapshot(conn, make))

    async def _read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        assert self._readers is not None, "storage is not open"
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._run_read, job)

    def _run_read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
            self._local.conn = conn
        return job(conn)

    # -- spool -----------------------------------------------------------------
    async def accept(self, entry: InboxEntry, processors: Sequence[str]) -> Accepted:
        envelope = orjson.dumps(entry.envelope)

        def job(conn: sqlite3.Connection) -> Accepted:
            body = zlib.compress(entry.body, COMPRESSION_LEVEL) if processors else None
            row = conn.execute(
                "INSERT INTO inbox (idempotency_key, certname, format, received_at, envelope, body)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
                (
                    entry.idempotency_key,
                    entry.certname,
                    entry.format,
                    entry.received_at,
                    envelope,
                    body,
                ),
            ).fetchone()
            if row is None:
                (existing,) = conn.execute(
                    "SELECT id FROM inbox WHERE idempotency_key = ?", (entry.idempotency_key,)
                ).fetchone()
                return Accepted(existing, duplicate=True)
            conn.executemany(
                "INSERT INTO deliveries (processor, report_id, next_attempt_at) VALUES (?, ?, ?)",
                [(name, row[0], entry.received_at) for name in processors],
            )
            return Accepted(row[0], duplicate=False)

        return await self._write(job)

    async def claim(self, processor: str, limit: int, now: float, lease: float) -> list[Claim]:
        def job(conn: sqlite3.Connection) -> list[Claim]:
            rows = conn.execute(
                "UPDATE deliveries SET lease_until = ? WHERE processor = ? AND report_id IN ("
                " SELECT report_id FROM deliveries WHERE processor = ? AND state = 'pending'"
                " AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until < ?)"
                " ORDER BY next_attempt_at, report_id LIMIT ?) RETURNING report_id, attempts",
                (now + lease, processor, processor, now, now, limit),
            ).fetchall()
            return [Claim(report_id, attempts) for report_id, attempts in sorted(rows)]

        return await self._write(job)

    async def give_back_leases(self, processor: str) -> None:
        # The only daemon on this file (it holds the lock): its leases are all of them.
        await self._write(
            lambda c: c.execute(
                "UPDATE deliveries SET lease_until = NULL WHERE processor = ? AND lease_until IS NOT NULL",
                (processor,),
            )
        )

    async def load_spooled(self, report_ids: Sequence[int]) -> list[SpooledReport]:
        def job(conn: sqlite3.Connection) -> list[SpooledReport]:
            rows = conn.execute(
                f"SELECT id, envelope, body FROM inbox WHERE id IN ({_marks(report_ids)})"
                " AND body IS NOT NULL",
                list(report_ids),
            ).fetchall()
            return [SpooledReport(i, orjson.loads(e), zlib.decompress(b)) for i, e, b in rows]

        return await self._read(job)

    async def finish(self, processor: str, report_ids: Sequence[int]) -> None:
        if not report_ids:
            return
        ids = list(report_ids)

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"DELETE FROM deliveries WHERE processor = ? AND report_id IN ({_marks(ids)})",
                [processor, *ids],
            )
            conn.execute(
                f"UPDATE inbox SET body = NULL WHERE id IN ({_marks(ids)}) AND NOT EXISTS"
                " (SELECT 1 FROM deliveries d WHERE d.report_id = inbox.id)"
                " AND NOT EXISTS (SELECT 1 FROM reports r WHERE r.id = inbox.id)",
                ids,
            )

        await self._write(job)

    async def fail(self, processor: str, failures: Sequence[DeliveryFailure]) -> None:
        if not failures:
            return

        def job(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE deliveries SET attempts = ?, last_error = ?, next_attempt_at = ?,"
                " state = ?, lease_until = NULL WHERE processor = ? AND report_id = ?",
                [
                    (
                        f.attempts,
                        f.error[:2000],
                        f.next_attempt_at,
                        "dead" if f.dead else "pending",
                        processor,
                        f.report_id,
                    )
                    for f in failures
                ],
            )

        await self._write(job)

    # -- store -----------------------------------------------------------------
    async def store_reports(self, reports: Sequence[StoredReport]) -> None:
        rows = [report_row(r) for r in reports]

        def job(conn: sqlite3.Connection) -> None:
            # The body stays in the spool (inbox) while the store holds the report: one copy.
            conn.executemany(
                f"INSERT INTO reports ({REPORT_COLUMNS})"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO NOTHING",
                rows,
            )
            conn.executemany(
                f"INSERT INTO nodes ({NODE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)"
                " ON CONFLICT (certname) DO UPDATE SET"
                f" {NEWER_RUN_SET}, last_received_at = max(nodes.last_received_at,"
                " excluded.last_received_at)",
                [node_row(row) for row in rows],
            )

        await self._write(job)


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


def read_schema_version(conn: sqlite3.Connection) -> int:
    exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    if conn.execute(exists).fetchone():
        return conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
    return 0


def _migrate(conn: sqlite3.Connection, *, apply: bool, up_to: int | None = None) -> list[int]:
    """Bring the schema to ``up_to`` (default: the latest), inside the caller's transaction.

    Without ``apply`` only check: :class:`SchemaError` unless it is current already.
    """
    current = read_schema_version(conn)
    check_schema(SchemaStatus(current, len(MIGRATIONS)), migrating=apply)
    target = len(MIGRATIONS) if up_to is None else up_to
    if current >= target:
        return []
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    applied = []
    for version, script in enumerate(MIGRATIONS[current:target], start=current + 1):
        for statement in filter(str.strip, script.split(";")):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        applied.append(version)
    return applied


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"another reportd is using {path.with_suffix('')}") from None
    return fd


def _in_snapshot(conn: sqlite3.Connection, make: Callable[[], Steps]) -> Any:
    """Run the steps in a read transaction of a reader connection: one snapshot."""
    conn.execute("BEGIN")
    try:
        return run_sqlite(conn, make())
    finally:
        conn.execute("COMMIT")


class _Writer(threading.Thread):
    """The single writing connection; see the module docstring.

    If the thread cannot open its connection or fails outside a job, it
    records why (:attr:`failure`), fails every job waiting and every job
    submitted later, and ends: callers get an error, never a wait forever.
    """

    def __init__(self, path: Path, synchronous: str) -> None:
        super().__init__(name="sqlite-writer", daemon=True)
        self._path = path
        self._synchronous = synchronous
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.failure: BaseException | None = None
        #: The last error SQLite gave a write (a full disk, say) and when (time.monotonic()).
        self.last_error: tuple[str, float] | None = None

    def submit(self, job: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self.failure is not None:
            future.set_exception(StorageUnavailable(f"the SQLite writer stopped: {self.failure}"))
            return future
        self._jobs.put((job, future, loop))
        if self.failure is not None:  # it failed while this job was queued
            self._fail_waiting()
        return future

    def stop(self) -> None:
        self._jobs.put(None)
        self.join()

    def run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {self._synchronous}")
                conn.execute("PRAGMA busy_timeout = 10000")
                self._serve(conn)
            finally:
                conn.close()
        except BaseException as error:
            self.failure = error
        else:
            self.failure = StorageUnavailable("the storage is closed")
        self._fail_waiting()

    def _serve(self, conn: sqlite3.Connection) -> None:
        stopping = False
        while not stopping:
            group = [self._jobs.get()]
            while len(group) < MAX_GROUP:
                try:
                    group.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            if None in group:
                stopping = True
                group = [item for item in group if item is not None]
            if group:
                self._run_group(conn, group)

    def _fail_waiting(self) -> None:
        error = StorageUnavailable(f"the SQLite writer stopped: {self.failure}")
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                _, future, loop = item
                by_loop.setdefault(loop, []).append((future, None, error))
        for loop, items in by_loop.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(_settle, items)

    def _run_group(self, conn: sqlite3.Connection, group: list) -> None:
        outcomes: list[tuple[Any, Any, Any, BaseException | None]] = []
        refused: str | None = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job, future, loop in group:
                conn.execute("SAVEPOINT job")
                try:
                    outcomes.append((future, loop, job(conn), None))
                    conn.execute("RELEASE job")
                except Exception as error:  # the job's own failure, reported to its caller
                    if isinstance(error, sqlite3.OperationalError):
                        refused = str(error)
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((future, loop, None, error))
            conn.execute("COMMIT")
        except Exception as commit_error:  # the commit itself failed: nothing in the group happened
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            refused = str(commit_error)
            outcomes = [(future, loop, None, commit_error) for _, future, loop in group]
        if refused is not None:
            self.last_error = (refused, time.monotonic())
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for future, loop, result, failure in outcomes:
            by_loop.setdefault(loop, []).append((future, result, failure))
        for loop, items in by_loop.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(_settle, items)


def _settle(items: list) -> None:
    for future, result, error in items:
        if future.done():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
