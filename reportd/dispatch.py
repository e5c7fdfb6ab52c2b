"""Deliver every accepted report to every processor that wants it, durably.

One worker task per processor claims due deliveries from storage (so a
restart resumes where the last run stopped), hands them over in batches and
records the outcome: done, retry later (exponential backoff with jitter), or
dead letter. A processor that raises or exceeds its timeout delays only its
own deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import structlog

from reportd.model import Report
from reportd.parsing import release_free_memory
from reportd.processor import PermanentError, Processor
from reportd.storage import Claim, DeliveryFailure, SpooledReport, Storage
from reportd.telemetry import Telemetry

log = structlog.get_logger("reportd.dispatch")

POLL_INTERVAL = 1.0  # also picks up retries made from the CLI
#: Body bytes of the reports handed to one call of ``process_batch``, at most (one report
#: larger than that goes alone): a batch of large reports rebuilt at once is bounded memory.
BATCH_BYTES = 32 * 1024 * 1024
#: Spooled reports read from storage in one query.
LOAD_CHUNK = 16
#: A body at least this large, let go, has its memory handed back to the system (glibc
#: keeps it otherwise). Smaller ones' memory is reused by the allocator as it is: a trim
#: per batch of small reports cost a quarter of ingest throughput.
LARGE_BYTES = 1024 * 1024


@dataclass
class ProcessorStats:
    delivered: int = 0
    failures: int = 0
    dead_letters: int = 0
    batch_seconds: float = 0.0


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    initial: float
    maximum: float

    def delay(self, attempts: int) -> float:
        # Full exponential growth capped at `maximum`, then jitter so that many
        # reports failing together do not retry together.
        base = min(self.maximum, self.initial * 2 ** max(0, attempts - 1))
        return base * random.uniform(0.5, 1.0)


class Dispatcher:
    def __init__(
        self,
        storage: Storage,
        processors: Sequence[Processor],
        *,
        rebuild: Callable[[SpooledReport], Awaitable[Report]],
        retry: RetryPolicy,
        timeout: float,
        telemetry: Telemetry | None = None,
        clock: Callable[[], float] = time.time,
        cache_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        """``rebuild`` makes a report of its spooled body again, when it is no longer cached."""
        self._storage = storage
        self._rebuild_spooled = rebuild
        self._retry = retry
        self._timeout = timeout
        self._clock = clock
        self._telemetry = telemetry or Telemetry()
        self._cache = _ReportCache(cache_bytes)
        self._workers = {p.name: _Worker(p) for p in processors}
        self._stopping = False
        self.stats = {p.name: ProcessorStats() for p in processors}
        for name in self.stats:  # a series from the start, so that rate() sees the first failure
            self._telemetry.processor_failures.labels(name)

    def start(self) -> None:
        for worker in self._workers.values():
            worker.task = asyncio.create_task(self._run(worker), name=f"processor:{worker.processor.name}")

    def submit(self, report: Report, recipients: Iterable[str]) -> None:
        """A report was just spooled for ``recipients``: keep it at hand and wake their workers.

        Other workers stay asleep: a claim is a database write, not to be made per report.
        """
        assert report.id is not None
        woken = [self._workers[name] for name in recipients]
        self._cache.add(report, {w.processor.name for w in woken})
        for worker in woken:
            worker.wake.set()

    async def stop(self, grace: float) -> None:
        """Let running batches end (for at most ``grace`` seconds), then close processors."""
        self._stopping = True
        workers = self._workers.values()
        for worker in workers:
            worker.wake.set()
        tasks = [w.task for w in workers if w.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for worker in workers:
            if worker.started:
                try:
                    await worker.processor.close()
                except Exception:
                    log.exception("processor_close_failed", processor=worker.processor.name)

    async def _run(self, worker: _Worker) -> None:
        processor = worker.processor
        errors = 0
        while not self._stopping:
            try:
                if not worker.started:
                    await processor.start()
                    worker.started = True
                if worker.unsettled:  # a failure left leases of a batch no one is delivering
                    await self._storage.give_back_leases(processor.name)
                    worker.unsettled = False
                claims = await self._storage.claim(
                    processor.name, processor.batch_size, self._clock(), self._lease(processor)
                )
                if claims:
                    await self._deliver(processor, claims)
            except Exception:
                # A processor that cannot start, or storage that fails to record an
                # outcome: back off; leased deliveries come back when the lease ends.
                errors += 1
                worker.unsettled = worker.started
                log.exception("processor_worker_error", processor=processor.name)
                await worker.idle(min(60.0, self._retry.delay(errors)))
                continue
            errors = 0
            if not claims:
                await worker.idle(POLL_INTERVAL)

    def _lease(self, processor: Processor) -> float:
        return (processor.timeout or self._timeout) * 2 + 30

    async def _deliver(self, processor: Processor, claims: list[Claim]) -> None:
        """Hand the claimed reports over in batches of bounded size, then record each outcome."""
        async for reports, failures in self._batches([c.report_id for c in claims]):
            started = time.monotonic()
            if reports:
                failures.update(await self._call(processor, reports))
            elapsed = time.monotonic() - started
            if reports:
                self._telemetry.processor_seconds.labels(processor.name).observe(elapsed)
            stats = self.stats[processor.name]
            stats.batch_seconds += elapsed
            done = [i for i in map(_spool_id, reports) if i not in failures]
            await self._storage.finish(processor.name, done)
            stats.delivered += len(done)
            if failures:
                await self._record_failures(processor, claims, reports, failures)
            released = [self._cache.delivered(_spool_id(r), processor.name) for r in reports]
            released += [self._cache.delivered(report_id, processor.name) for report_id in failures]
            if max(released, default=0) >= LARGE_BYTES:
                release_free_memory()

    async def _call(self, processor: Processor, reports: list[Report]) -> dict[int, BaseException]:
        """The failures of one batch. When the batch as a whole raises, its halves are
        tried apart (down to single reports), so one report a processor cannot take
        fails alone and the others are delivered. A timeout fails the whole batch: a
        processor that hangs is not asked again and again within one delivery."""
        timeout = processor.timeout or self._timeout
        try:
            result = await asyncio.wait_for(processor.process_batch(reports), timeout)
        except TimeoutError:
            error = TimeoutError(f"processor took longer than {timeout:g}s")
            return dict.fromkeys(map(_spool_id, reports), error)
        except Exception as error:
            if len(reports) == 1:
                return {_spool_id(reports[0]): error}
            middle = len(reports) // 2
            log.info(
                "processor_batch_split", processor=processor.name, reports=len(reports), error=str(error)
            )
            failures = await self._call(processor, reports[:middle])
            failures.update(await self._call(processor, reports[middle:]))
            return failures
        return dict(result or {})

    async def _record_failures(
        self,
        processor: Processor,
        claims: list[Claim],
        reports: list[Report],
        failures: dict[int, BaseException],
    ) -> None:
        now = self._clock()
        certnames = {r.id: r.certname for r in reports}
        rows = []
        stats = self.stats[processor.name]
        for claim in claims:
            error = failures.get(claim.report_id)
            if error is None:
                continue
            attempts = claim.attempts + 1
            dead = isinstance(error, PermanentError) or attempts >= self._retry.max_attempts
            delay = self._retry.delay(attempts)
            message = f"{type(error).__name__}: {error}".replace("\x00", "")
            rows.append(DeliveryFailure(claim.report_id, attempts, message, now + delay, dead))
            stats.failures += 1
            stats.dead_letters += dead
            self._telemetry.processor_failures.labels(processor.name).inc()
            log.warning(
                "processor_dead_letter" if dead else "processor_failed",
                processor=processor.name,
                report_id=claim.report_id,
                certname=certnames.get(claim.report_id),
                attempt=attempts,
                retry_in=None if dead else round(delay, 1),
                error=message,
            )
        await self._storage.fail(processor.name, rows)

    async def _batches(self, ids: list[int]) -> AsyncIterator[tuple[list[Report], dict[int, BaseException]]]:
        """The reports of ``ids`` in id order, from the cache or rebuilt from the spool, in
        batches of at most :data:`BATCH_BYTES` of bodies; a report that cannot be rebuilt
        is a failure of its own (permanent: retrying cannot change a spooled body)."""
        batch: list[Report] = []
        failures: dict[int, BaseException] = {}
        size = 0
        for start in range(0, len(ids), LOAD_CHUNK):
            chunk = sorted(ids[start : start + LOAD_CHUNK])
            cached = {i: r for i in chunk if (r := self._cache.get(i)) is not None}
            missing = [i for i in chunk if i not in cached]
            spooled = {s.report_id: s for s in await self._storage.load_spooled(missing)} if missing else {}
            for report_id in chunk:
                report = cached.get(report_id)
                if report is None:
                    report = await self._rebuild(report_id, spooled.get(report_id), failures)
                    spooled.pop(report_id, None)  # its body is in the report now, or failed
                    if report is None:
                        continue
                if batch and size + len(report.raw) > BATCH_BYTES:
                    yield batch, failures
                    batch, failures, size = [], {}, 0
                batch.append(report)
                size += len(report.raw)
        if batch or failures:
            yield batch, failures

    async def _rebuild(self, report_id: int, spooled, failures: dict[int, BaseException]) -> Report | None:
        if spooled is None:
            failures[report_id] = PermanentError("spooled report body is gone")
            return None
        try:
            return await self._rebuild_spooled(spooled)
        except Exception as error:  # whatever the parser does, it fails this report alone
            failures[report_id] = PermanentError(f"spooled report unreadable: {error}")
            return None


class _ReportCache:
    """Accepted reports kept parsed until every processor woken for them has had them.

    Bounded by the size of their bodies; the oldest go first, and are rebuilt
    from the spool if a processor still needs them.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._size = 0
        self._reports: OrderedDict[int, tuple[Report, set[str]]] = OrderedDict()

    def add(self, report: Report, processors: set[str]) -> None:
        assert report.id is not None
        if not processors or len(report.raw) > self._max_bytes:
            return
        self._reports[report.id] = (report, set(processors))
        self._size += len(report.raw)
        while self._size > self._max_bytes:
            _, (evicted, _) = self._reports.popitem(last=False)
            self._size -= len(evicted.raw)

    def get(self, report_id: int) -> Report | None:
        entry = self._reports.get(report_id)
        return entry[0] if entry else None

    def delivered(self, report_id: int, processor: str) -> int:
        """Note that ``processor`` had the report; the bytes of body let go, if it was the last."""
        entry = self._reports.get(report_id)
        if entry is None:
            return 0
        entry[1].discard(processor)
        if entry[1]:
            return 0
        del self._reports[report_id]
        self._size -= len(entry[0].raw)
        return len(entry[0].raw)


class _Worker:
    def __init__(self, processor: Processor) -> None:
        self.processor = processor
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.started = False
        self.unsettled = False

    async def idle(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)
        self.wake.clear()


def _spool_id(report: Report) -> int:
    assert report.id is not None, "a report is delivered only once spooled"
    return report.id
