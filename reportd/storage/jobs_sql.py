"""The jobs storage written once for both SQL backends (see :mod:`reportd.storage.sql`).

Every operation that changes a job locks the job's row first (``{for_update}``),
so its nodes and state are changed by one transaction at a time, and every
transition is an ``UPDATE ... WHERE state = <expected>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from reportd.storage.jobs import (
    ERROR_TIMEOUT,
    ERROR_TRIGGER,
    JOB_FAILED,
    JOB_FINISHED,
    JOB_NEW,
    JOB_READY,
    JOB_RUNNING,
    JOB_STOPPED,
    JOB_STOPPING,
    NODE_ERRORED,
    NODE_FAILED,
    NODE_FINISHED,
    NODE_NEW,
    NODE_PENDING,
    NODE_READY,
    NODE_RUNNING,
    NODE_SKIPPED,
    JobEventRecord,
    JobNodeRecord,
    JobRecord,
    JobStorage,
    NewJob,
    NodeOutcome,
    StatusEntry,
)
from reportd.storage.sql import Query, SQLOperations, Steps
from reportd.storage.sql import count as _count
from reportd.storage.sql import marks as _marks
from reportd.storage.sql import row as _one
from reportd.storage.sql import rows as _all
from reportd.storage.sql import value as _value

# The backends' schema version 3 (types as in reportd.storage.sql.ddl).
MIGRATION = """
CREATE TABLE jobs (
    id {int64} PRIMARY KEY,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    owner_login TEXT NOT NULL,
    environment TEXT,
    options {blob} NOT NULL,
    description TEXT,
    timeout {float},
    deadline {float},
    timed_out INTEGER NOT NULL DEFAULT 0,
    created_at {float} NOT NULL,
    updated_at {float} NOT NULL,
    finished_at {float}
);
CREATE INDEX jobs_deadline ON jobs (timed_out, deadline);
CREATE TABLE job_status (
    job_id {int64} NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    enter_time {float} NOT NULL,
    exit_time {float},
    PRIMARY KEY (job_id, seq)
){without_rowid};
CREATE TABLE job_nodes (
    job_id {int64} NOT NULL,
    certname TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at {float} NOT NULL,
    error_kind TEXT,
    transaction_uuid TEXT,
    report_id {int64},
    start_time {float},
    finish_time {float},
    details {blob} NOT NULL,
    message TEXT,
    result {blob},
    events {blob},
    PRIMARY KEY (job_id, certname)
){without_rowid};
CREATE INDEX job_nodes_state ON job_nodes (job_id, state);
CREATE TABLE job_events (
    id {serial_pk},
    job_id {int64} NOT NULL,
    type TEXT NOT NULL,
    timestamp {float} NOT NULL,
    certname TEXT,
    detail {blob} NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX job_events_job ON job_events (job_id, id);
"""

# Advisory lock keys (PostgreSQL): one allocator of deploy ids at a time, and event
# ids handed out in commit order so a reader polling ``start=N`` never misses one.
JOB_ID_LOCK = 0x72706A69
EVENT_LOCK = 0x72706576
ACTIVE_JOB_STATES = (JOB_NEW, JOB_READY, JOB_RUNNING, JOB_STOPPING)
# The event of a report from a node outside a deployed job's scope (not one of PE's types:
# clients that do not know it skip it, and it changes nothing about the job).
EVENT_OUTSIDE_SCOPE = "node_outside_scope"
JOB_COLUMNS = (
    "id, type, state, owner_id, owner_login, environment, options, description, timeout, deadline,"
    " created_at, updated_at, finished_at"
)
NODE_COLUMNS = (
    "certname, state, updated_at, error_kind, transaction_uuid, report_id, start_time, finish_time,"
    " details, message, result"
)
ORDER_COLUMNS = {
    "owner": "owner_login",
    "timestamp": "updated_at",
    "environment": "coalesce(environment, '')",
    "name": "id",
    "state": "state",
}


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


def _loads(value: bytes | None) -> Any:
    return None if value is None else orjson.loads(value)


def _states(states: Sequence[str]) -> str:
    return ", ".join(f"'{s}'" for s in states)


def implicit_job_options(environment: str | None, noop: bool) -> dict[str, Any]:
    """The options of a job that a report created (no deploy asked for it)."""
    return {
        "concurrency": None,
        "noop": noop,
        "trace": False,
        "debug": False,
        "scope": {},
        "enforce_environment": False,
        "environment": environment,
        "evaltrace": False,
        "target": None,
    }


# -- drivers -------------------------------------------------------------------------


# -- the shared implementation --------------------------------------------------------


class SQLJobStorage(SQLOperations, JobStorage):
    """:class:`JobStorage` for both SQL backends."""

    async def create_job(self, job: NewJob, now: float) -> int:
        return await self._run_steps(lambda: _create_job(job, float(now)), write=True)

    async def start_job(self, job_id: int, now: float) -> bool:
        return await self._run_steps(lambda: _start_job(job_id, float(now)), write=True)

    async def get_job(self, job_id: int) -> JobRecord | None:
        jobs = await self._run_steps(lambda: _load_jobs([job_id]), write=False)
        return jobs[0] if jobs else None

    async def list_jobs(
        self, *, type: str | None, order_by: str | None, descending: bool, limit: int | None, offset: int
    ) -> tuple[list[JobRecord], int]:
        return await self._run_steps(
            lambda: _list_jobs(type, order_by, descending, limit, offset), write=False
        )

    async def job_nodes(self, job_id: int, *, with_events: bool = False) -> list[JobNodeRecord]:
        return await self._run_steps(lambda: _job_nodes(job_id, with_events), write=False)

    async def job_events(self, job_id: int, start: int) -> list[JobEventRecord]:
        return await self._run_steps(lambda: _job_events(job_id, start), write=False)

    async def last_job_event(self, job_id: int) -> int | None:
        return await self._run_steps(lambda: _last_job_event(job_id), write=False)

    async def mark_node_running(self, job_id: int, certname: str, now: float) -> bool:
        return await self._run_steps(lambda: _mark_node_running(job_id, certname, float(now)), write=True)

    async def record_node_outcome(self, outcome: NodeOutcome, now: float) -> bool:
        (changed,) = await self.record_node_outcomes([outcome], now)
        return changed

    async def record_node_outcomes(self, outcomes: Sequence[NodeOutcome], now: float) -> list[bool]:
        if not outcomes:
            return []
        return await self._run_steps(lambda: _record_node_outcomes(outcomes, float(now)), write=True)

    async def fail_node_start(self, job_id: int, certname: str, message: str, now: float) -> bool:
        return await self._run_steps(
            lambda: _fail_node_start(job_id, certname, message, float(now)), write=True
        )

    async def stop_job(self, job_id: int, now: float) -> JobRecord | None:
        return await self._run_steps(lambda: _stop_job(job_id, float(now)), write=True)

    async def expire_job_timeouts(self, now: float) -> list[int]:
        return await self._run_steps(lambda: _expire_job_timeouts(float(now)), write=True)

    async def next_job_deadline(self) -> float | None:
        return await self._run_steps(_next_job_deadline, write=False)

    async def resumable_jobs(self) -> list[int]:
        return await self._run_steps(_resumable_jobs, write=False)


# -- steps ---------------------------------------------------------------------------


class _EventLog:
    """Appends job events; on PostgreSQL the first one serializes event ids (commit order)."""

    def __init__(self) -> None:
        self.locked = False

    def add(
        self, job_id: int, type: str, now: float, certname: str | None, detail: Any, message: str
    ) -> Steps:
        if not self.locked:
            yield Query("SELECT pg_advisory_xact_lock(?)", (EVENT_LOCK,), "count", postgres_only=True)
            self.locked = True
        yield _count(
            "INSERT INTO job_events (job_id, type, timestamp, certname, detail, message)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            job_id, type, now, certname, _json(detail), message,
        )  # fmt: skip


def _lock_job(job_id: int) -> Steps:
    row = yield _one("SELECT state FROM jobs WHERE id = ?{for_update}", job_id)
    return row[0] if row else None


def _transition(job_id: int, old: str, new: str, now: float, events: _EventLog) -> Steps:
    ended = new in (JOB_FINISHED, JOB_FAILED, JOB_STOPPED)
    changed = yield _count(
        "UPDATE jobs SET state = ?, updated_at = ?, finished_at = ? WHERE id = ? AND state = ?",
        new, now, now if ended else None, job_id, old,
    )  # fmt: skip
    if not changed:
        return False
    yield _count("UPDATE job_status SET exit_time = ? WHERE job_id = ? AND exit_time IS NULL", now, job_id)
    seq = yield _value("SELECT coalesce(max(seq), 0) + 1 FROM job_status WHERE job_id = ?", job_id)
    yield _count(
        "INSERT INTO job_status (job_id, seq, state, enter_time) VALUES (?, ?, ?, ?)", job_id, seq, new, now
    )
    if new in (JOB_FINISHED, JOB_FAILED):
        yield from events.add(job_id, "job_finished", now, None, {"state": new}, f"Job {job_id} {new}")
    elif new == JOB_STOPPED:
        yield from events.add(job_id, "job_aborted", now, None, {"state": new}, f"Job {job_id} stopped")
    return True


def _settle_job(job_id: int, now: float, events: _EventLog) -> Steps:
    """Once no node is pending, the job ends: stopped, failed or finished (jobs.md)."""
    state = yield _value("SELECT state FROM jobs WHERE id = ?", job_id)
    counts = dict(
        (yield _all("SELECT state, count(*) FROM job_nodes WHERE job_id = ? GROUP BY state", job_id))
    )
    if not counts or any(counts.get(s) for s in NODE_PENDING):
        return
    if state == JOB_STOPPING:
        yield from _transition(job_id, state, JOB_STOPPED, now, events)
    elif state in (JOB_RUNNING, JOB_FINISHED, JOB_FAILED):
        # A report that arrives after the job ended (a new node of a job that reports created)
        # may still fail it.
        target = JOB_FAILED if counts.get(NODE_FAILED) or counts.get(NODE_ERRORED) else JOB_FINISHED
        if target != state:
            yield from _transition(job_id, state, target, now, events)


def _create_job(job: NewJob, now: float) -> Steps:
    yield Query("SELECT pg_advisory_xact_lock(?)", (JOB_ID_LOCK,), "count", postgres_only=True)
    deadline = now + job.timeout if job.timeout else None
    while True:
        candidate = yield _value("SELECT coalesce(max(id), 0) + 1 FROM jobs")
        # A report may create job N (its job_id) at any moment: then try N + 1.
        job_id = yield _value(
            "INSERT INTO jobs (id, type, state, owner_id, owner_login, environment, options, description,"
            " timeout, deadline, timed_out, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?) ON CONFLICT (id) DO NOTHING RETURNING id",
            candidate, job.type, JOB_NEW, job.owner_id, job.owner_login, job.environment,
            _json(job.options), job.description,
            float(job.timeout) if job.timeout else None, deadline, now, now,
        )  # fmt: skip
        if job_id is not None:
            break
    yield _count(
        "INSERT INTO job_status (job_id, seq, state, enter_time) VALUES (?, 1, ?, ?)", job_id, JOB_NEW, now
    )
    yield Query(
        "INSERT INTO job_nodes (job_id, certname, state, updated_at, details) VALUES (?, ?, ?, ?, ?)",
        [(job_id, certname, NODE_NEW, now, b"{}") for certname in job.nodes],
        "many",
    )
    return job_id


def _start_job(job_id: int, now: float) -> Steps:
    events = _EventLog()
    if (yield from _lock_job(job_id)) != JOB_NEW:
        return False
    yield from _transition(job_id, JOB_NEW, JOB_READY, now, events)
    yield from _transition(job_id, JOB_READY, JOB_RUNNING, now, events)
    yield _count(
        "UPDATE job_nodes SET state = ?, updated_at = ? WHERE job_id = ? AND state = ?",
        NODE_READY, now, job_id, NODE_NEW,
    )  # fmt: skip
    # Reports may have settled every node while the job waited to start (reportd was down).
    yield from _settle_job(job_id, now, events)
    return True


def _load_jobs(ids: Sequence[int]) -> Steps:
    if not ids:
        return []
    ids = list(ids)
    marks = _marks(ids)
    rows: list[Any] = yield _all(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id IN ({marks})", *ids)
    history: dict[int, list[StatusEntry]] = {}
    for job_id, state, enter, exit_ in (
        yield _all(
            f"SELECT job_id, state, enter_time, exit_time FROM job_status WHERE job_id IN ({marks})"
            " ORDER BY job_id, seq",
            *ids,
        )
    ):
        history.setdefault(job_id, []).append(StatusEntry(state, enter, exit_))
    counts: dict[int, dict[str, int]] = {}
    for job_id, state, count in (
        yield _all(
            f"SELECT job_id, state, count(*) FROM job_nodes WHERE job_id IN ({marks}) GROUP BY job_id, state",
            *ids,
        )
    ):
        counts.setdefault(job_id, {})[state] = int(count)
    by_id = {
        row[0]: JobRecord(
            *[
                *row[:6],
                orjson.loads(row[6]),
                *row[7:13],
                tuple(history.get(row[0], ())),
                counts.get(row[0], {}),
            ]
        )
        for row in rows
    }
    return [by_id[i] for i in ids if i in by_id]


def _list_jobs(
    type: str | None, order_by: str | None, descending: bool, limit: int | None, offset: int
) -> Steps:
    where, params = ("WHERE type = ?", [type]) if type else ("", [])
    total = yield _value(f"SELECT count(*) FROM jobs {where}", *params)
    direction = "DESC" if descending else "ASC"
    order = f"{ORDER_COLUMNS[order_by]} {direction}, id {direction}" if order_by else f"id {direction}"
    rows = yield _all(
        f"SELECT id FROM jobs {where} ORDER BY {order} LIMIT ? OFFSET ?",
        *params, limit if limit is not None else 2**62, offset,
    )  # fmt: skip
    jobs = yield from _load_jobs([row[0] for row in rows])
    return jobs, int(total)


def _node_record(row: Any, events: Any = None) -> JobNodeRecord:
    return JobNodeRecord(
        *[*row[:8], orjson.loads(row[8]), row[9], _loads(row[10]), _loads(events) if events else None]
    )


def _job_nodes(job_id: int, with_events: bool) -> Steps:
    columns = NODE_COLUMNS + (", events" if with_events else "")
    rows = yield _all(f"SELECT {columns} FROM job_nodes WHERE job_id = ? ORDER BY certname", job_id)
    if with_events:
        return [_node_record(row[:-1], row[-1] or b"[]") for row in rows]
    return [_node_record(row) for row in rows]


def _job_events(job_id: int, start: int) -> Steps:
    rows = yield _all(
        "SELECT id, job_id, type, timestamp, certname, detail, message FROM job_events"
        " WHERE job_id = ? AND id >= ? ORDER BY id",
        job_id, start,
    )  # fmt: skip
    found: list[Any] = rows
    return [JobEventRecord(*[*row[:5], orjson.loads(row[5]), row[6]]) for row in found]


def _last_job_event(job_id: int) -> Steps:
    return (yield _value("SELECT max(id) FROM job_events WHERE job_id = ?", job_id))


def _mark_node_running(job_id: int, certname: str, now: float) -> Steps:
    if (yield from _lock_job(job_id)) != JOB_RUNNING:
        return False
    # Checked under the job's lock: instances starting nodes of one job never exceed it together.
    concurrency = orjson.loads((yield _value("SELECT options FROM jobs WHERE id = ?", job_id))).get(
        "concurrency"
    )
    if concurrency is not None:
        running = yield _value(
            "SELECT count(*) FROM job_nodes WHERE job_id = ? AND state = ?", job_id, NODE_RUNNING
        )
        if running >= concurrency:
            return False
    message = f"Started puppet run on {certname}..."  # the seed's wording
    changed = yield _count(
        "UPDATE job_nodes SET state = ?, updated_at = ?, start_time = ?, message = ?"
        " WHERE job_id = ? AND certname = ? AND state = ?",
        NODE_RUNNING, now, now, message, job_id, certname, NODE_READY,
    )  # fmt: skip
    if changed:
        yield from _EventLog().add(job_id, "node_running", now, certname, {}, message)
    return bool(changed)


def _record_node_outcomes(outcomes: Sequence[NodeOutcome], now: float) -> Steps:
    events = _EventLog()
    first: dict[int, NodeOutcome] = {}
    for o in outcomes:
        first.setdefault(o.job_id, o)
    # Every job's row is locked before any event is written, in id order: two batches
    # (two instances) touching the same jobs wait for each other and never deadlock.
    for job_id in sorted(first):
        yield from _ensure_job(first[job_id], now)
        yield from _lock_job(job_id)
    changed = []
    for o in outcomes:
        changed.append((yield from _apply_outcome(o, now, events)))
    return changed


def _ensure_job(o: NodeOutcome, now: float) -> Steps:
    """The job a report names, created (owner unknown) when reportd does not know it."""
    created = yield _count(
        "INSERT INTO jobs (id, type, state, owner_id, owner_login, environment, options, description,"
        " timeout, deadline, timed_out, created_at, updated_at)"
        " VALUES (?, 'deploy', ?, 'unknown', 'unknown', ?, ?, NULL, NULL, NULL, 0, ?, ?)"
        " ON CONFLICT (id) DO NOTHING",
        o.job_id, JOB_RUNNING, o.environment,
        _json(implicit_job_options(o.environment, bool(o.result.get("noop")))), now, now,
    )  # fmt: skip
    if created:
        yield Query(
            "INSERT INTO job_status (job_id, seq, state, enter_time, exit_time) VALUES (?, ?, ?, ?, ?)",
            [
                (o.job_id, 1, JOB_NEW, now, now),
                (o.job_id, 2, JOB_READY, now, now),
                (o.job_id, 3, JOB_RUNNING, now, None),
            ],
            "many",
        )  # fmt: skip


def _apply_outcome(o: NodeOutcome, now: float, events: _EventLog) -> Steps:
    deadline, options = yield _one("SELECT deadline, options FROM jobs WHERE id = ?", o.job_id)
    row = yield _one(
        "SELECT state, error_kind, report_id, start_time, details, message FROM job_nodes"
        " WHERE job_id = ? AND certname = ?",
        o.job_id, o.certname,
    )  # fmt: skip
    details = {"metrics": dict(o.metrics)}
    settled = (
        o.state, o.transaction_uuid, o.report_id, o.start_time, o.finish_time, _json(details), o.message,
        _json(o.result), _json(list(o.events)),
    )  # fmt: skip
    event_type = "node_finished" if o.state == NODE_FINISHED else "node_failed"
    if row is None and orjson.loads(options).get("scope", {}).get("nodes"):
        # Deployed to named nodes: a run elsewhere that carries the job's id (a mistyped
        # --job_id, a node claiming a job) is shown among its events but never counts.
        return (yield from _note_outside_scope(o, now, events))
    if row is None:  # a job created by reports: every node that reports joins it
        yield _count(
            "INSERT INTO job_nodes (job_id, certname, updated_at, state, transaction_uuid, report_id,"
            " start_time, finish_time, details, message, result, events)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            o.job_id, o.certname, now, *settled,
        )  # fmt: skip
        yield from events.add(o.job_id, event_type, now, o.certname, details, o.message)
        yield from _settle_job(o.job_id, now, events)
        return True
    state, error_kind, report_id, start_time, old_details, old_message = row
    if report_id == o.report_id:
        return False
    newer_run = (
        state in (NODE_FINISHED, NODE_FAILED)
        and o.start_time is not None
        and (start_time is None or o.start_time > start_time)
    )
    in_time = (
        state == NODE_ERRORED
        and error_kind == ERROR_TIMEOUT
        and deadline is not None
        and o.received_at is not None
        and o.received_at <= deadline
    )
    # The report is the truth about a run that a trigger thought had failed to start.
    if (
        state in NODE_PENDING
        or (state == NODE_ERRORED and error_kind == ERROR_TRIGGER)
        or in_time
        or newer_run
    ):
        changed = yield _count(
            "UPDATE job_nodes SET updated_at = ?, error_kind = NULL, state = ?, transaction_uuid = ?,"
            " report_id = ?, start_time = ?, finish_time = ?, details = ?, message = ?, result = ?,"
            " events = ? WHERE job_id = ? AND certname = ? AND state = ?",
            now, *settled, o.job_id, o.certname, state,
        )  # fmt: skip
        if changed:
            yield from events.add(o.job_id, event_type, now, o.certname, details, o.message)
            yield from _settle_job(o.job_id, now, events)
        return bool(changed)
    if state in (NODE_ERRORED, NODE_SKIPPED):
        # Timed out or skipped: the job's verdict stands; the run's report is shown with it.
        merged = {**orjson.loads(old_details), "metrics": dict(o.metrics)}
        note = f"{old_message} (a report arrived afterwards: {o.message})"
        yield _count(
            "UPDATE job_nodes SET transaction_uuid = ?, report_id = ?, details = ?, message = ?, result = ?,"
            " events = ? WHERE job_id = ? AND certname = ? AND state = ?",
            o.transaction_uuid, o.report_id, _json({**merged, "message": note}), note, _json(o.result),
            _json(list(o.events)), o.job_id, o.certname, state,
        )  # fmt: skip
        return True
    return False  # an older run of a node that settled already


def _note_outside_scope(o: NodeOutcome, now: float, events: _EventLog) -> Steps:
    """An event of the job about a report from a node it was not deployed to; False if noted already."""
    detail = {"report_id": o.report_id, "state": o.state, "metrics": dict(o.metrics)}
    noted = yield _value(
        "SELECT count(*) FROM job_events WHERE job_id = ? AND certname = ? AND type = ? AND detail = ?",
        o.job_id, o.certname, EVENT_OUTSIDE_SCOPE, _json(detail),
    )  # fmt: skip
    if noted:  # the same report delivered again
        return False
    message = f"{o.certname} is not in the scope of job {o.job_id}: its report is not counted ({o.message})"
    yield from events.add(o.job_id, EVENT_OUTSIDE_SCOPE, now, o.certname, detail, message)
    return True


def _error_node(job_id: int, certname: str, kind: str, message: str, now: float, events: _EventLog) -> Steps:
    """A pending node becomes ``errored``, ``kind`` saying why (timeout, trigger); False if not pending."""
    details = {"message": message}
    changed = yield _count(
        f"UPDATE job_nodes SET state = ?, error_kind = ?, updated_at = ?, finish_time = ?, details = ?,"
        f" message = ? WHERE job_id = ? AND certname = ? AND state IN ({_states(NODE_PENDING)})",
        NODE_ERRORED, kind, now, now, _json(details), message, job_id, certname,
    )  # fmt: skip
    if changed:
        yield from events.add(job_id, "node_errored", now, certname, details, message)
    return bool(changed)


def _fail_node_start(job_id: int, certname: str, message: str, now: float) -> Steps:
    events = _EventLog()
    if (yield from _lock_job(job_id)) is None:
        return False
    changed = yield from _error_node(job_id, certname, ERROR_TRIGGER, message, now, events)
    if changed:
        yield from _settle_job(job_id, now, events)
    return changed


def _stop_job(job_id: int, now: float) -> Steps:
    events = _EventLog()
    state = yield from _lock_job(job_id)
    if state is None:
        return None
    if state in (JOB_NEW, JOB_READY, JOB_RUNNING):
        yield from _transition(job_id, state, JOB_STOPPING, now, events)
        waiting = yield _all(
            "SELECT certname FROM job_nodes WHERE job_id = ? AND state IN (?, ?) ORDER BY certname",
            job_id, NODE_NEW, NODE_READY,
        )  # fmt: skip
        for (certname,) in waiting:
            message = f"Skipped puppet run on {certname}: job {job_id} was stopped before it started"
            details = {"message": message}
            changed = yield _count(
                "UPDATE job_nodes SET state = ?, updated_at = ?, finish_time = ?, details = ?, message = ?"
                " WHERE job_id = ? AND certname = ? AND state IN (?, ?)",
                NODE_SKIPPED, now, now, _json(details), message, job_id, certname, NODE_NEW, NODE_READY,
            )  # fmt: skip
            if changed:
                yield from events.add(job_id, "node_skipped", now, certname, details, message)
        yield from _settle_job(job_id, now, events)
    jobs = yield from _load_jobs([job_id])
    return jobs[0]


def _seconds(value: float) -> str:
    return f"{value:g} second" + ("" if value == 1 else "s")


def _expire_job_timeouts(now: float) -> Steps:
    events = _EventLog()
    # Claiming (timed_out = 1) and applying happen in one transaction: once, by one caller.
    claimed = yield _all(
        "UPDATE jobs SET timed_out = 1 WHERE id IN (SELECT id FROM jobs WHERE timed_out = 0"
        f" AND deadline <= ? AND state IN ({_states(ACTIVE_JOB_STATES)}) ORDER BY id{{skip_locked}})"
        " RETURNING id, timeout",
        now,
    )  # fmt: skip
    for job_id, timeout in sorted(claimed):
        pending = yield _all(
            f"SELECT certname FROM job_nodes WHERE job_id = ? AND state IN ({_states(NODE_PENDING)})"
            " ORDER BY certname",
            job_id,
        )  # fmt: skip
        for (certname,) in pending:
            message = (
                f"Puppet run on {certname} timed out:"
                f" no report within the job's timeout of {_seconds(timeout)}"
            )
            yield from _error_node(job_id, certname, ERROR_TIMEOUT, message, now, events)
        state = yield _value("SELECT state FROM jobs WHERE id = ?", job_id)
        if state in (JOB_NEW, JOB_READY):  # never started: nothing more will happen to it
            yield from _transition(job_id, state, JOB_FAILED, now, events)
        else:
            yield from _settle_job(job_id, now, events)
    return sorted(job_id for job_id, _ in claimed)


def _next_job_deadline() -> Steps:
    return (
        yield _value(
            "SELECT min(deadline) FROM jobs WHERE timed_out = 0 AND deadline IS NOT NULL"
            f" AND state IN ({_states(ACTIVE_JOB_STATES)})"
        )
    )


def _resumable_jobs() -> Steps:
    rows = yield _all(
        "SELECT id FROM jobs WHERE state = ? OR (state = ? AND EXISTS"
        " (SELECT 1 FROM job_nodes n WHERE n.job_id = jobs.id AND n.state = ?)) ORDER BY id",
        JOB_NEW, JOB_RUNNING, NODE_READY,
    )  # fmt: skip
    return [row[0] for row in rows]
