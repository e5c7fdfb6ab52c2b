"""The schedules part of the storage interface (see :mod:`reportd.storage`).

Two tables: ``schedules`` (what the API creates: whom to mail about which hosts,
how often) and ``schedule_runs``, one row per schedule and period. A period's row
is how the period is sent once only: whoever inserts or takes over the row holds a
lease on it while it builds and sends the digest, and marks it done only after
the SMTP server accepted the mail. A holder that dies leaves a lease that runs
out, and another instance (or the same after a restart) takes the period over.

Times at this boundary: schedule timestamps and period bounds are UNIX
microseconds (ints, the API's unit); leases and retry times are UNIX seconds.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

# schedule_runs.state
RUN_PENDING = "pending"  # claimed, or waiting for its next attempt
RUN_SENT = "sent"  # the SMTP server accepted the digest
RUN_EMPTY = "empty"  # a ``failures`` schedule with nothing failed: done, no mail
RUN_FAILED = "failed"  # every attempt failed; given up
RUN_STATES = (RUN_PENDING, RUN_SENT, RUN_EMPTY, RUN_FAILED)

SCHEDULE_COLUMNS = (
    "id, name, hosts, services, type, schedule, send_to, send_via, timezone, scheduled_at,"
    " scheduled_by, start_timestamp, end_timestamp, last_error"
)
# What an update may change (the rest is set by reportd).
EDITABLE = ("name", "hosts", "services", "type", "schedule", "send_to", "send_via", "timezone")
_JSON_COLUMNS = ("hosts", "services", "send_to")


@dataclass(frozen=True)
class Schedule:
    """One report schedule, as the API shows it (plus ``last_error``, kept for the CLI and logs)."""

    id: str
    name: str
    hosts: tuple[str, ...]
    services: tuple[str, ...] | None
    type: str
    schedule: str
    send_to: tuple[str, ...]
    send_via: str
    timezone: str
    scheduled_at: int
    scheduled_by: str
    start_timestamp: int | None = None
    end_timestamp: int | None = None
    last_error: str | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "end_timestamp": self.end_timestamp,
            "hosts": list(self.hosts),
            "id": self.id,
            "name": self.name,
            "schedule": self.schedule,
            "scheduled_at": self.scheduled_at,
            "scheduled_by": self.scheduled_by,
            "send_to": list(self.send_to),
            "send_via": self.send_via,
            "services": list(self.services) if self.services is not None else None,
            "start_timestamp": self.start_timestamp,
            "timezone": self.timezone,
            "type": self.type,
        }


@dataclass(frozen=True)
class ScheduleQuery:
    """Filters of the list endpoint; all given ones must hold. ``limit`` None: all rows."""

    id: str | None = None
    id_list: Sequence[str] | None = None
    name: str | None = None  # substring, case-insensitive
    type: str | None = None
    schedule: str | None = None
    scheduled_at_start: int | None = None  # scheduled_at >=
    scheduled_at_end: int | None = None  # scheduled_at <=
    scheduled_by: str | None = None
    limit: int | None = None
    offset: int = 0


@dataclass(frozen=True)
class RunClaim:
    """A period leased to its claimer; ``attempts`` is how many sends failed before."""

    schedule_id: str
    period_start: int
    period_end: int
    attempts: int


@dataclass(frozen=True)
class ScheduleRun:
    schedule_id: str
    period_start: int
    period_end: int
    state: str
    owner: str | None
    lease_until: float | None
    attempts: int
    next_attempt_at: float
    last_error: str | None
    finished_at: float | None


RUN_COLUMNS = (
    "schedule_id, period_start, period_end, state, owner, lease_until, attempts, next_attempt_at,"
    " last_error, finished_at"
)


def schedule_row(s: Schedule) -> tuple:
    """The ``schedules`` row of ``s``, in :data:`SCHEDULE_COLUMNS` order."""
    return (
        s.id, s.name, _dump(s.hosts), _dump(s.services), s.type, s.schedule, _dump(s.send_to),
        s.send_via, s.timezone, s.scheduled_at, s.scheduled_by, s.start_timestamp, s.end_timestamp,
        s.last_error,
    )  # fmt: skip


def schedule_from_row(row: Sequence[Any]) -> Schedule:
    values = list(row)
    hosts, services, send_to = (orjson.loads(values[i]) if values[i] is not None else None for i in (2, 3, 6))
    return Schedule(
        id=values[0],
        name=values[1],
        hosts=tuple(hosts or ()),
        services=tuple(services) if services is not None else None,
        type=values[4],
        schedule=values[5],
        send_to=tuple(send_to or ()),
        send_via=values[7],
        timezone=values[8],
        scheduled_at=int(values[9]),
        scheduled_by=values[10],
        start_timestamp=values[11],
        end_timestamp=values[12],
        last_error=values[13],
    )


def update_values(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Column values for an update of :data:`EDITABLE` fields (lists stored as JSON text)."""
    unknown = sorted(set(changes) - set(EDITABLE))
    if unknown:
        raise ValueError(f"not editable: {', '.join(unknown)}")
    return {k: _dump(v) if k in _JSON_COLUMNS else v for k, v in changes.items()}


