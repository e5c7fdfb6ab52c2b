"""Slow-client benchmark: are agents served while many slow connections hold reportd?

    python bench/connections.py --slow-headers 1100 --slow-bodies 1000 --duration 30

A real ``reportd serve`` is started on a free 127.0.0.1 port. For --baseline seconds
it is probed alone; then an attacker process opens --slow-headers connections that
send a request head one header line every --interval seconds, and --slow-bodies
connections that send a complete PUT head (Content-Length: --slow-body-length) and
then one body byte every --interval seconds. An attacker whose connection is closed reconnects at
once, as a slowloris does. After a --ramp, the probes are measured for --duration
seconds more; then the attack stops, and the server gets SIGTERM and must exit.

Probes, open loop (latency from the scheduled time, so a stall cannot hide):
``GET /healthz`` every --healthz-interval s, and --put-rate report PUTs per second
(tests/data/puppet/agent-changes.json with a unique host and transaction_uuid each),
each on a connection of its own, as agents and health checks connect.

--nofile SOFT[:HARD] starts the server with that RLIMIT_NOFILE (as ``ulimit -n``
or systemd's LimitNOFILE= would): ``--nofile 1024`` is systemd's default soft
limit with the hard one unchanged, ``--nofile 1024:1024`` a hard limit of 1,024.

Everything is bounded: 60 s to get ready, per-request timeouts, 30 s to exit
after SIGTERM; SIGTERM or Ctrl-C on the bench stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
REPORT = orjson.loads((REPO_DIR / "tests" / "data" / "puppet" / "agent-changes.json").read_bytes())
READY_TIMEOUT = 60.0
EXIT_TIMEOUT = 30.0
HEALTHZ_TIMEOUT = 10.0
PUT_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
SAMPLE_INTERVAL = 0.5
# Sets RLIMIT_NOFILE, then becomes the server: the limit is the server's from its first instruction.
WITH_OPEN_FILE_LIMIT = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
    "os.execvp(sys.argv[3], sys.argv[3:])"
)
HEADERS = {
    "X-Puppet-Version": "7.23.0",
    "User-Agent": "Puppet/7.23.0 Ruby/3.1.7-p261 (x86_64-linux-gnu)",
    "Accept": "application/json, text/pson",
    "Content-Type": "application/json",
}


def raise_own_file_limit() -> None:
    # Thousands of attack connections in one process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- the attacker (its own process, so its work does not skew the probes' timing) ----------


@dataclass
class AttackStats:
    connects: Counter = field(default_factory=Counter)
    connect_failures: Counter = field(default_factory=Counter)
    cut: Counter = field(default_factory=Counter)
    answered: Counter = field(default_factory=Counter)  # status lines the server sent before closing
    open_max: int = 0


async def slow_client(kind: str, args, port: int, stop: asyncio.Event, stats: AttackStats, state) -> None:
    interval, body_length = args.interval, args.slow_body_length
    while not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as error:
            stats.connect_failures[type(error).__name__] += 1
            await asyncio.sleep(0.1)
            continue
        stats.connects[kind] += 1
        state["open"] += 1
        stats.open_max = max(stats.open_max, state["open"])
        try:
            if kind == "slow-header":
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: reportd.example.test\r\n")
            else:
                certname = f"slow-{uuid.uuid4().hex[:12]}.example.test"
                writer.write(
                    f"PUT /puppet/v3/report/{certname}?environment=production HTTP/1.1\r\n"
                    f"Host: reportd.example.test\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {body_length}\r\n\r\n{{".encode()
                )
            line = 0
            while not stop.is_set():
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(4096), interval)
                except TimeoutError:
                    line += 1
                    writer.write(f"X-Slow-{line}: 1\r\n".encode() if kind == "slow-header" else b" ")
                    continue
                if not data:
                    break
                stats.answered[data.split(b"\r\n", 1)[0].decode(errors="replace")] += 1
                # An answer then a close: read on until it closes.
            if not stop.is_set():
                stats.cut[kind] += 1
        except ConnectionError:
            stats.cut[kind] += 1
        finally:
            state["open"] -= 1
            writer.transport.abort()


async def attack(args, port: int, conn) -> None:
    raise_own_file_limit()
    stats, state, stop = AttackStats(), {"open": 0}, asyncio.Event()
    kinds = ["slow-header"] * args.slow_headers + ["slow-body"] * args.slow_bodies
    tasks = []
    for index, kind in enumerate(kinds):
        tasks.append(asyncio.create_task(slow_client(kind, args, port, stop, stats, state)))
        if index % 100 == 99:
            await asyncio.sleep(0.05)  # a quick ramp, not one burst of SYNs
    conn.send("started")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, conn.recv)  # "stop"
    stop.set()
    await asyncio.wait(tasks, timeout=max(5.0, args.interval + 2))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    conn.send(
        {
            "connects": dict(stats.connects),
            "connect_failures": dict(stats.connect_failures),
            "cut": dict(stats.cut),
            "answered": dict(stats.answered),
            "open_max": stats.open_max,
        }
    )


def attack_main(args, port: int, conn) -> None:
    try:
        asyncio.run(attack(args, port, conn))
    finally:
        conn.close()


# --- probes ------------------------------------------------------------------------------------


@dataclass
class Probe:
    name: str
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (scheduled, seconds)
    failures: list[tuple[float, str]] = field(default_factory=list)

    def window(self, start: float, end: float) -> dict:
        latencies = sorted(s for at, s in self.latencies if start <= at < end)
        failures = Counter(kind for at, kind in self.failures if start <= at < end)
        return {
            "sent": len(latencies) + sum(failures.values()),
            "ok": len(latencies),
            "failures": dict(failures),
            "ms": {
                name: None if (v := percentile(latencies, p)) is None else v * 1000
                for name, p in (("p50", 50), ("p99", 99), ("max", 100))
            },
        }


def percentile(ordered: list[float], p: float) -> float | None:
    if not ordered:
        return None
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def healthz_once(base_url: str) -> str | None:
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=HEALTHZ_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.get(base_url + "/healthz") as response,
        ):
            await response.read()
            return None if response.status == 200 else str(response.status)
    except TimeoutError:
        return "timeout"
    except aiohttp.ClientError as error:
        return type(error).__name__


async def put_once(base_url: str) -> str | None:
    certname = f"agent-{uuid.uuid4().hex[:12]}.bench.example.test"
    body = orjson.dumps({**REPORT, "host": certname, "transaction_uuid": str(uuid.uuid4())})
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=PUT_TIMEOUT)
    url = f"{base_url}/puppet/v3/report/{certname}?environment=production"
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.put(url, data=body, headers=HEADERS) as response,
        ):
            payload = await response.read()
            if response.status != 200:
                return str(response.status)
            return None if isinstance(orjson.loads(payload), list) else "200 without a JSON array"
    except TimeoutError:
        return "timeout"
    except orjson.JSONDecodeError:
        return "200 without JSON"
    except aiohttp.ClientError as error:
        return type(error).__name__


async def probe_loop(probe: Probe, once, interval: float, stop_at: float, tasks: set) -> None:
    async def one(scheduled: float) -> None:
        error = await once()
        if error is None:
            probe.latencies.append((scheduled, time.monotonic() - scheduled))
        else:
            probe.failures.append((scheduled, error))

    scheduled = time.monotonic()
    while scheduled < stop_at:
        await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        scheduled += interval


# --- the server ----------------------------------------------------------------------------------


class ServerGone(Exception):
    pass


@dataclass
class ServerSample:
    at: float
    cpu: float  # seconds
    fds: int
    rss_kb: int
    log_bytes: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_argv(args, port: int, data_dir: Path) -> list[str]:
    argv = shlex.split(args.daemon_cmd) if args.daemon_cmd else [sys.executable, "-m", "reportd"]
    if args.config:
        argv += ["--config", str(Path(args.config).resolve())]
    argv += ["serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)]
    if args.nofile:
        soft, _, hard = args.nofile.partition(":")
        hard = hard or str(resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        argv = [sys.executable, "-c", WITH_OPEN_FILE_LIMIT, soft, hard, *argv]
    return argv


def start_server(argv: list[str], log_path: Path, workdir: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # as the systemd unit runs it
    with log_path.open("wb") as log:
        # Its own working directory: `python -m reportd` imports from there first.
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env)


def open_file_limit(pid: int) -> list[str]:
    limits = Path(f"/proc/{pid}/limits").read_text()
    return limits.split("Max open files", 1)[1].split()[:2]  # soft, hard


def write_json(args, result: dict) -> None:
    document = {"settings": vars(args), "result": result}
    Path(args.json).write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


async def sample_server(process: subprocess.Popen, log_path: Path, samples: list[ServerSample]) -> None:
    while process.poll() is None:
        pid = process.pid
        samples.append(
            ServerSample(time.monotonic(), cpu_seconds(pid), open_fds(pid), rss_kb(pid), log_size(log_path))
        )
        await asyncio.sleep(SAMPLE_INTERVAL)


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def server_window(samples: list[ServerSample], start: float, end: float) -> dict:
    inside = [s for s in samples if start <= s.at <= end]
    if len(inside) < 2:
        return {}
    seconds = inside[-1].at - inside[0].at
    return {
        "cpu_percent": (inside[-1].cpu - inside[0].cpu) / seconds * 100,
        "fds_max": max(s.fds for s in inside),
        "rss_max_mb": max(s.rss_kb for s in inside) / 1024,
        "log_bytes_per_s": (inside[-1].log_bytes - inside[0].log_bytes) / seconds,
    }


def log_events(log_path: Path, start_offset: int, end_offset: int) -> Counter:
    events: Counter = Counter()
    with log_path.open("rb") as log:
        log.seek(start_offset)
        chunk = log.read(max(0, end_offset - start_offset))
    for line in chunk.splitlines():
        try:
            record = orjson.loads(line)
            event = record.get("event", "?")
            events[event.splitlines()[0][:60]] += 1
        except (orjson.JSONDecodeError, AttributeError):
            events[line[:60].decode(errors="replace")] += 1
    return events


async def wait_ready(base_url: str, process: subprocess.Popen) -> float:
    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT:
        if process.poll() is not None:
            raise ServerGone(f"exited with {process.returncode} before it was ready")
        if await healthz_once(base_url) is None:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise ServerGone(f"not ready after {READY_TIMEOUT:.0f} s")


async def stop_server(process: subprocess.Popen) -> tuple[int | None, float | None]:
    stopped = time.monotonic()
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    while process.poll() is None:
        if time.monotonic() - stopped > EXIT_TIMEOUT:
            process.kill()
            process.wait()
            return None, None
        await asyncio.sleep(0.05)
    return process.returncode, time.monotonic() - stopped


# --- the run -------------------------------------------------------------------------------------


async def run(args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="connections-bench-"))
    data_dir = workdir / "data"
    data_dir.mkdir()
    log_path = workdir / "server.log"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    argv = server_argv(args, port, data_dir)
    print(f"$ {shlex.join(argv)}", flush=True)
    result: dict = {"command": shlex.join(argv)}
    process = start_server(argv, log_path, workdir)
    samples: list[ServerSample] = []
    sampler = asyncio.create_task(sample_server(process, log_path, samples))
    attacker = None
    try:
        result["ready_seconds"] = await wait_ready(base_url, process)
        result["nofile"] = open_file_limit(process.pid)
        probes = {"healthz": Probe("healthz"), "put": Probe("put")}
        in_flight: set = set()
        t0 = time.monotonic()
        baseline_end = t0 + args.baseline
        attack_start = baseline_end
        window_start = attack_start + args.ramp
        window_end = window_start + args.duration
        loops = [
            asyncio.create_task(
                probe_loop(probes["healthz"], lambda: healthz_once(base_url), args.healthz_interval,
                           window_end, in_flight)
            ),
            asyncio.create_task(
                probe_loop(probes["put"], lambda: put_once(base_url), 1 / args.put_rate,
                           window_end, in_flight)
            ),
        ]  # fmt: skip
        print(f"baseline {args.baseline:g} s", flush=True)
        await asyncio.sleep(max(0.0, attack_start - time.monotonic()))
        log_at_attack = log_size(log_path)
        ctx = multiprocessing.get_context("spawn")
        parent_end, child_end = ctx.Pipe()
        attacker = ctx.Process(target=attack_main, args=(args, port, child_end), daemon=True)
        attacker.start()
        child_end.close()
        started = await asyncio.get_running_loop().run_in_executor(None, parent_end.poll, 60)
        if not started or parent_end.recv() != "started":
            raise ServerGone("the attacker did not start")
        print(
            f"attack: {args.slow_headers} slow-header + {args.slow_bodies} slow-body connections,"
            f" one piece every {args.interval:g} s; {args.ramp:g} s ramp, {args.duration:g} s measured",
            flush=True,
        )
        await asyncio.gather(*loops)
        log_at_end = log_size(log_path)
        parent_end.send("stop")
        reported = await asyncio.get_running_loop().run_in_executor(None, parent_end.poll, args.interval + 20)
        result["attack"] = parent_end.recv() if reported else {"error": "the attacker did not report"}
        if in_flight:
            await asyncio.wait(in_flight, timeout=PUT_TIMEOUT + 5)
        result["baseline"] = {
            "healthz": probes["healthz"].window(t0, baseline_end),
            "put": probes["put"].window(t0, baseline_end),
            "server": server_window(samples, t0, baseline_end),
        }
        result["under_attack"] = {
            "healthz": probes["healthz"].window(window_start, window_end),
            "put": probes["put"].window(window_start, window_end),
            "server": server_window(samples, window_start, window_end),
        }
        result["log_events_during_attack"] = dict(
            log_events(log_path, log_at_attack, log_at_end).most_common(8)
        )
        result["log_bytes_during_attack"] = log_at_end - log_at_attack
        if process.poll() is not None:
            result["failure"] = f"the server exited with {process.returncode} during the run"
        result["exit_code"], result["exit_seconds"] = await stop_server(process)
    except ServerGone as error:
        result["failure"] = str(error)
    finally:
        if attacker is not None and attacker.is_alive():
            attacker.kill()
        if process.poll() is None:
            process.kill()
            process.wait()
        sampler.cancel()
        if "failure" in result or args.keep_data:
            result["workdir"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if "failure" in result:
        lines = log_path.read_text(errors="replace").splitlines()[-5:] if log_path.exists() else []
        result["server_output"] = [line[:300] for line in lines]
    return result


def fmt(value, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_result(result: dict) -> None:
    if "failure" in result:
        print(f"\nFAILED: {result['failure']}")
        for line in result.get("server_output", []):
            print(f"  | {line}")
    for phase in ("baseline", "under_attack"):
        figures = result.get(phase)
        if not figures:
            continue
        print(f"\n== {phase.replace('_', ' ')}")
        for name in ("healthz", "put"):
            f = figures[name]
            failures = ", ".join(f"{k}: {v}" for k, v in sorted(f["failures"].items())) or "none"
            print(
                f"  {name:<8} {f['ok']:>4} of {f['sent']:<4} ok   p50 {fmt(f['ms']['p50'], '.1f')} ms"
                f"  p99 {fmt(f['ms']['p99'], '.1f')} ms  max {fmt(f['ms']['max'], '.1f')} ms"
                f"   failures: {failures}"
            )
        server = figures["server"]
        if server:
            print(
                f"  server   CPU {server['cpu_percent']:.0f}%  open files max {server['fds_max']}"
                f"  RSS max {server['rss_max_mb']:.0f} MB"
                f"  log {server['log_bytes_per_s'] / 1024:.1f} KiB/s"
            )
    if "attack" in result:
        a = result["attack"]
        print("\n== attack (client side)")
        for key in ("connects", "cut", "connect_failures", "answered"):
            if key in a:
                print(f"  {key:<17}{', '.join(f'{k}: {v}' for k, v in sorted(a[key].items())) or 'none'}")
        print(f"  open at once max {a.get('open_max')}")
    if "log_events_during_attack" in result:
        events = ", ".join(f"{k}: {v}" for k, v in result["log_events_during_attack"].items())
        print(
            f"\n== server log during the attack: {result['log_bytes_during_attack'] / 1e6:.2f} MB; {events}"
        )
    if "exit_code" in result:
        print(f"\nexit code {result['exit_code']} after {fmt(result['exit_seconds'], '.1f')} s (SIGTERM)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow-headers", type=int, default=1100, help="slow request-head connections")
    parser.add_argument("--slow-bodies", type=int, default=1000, help="slow request-body connections")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between an attacker's pieces")
    parser.add_argument(
        "--slow-body-length", type=int, default=1_000_000, help="Content-Length the slow bodies declare"
    )
    parser.add_argument("--baseline", type=float, default=10.0, help="seconds measured before the attack")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds of attack before the measured ones")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds measured under attack")
    parser.add_argument("--healthz-interval", type=float, default=0.2, help="seconds between /healthz probes")
    parser.add_argument("--put-rate", type=float, default=5.0, help="report PUTs per second")
    parser.add_argument("--nofile", help="the server's RLIMIT_NOFILE, SOFT[:HARD] (default: inherited)")
    parser.add_argument("--daemon-cmd", help="command before `serve` (default: this python -m reportd)")
    parser.add_argument("--config", help="reportd --config FILE")
    parser.add_argument("--keep-data", action="store_true", help="keep the data dir and server log")
    parser.add_argument("--json", metavar="FILE", help="write all figures to FILE")
    args = parser.parse_args(argv)
    if min(args.slow_headers, args.slow_bodies) < 0 or args.interval <= 0 or args.put_rate <= 0:
        parser.error("connection counts must be >= 0; --interval and --put-rate > 0")
    if args.baseline <= 0 or args.duration <= 0 or args.ramp < 0 or args.healthz_interval <= 0:
        parser.error("--baseline, --duration and --healthz-interval must be > 0, --ramp >= 0")
    return args


async def main_async(args) -> int:
    print(f"$ {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" aiohttp {aiohttp.__version__}, {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        flush=True,
    )
    task = asyncio.current_task()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    raise_own_file_limit()
    try:
        result = await run(args)
    except asyncio.CancelledError:
        print("interrupted", file=sys.stderr)
        return 128 + signal.SIGTERM
    print_result(result)
    if args.json:
        write_json(args, result)
    return 1 if "failure" in result else 0


def main() -> None:
    try:
        sys.exit(asyncio.run(main_async(parse_args())))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
