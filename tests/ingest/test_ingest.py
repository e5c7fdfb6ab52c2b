"""Puppet ingest through real HTTP, read back through the store's API."""

from __future__ import annotations

import gzip

import orjson
import pytest

from tests.support import SAMPLE_CERTNAME, sample, wait_until

PUT_URL = f"/puppet/v3/report/{SAMPLE_CERTNAME}?environment=production"


async def put(client, body: bytes, url: str = PUT_URL, **headers):
    headers.setdefault("Content-Type", "application/json")
    return await client.put(url, data=body, headers=headers)


async def stored(client, **query) -> list[dict]:
    response = await client.get("/api/v1/reports", params=query)
    assert response.status == 200
    return (await response.json())["items"]


async def drained(client) -> bool:
    queue = await (await client.get("/api/v1/queue")).json()
    return all(p["pending"] == 0 for p in queue["processors"].values())


@pytest.mark.parametrize(
    ("name", "content_type", "status"),
    [
        ("agent-changes.json", "application/json", "changed"),
        ("agent-noop.json", "application/json", "noop_pending"),
        ("agent-catalog-failure.json", "text/pson", "failed"),
    ],
)
async def test_agent_samples_are_accepted_and_stored_with_their_status(client, name, content_type, status):
    response = await put(client, sample(name), **{"Content-Type": content_type})
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.json() == ["store"]
    items = await wait_until(lambda: stored(client))
    assert [(i["certname"], i["status"], i["environment"]) for i in items] == [
        (SAMPLE_CERTNAME, status, "production")
    ]
    node = await (await client.get(f"/api/v1/nodes/{SAMPLE_CERTNAME}")).json()
    assert node["status"] == status
    assert node["report_id"] == items[0]["id"]
    assert node["stale"] is False


@pytest.mark.parametrize("path", ["/reports/upload", "/puppet/v3/report"])
async def test_http_processor_yaml_is_accepted(client, path):
    body = sample("http-processor-failure.yaml")
    response = await client.post(path, data=body, headers={"Content-Type": "application/x-yaml"})
    assert response.status == 200
    assert await response.json() == ["store"]
    (item,) = await wait_until(lambda: stored(client))
    assert item["status"] == "failed"
    assert item["summary"]["resources"]["failed"] == 1
    assert item["summary"]["resources"]["skipped"] == 1
    detail = await (await client.get(f"/api/v1/reports/{item['id']}")).json()
    report = detail["report"]
    assert report["transaction_uuid"] == "edd685cf-de74-45ec-be8c-12d2bb874e2d"
    failed = [r for r in report["resource_statuses"] if r["failed"]]
    assert [(r["resource_type"], r["title"]) for r in failed] == [("Exec", "always_fails")]
    assert failed[0]["events"][0]["status"] == "failure"


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


def assert_inert(response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.url, name, response.headers.get(name))


@pytest.mark.parametrize(
    ("name", "sent_as", "served_as"),
    [
        ("agent-changes.json", "text/html", "application/json"),
        ("agent-catalog-failure.json", "text/pson", "application/json"),
        ("http-processor-failure.yaml", "text/html; charset=utf-8", "application/yaml"),
        ("http-processor-failure.yaml", "application/x-yaml", "application/yaml"),
    ],
)
async def test_a_raw_body_is_served_as_data_whatever_type_it_came_with(client, name, sent_as, served_as):
    body = sample(name)
    if name.endswith(".json"):  # markup in a report, as a resource's message may hold
        body = body.replace(
            b'"environment":"production"', b'"environment":"production","x":"<script>alert(1)</script>"', 1
        )
        assert b"<script>" in body
        response = await put(client, body, **{"Content-Type": sent_as})
    else:
        response = await client.post("/reports/upload", data=body, headers={"Content-Type": sent_as})
    assert response.status == 200, await response.text()
    assert_inert(response)
    (item,) = await wait_until(lambda: stored(client))
    raw = await client.get(f"/api/v1/reports/{item['id']}", params={"format": "raw"})
    assert raw.status == 200
    assert raw.headers["Content-Type"].split(";")[0] == served_as
    assert await raw.read() == body
    assert_inert(raw)


