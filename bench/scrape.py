"""How long a /metrics scrape of N nodes takes, and whether it holds up ingest.

Starts a real daemon (store + metrics), loads N distinct nodes through HTTP,
then times scrapes: the first after the load (every node's samples rendered
then), later ones (only changed nodes re-rendered), and ingest latency at a
fixed rate with and without a scrape every second.

    python bench/scrape.py --nodes 10000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from ingest import free_port, start_server, stop_server, wait_ready
from reportgen import make_report


async def load_nodes(session: aiohttp.ClientSession, url: str, bodies: list[tuple[str, bytes]]) -> float:
    started = time.perf_counter()
    queue: asyncio.Queue = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            certname, body = queue.get_nowait()
            async with session.put(f"{url}/puppet/v3/report/{certname}?environment=production", data=body,
                                   headers={"Content-Type": "application/json"}) as response:  # fmt: skip
                assert response.status == 200, await response.text()

    await asyncio.gather(*(worker() for _ in range(32)))
    return time.perf_counter() - started


async def drained(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(1200):
        async with session.get(f"{url}/api/v1/queue") as response:
            queue = await response.json()
        if all(p["pending"] == 0 for p in queue["processors"].values()):
            return
        await asyncio.sleep(0.1)
    raise SystemExit("the processors did not catch up")


async def scrape(session: aiohttp.ClientSession, url: str) -> tuple[float, int]:
    """Seconds a scrape took and its size in bytes, measured by curl in its own process.

    Reading tens of megabytes here would delay this process's paced load and blame
    the server for it; curl discards the body, as far as this process is concerned.
    """
    curl = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-o", "/dev/null", "-w", "%{time_total} %{size_download}", f"{url}/metrics",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output, _ = await curl.communicate()
    seconds, size = output.split()
    return float(seconds), int(float(size))


async def paced_ingest(session, url, bodies, rate: float, seconds: float) -> list[float]:
    latencies: list[float] = []
    start = time.perf_counter()

    async def one(index: int) -> None:
        await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
        certname, body = bodies[index % len(bodies)]
        scheduled = start + index / rate
        async with session.put(f"{url}/puppet/v3/report/{certname}?environment=production", data=body,
                               headers={"Content-Type": "application/json"}) as response:  # fmt: skip
            await response.read()
        latencies.append(time.perf_counter() - scheduled)

    await asyncio.gather(*(one(i) for i in range(int(rate * seconds))))
    return sorted(latencies)


def p99(values: list[float]) -> float:
    return values[min(len(values) - 1, int(len(values) * 0.99))] * 1000


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(1)
    names = [f"node-{i:05d}.bench.example.test" for i in range(args.nodes)]
    bodies = [(name, make_report(name, args.resources, rng)) for name in names]
    fresh = [(c, make_report(c, args.resources, rng)) for c, _ in bodies[: args.rate * args.seconds]]
    with tempfile.TemporaryDirectory(prefix="scrape-bench-") as data_dir:
        port = free_port()
        config = Path(data_dir) / "reportd.ini"
        config.write_text("[reportd]\nprocessors = store, metrics\n")
        argv = [sys.executable, "-m", "reportd", "--config", str(config), "serve",
                "--listen", f"127.0.0.1:{port}", "--data-dir", str(Path(data_dir) / "data")]  # fmt: skip
        process = start_server(argv, Path(data_dir) / "reportd.log")
        url = f"http://127.0.0.1:{port}"
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=120)
        ) as session:
            await wait_ready(session, f"{url}/api/v1/queue", process)
            seconds = await load_nodes(session, url, bodies)
            await drained(session, url)
            print(f"$ python bench/scrape.py --nodes {args.nodes} --resources {args.resources}")
            print(f"loaded {args.nodes} nodes ({args.resources} resources each) in {seconds:.1f} s")
            first, size = await scrape(session, url)
            print(f"first scrape   {first * 1000:7.0f} ms  {size / 1e6:.1f} MB (every node rendered)")
            later = [(await scrape(session, url))[0] for _ in range(5)]
            median, worst = statistics.median(later) * 1000, max(later) * 1000
            print(f"later scrapes  {median:7.0f} ms median, {worst:.0f} ms max")
            quiet = await paced_ingest(session, url, fresh, args.rate, args.seconds)

            async def scrape_periodically() -> list[float]:
                times = []
                deadline = time.perf_counter() + args.seconds
                while time.perf_counter() + args.scrape_interval < deadline + 0.5:
                    await asyncio.sleep(args.scrape_interval)
                    times.append((await scrape(session, url))[0])
                return times

            busy, scrapes = await asyncio.gather(
                paced_ingest(session, url, fresh[::-1], args.rate, args.seconds), scrape_periodically()
            )
            print(f"scrapes during ingest ({args.rate}/s): {statistics.median(scrapes) * 1000:.0f} ms median,"
                  f" {max(scrapes) * 1000:.0f} ms max")  # fmt: skip
            print(f"ingest p99 at {args.rate}/s: {p99(quiet):.1f} ms without scrapes,"
                  f" {p99(busy):.1f} ms with a scrape every {args.scrape_interval:g} s")  # fmt: skip
        await stop_server(process)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--resources", type=int, default=20)
    parser.add_argument("--rate", type=int, default=200, help="ingest reports/s while scraping")
    parser.add_argument("--seconds", type=int, default=10, help="length of each paced-ingest phase")
    parser.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between scrapes")
    asyncio.run(main(parser.parse_args()))
