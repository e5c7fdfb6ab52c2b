"""The input boundary: whatever a client sends, reportd answers a 4xx with its family's
JSON body or accepts a report every processor can handle; one bad report never takes
another down; nothing a client sends makes memory or the event loop unbounded.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import time
import uuid
import zlib
from dataclasses import replace

import orjson
import pytest
import yaml

from reportd.appkeys import STORAGE
from reportd.auth import hash_token, new_token
from reportd.dispatch import _ReportCache
from reportd.formats import Envelope, ReportError, parse
from reportd.model import Report, utcnow
from reportd.parsing import ByteBudget
from reportd.status import RUN_STATUSES
from reportd.storage import ReportQuery
from tests.support import deliveries, sample, wait_until

PUT = "/puppet/v3/report/{certname}?environment=production"
JSON = {"Content-Type": "application/json"}
YAML = {"Content-Type": "application/x-yaml"}
PROTOCOL = {"X-Ops-Reporting-Protocol-Version": "0.1.0"}


def puppet_report(index: int = 0, **changes) -> dict:
    report = orjson.loads(sample("agent-changes.json"))
    report["host"] = f"node{index:04d}.example.test"
    report["transaction_uuid"] = str(uuid.UUID(int=index + 1))
    report.update(changes)
    return report


async def put(client, report: dict, **headers):
    return await client.put(
        PUT.format(certname=report["host"]), data=orjson.dumps(report), headers={**JSON, **headers}
    )


def as_yaml(report: dict) -> bytes:
    return b"--- !ruby/object:Puppet::Transaction::Report\n" + yaml.safe_dump(report).encode()


def _metric(report: dict, value) -> dict:
    report["metrics"]["resources"]["values"][0][2] = value
    return report


def converge(node: str, **fields) -> dict:
    """A Chef data collector ``run_converge`` message."""
    return {
        "message_type": "run_converge", "message_version": "1.1.0", "node_name": node,
        "run_id": str(uuid.uuid4()), "organization_name": "acme", "status": "success",
        "start_time": "2026-11-23T10:00:00Z", "end_time": "2026-11-23T10:00:30Z",
        "resources": [{"type": "file", "name": "/etc/motd", "status": "updated", "duration": "5",
                       "before": {}, "after": {"content": "hi"}, "result": "create"}],
        "run_list": ["recipe[base]"], **fields,
    }  # fmt: skip


def foreman(host: str, **status) -> dict:
    counters = {"applied": 0, "restarted": 0, "failed": 0, "failed_restarts": 0, "skipped": 0, "pending": 0}
    return {
        "config_report": {
            "host": host,
            "reported_at": "2026-11-23 10:00:00 UTC",
            "status": {**counters, **status},
            "metrics": {"time": {"total": 1.5}},
            "logs": [],
        }
    }


async def stored_ids(client) -> set[str]:
    items = (await (await client.get("/api/v1/reports?limit=1000")).json())["items"]
    return {item["certname"] for item in items}


async def queue(client) -> dict:
    return (await (await client.get("/api/v1/queue")).json())["processors"]


async def drained(client) -> bool:
    return all(p["pending"] == 0 for p in (await queue(client)).values())


# -- 1. one bad report never takes others down ---------------------------------
@pytest.mark.parametrize(
    ("path", "bad", "headers", "status"),
    [
        (
            "/data-collector/v0/",
            orjson.dumps(converge("bad.example.test", organization_name={"a": 1})),
            JSON,
            400,
        ),
        (
            "/api/config_reports",
            orjson.dumps(foreman("bad.example.test", applied=7777)).replace(b"7777", b"1" + b"0" * 25),
            JSON,
            422,
        ),
        (
            "/reports/upload",
            as_yaml(_metric(puppet_report(999, host="bad.example.test"), 987654321)).replace(
                b"987654321", b"1" + b"0" * 30
            ),
            YAML,
            400,
        ),
    ],
    ids=["chef-organization-dict", "foreman-counter-10e25", "yaml-metric-10e30"],
)
async def test_a_bad_report_among_good_ones_is_refused_and_every_good_one_is_stored(
    aiohttp_client, make_app, path, bad, headers, status
):
    client = await aiohttp_client(make_app())
    good = [puppet_report(i) for i in range(40)]
    answers = await asyncio.gather(
        *[put(client, r) for r in good[:20]],
        client.post(path, data=bad, headers=headers),
        *[put(client, r) for r in good[20:]],
    )
    refused = answers[20]
    assert refused.status == status
    assert refused.content_type == "application/json"
    assert all(a.status == 200 for a in answers[:20] + answers[21:])
    await wait_until(lambda: drained(client))
    assert await stored_ids(client) == {r["host"] for r in good}
    assert all(p["dead"] == 0 for p in (await queue(client)).values())


async def test_a_processor_that_fails_a_whole_batch_fails_only_the_report_it_cannot_take(
    aiohttp_client, make_app, tmp_path
):
    client = await aiohttp_client(make_app("max_attempts = 2\n", processors="store, picky"))
    reports = [puppet_report(i) for i in range(30)]
    reports[13]["host"] = "poison.example.test"
    for report in reports:
        assert (await put(client, report)).status == 200

    async def settled():
        stats = await queue(client)
        return stats["picky"]["pending"] == 0 and stats["picky"]["dead"] == 1 and stats

    stats = await wait_until(settled)
    assert stats["store"] == {"pending": 0, "dead": 0, "oldest_pending_seconds": None}
    recorded = {d["certname"] for d in deliveries(tmp_path) if d["processor"] == "picky"}
    assert recorded == {r["host"] for r in reports} - {"poison.example.test"}
    (letter,) = await client.app[STORAGE].dead_letters("picky", 10)
    assert letter.certname == "poison.example.test"
    assert letter.error == "ValueError: cannot handle a batch of 1"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("time", "9999-12-31T23:59:59-01:00", "out of range in UTC"),
        ("time", "0001-01-01T00:00:00+01:00", "out of range in UTC"),
        ("transaction_uuid", 7, "must be a string"),
        ("transaction_uuid", "not-a-uuid", "must be a UUID"),
        ("noop", "false", "must be true or false"),
        ("configuration_version", [1], "must be a string"),
        ("environment", "prod\nuction", "control characters"),
        ("job_id", {"id": 1}, "must be a string"),
    ],
)
async def test_puppet_fields_of_the_wrong_type_or_range_are_400(client, field, value, message):
    response = await put(client, puppet_report(**{field: value}))
    assert response.status == 400
    body = await response.json()
    assert body["issue_kind"] in ("VALIDATION", "BAD_REPORT")
    assert field in body["message"] and message in body["message"]
    assert await stored_ids(client) == set()


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1" + "0" * 30])
async def test_yaml_metrics_must_be_finite_64_bit_numbers(client, value):
    body = as_yaml(_metric(puppet_report(), 987654321)).replace(b"987654321", value.encode())
    response = await client.post("/reports/upload", data=body, headers=YAML)
    assert response.status == 400
    assert (await response.json())["issue_kind"] == "MALFORMED"


async def test_json_metric_integers_must_fit_64_bits(client):
    response = await put(client, _metric(puppet_report(1), 2**63))
    assert response.status == 400
    assert "must be an integer from" in (await response.json())["message"]
    # past 2**64 orjson reads a float: a finite number every processor takes
    body = orjson.dumps(_metric(puppet_report(), 987654321)).replace(b"987654321", str(2**64 + 10).encode())
    response = await client.put(PUT.format(certname="node0000.example.test"), data=body, headers=JSON)
    assert response.status == 200
    await wait_until(lambda: drained(client))
    assert await stored_ids(client) == {"node0000.example.test"}


@pytest.mark.parametrize(
    "reported_at", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "2026-13-01 10:00:00 UTC"]
)
async def test_foreman_reported_at_that_is_no_utc_time_is_422(client, reported_at):
    document = foreman("web1.example.test")
    document["config_report"]["reported_at"] = reported_at
    response = await client.post("/api/config_reports", data=orjson.dumps(document), headers=JSON)
    assert response.status == 422
    assert (await response.json())["error"]["errors"] == {"reported_at": ["is not a valid time"]}


@pytest.mark.parametrize("value", ["1" * 5000, 2**63, -1, "1e30"])
async def test_foreman_counters_out_of_range_are_422(client, value):
    response = await client.post(
        "/api/config_reports", data=orjson.dumps(foreman("web1.example.test", applied=value)), headers=JSON
    )
    assert response.status == 422
    assert list((await response.json())["error"]["errors"]) == ["status"]


@pytest.mark.parametrize("value", ["1e30", "9223372036854775808", "-1", "1" * 5000])
async def test_foreman_scope_ids_out_of_range_are_422(client, value):
    response = await client.post(
        f"/api/config_reports?location_id={value}",
        data=orjson.dumps(foreman("web1.example.test")),
        headers=JSON,
    )
    assert response.status == 422
    assert (await response.json())["error"]["errors"] == {"location_id": ["must be an Integer"]}


async def test_yaml_integer_of_5000_digits_is_400(client):
    body = as_yaml(puppet_report(configuration_version=987654321)).replace(b"987654321", b"9" * 5000)
    response = await client.post("/reports/upload", data=body, headers=YAML)
    assert response.status == 400
    assert "is not a valid int" in (await response.json())["message"]


async def test_nul_in_any_string_is_refused(client):
    report = puppet_report()
    report["logs"][0]["message"] = "a\u0000b"
    response = await put(client, report)
    assert response.status == 400
    assert "NUL" in (await response.json())["message"]
    body = as_yaml(puppet_report(1)).replace(b"host: node0001", b'host: "node\\0001')
    response = await client.post("/reports/upload", data=body, headers=YAML)
    assert response.status == 400


async def test_a_nan_already_in_the_store_does_not_break_metrics(aiohttp_client, make_app, tmp_path):
    client = await aiohttp_client(make_app(processors="store, metrics"))
    assert (await put(client, puppet_report())).status == 200
    await wait_until(lambda: drained(client))
    storage = client.app[STORAGE]
    (row,) = await storage.query_reports(ReportQuery())
    # A store written before ingest refused NaN: a newer run of the node holds one.
    summary = {**row.summary, "metrics": {**row.summary["metrics"], "time": {"total": float("nan")}}}
    await storage.store_reports([replace(row, id=row.id + 1, run_time=row.run_time + 1, summary=summary)])
    await client.close()

    # restarted on the same store: the series come back from it, and a scrape works
    client = await aiohttp_client(make_app(processors="store, metrics"))
    response = await client.get("/metrics")
    assert response.status == 200
    text = await response.text()
    assert 'puppet_report{environment="production",host="node0000.example.test"}' in text
    assert (
        'puppet_report_time{environment="production",host="node0000.example.test",name="Total"}' not in text
    )


# -- 2. nothing unbounded ------------------------------------------------------
def yaml_with_shared(value: object, where: str) -> bytes:
    """A report whose every resource shares one object at ``where``: the YAML dumper
    writes it once with an anchor and aliases it everywhere else, as Ruby's Psych does."""
    report = orjson.loads(sample("agent-changes.json"))
    for status in report["resource_statuses"].values():
        if where == "tags":
            status["tags"] = value
        for event in status["events"]:
            event["previous_value"] = value
    return as_yaml(report)


