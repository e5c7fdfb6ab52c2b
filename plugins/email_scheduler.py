"""The scheduler: every poll, each schedule's latest period is claimed, built and mailed.

Sent once: the period is claimed in the database (``claim_schedule_run``) before
anything is built, and marked sent only after the SMTP server accepted the mail.
A send that fails releases the claim with a time for the next attempt (doubling
from ``retry_initial`` to ``retry_max``); after ``max_attempts`` the period is
given up. A claimer that dies leaves a lease that runs out after ``claim_lease``.

Time comes from a :class:`Clock`, so tests move it by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import structlog
from prometheus_client import Counter

from reportd import RUN_EMPTY, RUN_PENDING, RUN_SENT, Schedule, ScheduleQuery, Storage

from .email_digest import Digest, build_digest, message
from .email_periods import ONCE, Period, from_micros, latest_period

log = structlog.get_logger("reportd_plugins.email")

# outcomes of one schedule in one poll, also the label of the counter
SENT, EMPTY, FAILED, GAVE_UP = "sent", "empty", "failed", "given_up"


class Clock:
    """The real time; tests pass their own with the same two methods."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class SMTPSettings:
    host: str
    port: int
    security: str  # auto | starttls | tls | none
    user: str
    password_file: Path | None
    sender: str
    timeout: float
    ca_file: Path | None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> SMTPSettings:
        return cls(
            host=settings["host"],
            port=settings["port"],
            security=settings["security"],
            user=settings["user"],
            password_file=settings["password_file"],
            sender=settings["from"] or f"reportd@{socket.getfqdn()}",
            timeout=settings["timeout"],
            ca_file=settings["ca_file"],
        )


class Mailer:
    """Hands a message to the SMTP server; returns only once the server accepted it."""

    def __init__(self, settings: SMTPSettings) -> None:
        self.settings = settings

    @property
    def security(self) -> str:
        """The TLS mode in force: ``auto`` with a user is ``starttls``.

        Opportunistic TLS is stripped (no STARTTLS offered) or faked (any certificate
        taken) by whoever sits in between: a password goes only over TLS to a server
        whose certificate was verified, as Postfix's ``noplaintext`` default has it.
        """
        s = self.settings
        return "starttls" if s.security == "auto" and s.user else s.security

    def _password_and_tls(self) -> tuple[str | None, ssl.SSLContext]:
        # Files read here (the password, the CA bundle): run off the event loop.
        s = self.settings
        password = None
        if s.password_file is not None:
            # Read at every send: a rotated password needs no restart.
            password = s.password_file.read_text().rstrip("\r\n")
        context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        if self.security == "auto" and s.ca_file is None:
            # Opportunistic, as between MTAs: encrypt when offered, whatever the certificate
            # (a local Postfix's snakeoil one); starttls and tls verify it.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return password, context

    async def send(self, mail: EmailMessage) -> None:
        s = self.settings
        password, context = await asyncio.to_thread(self._password_and_tls)
        await aiosmtplib.send(
            mail,
            hostname=s.host,
            port=s.port,
            use_tls=self.security == "tls",
            # auto: STARTTLS when the server offers it; starttls: refuse to go on without it
            start_tls={"auto": None, "starttls": True, "tls": False, "none": False}[self.security],
            tls_context=context,
            username=s.user or None,
            password=password if s.user else None,
            timeout=s.timeout,
        )


class EmailMetrics:
    def __init__(self, registry) -> None:
        self.digests = Counter(
            "reportd_email_digests",
            "Schedule periods handled, by outcome: sent, empty (a failures schedule with nothing"
            " failed), failed (a send failed; retried), given_up (after max_attempts).",
            ["outcome"],
            registry=registry,
        )
        for outcome in (SENT, EMPTY, FAILED, GAVE_UP):
            self.digests.labels(outcome)


