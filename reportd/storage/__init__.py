"""The storage interface: every table reportd keeps, behind one narrow API.

Two kinds of data live here:

* the **spool** (``inbox`` and ``deliveries``): each accepted report's body and
  envelope, and one delivery per enabled processor, until every processor has
  had the report;
* the **store** (``reports`` and ``nodes``) used by the ``store`` processor,
  and the API **tokens**;
* the **jobs** (orchestrator-style runs across nodes) and the email **schedules**.

Implementations: :mod:`reportd.storage.sqlite` (the embedded default) and
:mod:`reportd.storage.postgres`. All methods are coroutines; times are UNIX
seconds (floats) at this boundary.
"""

from __future__ import annotations

import abc
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reportd.auth import TokenRecord
from reportd.storage.jobs import JobStorage
from reportd.storage.schedules import ScheduleStorage


@dataclass(frozen=True)
class InboxEntry:
    """A report to spool: its idempotency key, envelope and body."""

    idempotency_key: str
    certname: str
    format: str
    received_at: float
    envelope: Mapping[str, Any]
    body: bytes


@dataclass(frozen=True)
class Accepted:
    report_id: int
    duplicate: bool


@dataclass(frozen=True)
class Claim:
    report_id: int
    attempts: int


@dataclass(frozen=True)
class SpooledReport:
    report_id: int
    envelope: Mapping[str, Any]
    body: bytes


@dataclass(frozen=True)
class DeliveryFailure:
    report_id: int
    attempts: int
    error: str
    next_attempt_at: float
    dead: bool


@dataclass(frozen=True)
class QueueStats:
    pending: int = 0
    dead: int = 0
    oldest_pending_at: float | None = None


@dataclass(frozen=True)
class DeadLetter:
    processor: str
    report_id: int
    certname: str
    attempts: int
    error: str | None


@dataclass(frozen=True)
class DeliveryState:
    """Where one report's delivery to one processor stands (absent once delivered)."""

    processor: str
    report_id: int
    state: str
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class StoredReport:
    """The store's summary row of one report (its id is the spool's).

    ``envelope`` and ``body`` are filled in by :meth:`Storage.get_report` only:
    the body is kept once, in the spool, for as long as the store holds the report.
    """

    id: int
    certname: str
    environment: str | None
    status: str
    change_kind: str | None
    noop: bool
    format: str
    origin: str | None
    transaction_uuid: str | None
    job_id: str | None
    configuration_version: str | None
    run_time: float
    start_time: float | None
    end_time: float | None
    received_at: float
    summary: Mapping[str, Any]
    organization: str | None = None
    organization_id: int | None = None
    location_id: int | None = None
    envelope: Mapping[str, Any] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class NodeRow:
    certname: str
    environment: str | None
    status: str
    change_kind: str | None
    report_id: int
    run_time: float
    last_received_at: float
    summary: Mapping[str, Any]


@dataclass(frozen=True)
class ReportQuery:
    certname: str | None = None
    status: str | None = None
    environment: str | None = None
    since: float | None = None
    until: float | None = None
    organization: str | None = None
    organization_id: int | None = None
    location_id: int | None = None
    limit: int = 100
    after: tuple[float, int] | None = None  # keyset cursor: (run_time, id) of the last row seen


def unavailable_errors() -> tuple[type[Exception], ...]:
    """What a backend raises when the database cannot do its part right now.

    A full disk, a database that is down or refuses connections, a lost
    connection: the caller answers 503 rather than 500 (nothing was stored).
    """
    errors: list[type[Exception]] = [OSError, sqlite3.Error, StorageUnavailable]
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        pass
    else:
        errors += [asyncpg.PostgresError, asyncpg.InterfaceError]
    return tuple(errors)


class StorageUnavailable(RuntimeError):
    """The storage cannot serve requests (its writer stopped, its database is unreachable)."""


class SchemaError(RuntimeError):
    """The database's schema is not the one this reportd works with."""


