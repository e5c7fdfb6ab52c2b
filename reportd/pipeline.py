"""The path of a parsed report: spooled durably, then delivered to the processors that want it.

Ingest handlers authenticate, read and parse, then call :meth:`Pipeline.accept`;
nothing else in the HTTP layer knows which processors exist. Each processor says
itself which reports it takes (:meth:`reportd.processor.Processor.wants`), so the
built-in job tracker is an ordinary processor that wants reports with a ``job_id``.
:func:`reportd.parsing.rebuild` is the one place a spooled body becomes a report again
(for the dispatcher, the store's read API, the CLI and the e-mail digest).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from reportd.dispatch import Dispatcher, RetryPolicy
from reportd.formats import Envelope
from reportd.model import Report, seal
from reportd.parsing import ReportParser, rebuild_off_loop
from reportd.processor import Processor
from reportd.storage import Accepted, InboxEntry, SpooledReport, Storage
from reportd.telemetry import Telemetry


def idempotency_key(report: Report) -> str:
    """The same run sent twice is one report.

    Puppet's ``transaction_uuid`` and Chef's ``run_id`` identify a run;
    Foreman-style uploads have only the host and ``reported_at``.
    """
    if report.transaction_uuid:
        return f"{report.format}:{report.certname}:{report.transaction_uuid}"
    if report.format == "foreman" and "reported_at" in report.extra:
        return f"foreman:{report.certname}:{report.extra['reported_at']}"
    return f"{report.format}:{report.certname}:sha256:{hashlib.sha256(report.raw).hexdigest()}"


class Pipeline:
    """Accept reports into the spool and deliver them to the processors that want them.

    ``listed`` are the processors named in ``[reportd] processors``, in order:
    what a Puppet agent is told received its report. Built-in processors (the
    job tracker) take part in delivery like any other, but are not listed.
    """

    def __init__(
        self,
        storage: Storage,
        processors: Sequence[Processor],
        *,
        listed: Sequence[str],
        parser: ReportParser,
        retry: RetryPolicy,
        timeout: float,
        telemetry: Telemetry,
        cache_bytes: int,
    ) -> None:
        self._storage = storage
        self._processors = tuple(processors)
        self._parser = parser
        self.listed = list(listed)
        self.dispatcher = Dispatcher(
            storage,
            self._processors,
            rebuild=self.rebuild,
            retry=retry,
            timeout=timeout,
            telemetry=telemetry,
            cache_bytes=cache_bytes,
        )

    @property
    def processor_names(self) -> list[str]:
        """Every processor that takes part in delivery, listed or built in."""
        return [p.name for p in self._processors]

    def recipients(self, report: Report) -> list[str]:
        """The processors that want ``report``: a delivery is spooled for each of them."""
        return [p.name for p in self._processors if p.wants(report)]

    async def accept(self, report: Report, envelope: Envelope) -> Accepted:
        """Durably spool ``report`` (group-committed), then hand it to the dispatcher.

        Raises what the storage raises when it cannot commit (see
        :func:`reportd.storage.unavailable_errors`): then nothing was acknowledged.
        """
        entry = InboxEntry(
            idempotency_key=idempotency_key(report),
            certname=report.certname,
            format=envelope.format,
            received_at=envelope.received_at.timestamp(),
            envelope=report.envelope,  # the envelope it was parsed with, as a dict already
            body=report.raw,
        )
        recipients = self.recipients(report)
        accepted = await self._storage.accept(entry, recipients)
        report.id = accepted.report_id
        seal(report)  # from here on shared by every processor that wants it
        if not accepted.duplicate:
            self.dispatcher.submit(report, recipients)
        return accepted

    async def rebuild(self, spooled: SpooledReport) -> Report:
        """A spooled report parsed again (off the loop when large), sealed for the processors."""
        return seal(await rebuild_off_loop(self._parser, spooled.report_id, spooled.envelope, spooled.body))

    def start(self) -> None:
        self.dispatcher.start()

    async def stop(self, grace: float) -> None:
        await self.dispatcher.stop(grace)
