"""Background chores: run a job every so often, and drain work in small batches."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

log = structlog.get_logger("reportd.periodic")


async def drain(batch: Callable[[], Awaitable[int]], *, pause: float = 0.05) -> int:
    """Call ``batch`` until it returns 0; pausing between batches lets ingest commit."""
    total = 0
    while done := await batch():
        total += done
        await asyncio.sleep(pause)
    return total


@contextlib.asynccontextmanager
async def every(interval: float, job: Callable[[], Awaitable[object]], *, name: str) -> AsyncIterator[None]:
    """Run ``job`` now and then every ``interval`` seconds while the block is open."""

    async def loop() -> None:
        while True:
            try:
                await job()
            except Exception:
                log.exception("periodic_job_failed", job=name)
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop(), name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
