"""Ingest benchmark: Puppet reports PUT to reportd, and to a bare aiohttp server.

    python bench/ingest.py --resources 50 --duration 60

For each target a server is started on a free 127.0.0.1 port, loaded for a 2 s
warm-up and then for --duration seconds by --processes worker processes sharing
--connections keep-alive connections, and stopped with SIGTERM. See bench/README.md
for what the figures mean.

Load model: with --rate 0 (closed loop) every connection sends its next report as
soon as the previous answer arrives; latency is measured from the send. With
--rate R (open loop) reports are scheduled every 1/R s whatever the server does,
and latency is measured from the *scheduled* time, so time spent waiting for a free
connection counts: a stalled server cannot hide its stall by slowing the client down
(coordinated omission).

A request belongs to the measured window if it was started (closed loop) or scheduled
(open loop) inside it. All times are time.monotonic(), which on Linux is one
system-wide clock, so worker and parent timestamps compare directly.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from reportgen import BodyTemplate, certname, make_template

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WARMUP_SECONDS = 2.0
REQUEST_TIMEOUT = 30.0
READY_TIMEOUT = 60.0
DRAIN_CAP = 120.0
EXIT_TIMEOUT = 30.0
SAMPLE_INTERVAL = 1.0
TEMPLATES = 16
QUEUE_PATH = "/api/v1/queue"
# What a Puppet 7 agent sends (shared/samples/puppet/agent-changes.request.json).
HEADERS = {
    "X-Puppet-Version": "7.23.0",
    "User-Agent": "Puppet/7.23.0 Ruby/3.1.7-p261 (x86_64-linux-gnu)",
    "Accept": "application/json, text/pson",
    "Content-Type": "application/json",
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- load generator (runs in the worker processes) ---------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    processes: int
    base_url: str
    connections: int
    rate: float  # reports/s for this worker; 0 = closed loop
    offset: float  # open loop: this worker's slots fall between the others'
    templates: tuple[BodyTemplate, ...]
    nodes: int
    warmup: float
    duration: float


@dataclass
class Recorder:
    window_start: float
    window_end: float
    latencies: array = field(default_factory=lambda: array("d"))
    accepted_at: array = field(default_factory=lambda: array("d"))
    errors: Counter = field(default_factory=Counter)
    outside_errors: Counter = field(default_factory=Counter)
    sent: int = 0
    bytes_sent: int = 0

    def record(self, start: float, done: float, size: int, error: str | None) -> None:
        if error is None:
            # All of them, warm-up included: the parent needs the accepted count at
            # any instant to turn the store's pending count into a finished count.
            self.accepted_at.append(done)
        if not self.window_start <= start < self.window_end:
            if error is not None:
                self.outside_errors[error] += 1
            return
        self.sent += 1
        self.bytes_sent += size
        if error is None:
            self.latencies.append(done - start)
        else:
            self.errors[error] += 1


class Bodies:
    """Unique report bodies from the pre-generated pool, cheap enough per request."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.count = 0

    def next(self) -> tuple[str, bytes]:
        spec, n = self.spec, self.count
        self.count += 1
        node = certname((spec.index + n * spec.processes) % spec.nodes)
        template = spec.templates[n % len(spec.templates)]
        body = template.render(node.encode(), str(uuid.uuid4()).encode())
        return f"{spec.base_url}/puppet/v3/report/{node}?environment=production", body


async def send(session: aiohttp.ClientSession, url: str, body: bytes) -> str | None:
    """PUT one report; None when accepted, else the error's name."""
    try:
        async with session.put(url, data=body, headers=HEADERS) as response:
            payload = await response.read()
            if response.status != 200:
                return str(response.status)
            if not isinstance(orjson.loads(payload), list):
                return "200 without a JSON array"
            return None
    except TimeoutError:
        return "timeout"
    except orjson.JSONDecodeError:
        return "200 without JSON"
    except aiohttp.ClientError as exc:
        return type(exc).__name__


