"""Follow jobs: reports in, runs started, timeouts applied.

* :class:`JobsConsumer` is the built-in ``jobs`` processor. It wants only the
  reports that carry a ``job_id``, so job reports survive ``kill -9`` and are
  retried like any processor's, and other reports cost nothing.
* :class:`Tracker` starts deployed jobs, runs the trigger hook for each node
  within the job's concurrency (one runner task per job), and applies job
  timeouts: at start-up (those that passed while reportd was down) and then at
  each deadline. Every state change is the storage's (one transaction, race-free
  across instances); the tracker only decides when to ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from reportd.jobs import JobRun, JobRunError
from reportd.processor import Processor
from reportd.status import FAILED, change_kind
from reportd.storage.jobs import (
    JOB_RUNNING,
    NODE_FAILED,
    NODE_FINISHED,
    NODE_READY,
    NODE_RUNNING,
    JobRecord,
    NewJob,
    NodeOutcome,
)

if TYPE_CHECKING:
    import pluggy
    from aiohttp import web

    from reportd.context import PluginContext
    from reportd.model import Report

log = structlog.get_logger("reportd.jobs")

NAME = "jobs"
# Other instances sharing the database may deploy, stop or report: look again this often.
POLL_INTERVAL = 1.0
TIMEOUT_POLL = 5.0
MAX_ID_DIGITS = 18
METRIC_KEYS = (
    "total", "failed", "changed", "skipped", "restarted", "scheduled", "out_of_sync",
    "failed_to_restart", "corrective_change",
)  # fmt: skip


def is_job_id(raw: str) -> bool:
    """ASCII digits that fit the databases' BIGINT (``isdigit`` alone takes "²" and "٣")."""
    return raw.isascii() and raw.isdigit() and len(raw) <= MAX_ID_DIGITS


def parse_job_id(value: str | None) -> int | None:
    """The orchestrator's job ids are integers; other ``job_id`` values belong to no job here."""
    if value is None or not is_job_id(value := value.strip()):
        return None
    return int(value)


def node_outcome(report: Report, job_id: int) -> NodeOutcome:
    """What ``report`` says about its node's run in job ``job_id`` (failed per node-status.md)."""
    assert report.id is not None
    certname = report.certname
    failed = report.status == FAILED
    if failed:
        errors = [entry.message for entry in report.logs if entry.level in ("err", "crit", "alert", "emerg")]
        message = (
            f"Error running puppet on {certname}: {errors[0]}"
            if errors
            else f"Finished puppet run on {certname} - Failed!"
        )
    else:
        message = f"Finished puppet run on {certname} - Success!"
    resources = report.metrics.get("resources", {})
    return NodeOutcome(
        job_id=job_id,
        certname=certname,
        report_id=report.id,
        transaction_uuid=report.transaction_uuid,
        state=NODE_FAILED if failed else NODE_FINISHED,
        environment=report.environment,
        start_time=report.start_time.timestamp() if report.start_time else None,
        finish_time=report.run_time.timestamp(),
        metrics={key: _number(resources.get(key, 0)) for key in METRIC_KEYS},
        message=message,
        result={
            "status": report.status,
            "change_kind": change_kind(report, report.status),
            "noop": report.noop,
            "corrective_change": report.corrective_change,
            "report_id": report.id,
        },
        events=resource_events(report),
        received_at=report.received_at.timestamp(),
    )


def resource_events(report: Report) -> list[dict[str, Any]]:
    """The report's resource events, named as PuppetDB names them."""
    return [
        {
            "resource_type": resource.resource_type,
            "resource_title": resource.title,
            "property": event.property,
            "old_value": event.previous_value,
            "new_value": event.desired_value,
            "message": event.message,
            "status": event.status,
            "timestamp": iso(when.timestamp()) if (when := event.time or resource.time) else None,
            "file": resource.file,
            "line": resource.line,
            "containment_path": resource.containment_path,
            "corrective_change": event.corrective_change,
        }
        for resource in report.resource_statuses
        for event in resource.events
    ]