def billion_laughs() -> list:
    level: list = ["lol"] * 9
    for _ in range(8):
        level = [level] * 9
    return level


@pytest.mark.parametrize("where", ["tags", "previous_value"])
async def test_yaml_alias_bomb_is_refused(client, where):
    body = yaml_with_shared(billion_laughs(), where)
    assert len(body) < 20_000 and b"*id" in body
    response = await client.post("/reports/upload", data=body, headers=YAML)
    assert response.status == 400
    assert "aliases expand" in (await response.json())["message"]


async def test_yaml_aliases_that_do_not_grow_the_report_are_read(client):
    body = yaml_with_shared(["base", "file"], "tags")
    assert b"&id001" in body and b"*id001" in body
    assert (await client.post("/reports/upload", data=body, headers=YAML)).status == 200
    await wait_until(lambda: drained(client))
    (item,) = (await (await client.get("/api/v1/reports")).json())["items"]
    report = (await (await client.get(f"/api/v1/reports/{item['id']}")).json())["report"]
    assert {tuple(s["tags"]) for s in report["resource_statuses"]} == {("base", "file")}


def nested(depth: int):
    value: object = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [65, 300, 1000])
async def test_json_values_nested_deeper_than_64_are_400(client, depth):
    report = puppet_report()
    first = next(iter(report["resource_statuses"].values()))
    first["events"] = [{**(first["events"] or [{}])[0], "previous_value": "@@deep@@"}]
    deep = b"[" * depth + b'"leaf"' + b"]" * depth  # deeper than orjson would write
    body = orjson.dumps(report).replace(b'"@@deep@@"', deep)
    response = await client.put(PUT.format(certname=report["host"]), data=body, headers=JSON)
    assert response.status == 400
    assert "nested deeper than 64 levels" in (await response.json())["message"]


