"""Memory and event-loop stalls under hostile and huge bodies (issue: the input boundary).

    python bench/memory.py                 # the three scenarios, with the default limits

Starts a real ``reportd serve`` on its defaults (SQLite, store + metrics) and, while a
prober asks ``/healthz`` every 20 ms and the daemon's RSS (its whole process tree) is
sampled every 20 ms, runs:

a. 20 reports of the largest accepted body size, one after another (JSON, as agents PUT);
b. 2 concurrent largest YAML bodies (the ``http`` report processor's POST);
c. a YAML alias bomb ("billion laughs", a few KB), sent 10 times.

After each it waits for the processors to drain and for memory to settle, and prints
peak RSS, RSS before and after, and /healthz latency (max and p99) during the scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
import yaml
from ingest import free_port, proc_tree, status_kb
from reportgen import make_report

REPO_DIR = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def tree_rss_mb(pid: int) -> float:
    return sum(status_kb(p, "VmRSS") for p in proc_tree(pid)) / 1024


class Watch:
    """RSS of the daemon's tree and /healthz latency, sampled every 20 ms in the background."""

    def __init__(self, pid: int, url: str) -> None:
        self.pid, self.url = pid, url
        self.peak = 0.0
        self.latencies: list[float] = []
        self.unhealthy = 0
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> Watch:
        self.peak = tree_rss_mb(self.pid)
        self._tasks = [asyncio.create_task(self._rss()), asyncio.create_task(self._health())]
        return self

    async def __aexit__(self, *_) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _rss(self) -> None:
        while True:
            self.peak = max(self.peak, tree_rss_mb(self.pid))
            await asyncio.sleep(0.02)

    async def _health(self) -> None:
        # Its own connection, so a slow ingest request never queues the probe behind it.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            while True:
                started = time.perf_counter()
                try:
                    async with session.get(f"{self.url}/healthz") as response:
                        await response.read()
                        self.unhealthy += response.status != 200
                except aiohttp.ClientError:
                    self.unhealthy += 1
                self.latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)

    def health_ms(self) -> tuple[float, float]:
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("nan")
        return max(ordered, default=float("nan")) * 1000, p99 * 1000


def largest_json(limit: int, rng: random.Random) -> bytes:
    """A generated agent report just under ``limit`` bytes."""
    per_resource = len(make_report("sizing.bench.example.test", 1000, rng)) / 1000
    count = int(limit / per_resource)
    while True:
        body = make_report("node-00000.bench.example.test", count, rng)
        if len(body) <= limit:
            return body
        count = int(count * 0.98)


def as_yaml(body: bytes) -> bytes:
    return yaml_of(orjson.loads(body))


def yaml_of(report: dict) -> bytes:
    # Shared objects are written once and aliased after, as Ruby's Psych does.
    dumped = yaml.dump(report, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), width=1 << 20)
    return b"--- !ruby/object:Puppet::Transaction::Report\n" + dumped.encode()


def largest_yaml(limit: int, rng: random.Random) -> bytes:
    body = as_yaml(largest_json(limit, rng))
    while len(body) > limit:
        body = as_yaml(largest_json(int(limit * limit / len(body) * 0.99), rng))
    return body


def billion_laughs() -> bytes:
    report = orjson.loads(make_report("bomb.bench.example.test", 5, random.Random(1)))
    level: list = ["lol"] * 9
    for _ in range(8):
        level = [level] * 9
    for status in report["resource_statuses"].values():
        status["tags"] = level
    return yaml_of(report)  # never through JSON: that would expand it


def fresh(body: bytes, index: int, yaml_body: bool = False) -> tuple[str, bytes]:
    """The body with its own certname and transaction_uuid, same size."""
    certname = f"node-{index:05d}.bench.example.test"
    body = body.replace(b"node-00000.bench.example.test", certname.encode())
    marker = b"transaction_uuid: " if yaml_body else b'"transaction_uuid":"'
    start = body.index(marker) + len(marker)
    return certname, body[:start] + str(uuid.uuid4()).encode() + body[start + 36 :]


async def drained(session: aiohttp.ClientSession, url: str) -> None:
    while True:
        async with session.get(f"{url}/api/v1/queue") as response:
            if all(p["pending"] == 0 for p in (await response.json())["processors"].values()):
                return
        await asyncio.sleep(0.2)


async def settle(pid: int, seconds: float) -> float:
    """RSS once it stopped falling (or after ``seconds``)."""
    last = tree_rss_mb(pid)
    for _ in range(int(seconds / 0.5)):
        await asyncio.sleep(0.5)
        now = tree_rss_mb(pid)
        if abs(now - last) < 1:
            return now
        last = now
    return last


