"""The ``puppetdb`` processor: forward every report to PuppetDB (``store report``, version 8).

spec/puppetdb.md. Every report, whatever its wire format, is converted from
the normalized model the way Puppet's own PuppetDB terminus converts a Puppet
report, into a body that satisfies PuppetDB's closed v8 schema (PuppetDB
accepts a command before validating it and silently drops an invalid one).

Delivery rides on reportd's per-processor queue: a PuppetDB that is down,
starting (503) or slow is retried with backoff; a 400 is permanent (dead
letter with PuppetDB's message). ``producer_timestamp`` is the time reportd
received the report, so every retry of a report is the same command and
PuppetDB stores it once.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import structlog

from reportd import (
    PermanentError,
    Processor,
    Report,
    Setting,
    as_bool,
    as_duration,
    as_path,
    as_positive_int,
    as_str,
    as_urls,
    hookimpl,
    one_of,
)

log = structlog.get_logger("reportd_plugins.puppetdb")

NAME = "puppetdb"
COMMAND_PATH = "/pdb/cmd/v1"
QUERY_PATH = "/pdb/query/v4/reports"
# PuppetDB's report status vocabulary; reportd's finer statuses fold into it.
PUPPET_STATUS = {"failed": "failed", "changed": "changed"}


@hookimpl
def reportd_declare_settings():
    return {
        NAME: {
            "urls": Setting("http://127.0.0.1:8080", as_urls, "PuppetDB base URLs"),
            "mode": Setting("failover", one_of("failover", "broadcast"), "first that answers, or each"),
            "include_unchanged_resources": Setting("false", as_bool, "send unchanged resources too"),
            "verify": Setting("false", as_bool, "confirm each report is stored by querying it back"),
            "wait_seconds": Setting("0", as_positive_int_or_zero, "secondsToWaitForCompletion (0: none)"),
            "timeout": Setting("30s", as_duration, "one request's timeout"),
            "max_in_flight": Setting("4", as_positive_int, "concurrent requests per PuppetDB"),
            "gzip": Setting("true", as_bool, "compress command bodies"),
            "producer": Setting("", as_str, "certname reported as producer (empty: none)"),
            "default_environment": Setting("production", as_str, "for reports that name none"),
            "ssl_cert": Setting("", as_path, "client certificate for PuppetDB's SSL port"),
            "ssl_key": Setting("", as_path, "its private key"),
            "ssl_ca": Setting("", as_path, "CA that signs PuppetDB's certificate"),
        }
    }


def as_positive_int_or_zero(value: str) -> int:
    number = int(value.strip()) if value.strip().isdigit() else -1
    if number < 0:
        raise ValueError(f"expected a whole number of seconds, got {value!r}")
    return number


@hookimpl
def reportd_register_processors():
    return [PuppetDBProcessor]


class TransientError(Exception):
    """PuppetDB could not take the command now; reportd retries later."""


def wire_time(moment: datetime) -> str:
    """UTC with milliseconds and ``Z``, as the terminus sends (PuppetDB keeps milliseconds)."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _uuid_or_none(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _value(value: Any) -> Any:
    """Event values as strings, as the terminus sends them (lists and maps as JSON)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value).lower() if isinstance(value, bool) else str(value)
    return orjson.dumps(value).decode()


def store_report_v8(
    report: Report, *, producer: str | None, include_unchanged: bool, default_environment: str
) -> dict[str, Any]:
    """The ``store report`` v8 body for ``report``; its ``producer_timestamp`` is the receive time."""
    start = report.start_time or report.received_at
    end = report.end_time or start
    resources = []
    for status in report.resource_statuses:
        if not (include_unchanged or status.events or status.skipped or status.failed):
            continue
        resource_time = wire_time(status.time or start)
        resources.append(
            {
                "skipped": status.skipped,
                "timestamp": resource_time,
                "resource_type": status.resource_type,
                "resource_title": status.title,
                "file": status.file,
                "line": status.line,
                "containment_path": list(status.containment_path),
                "corrective_change": status.corrective_change,
                "events": [
                    {
                        "status": event.status,
                        "timestamp": wire_time(event.time) if event.time else resource_time,
                        "property": event.property,
                        "name": event.name,
                        "new_value": _value(event.desired_value),
                        "old_value": _value(event.previous_value),
                        "message": event.message,
                        "corrective_change": event.corrective_change,
                    }
                    for event in status.events
                ],
            }
        )
    return {
        "certname": report.certname,
        "puppet_version": report.puppet_version or "",
        "report_format": report.report_format or 12,
        "configuration_version": report.configuration_version or "",
        "start_time": wire_time(start),
        "end_time": wire_time(end),
        "producer_timestamp": wire_time(report.received_at),
        "producer": producer,
        "corrective_change": report.corrective_change,
        "noop": report.noop,
        "noop_pending": report.noop_pending,
        "transaction_uuid": _uuid_or_none(report.transaction_uuid),
        "catalog_uuid": _uuid_or_none(report.catalog_uuid),
        "code_id": report.code_id,
        "job_id": report.job_id,
        "cached_catalog_status": report.cached_catalog_status,
        "status": PUPPET_STATUS.get(report.status, "unchanged"),
        "environment": report.environment or default_environment,
        "metrics": [
            {"category": category, "name": name, "value": value}
            for category, values in report.metrics.items()
            for name, value in values.items()
        ],
        "logs": [
            {
                "file": entry.file,
                "line": entry.line,
                "level": entry.level,
                "message": entry.message,
                "source": entry.source,
                "tags": list(entry.tags),
                "time": wire_time(entry.time or start),
            }
            for entry in report.logs
        ],
        "resources": resources,
    }


class PuppetDBProcessor(Processor):
    name = NAME
    batch_size = 32

    async def start(self) -> None:
        settings = self.context.plugin_settings(NAME)
        self.settings = settings
        self.urls = [url.rstrip("/") for url in settings["urls"]]
        if not self.urls:
            raise PermanentError("[plugin:puppetdb] urls is empty")
        self.request_timeout = aiohttp.ClientTimeout(total=settings["timeout"])
        # A batch's deadline follows from the requests it may need: a slow PuppetDB
        # that answers in time must not count as a failure.
        rounds = -(-self.batch_size // settings["max_in_flight"])
        self.timeout = settings["timeout"] * rounds * len(self.urls) + 30
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit_per_host=settings["max_in_flight"], ssl=self._ssl_context(settings)
            ),
            json_serialize=lambda data: orjson.dumps(data).decode(),
        )
        # Broadcast: which PuppetDBs already stored a report that is being retried.
        self.stored_at: dict[int | None, set[str]] = {}

    @staticmethod
    def _ssl_context(settings: Mapping[str, Any]) -> ssl.SSLContext | bool:
        if settings["ssl_ca"] is None and settings["ssl_cert"] is None:
            return True
        context = ssl.create_default_context(cafile=settings["ssl_ca"])
        if settings["ssl_cert"] is not None:
            context.load_cert_chain(settings["ssl_cert"], settings["ssl_key"])
        return context

    async def close(self) -> None:
        await self.session.close()

    async def process_batch(self, reports: Sequence[Report]) -> dict[int, BaseException]:
        outcomes = await asyncio.gather(*(self._forward(r) for r in reports), return_exceptions=True)
        failures: dict[int, BaseException] = {}
        for report, outcome in zip(reports, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                assert report.id is not None  # a processor only gets spooled reports
                failures[report.id] = outcome
        return failures

    async def _forward(self, report: Report) -> None:
        body = store_report_v8(
            report,
            producer=self.settings["producer"] or None,
            include_unchanged=self.settings["include_unchanged_resources"],
            default_environment=self.settings["default_environment"],
        )
        if self.settings["mode"] == "broadcast":
            done = self.stored_at.setdefault(report.id, set())
            errors = []
            for url in self.urls:
                if url in done:
                    continue
                try:
                    await self._submit(url, report, body)
                    done.add(url)
                except PermanentError:
                    raise
                except Exception as error:
                    errors.append(f"{url}: {error}")
            if errors:
                raise TransientError("; ".join(errors))
            del self.stored_at[report.id]
            return
        errors = []
        for url in self.urls:
            try:
                return await self._submit(url, report, body)
            except PermanentError:
                raise
            except Exception as error:  # this PuppetDB cannot take it now: try the next one
                errors.append(f"{url}: {error}")
        raise TransientError("; ".join(errors))

    async def _submit(self, url: str, report: Report, body: dict[str, Any]) -> None:
        params = {
            "command": "store_report",
            "version": "8",
            "certname": report.certname,
            "producer-timestamp": body["producer_timestamp"],
        }
        wait = self.settings["wait_seconds"]
        if wait:
            params["secondsToWaitForCompletion"] = str(wait)
        data = orjson.dumps(body)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.settings["gzip"]:
            headers["Content-Encoding"] = "gzip"
            headers["X-Uncompressed-Length"] = str(len(data))
            data = gzip.compress(data, 6)
        try:
            async with self.session.post(
                url + COMMAND_PATH, params=params, data=data, headers=headers, timeout=self.request_timeout
            ) as response:
                text = await response.text()
                if response.status == 400:
                    raise PermanentError(f"PuppetDB refused the command: {text.strip()[:500]}")
                if response.status != 200:
                    raise TransientError(f"HTTP {response.status}: {text.strip()[:200]}")
                answer = orjson.loads(text) if text else {}
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as error:
            raise TransientError(f"{type(error).__name__}: {error}") from None
        if wait and not answer.get("processed"):
            raise TransientError(f"not processed within {wait}s: {answer}")
        if self.settings["verify"]:
            await self._verify(url, report, body)
        log.debug("report_forwarded", certname=report.certname, report_id=report.id, puppetdb=url)

    async def _verify(self, url: str, report: Report, body: dict[str, Any]) -> None:
        """Query the report back: PuppetDB stores commands asynchronously."""
        query: list[Any] = [
            "and",
            ["=", "certname", body["certname"]],
            ["=", "producer_timestamp", body["producer_timestamp"]],
        ]
        if body["transaction_uuid"]:
            query.append(["=", "transaction_uuid", body["transaction_uuid"]])
        params = {"query": orjson.dumps(query).decode()}
        for delay in (0.1, 0.2, 0.5, 1, 2, 4):
            try:
                async with self.session.get(
                    url + QUERY_PATH, params=params, timeout=self.request_timeout
                ) as response:
                    if response.status == 200 and await response.json(loads=orjson.loads):
                        return
            except (aiohttp.ClientError, TimeoutError) as error:
                raise TransientError(f"verify: {type(error).__name__}: {error}") from None
            await asyncio.sleep(delay)
        raise TransientError(f"{url} accepted report {report.id} but does not show it")
