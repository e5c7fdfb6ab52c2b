"""The processor base class: what a plugin subclasses to receive every report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from reportd.context import PluginContext
    from reportd.model import Report


class PermanentError(Exception):
    """Raise from a processor when retrying cannot help (the report goes to dead letters)."""


class Processor:
    """A named consumer of reports, driven by reportd's durable delivery.

    Each enabled processor gets every accepted report it :meth:`wants` at least once, in the
    background, in ascending report id order (retries aside). A report whose
    processing raises is retried with exponential backoff and jitter; after
    ``[reportd] max_attempts`` failures, or at once on :class:`PermanentError`,
    it becomes a dead letter (``reportd queue``, ``reportd queue retry``).

    Override :meth:`process` for one report at a time, or :meth:`process_batch`
    (with a larger :attr:`batch_size`) to handle several in one go. Since
    delivery is at-least-once, processing must be idempotent: a report may
    come again after a crash. Keep the event loop free: run blocking work with
    ``asyncio.to_thread``.
    """

    #: The name used in ``[reportd] processors`` and ``[plugin:NAME]``.
    name: ClassVar[str] = ""
    #: Most reports handed to :meth:`process_batch` at once.
    batch_size: ClassVar[int] = 1
    #: Seconds a batch may take; None means ``[reportd] processor_timeout``. A processor may
    #: set it per instance (from its settings, in ``start``).
    timeout: float | None = None

    def __init__(self, context: PluginContext) -> None:
        self.context = context

    def wants(self, report: Report) -> bool:
        """Whether this processor takes ``report``: decided once, when the report is
        accepted, and a delivery is spooled only if so. Every report, unless overridden."""
        return True

    async def start(self) -> None:
        """Called once before the first report; open connections here."""

    async def close(self) -> None:
        """Called once at shutdown, after the last batch."""

    async def process(self, report: Report) -> None:
        raise NotImplementedError(f"{type(self).__name__} must override process()")

    async def process_batch(self, reports: Sequence[Report]) -> Mapping[int, BaseException] | None:
        """Process several reports; return the failures by report id (or raise for all)."""
        failures: dict[int, BaseException] = {}
        for report in reports:
            try:
                await self.process(report)
            except Exception as error:  # one report's failure must not fail the others
                assert report.id is not None  # a processor only gets spooled reports
                failures[report.id] = error
        return failures