async def test_values_nested_64_deep_are_stored_and_read_back(client):
    report = puppet_report()
    key = next(k for k, v in report["resource_statuses"].items() if v["events"])
    report["resource_statuses"][key]["events"][0]["previous_value"] = nested(63)
    assert (await put(client, report)).status == 200
    await wait_until(lambda: drained(client))
    (item,) = (await (await client.get("/api/v1/reports")).json())["items"]
    detail = await client.get(f"/api/v1/reports/{item['id']}")
    assert detail.status == 200
    statuses = (await detail.json())["report"]["resource_statuses"]
    assert any(e["previous_value"] == nested(63) for s in statuses for e in s["events"])


@pytest.mark.parametrize("depth", [100, 500])
async def test_yaml_nested_deeper_than_64_is_400(client, depth):
    body = b"--- !ruby/object:Puppet::Transaction::Report\nhost: a.example.test\nx:\n"
    body += b"".join(b"  " * i + b"-\n" for i in range(1, depth)) + b"  " * depth + b"- leaf\n"
    response = await client.post("/reports/upload", data=body, headers=YAML)
    assert response.status == 400
    assert "nested deeper than 64 levels" in (await response.json())["message"]


async def test_large_reports_parse_off_the_loop_to_the_same_report(client):
    report = puppet_report()
    template = next(iter(report["resource_statuses"].values()))
    report["resource_statuses"] = {
        f"File[/tmp/f{i}]": {**template, "title": f"/tmp/f{i}", "resource": f"File[/tmp/f{i}]"}
        for i in range(1500)
    }
    body = orjson.dumps(report)
    assert len(body) > 512 * 1024  # past the inline limit: parsed in the pool
    response = await client.put(PUT.format(certname=report["host"]), data=io.BytesIO(body), headers=JSON)
    assert response.status == 200
    yaml_body = as_yaml({**report, "host": "node0001.example.test", "transaction_uuid": str(uuid.uuid4())})
    assert (await client.post("/reports/upload", data=io.BytesIO(yaml_body), headers=YAML)).status == 200
    await wait_until(lambda: drained(client))
    items = (await (await client.get("/api/v1/reports")).json())["items"]
    assert sorted(i["summary"]["resources"]["total"] for i in items) == [13, 13]
    for item in items:
        detail = await (await client.get(f"/api/v1/reports/{item['id']}")).json()
        assert len(detail["report"]["resource_statuses"]) == 1500


