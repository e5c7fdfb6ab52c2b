"""The jobs part of the storage interface (see :mod:`reportd.storage`).

A job is one Puppet run across a set of nodes (spec jobs.md). Every state
change happens inside the database, in one transaction per call, with the
job's row locked first and each transition a conditional ``UPDATE``: several
reportd instances sharing one PostgreSQL database cannot lose or repeat a
transition. Times are UNIX seconds.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Job states (jobs.md): new -> ready -> running -> finished | failed; running -> stopping -> stopped.
JOB_NEW, JOB_READY, JOB_RUNNING = "new", "ready", "running"
JOB_FINISHED, JOB_FAILED = "finished", "failed"
JOB_STOPPING, JOB_STOPPED = "stopping", "stopped"
# Node states.
NODE_NEW, NODE_READY, NODE_RUNNING = "new", "ready", "running"
NODE_FINISHED, NODE_FAILED, NODE_ERRORED, NODE_SKIPPED = "finished", "failed", "errored", "skipped"
NODE_STATES = (NODE_NEW, NODE_READY, NODE_RUNNING, NODE_FINISHED, NODE_FAILED, NODE_ERRORED, NODE_SKIPPED)
NODE_PENDING = (NODE_NEW, NODE_READY, NODE_RUNNING)
# Why a node is errored: decides whether its report may still settle it.
ERROR_TIMEOUT, ERROR_TRIGGER = "timeout", "trigger"
JOB_ORDER_COLUMNS = ("owner", "timestamp", "environment", "name", "state")


@dataclass(frozen=True)
class NewJob:
    """A job asked for with ``POST /orchestrator/v1/command/deploy``."""

    type: str
    owner_id: str
    owner_login: str
    environment: str | None
    options: Mapping[str, Any]
    description: str | None
    timeout: float | None
    nodes: Sequence[str]


@dataclass(frozen=True)
class StatusEntry:
    state: str
    enter_time: float
    exit_time: float | None


@dataclass(frozen=True)
class JobRecord:
    id: int
    type: str
    state: str
    owner_id: str
    owner_login: str
    environment: str | None
    options: Mapping[str, Any]
    description: str | None
    timeout: float | None
    deadline: float | None
    created_at: float
    updated_at: float
    finished_at: float | None
    status: tuple[StatusEntry, ...] = ()
    node_states: Mapping[str, int] = field(default_factory=dict)

    @property
    def node_count(self) -> int:
        return sum(self.node_states.values())


@dataclass(frozen=True)
class NodeOutcome:
    """What one report says about its node's run in a job."""

    job_id: int
    certname: str
    report_id: int
    transaction_uuid: str | None
    state: str  # finished | failed
    environment: str | None
    start_time: float | None
    finish_time: float | None
    metrics: Mapping[str, Any]
    message: str
    result: Mapping[str, Any]
    events: Sequence[Mapping[str, Any]] = ()
    # A report received before the job's deadline settles its node even when it is
    # processed after the timeout was applied (reportd was down or behind).
    received_at: float | None = None


@dataclass(frozen=True)
class JobNodeRecord:
    certname: str
    state: str
    updated_at: float
    error_kind: str | None
    transaction_uuid: str | None
    report_id: int | None
    start_time: float | None
    finish_time: float | None
    details: Mapping[str, Any]
    message: str | None
    result: Mapping[str, Any] | None
    events: Sequence[Mapping[str, Any]] | None = None  # only when asked for


@dataclass(frozen=True)
class JobEventRecord:
    id: int
    job_id: int
    type: str
    timestamp: float
    certname: str | None
    detail: Mapping[str, Any]
    message: str


class JobStorage(abc.ABC):
    """What the jobs feature needs from a database; both backends implement it."""

    @abc.abstractmethod
    async def create_job(self, job: NewJob, now: float) -> int:
        """Record a new job (state ``new``, every node ``new``); its id, the highest so far plus one."""

    @abc.abstractmethod
    async def start_job(self, job_id: int, now: float) -> bool:
        """Move a ``new`` job through ``ready`` to ``running`` and its nodes to ``ready``.

        False when the job was not ``new`` (another caller started it).
        """

    @abc.abstractmethod
    async def get_job(self, job_id: int) -> JobRecord | None: ...

    @abc.abstractmethod
    async def list_jobs(
        self,
        *,
        type: str | None,
        order_by: str | None,
        descending: bool,
        limit: int | None,
        offset: int,
    ) -> tuple[list[JobRecord], int]:
        """One page of jobs and the total matching; ``order_by`` is one of :data:`JOB_ORDER_COLUMNS`
        (None: by id), ties broken by id."""

    @abc.abstractmethod
    async def job_nodes(self, job_id: int, *, with_events: bool = False) -> list[JobNodeRecord]:
        """The job's nodes by certname; ``with_events`` adds each report's resource events."""

    @abc.abstractmethod
    async def job_events(self, job_id: int, start: int) -> list[JobEventRecord]:
        """The job's events with an id of at least ``start``, oldest first."""

    @abc.abstractmethod
    async def last_job_event(self, job_id: int) -> int | None:
        """The id of the job's latest event (None: none yet)."""

    @abc.abstractmethod
    async def mark_node_running(self, job_id: int, certname: str, now: float) -> bool:
        """``ready`` to ``running`` while the job runs; False when someone else took it, it moved
        on, or the job's ``concurrency`` nodes are running already."""

    @abc.abstractmethod
    async def record_node_outcome(self, outcome: NodeOutcome, now: float) -> bool:
        """Apply a report to its job: create the job (owner unknown) when unknown, add the node
        to a job that reports created, settle a pending node, attach the report to one that
        timed out or was skipped, and settle the job. A node outside the scope of a deployed
        job does not join it: the report is only an event of the job. False when nothing
        changed (the same report again)."""

    @abc.abstractmethod
    async def record_node_outcomes(self, outcomes: Sequence[NodeOutcome], now: float) -> list[bool]:
        """:meth:`record_node_outcome` for several reports in one transaction (all or none)."""

    @abc.abstractmethod
    async def fail_node_start(self, job_id: int, certname: str, message: str, now: float) -> bool:
        """A trigger could not run the node: ``errored`` unless it settled already."""

    @abc.abstractmethod
    async def stop_job(self, job_id: int, now: float) -> JobRecord | None:
        """Skip the nodes not started; the job is ``stopping`` until its running nodes settle.

        None when there is no such job; a job that ended already is left as it is.
        """

    @abc.abstractmethod
    async def expire_job_timeouts(self, now: float) -> list[int]:
        """Claim the jobs whose deadline passed and error their pending nodes; the ids claimed.

        Each job's timeout is applied once, whichever caller (or instance) claims it.
        """

    @abc.abstractmethod
    async def next_job_deadline(self) -> float | None:
        """The earliest deadline of a job not yet timed out and not ended."""

    @abc.abstractmethod
    async def resumable_jobs(self) -> list[int]:
        """Jobs still ``new``, and running jobs with nodes waiting to be started."""
