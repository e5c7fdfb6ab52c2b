"""The puppetdb processor against a PuppetDB double as strict as the real one (tests/fakes)."""

from __future__ import annotations

import ssl
import uuid

import orjson
import pytest
import trustme

from reportd.appkeys import STORAGE
from tests.support import SAMPLE_CERTNAME, sample, wait_until
from tests.support.fakes.puppetdb import FakePuppetDB, validate_report_v8

PUT = "/puppet/v3/report/{host}?environment=production"
SAMPLES = [
    ("agent-changes.json", "application/json", "changed"),
    ("agent-noop.json", "application/json", "unchanged"),
    ("agent-catalog-failure.json", "application/json", "failed"),
    ("http-processor-failure.yaml", "application/x-yaml", "failed"),
]


@pytest.fixture
async def puppetdb():
    fake = FakePuppetDB()
    await fake.start()
    yield fake
    await fake.stop()


def settings(*urls: str, **extra: str) -> str:
    lines = [f"urls = {', '.join(urls)}", *(f"{key} = {value}" for key, value in extra.items())]
    return "[plugin:puppetdb]\n" + "\n".join(lines) + "\n"


async def send(client, name: str = "agent-changes.json", content_type: str = "application/json", **changes):
    body = sample(name)
    if changes:
        data = orjson.loads(body)
        data.update(changes)
        body = orjson.dumps(data)
    host = changes.get("host", SAMPLE_CERTNAME)
    if content_type == "application/x-yaml":
        response = await client.post("/reports/upload", data=body, headers={"Content-Type": content_type})
    else:
        response = await client.put(PUT.format(host=host), data=body, headers={"Content-Type": content_type})
    assert response.status == 200, await response.text()
    return response


async def queue(client) -> dict:
    return (await (await client.get("/api/v1/queue")).json())["processors"]["puppetdb"]


def stored_commands(fake: FakePuppetDB) -> list:
    return [c for c in fake.commands if c.outcome == "stored"]


async def test_every_sample_is_forwarded_with_a_valid_v8_body(aiohttp_client, make_app, puppetdb):
    client = await aiohttp_client(make_app(processors="store, puppetdb", plugins=settings(puppetdb.url)))
    for name, content_type, _ in SAMPLES:
        await send(client, name, content_type)

    async def all_stored():
        return len(puppetdb.reports) == 4

    await wait_until(all_stored)
    assert puppetdb.dead_letters == []
    by_uuid = {body["transaction_uuid"]: body for body in puppetdb.reports.values()}
    for name, _, status in SAMPLES:
        data = orjson.loads(sample(name)) if name.endswith(".json") else None
        if data is None:
            continue
        body = by_uuid[data["transaction_uuid"]]
        assert validate_report_v8(body) == []
        assert body["status"] == status
        assert body["certname"] == SAMPLE_CERTNAME
        assert body["configuration_version"] == ("" if data["configuration_version"] is None
                                                 else str(data["configuration_version"]))  # fmt: skip
    changes = by_uuid[orjson.loads(sample("agent-changes.json"))["transaction_uuid"]]
    # like the terminus: only changed, failed or skipped resources
    assert len(changes["resources"]) == 6
    assert all(r["events"] for r in changes["resources"])
    assert {m["category"] for m in changes["metrics"]} == {"resources", "time", "changes", "events"}
    command = stored_commands(puppetdb)[0]
    assert command.params["command"] == "store_report" and command.params["version"] == "8"
    assert command.headers["Content-Encoding"] == "gzip"
    assert command.params["producer-timestamp"].endswith("Z")


async def test_include_unchanged_resources(aiohttp_client, make_app, puppetdb):
    plugins = settings(puppetdb.url, include_unchanged_resources="true")
    client = await aiohttp_client(make_app(processors="puppetdb", plugins=plugins))
    await send(client)
    await wait_until(lambda: _count(puppetdb, 1))
    (body,) = puppetdb.reports.values()
    assert len(body["resources"]) == 13


async def _count(fake: FakePuppetDB, n: int):
    return len(fake.reports) == n