async def closed_loop(session, spec: WorkerSpec, recorder: Recorder, bodies: Bodies) -> None:
    async def connection() -> None:
        while (start := time.monotonic()) < recorder.window_end:
            url, body = bodies.next()
            error = await send(session, url, body)
            recorder.record(start, time.monotonic(), len(body), error)

    await asyncio.gather(*(connection() for _ in range(spec.connections)))


async def open_loop(session, spec: WorkerSpec, recorder: Recorder, bodies: Bodies, t0: float) -> None:
    # Our own semaphore rather than the connector's queue, so reports waiting for a
    # connection are not rendered (and held in memory) before their turn.
    free = asyncio.Semaphore(spec.connections)

    async def one(scheduled: float) -> None:
        async with free:
            url, body = bodies.next()
            error = await send(session, url, body)
        recorder.record(scheduled, time.monotonic(), len(body), error)

    tasks: set[asyncio.Task] = set()
    interval = 1.0 / spec.rate
    for n in range(math.ceil((recorder.window_end - t0) * spec.rate)):
        scheduled = t0 + spec.offset + n * interval
        if scheduled >= recorder.window_end:
            break
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if not tasks:
        return
    # A backlog longer than the request timeout means the server is far behind the
    # target rate; what is still waiting then counts as an error, not as a delay.
    _, late = await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT)
    for task in late:
        task.cancel()
    if late:
        recorder.errors["not sent: backlog"] += len(late)
    recorder.sent += len(late)


async def run_worker(spec: WorkerSpec, conn) -> dict:
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=spec.connections)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        conn.send("ready")
        t0 = await loop.run_in_executor(None, conn.recv)
        window_start = t0 + spec.warmup
        recorder = Recorder(window_start, window_start + spec.duration)
        bodies = Bodies(spec)
        cpu = asyncio.create_task(_cpu_over_window(recorder))
        await asyncio.sleep(max(0.0, t0 - time.monotonic()))
        if spec.rate:
            await open_loop(session, spec, recorder, bodies, t0)
        else:
            await closed_loop(session, spec, recorder, bodies)
        return {
            "latencies": recorder.latencies,
            "accepted_at": recorder.accepted_at,
            "errors": dict(recorder.errors),
            "outside_errors": dict(recorder.outside_errors),
            "sent": recorder.sent,
            "bytes_sent": recorder.bytes_sent,
            "cpu_seconds": await cpu,
            "done_at": time.monotonic(),
        }


async def _cpu_over_window(recorder: Recorder) -> float:
    await asyncio.sleep(max(0.0, recorder.window_start - time.monotonic()))
    start = time.process_time()
    await asyncio.sleep(max(0.0, recorder.window_end - time.monotonic()))
    return time.process_time() - start


def worker_main(spec: WorkerSpec, conn) -> None:
    try:
        conn.send(asyncio.run(run_worker(spec, conn)))
    finally:
        conn.close()


# --- server under test: process, /proc figures, queue --------------------------------