async def test_every_answer_carries_the_security_headers(aiohttp_client, make_app):
    client = await aiohttp_client(make_app("anonymous_networks =\n", processors="store, metrics"))
    for method, path, status in [
        ("GET", "/healthz", 200),
        ("GET", "/no/such/page", 404),
        ("GET", "/api/v1/reports", 403),
        ("GET", "/metrics", 403),
        ("GET", "/orchestrator/v1/jobs", 403),
        ("PUT", PUT_URL, 403),
        ("POST", "/api/config_reports", 403),
    ]:
        response = await client.request(method, path, data=b"{}" if method != "GET" else None)
        assert response.status == status, (path, response.status)
        assert_inert(response)


async def test_raw_body_is_kept_byte_for_byte(client):
    body = sample("agent-changes.json")
    await put(client, body)
    (item,) = await wait_until(lambda: stored(client))
    raw = await client.get(f"/api/v1/reports/{item['id']}", params={"format": "raw"})
    assert raw.content_type == "application/json"
    assert await raw.read() == body


async def test_normalized_report_has_the_model_fields(client):
    await put(client, sample("agent-changes.json"))
    (item,) = await wait_until(lambda: stored(client))
    report = (await (await client.get(f"/api/v1/reports/{item['id']}")).json())["report"]
    assert report["certname"] == SAMPLE_CERTNAME
    assert report["format"] == "puppet"
    assert report["report_format"] == 12
    assert report["configuration_version"] == str(
        orjson.loads(sample("agent-changes.json"))["configuration_version"]
    )
    assert report["metrics"]["resources"]["changed"] == 6
    assert report["start_time"].endswith("+00:00")
    assert len(report["resource_statuses"]) == 13
    assert report["envelope"]["path_certname"] == SAMPLE_CERTNAME


async def test_duplicate_is_stored_once_and_answered_with_success(client):
    body = sample("agent-changes.json")
    first = await put(client, body)
    second = await put(client, body)
    assert (first.status, second.status) == (200, 200)
    await wait_until(lambda: drained(client))
    assert len(await stored(client)) == 1


async def test_gzip_body_is_accepted(client):
    response = await put(client, gzip.compress(sample("agent-noop.json")), **{"Content-Encoding": "gzip"})
    assert response.status == 200
    (item,) = await wait_until(lambda: stored(client))
    assert item["status"] == "noop_pending"


async def test_body_over_the_limit_is_413_and_nothing_is_stored(aiohttp_client, make_app):
    client = await aiohttp_client(make_app("max_body_size = 4KiB\n"))
    response = await put(client, sample("agent-changes.json"))
    assert response.status == 413
    body = await response.json()
    assert body["issue_kind"] == "REQUEST_TOO_LARGE"
    assert "4096" in body["message"]
    # gzip hides the size until it is inflated: still refused
    response = await put(client, gzip.compress(sample("agent-changes.json")), **{"Content-Encoding": "gzip"})
    assert response.status == 413
    assert await stored(client) == []


@pytest.mark.parametrize(
    ("body", "content_type", "fragment"),
    [
        (b'{"host": "lab-agent.example.test", ', "application/json", "malformed JSON"),
        (b"[1, 2, 3]", "application/json", "must be an object"),
        (b"--- !ruby/object:Puppet::Transaction::Report\nhost: [unclosed\n", "application/x-yaml", "malformed YAML"),
        (b'{"host": "lab-agent.example.test", "report_format": 3, "time": "2026-01-01T00:00:00Z"}',
         "application/json", "report_format"),
        (b'{"host": "lab-agent.example.test", "report_format": 12, "time": "yesterday"}',
         "application/json", "time"),
        (b'{"report_format": 12, "time": "2026-01-01T00:00:00Z"}', "application/json", "host"),
    ],
)  # fmt: skip
async def test_bad_input_is_400_with_a_json_message_and_nothing_stored(client, body, content_type, fragment):
    response = await put(client, body, **{"Content-Type": content_type})
    assert response.status == 400
    error = await response.json()
    assert fragment in error["message"]
    assert error["issue_kind"]
    await wait_until(lambda: drained(client))
    assert await stored(client) == []
    queue = await (await client.get("/api/v1/queue")).json()
    assert queue == {"processors": {"store": {"pending": 0, "dead": 0, "oldest_pending_seconds": None}}}