async def test_a_body_over_max_body_size_is_413(aiohttp_client, make_app):
    client = await aiohttp_client(make_app("max_body_size = 64KiB\n"))
    report = puppet_report(logs=[{"level": "info", "message": "x" * 70_000, "source": "Puppet"}])
    response = await put(client, report)
    assert response.status == 413
    assert (await response.json())["issue_kind"] == "REQUEST_TOO_LARGE"
    # the same once compressed, decoded past the limit
    response = await client.put(
        PUT.format(certname=report["host"]),
        data=gzip.compress(orjson.dumps(report)),
        headers={**JSON, "Content-Encoding": "gzip"},
    )
    assert response.status == 413


def test_report_cache_is_bounded_by_body_bytes_and_released_once_delivered():
    cache = _ReportCache(max_bytes=1000)

    def report(report_id: int, size: int) -> Report:
        return Report(certname="a", format="puppet", received_at=utcnow(), raw=b"x" * size, id=report_id)

    for report_id in range(1, 6):
        cache.add(report(report_id, 300), {"store", "metrics"})
    assert [i for i in range(1, 6) if cache.get(i)] == [3, 4, 5]  # 900 bytes fit, the oldest went
    cache.delivered(4, "store")
    assert cache.get(4) is not None
    cache.delivered(4, "metrics")
    assert cache.get(4) is None
    cache.add(report(9, 5000), {"store"})  # larger than the whole cache: never kept
    assert cache.get(9) is None and cache.get(5) is not None


async def test_body_budget_grows_with_bodies_and_lets_one_holder_overdraw():
    budget = ByteBudget(100)
    order = []

    async def holder(name: str, sizes: list[int], pause: float = 0.05):
        async with budget.hold() as share:
            for size in sizes:
                await asyncio.sleep(0)  # every holder takes its first part before any grows further
                await share.grow_to(size)
                order.append(f"{name} {size}")
            await asyncio.sleep(pause)
            order.append(f"{name} done")

    # a and b fit side by side; c needs more than is left: it overdraws alone, d waits for it
    await asyncio.gather(holder("a", [30]), holder("b", [30]), holder("c", [20, 500]), holder("d", [10, 60]))
    assert budget.free == 100 and budget.overdraft.locked() is False
    assert order.index("c 500") < order.index("a done")  # the overdrawer did not wait for the others
    assert order.index("d 60") > order.index("c done")  # the second to need more waited its turn

    # a holder cancelled while it waits for its turn gives back what it held, and nothing breaks
    async with budget.hold() as first:
        await first.grow_to(150)
        waiting = asyncio.create_task(holder("e", [10, 50]))
        await asyncio.sleep(0.01)
        assert budget.free == -50  # e holds nothing yet: it waits before its first part
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert budget.free == 100 and budget.overdraft.locked() is False