@dataclass(frozen=True)
class RetryPolicy:
    initial: float
    maximum: float
    max_attempts: int

    def delay(self, failures: int) -> float:
        """Seconds before the next attempt after ``failures`` failed ones."""
        return min(self.maximum, self.initial * 2 ** max(0, failures - 1))


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Scheduler:
    def __init__(
        self,
        storage: Storage,
        mailer: Mailer,
        *,
        clock: Clock,
        retry: RetryPolicy,
        metrics: EmailMetrics,
        poll_interval: float,
        lease: float,
        settle: float = 0.0,
        owner: str | None = None,
    ) -> None:
        self.storage = storage
        self.mailer = mailer
        self.clock = clock
        self.retry = retry
        self.metrics = metrics
        self.poll_interval = poll_interval
        self.lease = lease
        # Reports are stored by processors, after their acceptance: a run that ended just
        # before the period's end may not be in the store yet when the period ends.
        self.settle = settle
        self.owner = owner or new_owner()
        # schedule id -> the start of its latest period known to be done: most polls find
        # nothing to do, and should not cost a write (a claim attempt) per schedule
        self._done: dict[str, int] = {}

    async def run_forever(self) -> None:
        log.info("email_scheduler_started", owner=self.owner, poll_interval=self.poll_interval)
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("email_scheduler_poll_failed")
            await self.clock.sleep(self.poll_interval)

    async def tick(self) -> dict[str, str]:
        """One poll over every schedule; what happened to each that was due, by id."""
        schedules, _ = await self.storage.list_schedules(ScheduleQuery())
        outcomes = {}
        for schedule in schedules:
            try:
                outcome = await self.run_schedule(schedule)
            # this schedule's problem (storage, a timezone gone from tzdata): not the others'
            except Exception:
                log.exception("email_schedule_failed", schedule_id=schedule.id)
                continue
            if outcome is not None:
                outcomes[schedule.id] = outcome
        return outcomes

    async def run_schedule(self, schedule: Schedule) -> str | None:
        now = self.clock.now()
        settled = now if schedule.schedule == ONCE else now - self.settle  # once: at creation
        period = latest_period(
            schedule.schedule,
            schedule.timezone,
            datetime.fromtimestamp(settled, UTC),
            created=from_micros(schedule.scheduled_at),
        )
        if period is None or self._done.get(schedule.id) == period.start_us:
            return None
        latest = await self.storage.schedule_runs(schedule.id, 1)
        if latest and latest[0].period_start == period.start_us and latest[0].state != RUN_PENDING:
            self._done[schedule.id] = period.start_us  # done by another instance, or before a restart
            return None
        claim = await self.storage.claim_schedule_run(
            schedule.id, period.start_us, period.end_us, self.owner, now, self.lease
        )
        if claim is None:  # done, held by another instance, or waiting for its retry time
            return None
        bound = log.bind(schedule_id=schedule.id, period=period.label, attempt=claim.attempts + 1)
        try:
            digest = await build_digest(self.storage, schedule, period)
            if schedule.type == "failures" and not digest.has_failures:
                await self.storage.finish_schedule_run(
                    schedule.id, period.start_us, RUN_EMPTY, self.clock.now()
                )
                self._done[schedule.id] = period.start_us
                self.metrics.digests.labels(EMPTY).inc()
                bound.info("email_digest_empty", reason="no failed runs")
                return EMPTY
            await self.mailer.send(message(digest, self.mailer.settings.sender, self.clock.now()))
        except asyncio.CancelledError:
            # Shutdown mid-send: give the period back, so that the next start (or another
            # instance) sends it now rather than after the lease. Had the server already
            # accepted it, it is resent with the same Message-ID, as after a crash.
            with contextlib.suppress(Exception):
                await self.storage.release_schedule_run(schedule.id, period.start_us, self.owner)
            bound.info("email_digest_interrupted", reason="shutdown")
            raise
        except Exception as error:
            return await self._failed(schedule, period, claim.attempts + 1, error, bound)
        # Only now, with the server's acceptance: a crash before this line resends.
        if not await self.storage.finish_schedule_run(
            schedule.id, period.start_us, RUN_SENT, self.clock.now()
        ):
            bound.warning("email_schedule_deleted_while_sending")
        self._done[schedule.id] = period.start_us
        self.metrics.digests.labels(SENT).inc()
        bound.info("email_digest_sent", to=list(schedule.send_to), subject=digest.subject)
        return SENT

    async def _failed(
        self, schedule: Schedule, period: Period, failures: int, error: Exception, bound
    ) -> str:
        reason = f"{type(error).__name__}: {error}"
        give_up = failures >= self.retry.max_attempts
        retry_at = self.clock.now() + self.retry.delay(failures)
        await self.storage.fail_schedule_run(schedule.id, period.start_us, reason, retry_at, give_up)
        if give_up:
            self._done[schedule.id] = period.start_us
            self.metrics.digests.labels(GAVE_UP).inc()
            bound.error("email_digest_given_up", error=reason, attempts=failures)
            return GAVE_UP
        self.metrics.digests.labels(FAILED).inc()
        bound.warning("email_digest_failed", error=reason, retry_in=round(retry_at - self.clock.now(), 3))
        return FAILED


async def preview(storage: Storage, schedule: Schedule, now: float) -> Digest:
    """The digest of the schedule's latest ended period (for a dry run), even one that
    ended before the schedule was created; a ``once`` schedule's own period."""
    created = from_micros(schedule.scheduled_at) if schedule.schedule == "once" else from_micros(0)
    period = latest_period(
        schedule.schedule, schedule.timezone, datetime.fromtimestamp(now, UTC), created=created
    )
    assert period is not None
    return await build_digest(storage, schedule, period)
