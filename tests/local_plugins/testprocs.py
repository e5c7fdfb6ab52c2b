"""Processors for the tests, loaded through ``plugin_paths`` like a site's own plugin.

``recorder`` appends every delivery to a JSON-lines file, ``flaky`` fails each
report ``fail_times`` times before recording it, ``broken`` always fails and
``slow`` sleeps past any timeout, ``unready`` cannot start ``fail_times`` times,
``picky`` records batches but raises for a whole batch that holds a certname
starting with ``poison`` (a third-party processor's bug).
"""

import asyncio
from pathlib import Path

import orjson

from reportd import PermanentError, Processor, Setting, hookimpl
from reportd.settings import as_int, as_str


@hookimpl
def reportd_declare_settings():
    return {
        "testprocs": {
            "path": Setting("", as_str, "JSON-lines file of deliveries"),
            "fail_times": Setting("3", as_int, "failures before flaky succeeds"),
            "permanent": Setting("false", lambda v: v.strip() == "true", "broken raises PermanentError"),
        }
    }


@hookimpl
def reportd_register_processors():
    return [Recorder, Flaky, Broken, Slow, Unready, Picky]


class Recorder(Processor):
    name = "recorder"
    batch_size = 50

    def record(self, reports) -> None:
        path = self.context.plugin_settings("testprocs")["path"]
        lines = b"".join(
            orjson.dumps({"processor": self.name, "id": r.id, "certname": r.certname, "status": r.status})
            + b"\n"
            for r in reports
        )
        with Path(path).open("ab") as file:
            file.write(lines)

    async def process_batch(self, reports):
        self.record(reports)


class Flaky(Recorder):
    name = "flaky"
    batch_size = 1

    def __init__(self, context):
        super().__init__(context)
        self.attempts: dict[int, int] = {}

    async def process(self, report):
        self.attempts[report.id] = self.attempts.get(report.id, 0) + 1
        if self.attempts[report.id] <= self.context.plugin_settings("testprocs")["fail_times"]:
            raise ConnectionError(f"flaky failure {self.attempts[report.id]}")
        self.record([report])

    async def process_batch(self, reports):
        return await super(Recorder, self).process_batch(reports)


class Broken(Processor):
    name = "broken"

    async def process(self, report):
        if self.context.plugin_settings("testprocs")["permanent"]:
            raise PermanentError("this report can never be processed")
        raise RuntimeError("broken processor")


class Slow(Processor):
    name = "slow"
    timeout = 0.2

    async def process(self, report):
        await asyncio.sleep(3600)


class Unready(Recorder):
    name = "unready"

    def __init__(self, context):
        super().__init__(context)
        self.starts = 0

    async def start(self):
        self.starts += 1
        if self.starts <= self.context.plugin_settings("testprocs")["fail_times"]:
            raise ConnectionError("backend not up yet")


class Picky(Recorder):
    name = "picky"
    batch_size = 50

    async def process_batch(self, reports):
        if any(r.certname.startswith("poison") for r in reports):
            raise ValueError(f"cannot handle a batch of {len(reports)}")
        self.record(reports)
