"""Where bodies become reports: on the event loop when small, in a bounded pool when large.

A small body (the common 10 to 100 KB agent report) parses faster than a hand-over
to a thread would take. A large one would hold the event loop (and with it
every other client and ``/healthz``) for as long as it takes, so it goes to a
pool of ``parse_workers`` threads: the decoders run Python code between short
C calls, so the loop gets the interpreter back every switch interval, and the
pool's size bounds how many large parses, each costing a few times its body
in memory, run at once. Requests beyond that wait their turn in the pool's queue.

Request bodies held at once are bounded separately, by :class:`ByteBudget`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from reportd.formats import Envelope, parse
from reportd.formats.puppet import is_yaml
from reportd.model import Report

T = TypeVar("T")

#: Largest body parsed on the event loop: JSON decodes at about 100 MB/s, YAML at 5 MB/s.
INLINE_JSON_BYTES = 512 * 1024
INLINE_YAML_BYTES = 32 * 1024


class ReportParser:
    """Parses on the loop or in the pool by size; one per application."""

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._large_in_flight = 0

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def run(self, size: int, yaml: bool, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)``, at once when ``size`` is small for its kind, else in the pool."""
        if size <= (INLINE_YAML_BYTES if yaml else INLINE_JSON_BYTES):
            return function(*args)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="parse")
        self._large_in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)
        finally:
            self._large_in_flight -= 1
            if not self._large_in_flight:
                release_free_memory()

    async def parse(self, body: bytes, envelope: Envelope) -> Report:
        """:func:`reportd.formats.parse`, off the loop for a large body."""
        yaml = envelope.format == "puppet" and is_yaml(envelope.content_type, body)
        return await self.run(len(body), yaml, parse, body, envelope)


class ByteBudget:
    """An async semaphore counted in bytes: what request bodies may hold in memory at once.

    A holder takes what it knows it needs (a body's Content-Length) and grows
    its share as more arrives (a gzip body decodes to more than it declared).
    One holder may take the whole budget, so a body of any accepted size is
    never refused, only made to wait.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._turn = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[Share]:
        share = Share(self)
        try:
            await share.grow_to(size)
            yield share
        finally:
            await self._give_back(share.size)

    async def _take(self, size: int) -> None:
        async with self._turn:
            await self._turn.wait_for(lambda: self.free >= size)
            self.free -= size

    async def _give_back(self, size: int) -> None:
        if size:
            async with self._turn:
                self.free += size
                self._turn.notify_all()


class Share:
    """One holder's part of a :class:`ByteBudget`."""

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.size = 0

    async def grow_to(self, size: int) -> None:
        size = min(size, self._budget.total)
        if size > self.size:
            await self._budget._take(size - self.size)
            self.size = size


def release_free_memory() -> None:
    """Hand memory freed by a large parse back to the system (glibc keeps it otherwise)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
