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
import pytest

from reportd.app import create_app
from reportd.config import load_config_string
from reportd.plugin_manager import get_plugin_manager
from tests import pg
from tests.peers import PUPPET_AGENT, PUPPETDB, find_puppet_agent, find_puppetdb

DATA = Path(__file__).parent / "data"
PUPPET = DATA / "puppet"
LOCAL_PLUGINS = Path(__file__).parent / "local_plugins"
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


@pytest.fixture
def make_app(tmp_path):
    """Build an in-process app from INI text appended to the test defaults."""

    def factory(extra: str = "", *, processors: str = "store", plugins: str = "", data_dir=None):
        config = load_config_string(
            ini_for(data_dir or tmp_path, extra, processors=processors, plugins=plugins), source="test.ini"
        )
        pm = get_plugin_manager(
            load_entrypoints=False, plugin_paths=config.plugin_paths, blocked=config.disabled_plugins
        )
        return create_app(config, pm)

    return factory


@pytest.fixture
async def client(aiohttp_client, make_app):
    """A client for the default app: store processor, loopback anonymous access."""
    return await aiohttp_client(make_app())


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


@pytest.fixture
def daemon_factory(tmp_path):
    daemons: list[Daemon] = []

    def factory(ini_text: str, *, scheme: str = "http", name: str = "reportd") -> Daemon:
        config_path = tmp_path / f"{name}.ini"
        config_path.write_text(ini_text)
        daemon = Daemon(config_path, tmp_path / f"{name}.log", scheme)
        daemons.append(daemon)
        return daemon

    yield factory
    for daemon in daemons:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(10)


# -- real peers: PostgreSQL, a Puppet agent, a PuppetDB (tests/pg.py, tests/peers.py) --


@pytest.fixture(scope="session")
def pg_server():
    """Where the PostgreSQL tests run this session (tests/pg.py says in what order it is looked for)."""
    with pg.find_server() as found:
        yield found


@pytest.fixture
def pg_dsn(pg_server, request) -> str:
    """The test server's DSN; the test skips (or fails, see tests/peers.py) without one."""
    return pg.POSTGRESQL.use(pg_server, request.node.nodeid)


@pytest.fixture
async def pg_database(pg_dsn):
    """The URL of a database of this test's own on the test server, dropped afterwards."""
    async with pg.fresh_database(pg_dsn) as url:
        yield url


@pytest.fixture(scope="session")
def puppet_agent_found():
    return find_puppet_agent()


@pytest.fixture
def puppet_agent(puppet_agent_found, request) -> str:
    """The path of a real ``puppet``, else the test skips (fails with REPORTD_REQUIRE_PEERS)."""
    return PUPPET_AGENT.use(puppet_agent_found, request.node.nodeid)


@pytest.fixture(scope="session")
def puppetdb_found():
    return find_puppetdb()


@pytest.fixture
def puppetdb_url(puppetdb_found, request) -> str:
    """The base URL of a running real PuppetDB, else the test skips (fails with REPORTD_REQUIRE_PEERS)."""
    return PUPPETDB.use(puppetdb_found, request.node.nodeid)


def pytest_terminal_summary(terminalreporter):
    """One line for PostgreSQL and one for the real Puppet peers: what ran on what, what did not."""
    if (line := pg.POSTGRESQL.summary()) is not None:
        terminalreporter.write_line(line, yellow=pg.POSTGRESQL.found.where is None)
    peers = [p for p in (PUPPET_AGENT, PUPPETDB) if p.found is not None]
    if peers:
        missing = any(p.found.where is None for p in peers)
        terminalreporter.write_line("real peers: " + " | ".join(p.summary() for p in peers), yellow=missing)