def proc_tree(pid: int) -> list[int]:
    """pid and its descendants (a daemon may fork workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, all threads
    return total / CLOCK_TICKS


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class QueueSample:
    at: float
    pending: int
    dead: int
    oldest_pending_seconds: float | None


# The processor whose progress is followed (--processor): the store by default, the
# puppetdb forwarder for the forwarding benchmark.
TRACKED_PROCESSOR = "store"


async def poll_queue(session: aiohttp.ClientSession, base_url: str) -> QueueSample | None:
    sent = time.monotonic()
    try:
        async with session.get(base_url + QUEUE_PATH) as response:
            if response.status != 200:
                return None
            processors = orjson.loads(await response.read())["processors"]
            # reportd lists its internal job tracker only while it has deliveries queued
            idle = {"pending": 0, "dead": 0} if TRACKED_PROCESSOR == "jobs" else None
            store = processors.get(TRACKED_PROCESSOR, idle)
            if store is None:
                return None
    except (aiohttp.ClientError, TimeoutError, KeyError, TypeError, orjson.JSONDecodeError):
        return None
    # The count was taken somewhere between send and answer; under load that gap is
    # not negligible, so split it.
    at = (sent + time.monotonic()) / 2
    return QueueSample(at, int(store["pending"]), int(store["dead"]), store.get("oldest_pending_seconds"))


class Sampler:
    """Samples the server's CPU, RSS and (for reportd) queue once a second."""

    def __init__(self, pid: int, session: aiohttp.ClientSession, base_url: str, queue: bool) -> None:
        self.pid, self.session, self.base_url, self.queue = pid, session, base_url, queue
        self.cpu: list[tuple[float, float]] = []
        self.rss_kb: list[int] = []
        self.processes = 1
        self.pending: list[QueueSample] = []
        self._task: asyncio.Task | None = None

    def sample_proc(self) -> None:
        pids = proc_tree(self.pid)
        self.processes = max(self.processes, len(pids))
        self.cpu.append((time.monotonic(), cpu_seconds(pids)))
        self.rss_kb.append(sum(status_kb(pid, "VmRSS") for pid in pids))

    async def sample_queue(self) -> QueueSample | None:
        sample = await poll_queue(self.session, self.base_url) if self.queue else None
        if sample:
            self.pending.append(sample)
        return sample

    async def _run(self) -> None:
        while True:
            self.sample_proc()
            await self.sample_queue()
            await asyncio.sleep(SAMPLE_INTERVAL)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def cpu_percent(self, start: float, end: float) -> tuple[float | None, float | None]:
        """Mean over [start, end], and the highest figure over about one interval in it."""
        inside = [(t, c) for t, c in self.cpu if start - 0.1 <= t <= end + 0.1]
        if len(inside) < 2:
            return None, None
        mean = (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]) * 100
        peak, anchor = None, inside[0]
        for t, c in inside[1:]:
            # Shorter spans would be mostly clock-tick rounding.
            if t - anchor[0] >= 0.9 * SAMPLE_INTERVAL:
                figure = (c - anchor[1]) / (t - anchor[0]) * 100
                peak = figure if peak is None else max(peak, figure)
                anchor = (t, c)
        return mean, peak


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- one target -------------------------------------------------------------------------


class TargetFailed(Exception):
    pass


def server_argv(target: str, args: argparse.Namespace, port: int, data_dir: Path) -> list[str]:
    listen = f"127.0.0.1:{port}"
    if target == "bare":
        return [sys.executable, str(BENCH_DIR / "bare_server.py"), "--listen", listen]
    argv = shlex.split(args.daemon_cmd) if args.daemon_cmd else [sys.executable, "-m", "reportd"]
    if args.config:
        argv += ["--config", str(Path(args.config).resolve())]  # a global option: before `serve`
    return [*argv, "serve", "--listen", listen, "--data-dir", str(data_dir)]


