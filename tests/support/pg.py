"""PostgreSQL for tests: which server they use, and a fresh database per test.

The server is looked for once per run (tests/conftest.py's ``pg_server`` fixture), in
this order:

1. ``REPORTD_TEST_PG_DSN`` if set: it is used, or the tests fail (never skip) saying
   that it does not answer; nothing else is tried;
2. the local server, ``postgresql://postgres@127.0.0.1:5432/test`` (what the project's
   machines run), if it answers; ``REPORTD_TEST_PG_LOCAL`` puts that address elsewhere,
   e.g. on a closed port to try step 3 on a machine that has the server;
3. a throwaway cluster, started from the installed binaries (``pg_ctl`` under
   ``/usr/lib/postgresql/*/bin`` or the glob ``REPORTD_TEST_PG_BIN`` names, newest
   first, else on PATH) with pytest-postgresql's
   executor, on a free port, in a temporary directory, stopped and removed at the end of
   the run; as root it runs as the ``postgres`` user, since PostgreSQL refuses root;
4. none: the tests skip, and the run ends with one line saying how to get one;
   ``REPORTD_REQUIRE_PG=1`` (``.ci/run`` sets it) makes that a failure.

Each test gets a database (``fresh_database``) or a schema of its own on that server,
dropped afterwards, so runs and tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import re
import shlex
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg

from reportd.config import redacted_url
from tests.support.peers import Found, Peer

PG_DSN_VARIABLE = "REPORTD_TEST_PG_DSN"
PG_LOCAL_VARIABLE = "REPORTD_TEST_PG_LOCAL"
PG_BIN_VARIABLE = "REPORTD_TEST_PG_BIN"
PG_REQUIRE_VARIABLE = "REPORTD_REQUIRE_PG"
LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/test"
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"

POSTGRESQL = Peer(
    "PostgreSQL",
    PG_REQUIRE_VARIABLE,
    f"to run them: a server on 127.0.0.1:5432 (user postgres, trust, database test), or PostgreSQL's"
    f" binaries (apt-get install postgresql) for a throwaway cluster, or {PG_DSN_VARIABLE}=postgresql://...",
)


def problem(dsn: str, timeout: float = 5.0) -> str | None:
    """Why ``dsn`` cannot be used, or None if it answers a query."""

    async def query() -> None:
        connection = await asyncpg.connect(dsn, timeout=timeout)
        try:
            await connection.fetchval("SELECT 1")
        finally:
            await connection.close()

    # A loop of its own in a thread: the fixture may be set up while a test's loop is running.
    with ThreadPoolExecutor(1) as pool:
        try:
            pool.submit(lambda: asyncio.run(query())).result()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
    return None


def find_pg_ctl(bin_glob: str = PG_BIN_GLOB) -> Path | None:
    """The newest ``pg_ctl`` under ``bin_glob``, else the one on PATH."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path))

    for candidate in sorted(glob.glob(f"{bin_glob}/pg_ctl"), key=version, reverse=True):
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    on_path = shutil.which("pg_ctl")
    return Path(on_path) if on_path else None


@contextlib.contextmanager
def find_server(environ: Mapping[str, str] = os.environ, bin_glob: str = PG_BIN_GLOB) -> Iterator[Found]:
    """The server the tests use, as the module docstring says; a throwaway one lives while this is open."""
    explicit = environ.get(PG_DSN_VARIABLE)
    if explicit:
        if (why := problem(explicit)) is not None:
            yield Found(broken=f"{PG_DSN_VARIABLE}={redacted_url(explicit)} does not answer: {why}")
        else:
            yield Found(where=explicit, how=f"{PG_DSN_VARIABLE}={redacted_url(explicit)}")
        return
    local = environ.get(PG_LOCAL_VARIABLE) or LOCAL_DSN
    if (local_problem := problem(local)) is None:
        yield Found(where=local, how=f"the local server {redacted_url(local)}")
        return
    bin_glob = environ.get(PG_BIN_VARIABLE) or bin_glob
    pg_ctl = find_pg_ctl(bin_glob)
    if pg_ctl is None:
        yield Found(
            missing=f"{redacted_url(local)} does not answer ({local_problem}) and there is no pg_ctl"
            f" under {bin_glob} or on PATH"
        )
        return
    with throwaway_cluster(pg_ctl, reason=f"{redacted_url(local)} does not answer") as found:
        yield found


@contextlib.contextmanager
def throwaway_cluster(pg_ctl: Path, reason: str = "") -> Iterator[Found]:
    """A new cluster from ``pg_ctl``'s installation: trust auth, user postgres, on a free port."""
    from port_for import get_port  # pytest-postgresql's dependencies: loaded only when needed
    from pytest_postgresql.executors import PostgreSQLExecutor

    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            yield Found(
                missing=f"{reason}; running as root with no `postgres` user to start a throwaway"
                f" cluster from {pg_ctl.parent} as (PostgreSQL refuses to run as root)"
            )
            return
    workdir = Path(tempfile.mkdtemp(prefix="reportd-test-pg-"))
    try:
        executable = str(pg_ctl)
        if owner is not None:
            os.chown(workdir, owner.pw_uid, owner.pw_gid)
            # Every pg_ctl call the executor makes (version, initdb, start, status, stop) goes through this.
            wrapper = workdir / "pg_ctl-as-postgres"
            wrapper.write_text(
                f"#!/bin/sh\ncd {shlex.quote(str(workdir))} || exit 1\n"
                f"exec setpriv --reuid=postgres --regid=postgres --init-groups -- {shlex.quote(str(pg_ctl))}"
                ' "$@"\n'
            )
            wrapper.chmod(0o755)
            executable = str(wrapper)
        port = get_port(None)
        executor = PostgreSQLExecutor(
            executable=executable,
            host="127.0.0.1",
            port=port,
            datadir=str(workdir / "data"),
            unixsocketdir=str(workdir),
            logfile=str(workdir / "postgresql.log"),
            startparams="-w",
            dbname="postgres",
            user="postgres",
        )
        try:
            executor.start()
            executor.wait_for_postgres()
        except Exception as exc:
            log = workdir / "postgresql.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
            with contextlib.suppress(Exception):
                executor.stop()
            yield Found(broken=f"a throwaway cluster from {pg_ctl.parent} did not start: {exc!r}; {tail}")
            return
        try:
            yield Found(
                where=f"postgresql://postgres@127.0.0.1:{port}/postgres",
                how=f"a throwaway cluster from {pg_ctl.parent} on 127.0.0.1:{port} ({reason})",
            )
        finally:
            executor.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def fresh_database(dsn: str) -> AsyncIterator[str]:
    """The URL of a new, empty database on ``dsn``'s server; dropped afterwards."""
    name = f"reportd_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield dsn.rsplit("/", 1)[0] + "/" + name
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
