from __future__ import annotations

import uuid

import pytest

from reportd.app import create_app
from reportd.config import load_config_string
from reportd.plugin_manager import get_plugin_manager
from reportd.storage.postgres import PostgresStorage
from reportd.storage.sqlite import SQLiteStorage
from tests.support import (
    Daemon,
    ini_for,
    pg,
)
from tests.support.peers import PUPPET_AGENT, PUPPETDB, find_puppet_agent, find_puppetdb
from tests.support.storage import drop_schema


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


# -- real peers: PostgreSQL, a Puppet agent, a PuppetDB (tests/support/pg.py, tests/support/peers.py) --


@pytest.fixture(scope="session")
def pg_server():
    """Where the PostgreSQL tests run this session (tests/support/pg.py says in what order it is looked for)."""
    with pg.find_server() as found:
        yield found


@pytest.fixture
def pg_dsn(pg_server, request) -> str:
    """The test server's DSN; the test skips (or fails, see tests/support/peers.py) without one."""
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


@pytest.fixture(params=["sqlite", "postgres"])
async def open_instances(request, tmp_path):
    """A factory of open storages that all share one database, like several daemons."""
    opened = []
    schema = f"t_{uuid.uuid4().hex}"
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgres" else None

    async def factory():
        if request.param == "sqlite":
            storage = SQLiteStorage(tmp_path / "shared.db")
        else:
            storage = PostgresStorage(dsn, schema=schema)
        await storage.open()
        opened.append(storage)
        return storage

    yield factory
    for storage in opened:
        await storage.close()
    if request.param == "postgres":
        await drop_schema(dsn, schema)


def pytest_collection_modifyitems(items):
    """Mark ``slow`` every test that starts real processes: a daemon (``daemon_factory``), or
    anything else a module runs with ``subprocess`` (pip, the CLI, a Puppet agent, Schemathesis).
    ``pytest -m "not slow"`` is the quick loop; ``make test`` runs everything."""
    for item in items:
        module = getattr(item, "module", None)
        if "daemon_factory" in getattr(item, "fixturenames", ()) or hasattr(module, "subprocess"):
            item.add_marker(pytest.mark.slow)