async def test_foreman_and_chef_reports_are_forwarded_too(aiohttp_client, make_app, puppetdb):
    client = await aiohttp_client(make_app(processors="puppetdb", plugins=settings(puppetdb.url)))
    foreman = {"config_report": {
        "host": "web02.example.com", "reported_at": "2026-11-23 10:00:00 UTC",
        "status": {"applied": 1, "failed": 1}, "metrics": {"time": {"total": 3.5}},
        "logs": [{"log": {"level": "err", "sources": {"source": "/Stage[main]/X/Exec[y]/returns"},
                          "messages": {"message": "change failed"}}}]}}  # fmt: skip
    response = await client.post("/api/config_reports", json=foreman)
    assert response.status == 201
    run_id = str(uuid.uuid4())
    converge = {
        "message_type": "run_converge", "message_version": "1.1.0", "node_name": "chef01.example.com",
        "organization_name": "acme", "run_id": run_id, "id": run_id, "status": "failure",
        "start_time": "2026-11-23T10:00:00Z", "end_time": "2026-11-23T10:01:00Z",
        "total_resource_count": 3, "updated_resource_count": 1, "source": "chef_client",
        "resources": [
            {"type": "package", "name": "nginx", "id": "nginx", "status": "updated", "result": "install",
             "duration": "1500", "before": {}, "after": {"version": "1.24"}, "delta": ""},
            {"type": "service", "name": "nginx", "id": "nginx", "status": "failed", "result": "start",
             "duration": "20", "error_message": "failed to start", "before": {}, "after": {}},
            {"type": "file", "name": "/etc/motd", "id": "/etc/motd", "status": "unprocessed", "result": "create"},
        ],
        "error": {"class": "Chef::Exceptions::Exec", "message": "failed to start", "backtrace": []},
    }  # fmt: skip
    response = await client.post("/data-collector/v0/", json=converge)
    assert response.status == 200
    await wait_until(lambda: _count(puppetdb, 2))
    assert puppetdb.dead_letters == []
    bodies = {b["certname"]: b for b in puppetdb.reports.values()}
    assert bodies["web02.example.com"]["status"] == "failed"
    assert bodies["web02.example.com"]["transaction_uuid"] is None
    assert bodies["web02.example.com"]["environment"] == "production"
    chef = bodies["chef01.example.com"]
    assert chef["status"] == "failed"
    assert chef["transaction_uuid"] == run_id
    assert {(r["resource_type"], r["skipped"]) for r in chef["resources"]} == {
        ("package", False), ("service", False), ("file", True)}  # fmt: skip
    assert {e["status"] for r in chef["resources"] for e in r["events"]} == {"success", "failure"}


async def test_outage_then_recovery_delivers_every_report_once(aiohttp_client, make_app, puppetdb):
    client = await aiohttp_client(make_app(processors="puppetdb", plugins=settings(puppetdb.url)))
    await puppetdb.stop()  # connection refused, as while PuppetDB's JVM starts
    for index in range(3):
        await send(client, transaction_uuid=f"00000000-0000-4000-8000-00000000000{index}")

    async def retried():
        return (await queue(client))["pending"] == 3 and min(_second_attempts(client)) >= 1

    await wait_until(retried)
    await puppetdb.start()
    puppetdb.mode = "starting"  # then 503 "PuppetDB is currently down" for a while
    await wait_until(lambda: _answered(puppetdb, 503))
    puppetdb.mode = "up"
    await wait_until(lambda: _count(puppetdb, 3), within=20)
    await wait_until(lambda: _no_pending(client))
    assert (await queue(client)) == {"pending": 0, "dead": 0, "oldest_pending_seconds": None}
    assert len(stored_commands(puppetdb)) == 3


async def _answered(fake: FakePuppetDB, status: int):
    return any(c.status == status for c in fake.commands)


async def test_retries_send_the_same_producer_timestamp(aiohttp_client, make_app, puppetdb):
    client = await aiohttp_client(make_app(processors="puppetdb", plugins=settings(puppetdb.url)))
    puppetdb.reject_next(2, status=503, body="PuppetDB is currently down. Try again later.")
    await send(client)
    await wait_until(lambda: _count(puppetdb, 1), within=20)
    attempts = [c for c in puppetdb.commands if c.method == "POST"]
    assert [c.status for c in attempts] == [503, 503, 200]
    assert len({c.params["producer-timestamp"] for c in attempts}) == 1
    assert len({orjson.dumps(c.body, option=orjson.OPT_SORT_KEYS) for c in attempts}) == 1