async def scenario(name, pid, url, session, run) -> dict:
    await drained(session, url)
    before = await settle(pid, 10)
    started = time.monotonic()
    async with Watch(pid, url) as watch:
        statuses = await run()
        await drained(session, url)
    seconds = time.monotonic() - started
    after = await settle(pid, 20)
    worst, p99 = watch.health_ms()
    return {
        "scenario": name, "statuses": statuses, "seconds": round(seconds, 1), "before_mb": round(before),
        "peak_mb": round(watch.peak), "after_mb": round(after), "healthz_max_ms": round(worst, 1),
        "healthz_p99_ms": round(p99, 1), "healthz_failures": watch.unhealthy,
    }  # fmt: skip


def start_daemon(port: int, data_dir: Path) -> subprocess.Popen:
    """``reportd serve`` on its defaults, its log in the data directory."""
    argv = [
        sys.executable,
        "-m",
        "reportd",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(data_dir),
    ]
    with (data_dir / "reportd.log").open("wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_DIR,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


async def main_async(args: argparse.Namespace) -> int:
    rng = random.Random(7)
    limit = args.max_body_size * MIB
    print(f"building bodies of up to {args.max_body_size} MiB ...", file=sys.stderr)
    big_json = largest_json(limit, rng)
    big_yaml = largest_yaml(limit, rng)
    bomb = billion_laughs()
    print(f"json {len(big_json) / MIB:.1f} MiB, yaml {len(big_yaml) / MIB:.1f} MiB, bomb {len(bomb)} B",
          file=sys.stderr)  # fmt: skip

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="reportd-memory-") as data_dir:
        process = start_daemon(port, Path(data_dir))
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
                for _ in range(100):
                    try:
                        async with session.get(f"{url}/healthz") as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.1)

                async def put(index: int) -> int:
                    certname, body = fresh(big_json, index)
                    async with session.put(
                        f"{url}/puppet/v3/report/{certname}?environment=production",
                        data=body,
                        headers={"Content-Type": "application/json"},
                    ) as response:
                        return response.status  # fmt: skip

                async def post_yaml(index: int, body: bytes) -> int:
                    _, body = fresh(body, index, yaml_body=True)
                    async with session.post(
                        f"{url}/reports/upload", data=body, headers={"Content-Type": "application/x-yaml"}
                    ) as response:
                        return response.status  # fmt: skip

                async def twenty_in_a_row() -> list[int]:
                    return [await put(i) for i in range(1, 21)]

                async def two_yaml() -> list[int]:
                    return list(await asyncio.gather(post_yaml(100, big_yaml), post_yaml(101, big_yaml)))

                async def bombs() -> list[int]:
                    return [await post_yaml(200 + i, bomb) for i in range(10)]

                # Steady state first: one ordinary report, so that what starts lazily (the
                # metrics renderer's process, the parse pool) is in "before".
                async with session.put(
                    f"{url}/puppet/v3/report/warm.bench.example.test?environment=production",
                    data=make_report("warm.bench.example.test", 50, rng),
                    headers={"Content-Type": "application/json"},
                ) as response:
                    assert response.status == 200
                await drained(session, url)
                await asyncio.sleep(3)
                results = [
                    await scenario("a: 20 largest JSON in a row", process.pid, url, session, twenty_in_a_row),
                    await scenario("b: 2 largest YAML at once", process.pid, url, session, two_yaml),
                    await scenario("c: YAML alias bomb x10", process.pid, url, session, bombs),
                ]
        finally:
            process.terminate()
            await asyncio.to_thread(process.wait, 30)
    print(f"\nmax_body_size {args.max_body_size} MiB; json {len(big_json) / MIB:.1f} MiB,"
          f" yaml {len(big_yaml) / MIB:.1f} MiB, bomb {len(bomb)} bytes\n")  # fmt: skip
    header = ("scenario", "answers", "s", "RSS before", "peak", "after", "healthz max ms", "p99 ms", "failed")
    print(" | ".join(header))
    for r in results:
        answers = ",".join(f"{s}x{r['statuses'].count(s)}" for s in sorted(set(r["statuses"])))
        cells = [r["scenario"], answers, r["seconds"], f"{r['before_mb']} MB", f"{r['peak_mb']} MB",
                 f"{r['after_mb']} MB", r["healthz_max_ms"], r["healthz_p99_ms"],
                 r["healthz_failures"]]  # fmt: skip
        print(" | ".join(map(str, cells)))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-body-size", type=int, default=8, help="MiB; the daemon's default is 8")
    raise SystemExit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