# -- 4. every malformed body is a 4xx in the family's shape -------------------
def _members(count: int) -> bytes:
    return b"".join(gzip.compress(b"") for _ in range(count))


def _bad_crc(body: bytes) -> bytes:
    compressed = gzip.compress(body)
    return compressed[:-8] + bytes([compressed[-8] ^ 0xFF]) + compressed[-7:]


ENCODINGS = {
    "invalid-gzip": (lambda body: b"not gzip at all", "gzip", 400),
    "bad-crc": (_bad_crc, "gzip", 400),
    "trailing-garbage": (lambda body: gzip.compress(body) + b"garbage", "gzip", 400),
    "1100-members": (lambda body: _members(1100) + gzip.compress(body), "gzip", 400),
    "deflate-garbage": (lambda body: b"\x78\x9c garbage", "deflate", 400),
    "unknown-encoding": (lambda body: body, "foo", 415),
    "good-deflate": (lambda body: zlib.compress(body), "deflate", None),
}
FAMILIES = {
    "puppet-put": ("PUT", PUT.format(certname="node0000.example.test"), lambda: orjson.dumps(puppet_report()),
                   JSON, "issue_kind", 200),
    "puppet-http": ("POST", "/reports/upload", lambda: as_yaml(puppet_report()), YAML, "issue_kind", 200),
    "foreman": ("POST", "/api/config_reports", lambda: orjson.dumps(foreman("web1.example.test")), JSON,
                "error", 201),
    "chef-reporting": (
        "POST", "/organizations/acme/reports/nodes/web1.example.test/runs/550e4500-e22b-4ad4-a716-446659876500",
        lambda: orjson.dumps({"action": "end", "status": "success", "start_time": "2026-11-23 12:00:00 +0200",
                              "end_time": "2026-11-23 12:00:30 +0200", "run_list": "[]", "total_res_count": "0",
                              "resources": [], "data": {}}),
        {**JSON, **PROTOCOL}, "error", 201),
    "chef-data-collector": ("POST", "/data-collector/v0/", lambda: orjson.dumps(converge("web1.example.test")),
                            JSON, "error", 200),
}  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_bodies_that_do_not_decode_are_4xx_in_the_family_shape(client, family, encoding):
    method, path, body, headers, error_key, accepted = FAMILIES[family]
    transform, content_encoding, status = ENCODINGS[encoding]
    response = await client.request(
        method, path, data=transform(body()), headers={**headers, "Content-Encoding": content_encoding}
    )
    if status is None:
        assert response.status == accepted
        return
    assert response.status == status
    assert response.content_type == "application/json"
    assert error_key in await response.json()
    assert await stored_ids(client) == set()


