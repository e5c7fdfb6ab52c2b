"""What the tests share: paths, sample reports, configurations, a real daemon process, waiting."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent  # the repository
DATA = TESTS / "data"


PUPPET = DATA / "puppet"


LOCAL_PLUGINS = TESTS / "local_plugins"


SAMPLE_CERTNAME = "lab-agent.example.test"


FAST_RETRIES = "retry_initial = 0.05s\nretry_max = 0.2s\n"


def sample(name: str) -> bytes:
    return (PUPPET / name).read_bytes()


def ini_for(data_dir: Path, extra: str = "", *, processors: str = "store", plugins: str = "") -> str:
    """A config for tests: own data dir, the test plugins loaded, fast retries."""
    head = (
        f"[reportd]\ndata_dir = {data_dir}\nprocessors = {processors}\n"
        f"plugin_paths = {LOCAL_PLUGINS}\n{FAST_RETRIES}"
    )
    testprocs = f"[plugin:testprocs]\npath = {data_dir / 'deliveries.jsonl'}\n"
    return head + extra + "\n" + testprocs + plugins


def deliveries(data_dir: Path) -> list[dict]:
    path = data_dir / "deliveries.jsonl"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def wait_until(predicate, within: float = 10.0, interval: float = 0.02):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = await predicate()
        if result:
            return result
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {within}s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_port(log: bytes) -> int | None:
    """The port of the ``listening`` line in a daemon's JSON log, once it is there."""
    for line in log.split(b"\n")[:-1]:  # whole lines only: the last may be half written
        if b'"event": "listening"' in line:
            address = orjson.loads(line)["addresses"][0]
            return int(address.rsplit(":", 1)[1])
    return None


class Daemon:
    """A real ``reportd serve`` process."""

    def __init__(self, config_path: Path, log_path: Path, scheme: str = "http") -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.scheme = scheme
        self.port = 0  # the first start lets the kernel choose; a restart keeps that port
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        assert self.port, "the daemon's address is known once it has started"
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0, preexec_fn=None) -> Daemon:
        """Start and wait until it listens; ``preexec_fn`` runs in the child (resource limits)."""
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            logged = log.tell()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "reportd", "--config", str(self.config_path), "serve",
                 "--listen", f"127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=preexec_fn,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"reportd exited {self.process.returncode}: {self.log_path.read_text()}")
            if (port := listening_port(self.log_path.read_bytes()[logged:])) is not None:
                self.port = port
                return self
            time.sleep(0.05)
        raise RuntimeError(f"reportd did not start: {self.log_path.read_text()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "reportd", "--config", str(self.config_path), *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
