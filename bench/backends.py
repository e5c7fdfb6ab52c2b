"""SQLite vs PostgreSQL ingest, back to back on the same machine, through the real daemon.

    python bench/backends.py --duration 20
    python bench/backends.py --duration 20 --rate 500

Runs ``bench/ingest.py --target reportd`` once per backend with the same load and
the same daemon settings: SQLite in a fresh data dir (the default), then
PostgreSQL in a fresh database created on ``--pg-dsn``'s server (and dropped
afterwards). Prints both runs' figures side by side. The PostgreSQL server's own
CPU is not in the daemon's CPU figures; the machine-wide CPU (all processes,
from /proc/stat) over each run is shown so the comparison includes it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import orjson

BENCH_DIR = Path(__file__).resolve().parent
DSN_VARIABLES = ("REPORTD_BENCH_PG_DSN", "REPORTD_TEST_PG_DSN")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def process_cpu(pid: int, *, children: bool = False) -> float:
    """CPU seconds of ``pid`` (with ``children``: also of its children it has reaped)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = float(fields[11]) + float(fields[12])
    if children:
        ticks += float(fields[13]) + float(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu(postmaster: int | None) -> float | None:
    """CPU seconds of the PostgreSQL server so far: the postmaster, its live and its exited processes.

    The postmaster reaps every backend, so an exited backend's time is in its
    children's time; the ones still running are added one by one.
    """
    if postmaster is None:
        return None
    total = process_cpu(postmaster, children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                    total += process_cpu(int(entry.name))
            except (OSError, ValueError):
                continue  # exited meanwhile
    return total


def parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return None  # not on this machine


async def find_postmaster(dsn: str) -> int | None:
    """The PID of the PostgreSQL server when it runs on this machine, else None."""
    conn = await asyncpg.connect(dsn)
    try:
        # read while the backend still exists: it exits with the connection
        return await asyncio.to_thread(parent_pid, await conn.fetchval("SELECT pg_backend_pid()"))
    finally:
        await conn.close()


async def create_database(dsn: str) -> str:
    name = f"reportd_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def run_ingest(
    args: argparse.Namespace, config: Path, json_path: Path, postmaster: int | None
) -> tuple[dict, float, float | None]:
    argv = [
        sys.executable, str(BENCH_DIR / "ingest.py"), "--target", "reportd", "--config", str(config),
        "--duration", f"{args.duration:g}", "--resources", str(args.resources), "--rate", f"{args.rate:g}",
        "--connections", str(args.connections), "--processes", str(args.processes), "--json", str(json_path),
    ]  # fmt: skip
    print(f"$ {shlex.join(argv)}", flush=True)
    busy0, total0 = machine_cpu()
    pg0, started = postgres_cpu(postmaster), time.monotonic()
    completed = subprocess.run(argv, capture_output=not args.verbose, text=True)
    busy1, total1 = machine_cpu()
    pg1, elapsed = postgres_cpu(postmaster), time.monotonic() - started
    if completed.returncode != 0 and not json_path.exists():
        sys.exit(f"ingest.py failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}")
    result = orjson.loads(json_path.read_bytes())["results"]["reportd"]
    machine = (busy1 - busy0) / max(total1 - total0, 1) * 100 * (os.cpu_count() or 1)
    pg = None if pg0 is None or pg1 is None else (pg1 - pg0) / elapsed * 100
    return result, machine, pg


def fmt(value, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: dict[str, dict]) -> None:
    def row(label, get, spec=".0f"):
        cells = []
        for r in results.values():
            try:
                cells.append(fmt(get(r), spec))
            except (KeyError, TypeError):
                cells.append("failed")
        return (label, *cells)

    rows = [
        ("", *results),
        row("accepted reports/s", lambda r: r["accepted_per_s"]),
        row("errors", lambda r: sum(r["errors"].values()), "d"),
        row("latency p50 ms", lambda r: r["latency_ms"]["p50"], ".1f"),
        row("latency p95 ms", lambda r: r["latency_ms"]["p95"], ".1f"),
        row("latency p99 ms", lambda r: r["latency_ms"]["p99"], ".1f"),
        row("latency max ms", lambda r: r["latency_ms"]["max"], ".1f"),
        row("store finished/s", lambda r: r.get("store_finished_per_s")),
        row("store pending max", lambda r: r.get("pending_max_during_load"), "d"),
        row("drain s", lambda r: r.get("drain_seconds"), ".1f"),
        row("daemon peak RSS MB", lambda r: r.get("rss_peak_mb"), ".1f"),
        row("daemon CPU % mean", lambda r: r["cpu_percent_mean"]),
        row("PostgreSQL CPU %", lambda r: r["postgres_cpu_percent"]),
        row("machine CPU % (all)", lambda r: r["machine_cpu_percent"]),
        row("exit code", lambda r: r.get("exit_code"), ""),
    ]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    print("\n== SQLite vs PostgreSQL")
    for cells in rows:
        print("  " + "  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                               for i, (c, w) in enumerate(zip(cells, widths, strict=True))))  # fmt: skip
    sqlite, postgres = results.get("sqlite", {}), results.get("postgresql", {})
    if sqlite.get("accepted_per_s") and postgres.get("accepted_per_s"):
        ratio = postgres["accepted_per_s"] / sqlite["accepted_per_s"]
        print(f"  postgresql/sqlite accepted reports/s: {ratio:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20, help="measured load per backend, seconds")
    parser.add_argument("--resources", type=int, default=50)
    parser.add_argument("--rate", type=float, default=0, help="reports/s, open loop; 0 = closed loop")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--processors", default="store, metrics", help="[reportd] processors")
    parser.add_argument("--backends", default="sqlite,postgresql", help="which, in this order")
    default_dsn = next((os.environ[v] for v in DSN_VARIABLES if os.environ.get(v)), None)
    parser.add_argument("--pg-dsn", default=default_dsn,
                        help="a PostgreSQL server where a database may be created"
                        f" (default: ${DSN_VARIABLES[0]}, else ${DSN_VARIABLES[1]})")  # fmt: skip
    parser.add_argument("--json", metavar="FILE", help="write both runs' figures to FILE")
    parser.add_argument("--verbose", action="store_true", help="show ingest.py's own output")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if set(backends) - {"sqlite", "postgresql"}:
        parser.error("--backends: sqlite and/or postgresql")
    if "postgresql" in backends and not args.pg_dsn:
        parser.error("give --pg-dsn (or set REPORTD_BENCH_PG_DSN)")
    print(f"$ {shlex.join([sys.executable, *sys.argv])}")
    print(f"# {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M:%S %z')}", flush=True)
    results: dict[str, dict] = {}
    postmaster = asyncio.run(find_postmaster(args.pg_dsn)) if args.pg_dsn else None
    with tempfile.TemporaryDirectory(prefix="backends-bench-") as workdir:
        for backend in backends:
            config = Path(workdir) / f"{backend}.ini"
            database, line = None, ""
            if backend == "postgresql":
                database = asyncio.run(create_database(args.pg_dsn))
                line = f"database = {args.pg_dsn.rsplit('/', 1)[0]}/{database}\n"
            config.write_text(f"[reportd]\nprocessors = {args.processors}\n{line}")
            try:
                result, cpu, pg_cpu = run_ingest(args, config, Path(workdir) / f"{backend}.json", postmaster)
            finally:
                if database is not None:
                    asyncio.run(drop_database(args.pg_dsn, database))
            result["machine_cpu_percent"] = cpu
            result["postgres_cpu_percent"] = pg_cpu
            results[backend] = result
            print(f"[{backend}] {fmt(result.get('accepted_per_s'))} reports/s", flush=True)
    print_table(results)
    if args.json:
        Path(args.json).write_bytes(orjson.dumps({"command": sys.argv, "results": results},
                                                 option=orjson.OPT_INDENT_2))  # fmt: skip
    return 0 if all(r.get("ok") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
