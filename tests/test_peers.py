"""How the tests find their real peers (tests/support/pg.py, tests/support/peers.py): the order, and that a peer named
explicitly that does not answer fails its tests, where an absent one only skips them."""

from __future__ import annotations

import asyncio
import os

import pytest
from aiohttp import web

from tests.support import free_port, pg
from tests.support.peers import PUPPETDB_URL_VARIABLE, Found, Peer, find_puppetdb, puppetdb_problem

DSN, LOCAL, BIN = pg.PG_DSN_VARIABLE, pg.PG_LOCAL_VARIABLE, pg.PG_BIN_VARIABLE
REQUIRE = "REPORTD_TEST_PEERS_REQUIRE_IN_THIS_TEST"


def closed_dsn() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/test"


def test_an_explicit_dsn_wins_over_a_local_server_that_answers(pg_dsn):
    explicit = f"{pg_dsn}?application_name=reportd-explicit"  # the same server, told apart by the URL
    with pg.find_server({DSN: explicit, LOCAL: pg_dsn}) as found:
        assert (found.where, found.missing, found.broken) == (explicit, None, None)
        assert found.how.startswith(f"{DSN}=")


def test_an_explicit_dsn_that_does_not_answer_fails_its_tests_and_nothing_else_is_tried(pg_dsn):
    explicit = closed_dsn().replace("postgres@", "postgres:s3cret@")
    with pg.find_server({DSN: explicit, LOCAL: pg_dsn}) as found:
        assert found.where is None and found.missing is None
        assert f"{DSN}=postgresql://postgres:***@127.0.0.1:" in found.broken
        assert "does not answer: ConnectionRefusedError" in found.broken and "s3cret" not in found.broken
    peer = Peer("PostgreSQL", REQUIRE, "how to get one")
    with pytest.raises(pytest.fail.Exception, match="does not answer"):
        peer.use(found, "tests/x.py::a")  # failed, not skipped, though nothing requires it
    assert (peer.failed, peer.skipped) == ({"tests/x.py::a"}, set())
    assert peer.summary().startswith("PostgreSQL: BROKEN, 1 test failed: REPORTD_TEST_PG_DSN=")


def test_without_an_explicit_dsn_the_local_server_is_used(pg_dsn):
    with pg.find_server({LOCAL: pg_dsn}) as found:
        assert found.where == pg_dsn
        assert found.how == f"the local server {pg_dsn}"


def test_no_server_and_no_binaries_skips_saying_how_to_get_one_unless_required(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no pg_ctl on PATH either
    monkeypatch.delenv(REQUIRE, raising=False)
    local = closed_dsn()
    with pg.find_server({LOCAL: local, BIN: str(tmp_path / "no-such-dir")}) as found:
        assert found.where is None and found.broken is None
        assert found.missing.startswith(f"{local} does not answer (ConnectionRefusedError")
        assert found.missing.endswith(f"no pg_ctl under {tmp_path / 'no-such-dir'} or on PATH")
    peer = Peer("PostgreSQL", REQUIRE, pg.POSTGRESQL.enable)
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"):
        peer.use(found, "tests/x.py::a")
    assert peer.summary().startswith("PostgreSQL: not available, 1 test skipped (")
    monkeypatch.setenv(REQUIRE, "1")
    with pytest.raises(pytest.fail.Exception, match=f"required \\({REQUIRE} is set\\)"):
        peer.use(found, "tests/x.py::b")
    assert (peer.skipped, peer.failed) == ({"tests/x.py::a"}, {"tests/x.py::b"})


def test_a_throwaway_cluster_from_the_binaries_when_nothing_answers():
    if pg.find_pg_ctl() is None:
        reason = f"no pg_ctl under {pg.PG_BIN_GLOB} or on PATH for a throwaway cluster"
        if os.environ.get(pg.PG_REQUIRE_VARIABLE):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    with pg.find_server({LOCAL: closed_dsn()}) as found:
        assert found.where is not None, found
        assert found.how.startswith("a throwaway cluster from ")
        assert pg.problem(found.where) is None
    assert pg.problem(found.where) is not None  # stopped when the run is over


async def test_a_puppetdb_is_found_when_its_status_says_running(aiohttp_server):
    state = {"state": "starting"}

    async def status(request):
        return web.json_response(state)

    app = web.Application()
    app.router.add_get("/status/v1/services/puppetdb-status", status)
    server = await aiohttp_server(app)
    url = f"http://127.0.0.1:{server.port}"
    assert "state 'starting', not 'running'" in await asyncio.to_thread(puppetdb_problem, url)
    state["state"] = "running"
    assert await asyncio.to_thread(puppetdb_problem, url) is None
    local = await asyncio.to_thread(find_puppetdb, {"REPORTD_PUPPETDB_PORT": str(server.port)})
    assert local == Found(where=url, how=f"the one running at {url}")
    named = await asyncio.to_thread(
        find_puppetdb, {PUPPETDB_URL_VARIABLE: url + "/", "REPORTD_PUPPETDB_PORT": "1"}
    )
    assert named.where == url + "/"


def test_a_named_puppetdb_that_does_not_answer_is_broken_an_absent_one_missing():
    port = free_port()
    named = find_puppetdb({PUPPETDB_URL_VARIABLE: f"http://127.0.0.1:{port}"})
    assert named.where is None and named.missing is None
    assert named.broken.startswith(f"{PUPPETDB_URL_VARIABLE}=http://127.0.0.1:{port} does not answer: ")
    absent = find_puppetdb({"REPORTD_PUPPETDB_PORT": str(port)})
    assert absent == Found(missing=f"none running at http://127.0.0.1:{port}")