def start_server(argv: list[str], log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # as the systemd unit runs it
    with open(log_path, "wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_DIR, env=env)


async def wait_ready(session: aiohttp.ClientSession, url: str, process: subprocess.Popen) -> float:
    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT:
        if process.poll() is not None:
            raise TargetFailed(f"exited with {process.returncode} before it was ready")
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.1)
    raise TargetFailed(f"not ready after {READY_TIMEOUT:.0f} s")


async def until(condition, wait_seconds: float) -> bool:
    # Polling instead of a blocking wait in a thread, so that cancelling (SIGTERM)
    # is never held up by a thread that cannot be interrupted.
    deadline = time.monotonic() + wait_seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


async def run_load(
    args, base_url: str, templates: tuple[BodyTemplate, ...], sampler: Sampler
) -> tuple[list[dict], float]:
    """Run the workers; returns their results and the window start."""
    ctx = multiprocessing.get_context("spawn")  # no inherited event loop or sockets
    pipes, workers = [], []
    for index, connections in enumerate(split(args.connections, args.processes)):
        spec = WorkerSpec(
            index=index,
            processes=args.processes,
            base_url=base_url,
            connections=connections,
            rate=args.rate / args.processes,
            offset=index / args.rate if args.rate else 0.0,
            templates=templates,
            nodes=args.nodes,
            warmup=WARMUP_SECONDS,
            duration=args.duration,
        )
        parent_end, child_end = ctx.Pipe()
        worker = ctx.Process(target=worker_main, args=(spec, child_end), daemon=True)
        worker.start()
        child_end.close()
        pipes.append(parent_end)
        workers.append(worker)

    async def receive(pipe, wait_seconds: float):
        if not await until(pipe.poll, wait_seconds):
            raise TargetFailed("a load worker did not answer")
        try:
            return pipe.recv()
        except EOFError:
            raise TargetFailed("a load worker died") from None

    try:
        for pipe in pipes:
            await receive(pipe, 60)
        t0 = time.monotonic() + 0.2
        for pipe in pipes:
            pipe.send(t0)
        window_start = t0 + WARMUP_SECONDS
        window_end = window_start + args.duration
        # Exact samples at the window's edges, for the store's rate and the CPU figures.
        await asyncio.sleep(window_start - time.monotonic())
        sampler.sample_proc()
        await sampler.sample_queue()
        await asyncio.sleep(window_end - time.monotonic())
        sampler.sample_proc()
        await sampler.sample_queue()
        limit = REQUEST_TIMEOUT + 30
        results = await asyncio.gather(*(receive(pipe, limit) for pipe in pipes))
    except BaseException:
        for worker in workers:
            worker.kill()
        raise
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
    return results, window_start


async def stop_server(process: subprocess.Popen) -> dict:
    stopped = time.monotonic()
    process.send_signal(signal.SIGTERM)
    if not await until(lambda: process.poll() is not None, EXIT_TIMEOUT):
        process.kill()
        process.wait()
        return {"exit_code": None, "exit_seconds": None}
    return {"exit_code": process.returncode, "exit_seconds": time.monotonic() - stopped}


async def measure(result: dict, args, templates, process: subprocess.Popen, base_url: str) -> None:
    """Fill in ``result`` as figures come, so a failure keeps what was measured."""
    target = result["target"]
    has_queue = target == "reportd"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        ready_url = base_url + (QUEUE_PATH if has_queue else "/ready")
        result["ready_seconds"] = await wait_ready(session, ready_url, process)
        sampler = Sampler(process.pid, session, base_url, has_queue)
        sampler.start()
        print(f"[{target}] ready; {WARMUP_SECONDS:.0f} s warm-up, {args.duration:g} s load", flush=True)
        try:
            workers, window_start = await run_load(args, base_url, templates, sampler)
            window_end = window_start + args.duration
            result.update(summarize_load(workers, args.duration))
            result.update(server_figures(sampler, window_start, window_end))
            if process.poll() is not None:
                raise TargetFailed(f"exited with {process.returncode} during the load")
            if has_queue:
                print(f"[{target}] load done; waiting for the store to drain", flush=True)
                result.update(await store_figures(sampler, workers, window_start, window_end, process))
        finally:
            await sampler.stop()
    result["rss_peak_mb"] = status_kb(process.pid, "VmHWM") / 1024


async def run_target(target: str, args, templates: tuple[BodyTemplate, ...]) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"ingest-bench-{target}-"))
    data_dir = workdir / "data"
    data_dir.mkdir()
    log_path = workdir / "server.log"
    port = free_port()
    argv = server_argv(target, args, port, data_dir)
    print(f"[{target}] $ {shlex.join(argv)}", flush=True)
    result: dict = {"target": target, "command": shlex.join(argv)}
    process = start_server(argv, log_path)
    try:
        await measure(result, args, templates, process, f"http://127.0.0.1:{port}")
        result.update(await stop_server(process))
        if result["exit_code"] is None:
            result["failure"] = f"still running {EXIT_TIMEOUT:.0f} s after SIGTERM"
        elif result["exit_code"] != 0:
            result["failure"] = f"exit code {result['exit_code']} after SIGTERM"
    except TargetFailed as exc:
        result["failure"] = str(exc)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if args.keep_data or "failure" in result:
            result["workdir"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["ok"] = "failure" not in result
    if not result["ok"]:
        print(f"[{target}] FAILED: {result['failure']}; last lines of {log_path}:", flush=True)
        print(tail(log_path), flush=True)
    return result


def percentile(ordered: list[float], p: float) -> float | None:
    if not ordered:
        return None
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summarize_load(workers: list[dict], duration: float) -> dict:
    latencies = sorted(x for w in workers for x in w["latencies"])
    errors: Counter = Counter()
    for w in workers:
        errors.update(w["errors"])
    return {
        "sent": sum(w["sent"] for w in workers),
        "accepted": len(latencies),
        "accepted_per_s": len(latencies) / duration,
        "ingress_mb_per_s": sum(w["bytes_sent"] for w in workers) / duration / 1e6,
        "errors": dict(errors),
        "errors_outside_window": sum(sum(w["outside_errors"].values()) for w in workers),
        "latency_ms": {
            name: None if (v := percentile(latencies, p)) is None else v * 1000
            for name, p in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99), ("max", 100))
        },
        "client_cpu_percent": sum(w["cpu_seconds"] for w in workers) / duration * 100,
    }