def _dump(value: Sequence[str] | None) -> str | None:
    return None if value is None else orjson.dumps(list(value)).decode()


class ScheduleStorage(abc.ABC):
    """What the schedules feature needs from a database; both backends implement it."""

    # -- schedules (the API) ---------------------------------------------------
    @abc.abstractmethod
    async def create_schedule(self, schedule: Schedule) -> None:
        """Insert a new schedule (its id is new: a UUID chosen by the caller)."""

    @abc.abstractmethod
    async def get_schedule(self, schedule_id: str) -> Schedule | None: ...

    @abc.abstractmethod
    async def list_schedules(self, query: ScheduleQuery) -> tuple[list[Schedule], int]:
        """The page of matching schedules (oldest first, then by id) and how many match in all."""

    @abc.abstractmethod
    async def update_schedule(self, schedule_id: str, changes: Mapping[str, Any]) -> Schedule | None:
        """Apply ``changes`` (:data:`EDITABLE` fields only); the updated schedule, None if unknown."""

    @abc.abstractmethod
    async def delete_schedules(self, schedule_ids: Sequence[str]) -> list[str]:
        """Delete all of them (and their runs) or none: returns the unknown ids, empty when deleted."""

    # -- runs (the scheduler) ----------------------------------------------------
    @abc.abstractmethod
    async def claim_schedule_run(
        self, schedule_id: str, period_start: int, period_end: int, owner: str, now: float, lease: float
    ) -> RunClaim | None:
        """Lease the period to ``owner`` for ``lease`` seconds, or None.

        None when the period is done (sent, empty or given up), leased to someone
        else whose lease has not run out, or waiting for its next attempt. Atomic
        across instances sharing the database: of concurrent claimers one wins.
        """

    @abc.abstractmethod
    async def finish_schedule_run(self, schedule_id: str, period_start: int, state: str, now: float) -> bool:
        """Mark the period ``sent`` or ``empty`` and note the execution on the schedule.

        The schedule's ``start_timestamp`` is set if it was null, ``end_timestamp``
        becomes ``now`` and its ``last_error`` is cleared. False when the period's row
        is gone (its schedule was deleted meanwhile).
        """

    @abc.abstractmethod
    async def fail_schedule_run(
        self, schedule_id: str, period_start: int, error: str, next_attempt_at: float, give_up: bool
    ) -> None:
        """Release the lease after a failed send: retried after ``next_attempt_at``, or given up.

        The error is kept on the run and as the schedule's ``last_error``.
        """

    @abc.abstractmethod
    async def release_schedule_run(self, schedule_id: str, period_start: int, owner: str) -> None:
        """Give back ``owner``'s lease unused (a shutdown while sending): claimable at once,
        no attempt counted. Nothing happens if the lease is no longer ``owner``'s."""

    @abc.abstractmethod
    async def schedule_runs(self, schedule_id: str, limit: int) -> list[ScheduleRun]:
        """A schedule's runs, latest period first."""
