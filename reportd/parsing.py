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
import gc
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from reportd.formats import Envelope, parse
from reportd.formats.decode import LARGE_JSON_BYTES
from reportd.formats.puppet import is_yaml
from reportd.model import Report

T = TypeVar("T")

#: Largest body parsed on the event loop: JSON decodes at about 100 MB/s, YAML at 5 MB/s.
INLINE_JSON_BYTES = LARGE_JSON_BYTES
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
        # A large parse makes millions of objects and no reference cycles: the cyclic
        # collector would only walk them, holding the interpreter (tens of ms a pass)
        # while the event loop waits. Reference counting frees them all the same.
        if not self._large_in_flight:
            gc.disable()
        self._large_in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)
        finally:
            self._large_in_flight -= 1
            if not self._large_in_flight:
                gc.enable()
                release_free_memory()

    async def parse(self, body: bytes, envelope: Envelope) -> Report:
        """:func:`reportd.formats.parse`, off the loop for a large body."""
        yaml = is_yaml_body(envelope.format, envelope.content_type, body)
        return await self.run(len(body), yaml, parse, body, envelope)


def rebuild(report_id: int, envelope: Mapping[str, Any], body: bytes) -> Report:
    """The report spooled as ``report_id``, parsed again from its body and envelope.

    Raises :class:`reportd.formats.ReportError` when the body no longer parses
    (a body accepted by an older release, under other limits).
    """
    report = parse(body, Envelope.from_dict(dict(envelope)))
    report.id = report_id
    return report


async def rebuild_off_loop(
    parser: ReportParser, report_id: int, envelope: Mapping[str, Any], body: bytes
) -> Report:
    """:func:`rebuild`, on a parse worker when the body is large (as at ingest)."""
    yaml = is_yaml_body(envelope["format"], envelope["content_type"], body)
    return await parser.run(len(body), yaml, rebuild, report_id, envelope, body)


def is_yaml_body(format: str, content_type: str, body: bytes) -> bool:
    """Whether ``body`` is parsed as YAML: the slower kind, sent to the pool sooner."""
    return format == "puppet" and is_yaml(content_type, body)


class ByteBudget:
    """An async semaphore counted in bytes: what request bodies may hold in memory at once.

    A holder's share grows as its body arrives, so a client that declares a large
    body and sends it slowly holds only what it has sent. Growing into what is
    free costs no await, the common case on every request. When the budget is
    spent, one holder at a time may overdraw (and keeps growing without waiting
    until it is done); the others wait for it. A holder that overdraws waits for
    nothing, so no two holders wait for each other, and what is held never passes
    the budget plus one body.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self.overdraft = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[Share]:
        share = Share(self)
        try:
            yield share
        finally:
            if share.overdrawing:
                self.overdraft.release()
            self.free += share.size


class Share:
    """One holder's part of a :class:`ByteBudget`."""

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.size = 0
        self.overdrawing = False

    async def grow_to(self, size: int) -> None:
        budget = self._budget
        if size <= self.size:
            return
        if budget.free < size - self.size and not self.overdrawing:
            await budget.overdraft.acquire()
            self.overdrawing = True
        budget.free -= size - self.size
        self.size = size


# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def tune_allocator() -> None:
    """Make glibc give memory back after large reports; call before any thread starts.

    By default each thread that allocates gets an arena of its own (the parse
    pool, the SQLite writer), and blocks above a threshold that grows with use
    come from those arenas instead of mmap: a burst of large reports leaves
    hundreds of MB held that nothing uses. One arena and a fixed 1 MiB mmap
    threshold hand it back (measured: bench/memory.py); the GIL serializes
    allocation anyway, so one arena costs no contention worth measuring. Not
    lower: at 256 KiB the buffers of every ordinary report came from mmap, and
    their page faults cost 7 % of ingest throughput (bench/ingest.py).
    """
    mallopt = getattr(_libc(), "mallopt", None) if _libc() else None
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, 1)
        mallopt(_M_MMAP_THRESHOLD, 1024 * 1024)
        mallopt(_M_TRIM_THRESHOLD, 16 * 1024 * 1024)


def release_free_memory() -> None:
    """Hand memory freed by large reports back to the system (glibc keeps it otherwise).

    In a thread of its own: trimming a large heap takes milliseconds the event
    loop must not wait for. One trim at a time; a request during one is dropped.
    """
    trim = _malloc_trim()
    if trim is not None and _trimming.acquire(blocking=False):
        threading.Thread(target=_trim, args=(trim,), name="malloc-trim", daemon=True).start()


_trimming = threading.Lock()


def _trim(trim: Callable[[int], int]) -> None:
    try:
        trim(0)
    finally:
        _trimming.release()


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def _malloc_trim() -> Callable[[int], int] | None:
    libc = _libc()
    return getattr(libc, "malloc_trim", None) if libc else None