def server_figures(sampler: Sampler, start: float, end: float) -> dict:
    mean, peak = sampler.cpu_percent(start, end)
    return {
        "cpu_percent_mean": mean,
        "cpu_percent_peak": peak,
        "rss_sampled_max_mb": max(sampler.rss_kb, default=0) / 1024,
        "server_processes": sampler.processes,
    }


async def store_figures(
    sampler: Sampler, workers: list[dict], start: float, end: float, process: subprocess.Popen
) -> dict:
    accepted_at = sorted(t for w in workers for t in w["accepted_at"])

    def finished(sample: QueueSample) -> int:
        return bisect_right(accepted_at, sample.at) - sample.pending

    edges = [s for s in sampler.pending if start - SAMPLE_INTERVAL <= s.at <= end + SAMPLE_INTERVAL]
    figures: dict = {"store_finished_per_s": None, "drain_seconds": None}
    if len(edges) >= 2:
        first = min(edges, key=lambda s: abs(s.at - start))
        last = min(edges, key=lambda s: abs(s.at - end))
        if last.at > first.at:
            figures["store_finished_per_s"] = (finished(last) - finished(first)) / (last.at - first.at)
    inside = [s.pending for s in sampler.pending if start <= s.at <= end]
    figures["pending_max_during_load"] = max(inside, default=None)
    figures["pending_at_load_end"] = next((s.pending for s in sampler.pending if s.at >= end), None)
    # Only once every worker has its answers can pending 0 mean "all caught up".
    load_stopped = end
    settled = max(w["done_at"] for w in workers)
    while time.monotonic() - load_stopped < DRAIN_CAP and process.poll() is None:
        sample = await sampler.sample_queue()
        if sample and sample.at > settled and sample.pending == 0:
            figures["drain_seconds"] = max(0.0, sample.at - load_stopped)
            break
        await asyncio.sleep(0.2)
    last = sampler.pending[-1] if sampler.pending else None
    figures["pending_left"] = last.pending if last else None
    figures["dead"] = last.dead if last else None
    return figures


# --- output ----------------------------------------------------------------------------