@dataclass(frozen=True)
class SchemaStatus:
    """The schema version a database has (0: none yet) and the one this code brings it to."""

    current: int
    latest: int

    @property
    def pending(self) -> list[int]:
        return list(range(self.current + 1, self.latest + 1))


def check_schema(status: SchemaStatus, *, migrating: bool) -> None:
    """Raise :class:`SchemaError` unless a storage may be opened at ``status``.

    A newer schema is always refused (an older reportd would misread it); an
    older one only when the caller is not going to migrate it.
    """
    if status.current > status.latest:
        raise SchemaError(
            f"the database schema is version {status.current}, newer than this reportd knows"
            f" (version {status.latest}): run a reportd at least as new as the one that upgraded it"
        )
    if status.current < status.latest and not migrating:
        has = f"is version {status.current}" if status.current else "has not been created"
        raise SchemaError(
            f"the database schema {has}, this reportd needs version {status.latest}:"
            " run `reportd db upgrade` (or set [reportd] auto_migrate = true)"
        )


class Storage(JobStorage, ScheduleStorage, abc.ABC):
    """What reportd needs from a database. Open it before use, close it after.

    The jobs and schedules methods are declared in :mod:`reportd.storage.jobs` and
    :mod:`reportd.storage.schedules`.
    """

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect; migrate the schema first when the storage was made with ``auto_migrate``.

        Raises :class:`SchemaError` when the schema is newer than the code, or
        older and ``auto_migrate`` is off.
        """

    @abc.abstractmethod
    async def schema_status(self) -> SchemaStatus:
        """The schema version, without changing anything (the storage need not be open)."""

    @abc.abstractmethod
    async def upgrade(self, up_to: int | None = None) -> list[int]:
        """Apply the pending migrations, or those up to ``up_to``; the versions applied.

        The storage need not be open; concurrent upgrades apply each migration once.
        """

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def health(self) -> str | None:
        """Why the storage cannot take reports now, or None when it can; cheap (``/healthz``)."""
        return None

    # -- spool -----------------------------------------------------------------
    @abc.abstractmethod
    async def accept(self, entry: InboxEntry, processors: Sequence[str]) -> Accepted:
        """Durably record a report and a pending delivery per processor.

        Returns only after the commit. A second entry with the same idempotency
        key is not stored again: the first one's id comes back, ``duplicate`` set.
        """

    @abc.abstractmethod
    async def claim(self, processor: str, limit: int, now: float, lease: float) -> list[Claim]:
        """Up to ``limit`` due deliveries, leased to the caller for ``lease`` seconds."""

    @abc.abstractmethod
    async def give_back_leases(self, processor: str) -> None:
        """Release this instance's leases of ``processor``'s deliveries.

        For a worker that failed mid-delivery (the database went away): nothing of
        it is in flight, and its claimed deliveries would otherwise wait for their
        leases to run out. Claims whose answer was lost are released too.
        """

    @abc.abstractmethod
    async def load_spooled(self, report_ids: Sequence[int]) -> list[SpooledReport]: ...

    @abc.abstractmethod
    async def finish(self, processor: str, report_ids: Sequence[int]) -> None:
        """Mark deliveries done; a body every processor has had is dropped."""

    @abc.abstractmethod
    async def fail(self, processor: str, failures: Sequence[DeliveryFailure]) -> None: ...

    @abc.abstractmethod
    async def queue_stats(self) -> dict[str, QueueStats]: ...

    @abc.abstractmethod
    async def dead_letters(self, processor: str | None, limit: int) -> list[DeadLetter]: ...

    @abc.abstractmethod
    async def delivery_states(self, keys: Sequence[tuple[str, int]]) -> list[DeliveryState]:
        """The undelivered ones among ``(processor, report_id)`` keys."""

    @abc.abstractmethod
    async def retry(self, processor: str | None, report_ids: Sequence[int] | None, now: float) -> int:
        """Make dead deliveries pending again (all, or those named); returns how many."""

    @abc.abstractmethod
    async def expire_spool(self, before: float, batch: int) -> int:
        """Forget delivered spool entries (and run starts) received before ``before`` (one batch)."""

    @abc.abstractmethod
    async def record_run_start(
        self, format: str, certname: str, run_id: str, started_at: float | None, now: float
    ) -> bool:
        """Durably note that a run started (Chef); False when that run had started already."""

    @abc.abstractmethod
    async def run_started(self, format: str, certname: str, run_id: str) -> bool: ...

    # -- store -----------------------------------------------------------------
    @abc.abstractmethod
    async def store_reports(self, reports: Sequence[StoredReport]) -> None:
        """Insert summary rows and move each node's latest status forward.

        The spooled body of a stored report is kept (for ``get_report``) until
        :meth:`expire_reports` deletes the report.

        A node's row changes only for a run newer (by run time) than the one it
        has; an older, late report goes into history only.
        """

    @abc.abstractmethod
    async def query_reports(self, query: ReportQuery) -> list[StoredReport]: ...

    @abc.abstractmethod
    async def get_report(self, report_id: int) -> StoredReport | None:
        """One report with its envelope and original body."""

    @abc.abstractmethod
    async def list_nodes(
        self, *, environment: str | None, status: str | None, limit: int, after: str | None
    ) -> list[NodeRow]: ...

    @abc.abstractmethod
    async def get_node(self, certname: str) -> NodeRow | None: ...

    @abc.abstractmethod
    async def expire_reports(self, before: float, batch: int) -> int:
        """Delete one batch of reports (and silent nodes) older than ``before``."""

    @abc.abstractmethod
    async def count_reports(self, before: float | None = None) -> int:
        """Stored reports (those whose run time is before ``before``, when given)."""

    @abc.abstractmethod
    async def count_expired_spool(self, before: float) -> int:
        """Delivered spool entries received before ``before`` (what :meth:`expire_spool` deletes)."""

    # -- tokens ----------------------------------------------------------------
    @abc.abstractmethod
    async def create_token(
        self,
        name: str,
        token_hash: str,
        permissions: Iterable[str],
        now: float,
        expires_at: float | None = None,
    ) -> None:
        """Raises :class:`KeyError` when the name is taken; ``expires_at`` None: never expires."""

    @abc.abstractmethod
    async def find_token(self, token_hash: str) -> TokenRecord | None:
        """The token with that hash, expired or not (the caller compares ``expires_at``)."""

    @abc.abstractmethod
    async def list_tokens(self) -> list[dict[str, Any]]:
        """Each token's ``name``, ``permissions``, ``created_at`` and ``expires_at``, by name."""

    @abc.abstractmethod
    async def revoke_token(self, name: str) -> bool: ...


def open_storage(
    url: str, *, synchronous: str = "full", exclusive: bool = False, auto_migrate: bool = True
) -> Storage:
    """The storage for a database URL (``sqlite:///PATH`` or ``postgresql://...``).

    ``exclusive`` is for the daemon: it locks the database against a second
    daemon and takes over the delivery leases a crashed one left. Without
    ``auto_migrate``, opening an out-of-date schema raises :class:`SchemaError`.
    """
    if url.startswith("sqlite:///"):
        from reportd.storage.sqlite import SQLiteStorage

        path = url.removeprefix("sqlite:///")
        return SQLiteStorage(path, synchronous=synchronous, exclusive=exclusive, auto_migrate=auto_migrate)
    if url.startswith(("postgresql://", "postgres://")):
        # ``synchronous`` and ``exclusive`` are SQLite's: PostgreSQL commits durably, and
        # its delivery leases are shared by design (a crashed daemon's leases run out).
        from reportd.storage.postgres import PostgresStorage

        return PostgresStorage(url, auto_migrate=auto_migrate)
    raise ValueError(f"unsupported database URL {url!r} (sqlite:/// or postgresql://)")
