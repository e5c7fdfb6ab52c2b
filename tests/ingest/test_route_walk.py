"""Every route of a running daemon, walked with malformed input: never a 5xx.

The routes come from the application itself (a new route is walked without
changing this test); each gets hostile path parameters, query strings, bodies
and headers, with every permission granted so each handler runs to its checks.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools

import aiohttp
import orjson
from yarl import URL

from reportd.app import create_app
from reportd.config import load_config_string
from reportd.plugin_manager import get_plugin_manager
from tests.support import ini_for, sample

HOSTILE_SEGMENTS = [
    "1", "0", "-1", "99999999999999999999999", "1e30", "%00", "..%2F..", "x" * 300, "%E2%80%AE", "null",
    "%FF%FE", "UPPER", "550e4500-e22b-4ad4-a716-446659876500",
]  # fmt: skip
HOSTILE_QUERIES = [
    "",
    "limit=-1&offset=1e30&start=-5",
    "limit=99999999999999999999999&cursor=%21%21%21&since=9999-99-99&until=99999-01-01T00:00:00Z",
    "status=bogus&environment=%00&certname=%E2%80%AE&organization_id=1e30&location_id=-1",
    "paginate=true&page=100000000000000000000000000&page_size=-5&id_list=%00,,&scheduled_at_start=1e99",
    "order_by=%00&order=sideways&type=%FF&format=raw",
    "environment=" + "e" * 5000,
]
HOSTILE_VALUES = [
    None,
    True,
    -1,
    2**63,
    1e308,
    "",
    "%00\u0000",
    "x" * 10_000,
    [],
    {},
    [[[[[]]]]],
    {"a": {"b": 1}},
]
SHAPED = [
    *({"attrs": {key: value}} for key in ("name", "hosts", "services", "type", "schedule", "send_to",
                                          "send_via", "timezone", "id") for value in HOSTILE_VALUES),
    *({"environment": "production", "scope": {"nodes": ["a.example.test"]}, key: value}
      for key in ("concurrency", "timeout", "noop", "description", "environment") for value in HOSTILE_VALUES),
    *({"environment": "production", "scope": value} for value in HOSTILE_VALUES),
    *({"job": value} for value in HOSTILE_VALUES),
    *({"schedules_ids": value} for value in HOSTILE_VALUES),
]  # fmt: skip
RAW_BODIES = [
    b"",
    b"{",
    b"[]",
    b"null",
    b'{"a":' * 300,
    b"\xff\xfe\x00garbage",
    b"--- !ruby/object:Puppet::Transaction::Report\nhost: *nothing\n",
    sample("agent-changes.json"),
]
HEADER_SETS = [
    {"Content-Type": "application/json"},
    {"Content-Type": "application/x-yaml"},
    {"Content-Type": "text/html"},
    {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    {"Content-Type": "application/json", "X-Ops-Reporting-Protocol-Version": "0.1.0"},
    {"Authorization": "Bearer rpd_nope", "X-Authentication": "%00"},
]


def _routes(ini: str) -> list[tuple[str, str]]:
    config = load_config_string(ini)
    pm = get_plugin_manager(load_entrypoints=False, plugin_paths=config.plugin_paths)
    app = create_app(config, pm)
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource else {}
        routes.add((route.method, info.get("formatter") or info.get("path")))
    return sorted(routes)


def _requests(method: str, template: str):
    """(method, path, body, headers) for one route: each hostile input once."""
    names = [part[1:-1] for part in template.split("/") if part.startswith("{")]
    for segment in HOSTILE_SEGMENTS:
        path = template
        for name in names:
            path = path.replace("{" + name + "}", segment)
        yield method, path, b"{}", HEADER_SETS[0]
    base = template
    for name in names:
        base = base.replace("{" + name + "}", "1")
    for query in HOSTILE_QUERIES:
        yield method, f"{base}?{query}" if query else base, b"", {}
    if method in ("POST", "PUT", "DELETE"):
        for body, headers in itertools.product(RAW_BODIES, HEADER_SETS):
            if headers.get("Content-Encoding") == "gzip":
                body = body[: len(body) // 2] or b"x"  # a gzip stream that is not one
            yield method, base, body, headers
        for shaped in SHAPED:
            yield method, base, orjson.dumps(shaped), HEADER_SETS[0]
        yield method, base, gzip.compress(b"{" * 100_000), {**HEADER_SETS[0], "Content-Encoding": "gzip"}


async def test_every_route_answers_malformed_input_without_a_5xx(daemon_factory, tmp_path):
    extra = "anonymous_permissions = admin\n"
    ini = ini_for(tmp_path, extra, processors="store, metrics")
    routes = _routes(ini)
    assert len(routes) >= 30  # ingest, store, jobs, schedules, queue, health, metrics
    daemon = daemon_factory(ini).start()
    failures: list[str] = []
    sent = 0
    async with aiohttp.ClientSession() as session:
        semaphore = asyncio.Semaphore(16)

        async def one(method: str, path: str, body: bytes, headers: dict) -> None:
            nonlocal sent
            async with semaphore:
                url = URL(daemon.url + path, encoded=True)
                what = f"{method} {path[:120]} {body[:60]!r} {headers}"
                try:
                    async with session.request(method, url, data=body, headers=headers) as response:
                        await response.read()
                except aiohttp.ClientError as error:
                    failures.append(f"{what} -> {type(error).__name__}: {error}")
                    return
                sent += 1
                if response.status >= 500:
                    failures.append(f"{what} -> {response.status}")

        await asyncio.gather(*(one(*request) for route in routes for request in _requests(*route)))
        async with session.get(daemon.url + "/healthz") as response:
            assert response.status == 200
    assert sent > 1000
    assert failures == [], "\n".join(failures)
    log = daemon.log_path.read_text()
    assert '"request_failed"' not in log
    assert "Traceback" not in log
    assert daemon.stop() == 0