async def test_missing_environment_and_host_mismatch_are_400(client):
    body = sample("agent-changes.json")
    response = await put(client, body, url=f"/puppet/v3/report/{SAMPLE_CERTNAME}")
    assert response.status == 400
    assert "environment" in (await response.json())["message"]
    response = await put(client, body, url="/puppet/v3/report/someone.else?environment=production")
    assert response.status == 400
    assert (await response.json())["issue_kind"] == "REPORT_HOST_MISMATCH"
    assert await stored(client) == []


async def test_environment_from_query_when_body_has_none(client):
    report = orjson.loads(sample("agent-changes.json"))
    del report["environment"]
    await put(client, orjson.dumps(report), url=f"/puppet/v3/report/{SAMPLE_CERTNAME}?environment=staging")
    (item,) = await wait_until(lambda: stored(client))
    assert item["environment"] == "staging"


def variant(name: str, uuid: str, time: str | None = None, host: str | None = None) -> bytes:
    report = orjson.loads(sample(name))
    report["transaction_uuid"] = uuid
    if time:
        report["time"] = time
    if host:
        report["host"] = host
    return orjson.dumps(report)


async def test_late_older_report_goes_to_history_not_node_status(client):
    newer = variant("agent-changes.json", "00000000-0000-4000-8000-000000000001", "2026-11-23T12:00:00+00:00")
    older = variant(
        "agent-catalog-failure.json", "00000000-0000-4000-8000-000000000002", "2026-11-23T11:00:00+00:00"
    )
    await put(client, newer)
    await put(client, older)
    items = await wait_until(lambda: _count(client, 2))
    assert [i["status"] for i in items] == ["changed", "failed"]  # newest run first
    node = await (await client.get(f"/api/v1/nodes/{SAMPLE_CERTNAME}")).json()
    assert node["status"] == "changed"
    assert node["run_time"].startswith("2026-11-23T12:00:00")
    assert node["last_received_at"] >= items[1]["received_at"]


async def _count(client, n: int, **query):
    items = await stored(client, **query)
    return items if len(items) == n else None


async def test_filters_and_cursor_pagination(client):
    for index in range(5):
        name = "agent-catalog-failure.json" if index % 2 else "agent-changes.json"
        body = variant(name, f"00000000-0000-4000-8000-00000000001{index}",
                       f"2026-11-23T1{index}:00:00+00:00", host=f"node{index}.example.test")  # fmt: skip
        response = await put(
            client, body, url=f"/puppet/v3/report/node{index}.example.test?environment=production"
        )
        assert response.status == 200
    await wait_until(lambda: _count(client, 5))
    assert [i["certname"] for i in await stored(client, status="failed")] == [
        "node3.example.test",
        "node1.example.test",
    ]
    assert len(await stored(client, certname="node2.example.test")) == 1
    assert len(await stored(client, since="2026-11-23T12:00:00Z", until="2026-11-23T14:00:00Z")) == 2
    seen, url = [], "/api/v1/reports?limit=2"
    while url:
        page = await (await client.get(url)).json()
        seen += [i["certname"] for i in page["items"]]
        url = page["next"] and page["next"].split(str(client.make_url("")), 1)[-1]
    assert seen == [f"node{i}.example.test" for i in (4, 3, 2, 1, 0)]
    nodes = await (await client.get("/api/v1/nodes", params={"limit": 3})).json()
    assert [n["certname"] for n in nodes["items"]] == [f"node{i}.example.test" for i in range(3)]
    assert nodes["next"] is not None
    bad = await client.get("/api/v1/reports", params={"limit": "lots"})
    assert bad.status == 400
    assert (await bad.json())["error"]["message"] == "invalid limit"
    missing = await client.get("/api/v1/reports/999999")
    assert missing.status == 404
