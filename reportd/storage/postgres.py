"""PostgreSQL storage: asyncpg with a connection pool, group commit for ``accept``.

The tables and their meaning are those of :mod:`reportd.storage.sqlite`; times
are UNIX seconds stored as ``DOUBLE PRECISION``, envelopes and summaries are
stored as the same orjson bytes (``BYTEA``) and bodies zlib-compressed.

``accept`` calls that arrive together share one transaction: a batching task
collects the entries queued while the previous batch committed (waiting about
a millisecond for more when there is only one), compresses their bodies on a
thread of its own (zlib releases the GIL, so the event loop goes on parsing the
next requests meanwhile, as SQLite's writer thread compresses beside it),
inserts them with one ``unnest`` statement per table and resolves every caller
after the commit. A batch that fails is retried entry by entry so one bad entry
fails alone.

Deliveries are claimed with ``FOR UPDATE SKIP LOCKED`` and a lease, so
concurrent claimers (tasks or daemons) get disjoint sets. At close an instance
gives back the leases of deliveries it did not finish (a stop cut them short), so
the other instances take them over at once; a crashed instance's leases run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import orjson
import structlog

from reportd.config import redacted_url
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
from reportd.storage.sql import POSTGRES, Steps, ddl, run_postgres
from reportd.storage.store_sql import SQLStoreOperations

log = structlog.get_logger("reportd.storage.postgres")

MAX_GROUP = 512
GROUP_LINGER = 0.001  # seconds a lone accept waits for company before committing
COMPRESSION_LEVEL = 1  # as in sqlite.py
HEALTH_INTERVAL = 2.0  # seconds a health verdict is reused
HEALTH_TIMEOUT = 1.0
DEADLOCK_RETRIES = 5
_MIGRATION_LOCK = 0x7265706F  # advisory lock key ("repo"): one migrator at a time

# Version N is MIGRATIONS[N - 1], numbered like sqlite.py's list.
MIGRATIONS: list[str] = [ddl(script, POSTGRES) for script in schema.MIGRATIONS]


# For the rest of the transaction only; see finish.
_NO_FLUSH_WAIT = "set_config('synchronous_commit', 'off', true)"
# The types of REPORT_COLUMNS and NODE_COLUMNS, in order, for unnest.
_REPORT_TYPES = (
    "bigint", "text", "text", "text", "text", "boolean", "text", "text", "text", "text", "text",
    "float8", "float8", "float8", "float8", "bytea", "text", "bigint", "bigint",
)  # fmt: skip
_NODE_TYPES = ("text", "text", "text", "text", "bigint", "float8", "float8", "bytea")


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    """A string constant (standard_conforming_strings, on since PostgreSQL 9.1)."""
    if "\x00" in text:
        raise ValueError("PostgreSQL text cannot hold NUL")
    return "'" + text.replace("'", "''") + "'"


class _Pending:
    __slots__ = ("body", "entry", "envelope", "future", "processors")

    def __init__(self, entry: InboxEntry, processors: Sequence[str], envelope: bytes):
        self.entry = entry
        self.processors = list(processors)
        self.envelope = envelope
        self.body: bytes | None = None  # compressed by the batcher; none without processors
        self.future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()


class PostgresStorage(SQLJobStorage, SQLScheduleStorage, SQLStoreOperations, Storage):
    def __init__(self, dsn: str, *, schema: str | None = None, auto_migrate: bool = True):
        self.dsn = dsn
        self.schema = schema
        self._auto_migrate = auto_migrate
        self._pool: asyncpg.Pool | None = None
        self._queue: asyncio.Queue[_Pending | None] | None = None
        self._batcher: asyncio.Task[None] | None = None
        self._compressor: ThreadPoolExecutor | None = None
        # Deliveries this instance leased and has not finished or failed yet, with the
        # lease's end: what it gives back at close (a batch cut short by the stop).
        self._leases: dict[tuple[str, int], float] = {}
        self._health: tuple[float, str | None] | None = None
        self._unanswered_claims: set[tuple[str, float]] = set()

    async def _ensure_schema(self) -> dict[str, str]:
        """The server settings of every connection (the search path of ``schema``)."""
        if self.schema is None:
            return {}
        conn = await asyncpg.connect(self.dsn)
        try:
            # Two openers racing on a missing schema: the loser sees it exist.
            with contextlib.suppress(asyncpg.UniqueViolationError, asyncpg.DuplicateSchemaError):
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.schema)}")
        finally:
            await conn.close()
        return {"search_path": quote_ident(self.schema)}

    async def connect(self) -> asyncpg.Connection:
        """One connection outside the pool (migrations, bulk copies), on this storage's schema."""
        async with self._reachable():
            return await asyncpg.connect(self.dsn, server_settings=await self._ensure_schema())

    @contextlib.asynccontextmanager
    async def _reachable(self) -> AsyncIterator[None]:
        """Connecting: what goes wrong is said with the server it went wrong with."""
        try:
            yield
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise StorageUnavailable(
                f"cannot connect to PostgreSQL ({redacted_url(self.dsn)}): {_clause(error)}"
            ) from error

    async def schema_status(self) -> SchemaStatus:
        conn = await self.connect()
        try:
            return SchemaStatus(await _version(conn), len(MIGRATIONS))
        finally:
            await conn.close()

    async def upgrade(self, up_to: int | None = None) -> list[int]:
        conn = await self.connect()
        try:
            return await _migrate(conn, apply=True, up_to=up_to)
        finally:
            await conn.close()

    async def open(self) -> None:
        async with self._reachable():
            server_settings = await self._ensure_schema()
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=10, server_settings=server_settings, reset=_keep_session
            )
        try:
            async with self._pool.acquire() as conn:
                await _migrate(conn, apply=self._auto_migrate)
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise
        self._queue = asyncio.Queue()
        self._compressor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="postgres-compress")
        self._batcher = asyncio.create_task(self._run_batches(), name="postgres-accept-batcher")

    async def close(self) -> None:
        if self._batcher is not None:
            assert self._queue is not None
            self._queue.put_nowait(None)  # after everything already queued: that is committed first
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
            while not self._queue.empty():  # arrived after the sentinel: not committed
                item = self._queue.get_nowait()
                if item is not None:
                    _settle([item], error=RuntimeError("storage is closed"))
            self._batcher = None
            self._queue = None
        if self._compressor is not None:
            self._compressor.shutdown(wait=True)
            self._compressor = None
        if self._pool is not None:
            try:
                await self._release_leases()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                # They run out instead, as a crashed instance's do.
                log.warning("postgres_leases_not_released", count=len(self._leases), error=str(error))
            finally:
                await self._pool.close()
                self._pool = None

    async def _release_leases(self) -> None:
        """Make this instance's unfinished deliveries claimable by the others at once.

        Only leases still as this instance set them: one that ran out and was taken
        by another instance has another end.
        """
        if not self._leases:
            return
        leases = self._leases
        await self.pool.executemany(
            "UPDATE deliveries SET lease_until = NULL WHERE processor = $1 AND report_id = $2"
            " AND lease_until = $3",
            [(processor, report_id, until) for (processor, report_id), until in leases.items()],
        )
        self._leases = {}

    async def health(self) -> str | None:
        # A round trip at most every HEALTH_INTERVAL seconds, however often /healthz is asked.
        now = time.monotonic()
        if self._health is not None and now - self._health[0] < HEALTH_INTERVAL:
            return self._health[1]
        if self._pool is None or self._batcher is None or self._batcher.done():
            reason: str | None = "the storage is closed"
        else:
            try:
                async with asyncio.timeout(HEALTH_TIMEOUT), self._pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
                reason = None
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                reason = f"PostgreSQL does not answer: {type(error).__name__}: {error}"
        self._health = (now, reason)
        return reason

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "storage is not open"
        return self._pool

    async def _run_steps(self, make: Callable[[], Steps], *, write: bool) -> Any:
        # A read is one snapshot, as on SQLite; a write chosen as a deadlock victim runs again.
        for attempt in range(DEADLOCK_RETRIES):
            try:
                async with self.pool.acquire() as conn:
                    if write:
                        async with conn.transaction():
                            return await run_postgres(conn, make())
                    async with conn.transaction(isolation="repeatable_read", readonly=True):
                        return await run_postgres(conn, make())
            except asyncpg.DeadlockDetectedError:
                if attempt == DEADLOCK_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    # -- spool -----------------------------------------------------------------
    async def accept(self, entry: InboxEntry, processors: Sequence[str]) -> Accepted:
        if self._queue is None or self._batcher is None or self._batcher.done():
            raise RuntimeError("storage is not open")
        pending = _Pending(entry, processors, orjson.dumps(entry.envelope))
        self._queue.put_nowait(pending)
        return await pending.future

    async def _run_batches(self) -> None:
        assert self._queue is not None
        queue = self._queue
        stopping = False
        while not stopping:
            first = await queue.get()
            if first is None:
                break
            batch = [first]
            if queue.empty():
                await asyncio.sleep(GROUP_LINGER)
            while len(batch) < MAX_GROUP and not queue.empty():
                item = queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            try:
                await asyncio.get_running_loop().run_in_executor(self._compressor, _compress_bodies, batch)
            except Exception as error:  # MemoryError, say: these callers fail, the batcher goes on
                _settle(batch, error=error)
                continue
            await self._commit_batch(batch)

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        try:
            results = await self._insert_batch(batch)
        except Exception as error:
            if len(batch) == 1 or isinstance(error, (OSError, asyncpg.InterfaceError)):
                _settle(batch, error=error)
                return
            # One entry may be at fault (a NUL in a text field, say): each on its own.
            for item in batch:
                try:
                    (result,) = await self._insert_batch([item])
                except Exception as single_error:
                    _settle([item], error=single_error)
                else:
                    _settle([item], results=[result])
            return
        _settle(batch, results=results)

    async def _insert_batch(self, batch: list[_Pending]) -> list[Accepted]:
        # The first entry with a key is inserted; later ones in the batch are its duplicates.
        first: dict[str, _Pending] = {}
        for item in batch:
            first.setdefault(item.entry.idempotency_key, item)
        unique = list(first.values())
        keys, names, due = [], [], []
        for item in unique:
            for name in item.processors:
                keys.append(item.entry.idempotency_key)
                names.append(name)
                due.append(item.entry.received_at)
        # One statement, so one round trip and one implicit transaction: the new inbox
        # rows and the deliveries of exactly those rows (a duplicate's insert does nothing).
        rows = await self.pool.fetch(
            "WITH new AS (INSERT INTO inbox (idempotency_key, certname, format, received_at, envelope, body)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[],"
            " $5::bytea[], $6::bytea[])"
            " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, idempotency_key),"
            " due AS (INSERT INTO deliveries (processor, report_id, next_attempt_at)"
            " SELECT d.processor, new.id, d.due FROM unnest($7::text[], $8::text[], $9::float8[])"
            " AS d (idempotency_key, processor, due) JOIN new USING (idempotency_key))"
            " SELECT id, idempotency_key FROM new",
            [i.entry.idempotency_key for i in unique],
            [i.entry.certname for i in unique],
            [i.entry.format for i in unique],
            [i.entry.received_at for i in unique],
            [i.envelope for i in unique],
            [i.body for i in unique],
            keys,
            names,
            due,
        )
        inserted = {key: report_id for report_id, key in rows}
        existing: dict[str, int] = {}
        missing = [key for key in first if key not in inserted]
        if missing:
            existing = {
                key: report_id
                for report_id, key in await self.pool.fetch(
                    "SELECT id, idempotency_key FROM inbox WHERE idempotency_key = ANY($1::text[])",
                    missing,
                )
            }
        results = []
        for item in batch:
            key = item.entry.idempotency_key
            if first[key] is item and key in inserted:
                results.append(Accepted(inserted[key], duplicate=False))
            else:
                results.append(Accepted(inserted.get(key) or existing[key], duplicate=True))
        return results

    async def claim(self, processor: str, limit: int, now: float, lease: float) -> list[Claim]:
        # Should the answer be lost (the connection drops after the commit), the lease's
        # exact end identifies the rows this claim took: give_back_leases releases them.
        self._unanswered_claims.add((processor, now + lease))
        rows = await self.pool.fetch(
            "UPDATE deliveries d SET lease_until = $1 FROM ("
            " SELECT report_id FROM deliveries WHERE processor = $2 AND state = 'pending'"
            " AND next_attempt_at <= $3 AND (lease_until IS NULL OR lease_until < $3)"
            " ORDER BY next_attempt_at, report_id LIMIT $4 FOR UPDATE SKIP LOCKED) due"
            " WHERE d.processor = $2 AND d.report_id = due.report_id RETURNING d.report_id, d.attempts",
            now + lease,
            processor,
            now,
            limit,
        )
        self._unanswered_claims.discard((processor, now + lease))
        for report_id, _ in rows:
            self._leases[(processor, report_id)] = now + lease
        return [Claim(report_id, attempts) for report_id, attempts in sorted(rows)]

    async def give_back_leases(self, processor: str) -> None:
        leases: list[tuple[str, int | None, float]] = [
            (p, r, until) for (p, r), until in self._leases.items() if p == processor
        ]
        leases += [(p, None, until) for p, until in self._unanswered_claims if p == processor]
        if not leases:
            return
        await self.pool.executemany(
            "UPDATE deliveries SET lease_until = NULL WHERE processor = $1"
            " AND ($2::bigint IS NULL OR report_id = $2) AND lease_until = $3",
            leases,
        )
        for p, report_id, until in leases:
            if report_id is None:
                self._unanswered_claims.discard((p, until))
            else:
                self._leases.pop((p, report_id), None)

    async def load_spooled(self, report_ids: Sequence[int]) -> list[SpooledReport]:
        if not report_ids:
            return []
        rows = await self.pool.fetch(
            "SELECT id, envelope, body FROM inbox WHERE id = ANY($1::bigint[]) AND body IS NOT NULL",
            list(report_ids),
        )
        return [SpooledReport(i, orjson.loads(e), zlib.decompress(b)) for i, e, b in rows]

    async def finish(self, processor: str, report_ids: Sequence[int]) -> None:
        if not report_ids:
            return
        ids = sorted(set(report_ids))
        # One round trip: a query of several statements (simple protocol, so no
        # parameters: the ids are integers, the name a quoted literal) runs as one
        # transaction, each statement with a snapshot of its own.
        # The inbox rows are locked first (by finish and expire_reports alike), so the
        # "no delivery and no report left" check after them sees the other's committed work.
        # The commit need not wait for the WAL flush: were it lost in a crash of the
        # server, the deliveries would be made again, as after any crash mid-delivery.
        id_list = f"'{{{','.join(str(int(i)) for i in ids)}}}'::bigint[]"
        await self.pool.execute(
            f"SELECT {_NO_FLUSH_WAIT}, count(*) FROM (SELECT 1 FROM inbox"
            f" WHERE id = ANY({id_list}) ORDER BY id FOR UPDATE) locked;"
            f" DELETE FROM deliveries WHERE processor = {_literal(processor)}"
            f" AND report_id = ANY({id_list});"
            f" UPDATE inbox SET body = NULL WHERE id = ANY({id_list}) AND body IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.report_id = inbox.id)"
            " AND NOT EXISTS (SELECT 1 FROM reports r WHERE r.id = inbox.id)"
        )
        # Forgotten only now: should the statement fail (the server gone), give_back_leases
        # must still know these leases, or they would hold the deliveries until they run out.
        for report_id in ids:
            self._leases.pop((processor, report_id), None)

    async def fail(self, processor: str, failures: Sequence[DeliveryFailure]) -> None:
        if not failures:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            # As in finish: a failure lost in a server crash only means an earlier retry.
            await conn.execute(f"SELECT {_NO_FLUSH_WAIT}")
            await conn.executemany(
                "UPDATE deliveries SET attempts = $1, last_error = $2, next_attempt_at = $3,"
                " state = $4, lease_until = NULL WHERE processor = $5 AND report_id = $6",
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
        for failure in failures:  # as in finish: only once the outcome is recorded
            self._leases.pop((processor, failure.report_id), None)

    # -- store -----------------------------------------------------------------
    async def store_reports(self, reports: Sequence[StoredReport]) -> None:
        if not reports:
            return
        rows = [report_row(r) for r in reports]
        # A node's row can change once per statement: of the batch's reports of one node,
        # only the newest run (as NEWER_RUN_SET orders them) can move it, and the latest
        # receive time counts. Reduced here, both tables take one statement together.
        newest: dict[str, tuple] = {}
        for proposed in map(node_row, rows):
            seen = newest.get(proposed[0])
            if seen is None:
                newest[proposed[0]] = proposed
                continue
            winner = proposed if (proposed[5], proposed[4]) > (seen[5], seen[4]) else seen
            newest[proposed[0]] = (*winner[:6], max(proposed[6], seen[6]), winner[7])
        report_columns = [list(column) for column in zip(*rows, strict=True)]
        node_columns = [list(column) for column in zip(*newest.values(), strict=True)]
        report_params = ", ".join(f"${n}::{t}[]" for n, t in enumerate(_REPORT_TYPES, start=1))
        node_params = ", ".join(
            f"${n}::{t}[]" for n, t in enumerate(_NODE_TYPES, start=len(_REPORT_TYPES) + 1)
        )
        # The body stays in the spool (inbox) while the store holds the report: one copy.
        await self.pool.execute(
            f"WITH stored AS (INSERT INTO reports ({REPORT_COLUMNS}) SELECT * FROM unnest({report_params})"
            " ON CONFLICT (id) DO NOTHING)"
            f" INSERT INTO nodes ({NODE_COLUMNS}) SELECT * FROM unnest({node_params})"
            f" ON CONFLICT (certname) DO UPDATE SET {NEWER_RUN_SET},"
            " last_received_at = GREATEST(nodes.last_received_at, excluded.last_received_at)",
            *report_columns,
            *node_columns,
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A pooled connection goes back as it is, without asyncpg's reset query.

    That query (RESET ALL, UNLISTEN, CLOSE ALL, unlock advisory locks) is a round trip
    on every release, so one more per statement; this storage leaves no session state
    behind: settings are ``SET LOCAL``, advisory locks transaction-scoped, no LISTEN.
    """


def _compress_bodies(batch: list[_Pending]) -> None:
    for item in batch:
        if item.processors:
            item.body = zlib.compress(item.entry.body, COMPRESSION_LEVEL)


def _clause(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _settle(
    batch: list[_Pending], *, results: list[Accepted] | None = None, error: BaseException | None = None
) -> None:
    for n, item in enumerate(batch):
        if item.future.done():  # the caller gave up (cancelled); the entry is committed regardless
            continue
        if error is not None:
            item.future.set_exception(error)
        else:
            assert results is not None
            item.future.set_result(results[n])


def _rowcount(status: str) -> int:
    """The row count of a command tag such as ``UPDATE 3`` or ``INSERT 0 1``."""
    return int(status.rsplit(" ", 1)[-1])


async def _version(conn: asyncpg.Connection) -> int:
    # to_regclass follows the search path, as the unqualified table names do.
    if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
        return 0
    return await conn.fetchval("SELECT max(version) FROM schema_version") or 0


async def _migrate(conn: asyncpg.Connection, *, apply: bool, up_to: int | None = None) -> list[int]:
    """Bring the schema to ``up_to`` (default: the latest) in one transaction; the versions applied.

    Without ``apply`` only check: :class:`SchemaError` unless it is current already.
    """
    async with conn.transaction():
        if apply:
            # Transaction-scoped: two daemons opening one fresh database migrate one after the other.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        current = await _version(conn)
        check_schema(SchemaStatus(current, len(MIGRATIONS)), migrating=apply)
        target = len(MIGRATIONS) if up_to is None else up_to
        if current >= target:
            return []
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        applied = []
        for version, script in enumerate(MIGRATIONS[current:target], start=current + 1):
            await conn.execute(script)
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
            applied.append(version)
        return applied