@pytest.mark.parametrize("split", [True, False], ids=["body-after-headers", "one-packet"])
@pytest.mark.parametrize(
    ("path", "error_key"),
    [
        ("/reports/upload", "issue_kind"),
        ("/api/config_reports", "error"),
        ("/api/v1/reports/schedules", "error"),
    ],
)
async def test_a_deflate_body_that_ends_early_is_400_in_json_without_a_wait(
    aiohttp_client, make_app, path, error_key, split
):
    # aiohttp finds this when the body ends, outside the handler's body stream (Schemathesis found the wait)
    client = await aiohttp_client(make_app("anonymous_permissions = admin\n"))
    body = zlib.compress(orjson.dumps(puppet_report()))[:5]
    head = (
        f"POST {path} HTTP/1.1\r\nHost: reportd\r\nContent-Type: application/json\r\n"
        f"Content-Encoding: deflate\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head if split else head + body)
        await writer.drain()
        if split:
            await asyncio.sleep(0.05)
            writer.write(body)
        answer = await asyncio.wait_for(reader.read(), 5)  # the connection closes after the answer
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, payload = rest.partition(b"\r\n\r\n")
    assert status_line == b"HTTP/1.1 400 Bad Request"
    assert b"Content-Type: application/json" in headers
    assert error_key in orjson.loads(payload)
    assert await stored_ids(client) == set()


# ("." and ".." never reach a handler: URLs are normalized first; bodies are tested below)
BAD_URL_CERTNAMES = ["a%00b.example.test", "new%0Aline.example.test", "evil%E2%80%AE.example.test",
                     "x" * 256, "sp%C3%A9cial.example.test", "a%2Fb.example.test"]  # fmt: skip


@pytest.mark.parametrize("name", [*BAD_URL_CERTNAMES, "UPPER.example.test"])
async def test_certnames_in_puppet_urls_follow_puppets_rule(client, name):
    response = await client.put(f"/puppet/v3/report/{name}?environment=production", data=b"{}", headers=JSON)
    assert response.status == 400
    assert (await response.json())["issue_kind"] == "BAD_CERTNAME"


@pytest.mark.parametrize("name", BAD_URL_CERTNAMES)
async def test_certnames_in_chef_urls_follow_puppets_rule(client, name):
    response = await client.post(
        f"/organizations/acme/reports/nodes/{name}/runs", data=b"{}", headers={**JSON, **PROTOCOL}
    )
    assert response.status == 400
    assert (await response.json())["error"][0].startswith("node ")


@pytest.mark.parametrize(
    ("host", "foreman_status"),
    [("a\u0000b.example.test", 400), ("..", 422), ("x" * 256, 422), ("evil\u202e.example.test", 422),
     ("new\nline.example.test", 422)],
)  # fmt: skip
async def test_certnames_in_bodies_follow_puppets_rule(client, host, foreman_status):
    response = await client.post("/reports/upload", data=orjson.dumps(puppet_report(host=host)), headers=JSON)
    assert response.status == 400
    response = await client.post("/api/config_reports", data=orjson.dumps(foreman(host)), headers=JSON)
    assert response.status == foreman_status
    response = await client.post("/data-collector/v0/", data=orjson.dumps(converge(host)), headers=JSON)
    assert response.status == 400
    assert await stored_ids(client) == set()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("organization_id=9223372036854775808", "organization_id"),
        ("location_id=1e30", "location_id"),
        ("since=99999-01-01T00:00:00Z", "since"),
        ("until=9999-12-31T23:59:59-01:00", "until"),
        ("limit=100000000000000000000000", "limit"),
        ("cursor=WzEsMWUzMF0", "cursor"),  # [1,1e30]
        ("cursor=WzEsMTAwMDAwMDAwMDAwMDAwMDAwMDAwXQ", "cursor"),  # [1,10**20]
        ("cursor=WzFlMzA4MCwxXQ", "cursor"),  # [1e3080,1]: not JSON orjson takes
    ],
)
async def test_report_query_parameters_out_of_range_are_400(client, query, field):
    response = await client.get(f"/api/v1/reports?{query}")
    assert response.status == 400
    assert field in (await response.json())["error"]["details"]


@pytest.mark.parametrize("path", ["/api/v1/reports", "/api/v1/nodes"])
async def test_an_unknown_run_status_filter_is_400_not_an_empty_list(client, path):
    response = await client.get(f"{path}?status=faild")
    assert response.status == 400
    assert (await response.json())["error"]["details"] == {"status": "one of " + ", ".join(RUN_STATUSES)}
    assert (await client.get(f"{path}?status=failed")).status == 200


async def test_report_ids_out_of_range_are_400(client):
    for report_id in ("9223372036854775808", "-1", "1e3"):
        response = await client.get(f"/api/v1/reports/{report_id}")
        assert response.status == 400, report_id
        assert "error" in await response.json()


@pytest.mark.parametrize(
    ("page", "problem"), [(10**30, "an integer"), (10**12, "an integer from 1 to 1000000000")]
)
async def test_schedules_page_out_of_range_is_400(client, page, problem):
    token = new_token()
    await client.app[STORAGE].create_token("ops", hash_token(token), ["view_schedules"], time.time())
    response = await client.get(
        f"/api/v1/reports/schedules?paginate=true&page={page}&page_size=10",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status == 400
    assert (await response.json())["details"] == {"page": problem}


def test_parse_error_for_every_format_is_a_report_error():
    for fmt in ("puppet", "foreman", "chef"):
        with pytest.raises(ReportError):
            parse(b"\xff\xfe garbage", Envelope(fmt, "application/json", utcnow(), "a.example.test"))