async def test_a_400_is_a_dead_letter_with_puppetdbs_message(aiohttp_client, make_app, puppetdb):
    client = await aiohttp_client(make_app(processors="puppetdb", plugins=settings(puppetdb.url)))
    puppetdb.reject_next(1, status=400, body={"error": "Supported commands are ..."})
    await send(client)

    async def dead():
        return (await queue(client))["dead"] == 1

    await wait_until(dead)
    (letter,) = await client.app[STORAGE].dead_letters("puppetdb", 10)
    assert letter.attempts == 1
    assert letter.error.startswith("PermanentError: PuppetDB refused the command: ")
    assert "Supported commands are" in letter.error
    assert puppetdb.reports == {}


async def test_failover_uses_the_first_puppetdb_that_answers(aiohttp_client, make_app, puppetdb):
    down = FakePuppetDB()
    await down.start()
    await down.stop()
    client = await aiohttp_client(make_app(processors="puppetdb", plugins=settings(down.url, puppetdb.url)))
    await send(client)
    await wait_until(lambda: _count(puppetdb, 1))
    await wait_until(lambda: _no_pending(client))


async def test_broadcast_keeps_delivery_state_per_puppetdb(aiohttp_client, make_app, puppetdb):
    second = FakePuppetDB()
    await second.start()
    await second.stop()
    plugins = settings(puppetdb.url, second.url, mode="broadcast")
    client = await aiohttp_client(make_app(processors="puppetdb", plugins=plugins))
    await send(client)
    await wait_until(lambda: _count(puppetdb, 1))
    await wait_until(lambda: _has_attempts(client, 2))
    assert (await queue(client))["pending"] == 1  # the second one has not stored it yet
    await second.start()
    try:
        await wait_until(lambda: _count(second, 1), within=20)
        await wait_until(lambda: _no_pending(client))
        # the one that had it already was not asked again
        assert len([c for c in puppetdb.commands if c.method == "POST"]) == 1
        assert list(second.reports) == list(puppetdb.reports)
    finally:
        await second.stop()


async def _has_attempts(client, attempts: int):
    """The delivery has failed at least ``attempts - 1`` times."""
    letters_and_pending = await client.app[STORAGE].queue_stats()
    stats = letters_and_pending.get("puppetdb")
    return (
        stats is not None
        and stats.pending == 1
        and any(c for c in _second_attempts(client) if c >= attempts - 1)
    )


def _second_attempts(client):
    import sqlite3

    path = client.app[STORAGE].path
    with sqlite3.connect(path) as conn:
        return [
            row[0] for row in conn.execute("SELECT attempts FROM deliveries WHERE processor = 'puppetdb'")
        ]


async def _no_pending(client):
    return (await queue(client))["pending"] == 0


async def test_wait_seconds_and_verify(aiohttp_client, make_app, puppetdb):
    plugins = settings(puppetdb.url, wait_seconds="5", verify="true", gzip="false")
    client = await aiohttp_client(make_app(processors="puppetdb", plugins=plugins))
    await send(client)
    await wait_until(lambda: _count(puppetdb, 1))
    await wait_until(lambda: _no_pending(client))
    (command,) = [c for c in puppetdb.commands if c.method == "POST"]
    assert command.params["secondsToWaitForCompletion"] == "5"
    assert "Content-Encoding" not in command.headers
    assert command.answer["processed"] is True


async def test_tls_with_a_client_certificate(aiohttp_client, make_app, tmp_path):
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("reportd.example.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    client_cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    client_cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    fake = FakePuppetDB()
    url = await fake.start(ssl_context=context)
    try:
        plugins = settings(url, ssl_ca=str(tmp_path / "ca.pem"), ssl_cert=str(tmp_path / "cert.pem"),
                           ssl_key=str(tmp_path / "key.pem"))  # fmt: skip
        client = await aiohttp_client(make_app(processors="puppetdb", plugins=plugins))
        await send(client)
        await wait_until(lambda: _count(fake, 1))
        assert url.startswith("https://")
    finally:
        await fake.stop()
