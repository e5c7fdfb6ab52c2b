"""Jobs: orchestrator-style Puppet runs across nodes, tracked from their reports (spec jobs.md).

Always on, no configuration needed:

* :mod:`reportd.jobs.tracker` turns each report that carries a ``job_id`` into
  that node's outcome (an internal processor, ``jobs``, gets exactly those
  reports, durably), starts deployed nodes through the
  :func:`reportd.hookspecs.reportd_start_job_run` hook and applies timeouts;
* :mod:`reportd.jobs.api` serves ``/orchestrator/v1/jobs...`` and
  ``/orchestrator/v1/command/deploy|stop``.

What a trigger plugin gets is :class:`JobRun`; it raises :class:`JobRunError`
when a node's run cannot start.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reportd.storage.jobs import JobRecord


class JobRunError(Exception):
    """A node's run could not be started, or ended without a report; the message says why."""


@dataclass(frozen=True)
class JobRun:
    """A job as a trigger plugin sees it.

    :ivar id: the job's integer id; ``name`` is the same as a string (Puppet's ``--job_id``).
    :ivar deadline: UNIX time of the job's timeout (None: no timeout); a node
        without a report by then is ``errored``.
    """

    id: int
    name: str
    environment: str | None
    noop: bool
    concurrency: int | None
    timeout: float | None
    deadline: float | None
    description: str | None
    owner: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, job: JobRecord) -> JobRun:
        return cls(
            id=job.id,
            name=str(job.id),
            environment=job.environment,
            noop=bool(job.options.get("noop")),
            concurrency=job.options.get("concurrency"),
            timeout=job.timeout,
            deadline=job.deadline,
            description=job.description,
            owner=job.owner_login,
            options=job.options,
        )