def fmt(value, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_target(r: dict) -> None:
    if "accepted" not in r:
        return
    lat = r["latency_ms"]
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "none"
    lines = [
        f"accepted      {r['accepted']} of {r['sent']} sent, {r['accepted_per_s']:.0f} reports/s"
        f" ({r['ingress_mb_per_s']:.1f} MB/s)",
        f"errors        {errors}",
        f"latency ms    p50 {fmt(lat['p50'], '.1f')}  p90 {fmt(lat['p90'], '.1f')}"
        f"  p99 {fmt(lat['p99'], '.1f')}  max {fmt(lat['max'], '.1f')}",
        f"server CPU %  mean {fmt(r['cpu_percent_mean'])}  peak {fmt(r['cpu_percent_peak'])}"
        f"   (client CPU % {r['client_cpu_percent']:.0f})",
        f"server RSS    peak {fmt(r.get('rss_peak_mb'), '.1f')} MB (VmHWM)",
    ]
    if "store_finished_per_s" in r:
        per_report = None
        if r["store_finished_per_s"] and r["cpu_percent_mean"] is not None:
            per_report = r["cpu_percent_mean"] * 10 / r["store_finished_per_s"]  # CPU ms per report
        lines += [
            f"{TRACKED_PROCESSOR:<13} {fmt(r['store_finished_per_s'])} finished/s during load;"
            f" pending max {fmt(r['pending_max_during_load'], 'd')},"
            f" at load end {fmt(r['pending_at_load_end'], 'd')}; dead {fmt(r['dead'], 'd')}",
            f"CPU per report {fmt(per_report, '.2f')} ms of the daemon's CPU per finished report",
            f"drain         {fmt(r['drain_seconds'], '.1f')} s after the load stopped"
            + (
                ""
                if r["drain_seconds"] is not None
                else f" (gave up at {DRAIN_CAP:.0f} s, pending {r['pending_left']})"
            ),
        ]
    exit_seconds = fmt(r.get("exit_seconds"), ".1f")
    lines.append(f"exit          code {r.get('exit_code')} after {exit_seconds} s (SIGTERM)")
    print(f"\n== {r['target']}")
    print("\n".join("  " + line for line in lines))


def summary_rows(results: dict[str, dict]) -> list[tuple[str, ...]]:
    def row(label: str, get, spec: str = ".0f") -> tuple[str, ...]:
        return (
            label,
            *(fmt(get(r), spec) if "accepted" in r else "failed" for r in results.values()),
        )

    return [
        row("accepted reports/s", lambda r: r["accepted_per_s"]),
        row("errors", lambda r: sum(r["errors"].values()), "d"),
        row("latency p50 ms", lambda r: r["latency_ms"]["p50"], ".1f"),
        row("latency p90 ms", lambda r: r["latency_ms"]["p90"], ".1f"),
        row("latency p99 ms", lambda r: r["latency_ms"]["p99"], ".1f"),
        row("latency max ms", lambda r: r["latency_ms"]["max"], ".1f"),
        row("store finished/s", lambda r: r.get("store_finished_per_s")),
        row("drain s", lambda r: r.get("drain_seconds"), ".1f"),
        row("peak RSS MB", lambda r: r.get("rss_peak_mb"), ".1f"),
        row("CPU % mean", lambda r: r["cpu_percent_mean"]),
        row("CPU % peak", lambda r: r["cpu_percent_peak"]),
        row("exit code", lambda r: r.get("exit_code"), ""),
    ]


def print_summary(results: dict[str, dict], ratio: float | None) -> None:
    rows = [("", *results), *summary_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print("\n== summary")
    for row in rows:
        print(
            "  "
            + "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    if ratio is not None:
        print(f"  reportd/bare accepted reports/s: {ratio:.2f}")


# --- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=50, help="resource statuses per report")
    parser.add_argument("--duration", type=float, default=60, help="measured load, seconds")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections in all")
    parser.add_argument("--rate", type=float, default=0, help="reports/s, open loop; 0 = as fast as possible")
    parser.add_argument("--processes", type=int, default=1, help="load generator processes")
    parser.add_argument("--target", choices=("reportd", "bare", "both"), default="both")
    parser.add_argument("--daemon-cmd", help="command before `serve` (default: this python -m reportd)")
    parser.add_argument("--config", help="reportd --config FILE")
    parser.add_argument("--nodes", type=int, default=10_000, help="distinct certnames")
    parser.add_argument("--seed", type=int, default=1, help="report generator seed")
    parser.add_argument("--keep-data", action="store_true", help="keep the data dir and server log")
    parser.add_argument("--json", metavar="FILE", help="write all figures to FILE")
    parser.add_argument(
        "--processor", default="store", help="whose progress counts as finished (e.g. puppetdb)"
    )
    parser.add_argument(
        "--job-id", type=int, default=None, help="every report carries this job_id (reportd's job tracker)"
    )
    args = parser.parse_args(argv)
    global TRACKED_PROCESSOR
    TRACKED_PROCESSOR = args.processor
    if not 1 <= args.nodes <= 100_000:
        parser.error("--nodes must be within 1..100000")
    if args.processes < 1 or args.connections < args.processes:
        parser.error("need --processes >= 1 and --connections >= --processes")
    if args.duration <= 0 or args.rate < 0 or args.resources < 0:
        parser.error("--duration must be > 0, --rate and --resources >= 0")
    return args


async def main_async(args: argparse.Namespace) -> int:
    command = shlex.join([sys.executable, *sys.argv])
    print(f"$ {command}")
    print(
        f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" aiohttp {aiohttp.__version__}, {time.strftime('%Y-%m-%d %H:%M:%S %z')}"
    )
    rng = random.Random(args.seed)
    templates = tuple(make_template(args.resources, rng) for _ in range(TEMPLATES))
    if args.job_id is not None:  # as `puppet agent --job_id N` reports: one job, every node
        prefix = b'{"job_id":"%d",' % args.job_id
        templates = tuple(BodyTemplate(prefix + template.body[1:]) for template in templates)
    sizes = sorted(len(template.body) for template in templates)
    load = f"{args.rate:g} reports/s open loop" if args.rate else "closed loop"
    print(
        f"# {args.resources}-resource reports, {sizes[0] / 1024:.1f}-{sizes[-1] / 1024:.1f} KiB;"
        f" {args.connections} connections, {args.processes} load process(es), {load}\n",
        flush=True,
    )
    targets = ("reportd", "bare") if args.target == "both" else (args.target,)
    results = {}
    for target in targets:
        results[target] = await run_target(target, args, templates)
        print_target(results[target])
    ratio = None
    if all("accepted" in results.get(t, {}) for t in ("reportd", "bare")) and (
        bare := results["bare"]["accepted_per_s"]
    ):
        ratio = results["reportd"]["accepted_per_s"] / bare
    print_summary(results, ratio)
    if args.json:
        write_json(args, command, sizes, results, ratio)
    return 0 if all(r["ok"] for r in results.values()) else 1


def write_json(args, command: str, sizes: list[int], results: dict, ratio: float | None) -> None:
    document = {
        "command": command,
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
        },
        "report_bytes": {"min": sizes[0], "max": sizes[-1], "mean": sum(sizes) / len(sizes)},
        "results": results,
        "ratio_reportd_bare": ratio,
    }
    Path(args.json).write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))


async def main_cancellable(args: argparse.Namespace) -> int:
    # SIGTERM cancels the run, so the servers and workers it started are stopped too.
    task = asyncio.current_task()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await main_async(args)
    except asyncio.CancelledError:
        print("interrupted", file=sys.stderr)
        return 128 + signal.SIGTERM


def main() -> None:
    try:
        sys.exit(asyncio.run(main_cancellable(parse_args())))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
