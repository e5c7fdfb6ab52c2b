"""The pipeline: a delivery is spooled for each processor that wants the report; a spooled
report is rebuilt as it was accepted."""

from __future__ import annotations

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
from tests.conftest import sample


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
