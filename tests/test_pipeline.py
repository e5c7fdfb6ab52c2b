"""The pipeline: a delivery is spooled for each processor that wants the report; a spooled
report is rebuilt as it was accepted."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson

from reportd import PluginContext, Processor
from reportd.config import load_config_string
from reportd.dispatch import RetryPolicy
from reportd.formats import Envelope, parse
from reportd.parsing import ReportParser
from reportd.pipeline import Pipeline
from reportd.storage import open_storage
from reportd.telemetry import Telemetry
from tests.support import sample


class Everything(Processor):
    name = "everything"


class JobsOnly(Processor):
    name = "jobs_only"

    def wants(self, report) -> bool:
        return report.job_id is not None


def received(certname: str, job_id: str | None):
    data = orjson.loads(sample("agent-changes.json"))
    data["host"] = certname
    if job_id is not None:
        data["job_id"] = job_id
    envelope = Envelope("puppet", "application/json", datetime.now(UTC), certname, "production")
    return parse(orjson.dumps(data), envelope), envelope


async def test_deliveries_only_for_the_processors_that_want_the_report(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/reportd.sqlite3")
    await storage.open()
    try:
        context = PluginContext(load_config_string(""), storage)
        pipeline = Pipeline(
            storage, [Everything(context), JobsOnly(context)], listed=["everything"],
            parser=ReportParser(workers=1), retry=RetryPolicy(3, 1.0, 1.0), timeout=5.0,
            telemetry=Telemetry(), cache_bytes=1024 * 1024,
        )  # fmt: skip
        plain, plain_envelope = received("a.example.test", None)
        of_job, job_envelope = received("b.example.test", "42")
        assert pipeline.recipients(plain) == ["everything"]
        assert pipeline.recipients(of_job) == ["everything", "jobs_only"]
        assert pipeline.listed == ["everything"]

        first = await pipeline.accept(plain, plain_envelope)
        stats = await storage.queue_stats()
        assert stats["everything"].pending == 1 and "jobs_only" not in stats
        second = await pipeline.accept(of_job, job_envelope)
        stats = await storage.queue_stats()
        assert (stats["everything"].pending, stats["jobs_only"].pending) == (2, 1)
        assert (plain.id, of_job.id) == (first.report_id, second.report_id)

        (spooled,) = await storage.load_spooled([second.report_id])
        rebuilt = await pipeline.rebuild(spooled)
        assert rebuilt.id == second.report_id
        assert rebuilt.to_dict() == of_job.to_dict()
    finally:
        await storage.close()


class Vandal(Processor):
    """Tries to change the report every other processor gets, in every way it could."""

    name = "vandal"
    attempts: list[str] = []

    async def process(self, report) -> None:
        for name, change in (
            ("certname", lambda: setattr(report, "certname", "someone-else.example.test")),
            ("metrics", lambda: report.metrics["time"].__setitem__("total", -1.0)),
            ("resource", lambda: setattr(report.resource_statuses[0], "failed", True)),
            ("logs", lambda: report.logs.append(None)),
            ("event", lambda: setattr(report.resource_statuses[0].events[0], "status", "failure")),
        ):
            try:
                change()
            except (AttributeError, TypeError):  # FrozenInstanceError is an AttributeError
                Vandal.attempts.append(name)
        report.certname = "someone-else.example.test"  # uncaught: this processor's delivery fails


class Witness(Processor):
    name = "witness"
    seen: list = []

    async def process(self, report) -> None:
        Witness.seen.append(report.to_dict())


async def test_a_processor_cannot_change_the_report_another_processor_gets(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/reportd.sqlite3")
    await storage.open()
    Vandal.attempts, Witness.seen = [], []
    try:
        context = PluginContext(load_config_string(""), storage)
        pipeline = Pipeline(
            storage, [Vandal(context), Witness(context)], listed=["vandal", "witness"],
            parser=ReportParser(workers=1), retry=RetryPolicy(1, 0.01, 0.01), timeout=5.0,
            telemetry=Telemetry(), cache_bytes=1024 * 1024,
        )  # fmt: skip
        report, envelope = received("a.example.test", None)
        assert report.resource_statuses[0].events, "the sample's first resource has an event"
        expected = None
        pipeline.start()
        try:
            accepted = await pipeline.accept(report, envelope)
            expected = report.to_dict()
            for _ in range(500):
                stats = await storage.queue_stats()
                if Witness.seen and stats.get("vandal") and stats["vandal"].dead == 1:
                    break
                await asyncio.sleep(0.01)
        finally:
            await pipeline.stop(5.0)
        assert Vandal.attempts == ["certname", "metrics", "resource", "logs", "event"]
        assert Witness.seen == [expected]
        assert expected["certname"] == "a.example.test" and expected["id"] == accepted.report_id
        assert (await storage.queue_stats())["vandal"].dead == 1  # its failure is its own
        assert "witness" not in await storage.queue_stats()  # delivered
    finally:
        await storage.close()