def _number(value: Any) -> int | float:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def iso(timestamp: float | None) -> str | None:
    """ISO-8601 UTC with ``Z``, to the millisecond."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobsConsumer(Processor):
    """The built-in processor that gets every report carrying a ``job_id``."""

    name = NAME
    batch_size = 200

    def __init__(self, context: PluginContext, tracker: Tracker) -> None:
        super().__init__(context)
        self.tracker = tracker

    def wants(self, report: Report) -> bool:
        return report.job_id is not None

    async def process_batch(self, reports: Sequence[Report]) -> dict[int, BaseException]:
        outcomes = []
        for report in reports:
            job_id = parse_job_id(report.job_id)
            if job_id is None:
                log.info(
                    "job_id_ignored", certname=report.certname, report_id=report.id, job_id=report.job_id
                )
            else:
                outcomes.append((report, node_outcome(report, job_id)))
        if not outcomes:
            return {}
        try:
            # One transaction for the batch: one commit (fsync) for many reports.
            changes = await self.context.storage.record_node_outcomes([o for _, o in outcomes], time.time())
        except Exception:
            if len(outcomes) == 1:
                raise
            return await self._one_by_one(outcomes)  # one bad report must not hold up the others
        for (report, outcome), changed in zip(outcomes, changes, strict=True):
            self._recorded(report, outcome, changed)
        return {}

    async def _one_by_one(self, outcomes: list[tuple[Report, NodeOutcome]]) -> dict[int, BaseException]:
        failures: dict[int, BaseException] = {}
        for report, outcome in outcomes:
            try:
                changed = await self.context.storage.record_node_outcome(outcome, time.time())
            except Exception as error:
                assert report.id is not None  # a processor only gets spooled reports
                failures[report.id] = error
                continue
            self._recorded(report, outcome, changed)
        return failures

    def _recorded(self, report: Report, outcome: NodeOutcome, changed: bool) -> None:
        log.info(
            "job_node_reported",
            job_id=outcome.job_id,
            certname=report.certname,
            report_id=report.id,
            status=report.status,
            changed=changed,
        )
        self.tracker.notify(outcome.job_id)


class Tracker:
    """Starts jobs and their nodes' runs, and applies timeouts; one per application."""

    def __init__(self, context: PluginContext, pm: pluggy.PluginManager) -> None:
        self.context = context
        self.storage = context.storage
        self.default_timeout = context.config.job_timeout
        self._start_run = pm.hook.reportd_start_job_run
        self._runners: dict[int, asyncio.Task] = {}
        self._calls: set[asyncio.Task] = set()
        self._changed: dict[int, asyncio.Event] = {}
        self._deadlines_changed: asyncio.Event | None = None
        self.consumer = JobsConsumer(context, self)

    @property
    def has_trigger(self) -> bool:
        return bool(self._start_run.get_hookimpls())

    # -- lifecycle ---------------------------------------------------------------
    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        self._deadlines_changed = asyncio.Event()
        # Before the first request: timeouts that passed while reportd was down, then
        # jobs that were deployed but not started, or not started on every node.
        await self.apply_timeouts()
        for job_id in await self.storage.resumable_jobs():
            await self.launch(job_id)
        watcher = asyncio.create_task(self._watch_deadlines(), name="job-timeouts")
        yield
        watcher.cancel()
        tasks = [watcher, *self._runners.values(), *self._calls]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def apply_timeouts(self) -> list[int]:
        expired = await self.storage.expire_job_timeouts(time.time())
        for job_id in expired:
            log.warning("job_timed_out", job_id=job_id)
            self.notify(job_id)
        return expired

    async def _watch_deadlines(self) -> None:
        assert self._deadlines_changed is not None
        while True:
            delay = TIMEOUT_POLL
            try:
                # A read first: most polls find no deadline passed, and need no write.
                deadline = await self.storage.next_job_deadline()
                if deadline is not None and deadline <= time.time():
                    await self.apply_timeouts()
                    deadline = await self.storage.next_job_deadline()
                if deadline is not None:
                    delay = min(TIMEOUT_POLL, max(0.0, deadline - time.time()) + 0.005)
            except Exception:
                log.exception("job_timeouts_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._deadlines_changed.wait(), delay)
            self._deadlines_changed.clear()

    # -- jobs --------------------------------------------------------------------
    async def deploy(self, job: NewJob) -> int:
        job_id = await self.storage.create_job(job, time.time())
        log.info(
            "job_deployed",
            job_id=job_id,
            owner=job.owner_login,
            environment=job.environment,
            nodes=len(job.nodes),
            timeout=job.timeout,
        )
        await self.launch(job_id)
        if self._deadlines_changed is not None:
            self._deadlines_changed.set()
        return job_id

    async def launch(self, job_id: int) -> None:
        """Start the job if it is new, and its runner if a trigger plugin is loaded."""
        if await self.storage.start_job(job_id, time.time()):
            log.info("job_running", job_id=job_id)
        if self.has_trigger and job_id not in self._runners:
            task = asyncio.create_task(self._run(job_id), name=f"job:{job_id}")
            self._runners[job_id] = task
            task.add_done_callback(lambda _: self._runners.pop(job_id, None))

    async def stop(self, job_id: int) -> JobRecord | None:
        job = await self.storage.stop_job(job_id, time.time())
        if job is not None:
            log.info("job_stop_requested", job_id=job_id, state=job.state)
            self.notify(job_id)
        return job

    def notify(self, job_id: int) -> None:
        """Something about the job changed: its runner looks again now, not at its next poll."""
        event = self._changed.get(job_id)
        if event is not None:
            event.set()

    async def _run(self, job_id: int) -> None:
        """Start the job's ready nodes, never more than ``concurrency`` in flight."""
        changed = self._changed.setdefault(job_id, asyncio.Event())
        declined: set[str] = set()
        job: JobRun | None = None
        try:
            while True:
                changed.clear()
                record = await self.storage.get_job(job_id)
                if record is None or record.state != JOB_RUNNING:
                    return
                if job is None:
                    job = JobRun.from_record(record)
                nodes = await self.storage.job_nodes(job_id)
                waiting = [n.certname for n in nodes if n.state == NODE_READY and n.certname not in declined]
                if not waiting:
                    return
                in_flight = sum(1 for n in nodes if n.state == NODE_RUNNING)
                free = len(waiting) if job.concurrency is None else job.concurrency - in_flight
                # A declined node takes no place: go on down the list until the free places are
                # taken, so declining 50,000 nodes is one pass (and one log line), not a poll each.
                started, newly_declined = 0, 0
                for certname in waiting:
                    if started >= free:
                        break
                    if await self._start(job, certname):
                        started += 1
                    else:
                        declined.add(certname)
                        newly_declined += 1
                        if newly_declined % 1000 == 0:
                            await asyncio.sleep(0)  # a hook that declines never awaits: let requests in
                if newly_declined:
                    log.info("job_nodes_wait_for_reports", job_id=job_id, nodes=newly_declined)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), POLL_INTERVAL)
        except Exception:
            log.exception("job_runner_failed", job_id=job_id)
        finally:
            self._changed.pop(job_id, None)

    async def _start(self, job: JobRun, certname: str) -> bool:
        """Hand one node to the trigger hook; False when every trigger declined it."""
        try:
            call = self._start_run(context=self.context, job=job, certname=certname)
        except Exception as error:
            # A plain (not async) hook implementation that raised: the node errors, the runner goes on.
            await self._failed(job, certname, error)
            return True
        if call is None:  # logged by the caller, once for all the nodes it declined
            return False
        if not await self.storage.mark_node_running(job.id, certname, time.time()):
            # Another instance started it, the job was stopped meanwhile, or its concurrency is
            # used up (by another instance too): the node stays ready, to be tried again.
            if asyncio.iscoroutine(call):
                call.close()
            return True
        log.info("job_node_started", job_id=job.id, certname=certname)
        task = asyncio.create_task(self._await_run(job, certname, call), name=f"job:{job.id}:{certname}")
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        return True

    async def _await_run(self, job: JobRun, certname: str, call: Any) -> None:
        try:
            if inspect.isawaitable(call):
                await call
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await self._failed(job, certname, error)
        finally:
            self.notify(job.id)

    async def _failed(self, job: JobRun, certname: str, error: Exception) -> None:
        message = str(error) if isinstance(error, JobRunError) else f"{type(error).__name__}: {error}"
        errored = await self.storage.fail_node_start(job.id, certname, message, time.time())
        log.warning("job_node_run_failed", job_id=job.id, certname=certname, error=message, errored=errored)
