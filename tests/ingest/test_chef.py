"""Chef runs (spec/chef.md) through real HTTP: the reporting protocol's start and end of a
run, and the data collector's run_start / run_converge, read back through the store's API.

The bodies are Chef Infra client's own: ``Chef::ResourceReporter`` (reporting) and
``Chef::DataCollector::RunEndMessage`` (data collector).
"""

from __future__ import annotations

import gzip
import time
import uuid

import orjson
import pytest

from reportd.appkeys import STORAGE
from reportd.auth import hash_token, new_token
from tests.support import wait_until

RUN_ID = "550e4500-e22b-4ad4-a716-446659876500"
NODE = "node1.example.com"
PROTOCOL = {"X-Ops-Reporting-Protocol-Version": "0.1.0"}
EMPTY_QUEUE = {"processors": {"store": {"pending": 0, "dead": 0, "oldest_pending_seconds": None}}}
NO_ANONYMOUS = "anonymous_networks =\n"


def runs(node: str = NODE, org: str = "acme") -> str:
    return f"/organizations/{org}/reports/nodes/{node}/runs"


def chef_headers(run_id: str, **extra) -> dict:
    return {
        **PROTOCOL,
        "X-Remote-Request-Id": run_id,
        "X-Chef-Version": "18.5.0",
        "X-Ops-Server-API-Version": "1",
        "Accept": "application/json",
        **extra,
    }


NGINX = {
    "type": "service", "name": "nginx", "id": "nginx", "cookbook_name": "web", "cookbook_version": "1.0.0",
    "duration": "250", "before": {"running": False, "enabled": True}, "after": {"running": True, "enabled": True},
    "result": "restart", "delta": "",
}  # fmt: skip
CONFIG = {
    "type": "template", "name": "/etc/nginx/nginx.conf", "id": "/etc/nginx/nginx.conf", "cookbook_name": "web",
    "cookbook_version": "1.0.0", "duration": "12", "before": {"checksum": "aa"}, "after": {"checksum": "bb"},
    "result": "create", "delta": "--- /etc/nginx/nginx.conf\n+++ /tmp/chef-rendered\n-a\n+b",
}  # fmt: skip
EXCEPTION = {
    "class": "RuntimeError",
    "message": "boom",
    "backtrace": '["/opt/chef/embedded/lib/ruby/gems/chef/lib/chef/runner.rb:12:in `run\'"]',
    "description": {"title": "Error executing action `restart` on resource 'service[nginx]'", "sections": []},
}


def end_body(status: str = "success", resources=None, exception: dict | None = None, **fields) -> dict:
    """``ResourceReporter#prepare_run_data``."""
    body = {
        "action": "end",
        "status": status,
        "start_time": "2026-11-23 12:00:00 +0200",
        "end_time": "2026-11-23 12:00:30 +0200",
        "run_list": '["recipe[base]","role[web]"]',
        "total_res_count": "23",
        "resources": [NGINX, CONFIG] if resources is None else resources,
        "data": {"exception": exception} if exception else {},
    }
    body.update(fields)
    return body


async def start(client, run_id: str = RUN_ID, node: str = NODE, org: str = "acme", headers=None, **fields):
    body = {"action": "start", "run_id": run_id, "start_time": "2026-11-23 12:00:00 +0200", **fields}
    return await client.post(
        runs(node, org), data=orjson.dumps(body),
        headers=chef_headers(run_id, **{"Content-Type": "application/json"}) if headers is None else headers,
    )  # fmt: skip


async def end(client, body, run_id: str = RUN_ID, node: str = NODE, org: str = "acme", *,
              content_type: str | None = "application/octet-stream", headers=None):  # fmt: skip
    """Chef gzips the end of a run and posts it with ``raw_request``: no JSON content type."""
    data = gzip.compress(body if isinstance(body, bytes) else orjson.dumps(body))
    sent = chef_headers(run_id, **{"Content-Encoding": "gzip"}) if headers is None else headers
    skip = []
    if content_type is None:
        skip = ["Content-Type"]
    else:
        sent = {**sent, "Content-Type": content_type}
    return await client.post(f"{runs(node, org)}/{run_id}", data=data, headers=sent, skip_auto_headers=skip)


def converge(status: str = "success", resources=None, error: dict | None = None, run_id: str = RUN_ID,
             node: str = NODE, **fields) -> dict:  # fmt: skip
    """``Chef::DataCollector::RunEndMessage.construct_message``."""
    resources = [updated()] if resources is None else resources
    message = {
        "chef_server_fqdn": "chef.example.com",
        "entity_uuid": "d2ff2bd0-5a1c-4c3e-9d43-7a5f1ad3e0f1",
        "expanded_run_list": {"id": "_default", "run_list": [
            {"type": "recipe", "name": "base", "version": None, "skipped": False, "children": []}]},
        "id": run_id,
        "message_version": "1.1.0",
        "message_type": "run_converge",
        "node": {"name": node, "chef_environment": "_default", "automatic": {"platform": "ubuntu"}},
        "node_name": node,
        "organization_name": "acme",
        "resources": resources,
        "run_id": run_id,
        "run_list": ["recipe[base]"],
        "cookbooks": {"base": {"version": "1.0.0"}},
        "policy_name": None,
        "policy_group": None,
        "start_time": "2026-11-23T10:00:00Z",
        "end_time": "2026-11-23T10:00:30Z",
        "source": "chef_client",
        "status": status,
        "total_resource_count": len(resources),
        "updated_resource_count": sum(1 for r in resources if r["status"] == "updated"),
        "deprecations": [],
    }  # fmt: skip
    if error:
        message["error"] = error
    message.update(fields)
    return message


def run_start(run_id: str = RUN_ID, node: str = NODE) -> dict:
    return {
        "chef_server_fqdn": "chef.example.com", "entity_uuid": "d2ff2bd0-5a1c-4c3e-9d43-7a5f1ad3e0f1",
        "id": run_id, "message_version": "1.0.0", "message_type": "run_start", "node_name": node,
        "organization_name": "acme", "run_id": run_id, "source": "chef_client",
        "start_time": "2026-11-23T10:00:00Z",
    }  # fmt: skip


def resource(status: str, type_: str, name: str, action: str, **extra) -> dict:
    entry = {
        "type": type_, "name": name, "id": name, "after": {}, "before": {}, "duration": "250",
        "delta": "", "ignore_failure": False, "result": action, "status": status,
        "cookbook_name": "base", "cookbook_version": "1.0.0", "recipe_name": "default",
    }  # fmt: skip
    entry.update(extra)
    return entry


def updated() -> dict:
    return resource(
        "updated", "service", "nginx", "restart", before={"running": False}, after={"running": True}
    )


def up_to_date() -> dict:
    return resource(
        "up-to-date", "package", "curl", "install", before={"version": "8.5"}, after={"version": "8.5"}
    )


def skipped() -> dict:
    return resource("skipped", "execute", "reindex", "run", conditional="not_if { ::File.exist?('/x') }")


def failed() -> dict:
    return resource("failed", "package", "broken", "install",
                    error_message="package[broken] (base::default line 7) had an error: No candidate version")  # fmt: skip


def unprocessed() -> dict:
    entry = resource("unprocessed", "file", "/etc/motd", "create")
    del entry["duration"]  # never ran
    return entry


async def collect(client, message, token: str | None = None):
    headers = {"Content-Type": "application/json", "x-data-collector-auth": "version=1.0"}
    if token:
        headers["x-data-collector-token"] = token
    return await client.post("/data-collector/v0/", data=orjson.dumps(message), headers=headers)


async def stored(client, headers=None, **query) -> list[dict]:
    response = await client.get("/api/v1/reports", params=query, headers=headers)
    assert response.status == 200
    return (await response.json())["items"]


async def count(client, n: int, headers=None, **query):
    items = await stored(client, headers, **query)
    return items if len(items) == n else None


async def drained(client, headers=None) -> bool:
    queue = await (await client.get("/api/v1/queue", headers=headers)).json()
    return all(p["pending"] == 0 for p in queue["processors"].values())


async def detail(client, report_id: int, headers=None) -> dict:
    response = await client.get(f"/api/v1/reports/{report_id}", headers=headers)
    assert response.status == 200
    return await response.json()


async def node_status(client, certname: str = NODE, headers=None) -> str:
    response = await client.get(f"/api/v1/nodes/{certname}", headers=headers)
    assert response.status == 200
    return (await response.json())["status"]


async def assert_nothing_stored(client, headers=None) -> None:
    assert await stored(client, headers) == []
    queue = await client.get("/api/v1/queue", headers=headers)
    assert await queue.json() == EMPTY_QUEUE
    nodes = await client.get("/api/v1/nodes", headers=headers)
    assert (await nodes.json())["items"] == []


async def chef_error(response, status: int) -> str:
    assert response.status == status
    assert response.content_type == "application/json"
    body = await response.json()
    assert list(body) == ["error"]
    (message,) = body["error"]
    assert isinstance(message, str)
    assert message
    return message


async def make_token(client, name: str, *permissions: str) -> str:
    secret = new_token()
    await client.app[STORAGE].create_token(name, hash_token(secret), permissions, time.time())
    return secret


# -- reporting: start ------------------------------------------------------------------------------


async def test_start_is_201_with_the_absolute_run_uri_and_a_second_start_is_409(client):
    response = await start(client)
    assert response.status == 201
    assert response.content_type == "application/json"
    assert await response.json() == {
        "uri": f"http://127.0.0.1:{client.server.port}/organizations/acme/reports/nodes/{NODE}/runs/{RUN_ID}"
    }
    again = await start(client)
    assert again.status == 409
    assert await again.json() == {"error": ["Report already exists"]}
    # the same run id on another node is another run
    other = await start(client, node="node2.example.com")
    assert other.status == 201
    assert (await other.json())["uri"].endswith(f"/nodes/node2.example.com/runs/{RUN_ID}")
    # a start is not a report
    await assert_nothing_stored(client)


@pytest.mark.parametrize("run_id", ["not-a-uuid", "", "550e4500-e22b-4ad4-a716", 42, None])
async def test_start_with_a_run_id_that_is_not_a_uuid_is_400(client, run_id):
    response = await start(client, run_id=run_id, headers={**PROTOCOL, "Content-Type": "application/json"})
    await chef_error(response, 400)
    await assert_nothing_stored(client)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b'{"action": "start", "run_id": ', "JSON"), (b'["start"]', ""),
     (orjson.dumps({"action": "end", "run_id": RUN_ID}), "action"),
     (orjson.dumps({"action": "start", "run_id": RUN_ID, "start_time": "yesterday"}), "start_time")],
    ids=["malformed", "array", "wrong-action", "bad-start-time"],
)  # fmt: skip
async def test_start_with_a_bad_body_is_400(client, body, fragment):
    response = await client.post(runs(), data=body, headers={**PROTOCOL, "Content-Type": "application/json"})
    message = await chef_error(response, 400)
    assert fragment in message
    assert (await start(client)).status == 201  # nothing of the bad start was recorded
    await assert_nothing_stored(client)


@pytest.mark.parametrize("which", ["start", "end"])
@pytest.mark.parametrize(("version", "status"), [(None, 404), ("0.2.0", 406), ("1.0.0", 406), ("", 406)])
async def test_protocol_header_missing_is_404_and_another_version_406(client, which, version, status):
    headers = {"Content-Type": "application/json", "X-Remote-Request-Id": RUN_ID}
    if version is not None:
        headers["X-Ops-Reporting-Protocol-Version"] = version
    if which == "start":
        response = await start(client, headers=headers)
    else:
        response = await end(client, end_body(), headers={**headers, "Content-Encoding": "gzip"})
    await chef_error(response, status)
    await assert_nothing_stored(client)
    assert (await start(client)).status == 201  # the refused request left no run behind


# -- reporting: end --------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["application/octet-stream", None, "application/json"])
async def test_started_run_ends_with_gzip_and_is_stored(client, content_type):
    assert (await start(client)).status == 201
    response = await end(client, end_body(), content_type=content_type)
    assert response.status == 201
    assert response.content_type == "application/json"
    assert await response.read() == b"{}"
    (item,) = await wait_until(lambda: stored(client))
    assert (item["certname"], item["format"], item["origin"], item["status"]) == (
        NODE,
        "chef",
        "Chef",
        "changed",
    )
    assert item["transaction_uuid"] == RUN_ID
    assert item["organization"] == "acme"
    assert (item["start_time"], item["end_time"], item["run_time"]) == (
        "2026-11-23T10:00:00Z", "2026-11-23T10:00:30Z", "2026-11-23T10:00:30Z",
    )  # fmt: skip
    summary = item["summary"]
    assert summary["resources"]["total"] == 23  # total_res_count, sent as a string
    assert summary["resources"]["changed"] == 2
    assert summary["resources"]["failed"] == 0
    assert summary["run_seconds"] == 30.0
    assert summary["agent_status"] == "success"
    assert summary["time_without_offset"] is False
    assert summary["organization"] == "acme"
    assert "start_missing" not in summary
    report = (await detail(client, item["id"]))["report"]
    assert report["extra"]["run_list"] == ["recipe[base]", "role[web]"]  # decoded from its JSON string
    assert report["extra"]["protocol"] == "reporting"
    assert report["logs"] == []
    statuses = {(r["resource_type"], r["title"]): r for r in report["resource_statuses"]}
    assert list(statuses) == [("service", "nginx"), ("template", "/etc/nginx/nginx.conf")]
    nginx = statuses[("service", "nginx")]
    assert (nginx["changed"], nginx["failed"], nginx["evaluation_time"]) == (True, False, 0.25)
    (event,) = nginx["events"]
    assert (event["status"], event["property"], event["name"]) == ("success", "restart", "restart")
    assert event["previous_value"] == {"running": False, "enabled": True}
    assert event["desired_value"] == {"running": True, "enabled": True}
    (event,) = statuses[("template", "/etc/nginx/nginx.conf")]["events"]
    assert (event["status"], event["property"]) == ("success", "create")
    assert event["message"] == CONFIG["delta"]
    assert await node_status(client) == "changed"


@pytest.mark.parametrize("total", ["23", 23])
async def test_total_res_count_as_string_or_integer(client, total):
    response = await end(client, end_body(total_res_count=total, resources=[]))
    assert response.status == 201
    (item,) = await wait_until(lambda: stored(client))
    assert item["summary"]["resources"]["total"] == 23
    assert item["summary"]["resources"]["changed"] == 0
    assert item["status"] == "unchanged"
    assert await node_status(client) == "unchanged"


async def test_failed_run_is_failed_with_the_exception_as_an_err_log(client):
    assert (await start(client)).status == 201
    response = await end(client, end_body("failure", resources=[NGINX], exception=EXCEPTION))
    assert response.status == 201
    assert await response.json() == {}
    (item,) = await wait_until(lambda: stored(client))
    assert (item["status"], item["summary"]["agent_status"]) == ("failed", "failure")
    report = (await detail(client, item["id"]))["report"]
    assert [(entry["level"], entry["source"], entry["message"]) for entry in report["logs"]] == [
        ("err", "Chef", "RuntimeError: boom")
    ]
    assert await node_status(client) == "failed"


async def test_end_without_start_is_accepted_whole_and_flagged(client):
    response = await end(client, end_body(), org="unknown-org", node="never-seen.example.com")
    assert response.status == 201
    assert await response.json() == {}
    (item,) = await wait_until(lambda: stored(client))
    assert (item["certname"], item["status"], item["organization"]) == (
        "never-seen.example.com", "changed", "unknown-org",
    )  # fmt: skip
    assert item["summary"]["start_missing"] is True
    assert await node_status(client, "never-seen.example.com") == "changed"


async def test_end_sent_twice_is_stored_once(client):
    assert (await start(client)).status == 201
    first = await end(client, end_body())
    second = await end(client, end_body())
    assert (first.status, second.status) == (201, 201)
    assert await second.json() == {}
    await wait_until(lambda: count(client, 1))
    await wait_until(lambda: drained(client))
    (item,) = await stored(client)
    assert item["transaction_uuid"] == RUN_ID
    # the run id in capitals is the same run
    third = await end(client, end_body(), run_id=RUN_ID.upper())
    assert third.status == 201
    await wait_until(lambda: drained(client))
    assert [i["id"] for i in await stored(client)] == [item["id"]]


def _without(field: str) -> dict:
    body = end_body()
    del body[field]
    return body


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        *[(_without(field), field) for field in
          ("action", "status", "start_time", "end_time", "resources", "run_list", "total_res_count")],
        (end_body(action="start"), "action"),
        (end_body(status="exploded"), "status"),
        (end_body(resources={"type": "service"}), "resources"),
        (end_body(resources=[{"name": "nginx"}]), "resources"),
        (end_body(start_time="yesterday"), "start_time"),
        (end_body(total_res_count="many"), "total_res_count"),
        (end_body(run_list="recipe[base]"), "run_list"),
        (b'{"action": "end", ', "JSON"),
        (b'"end"', ""),
    ],
    ids=["no-action", "no-status", "no-start_time", "no-end_time", "no-resources", "no-run_list",
         "no-total_res_count", "wrong-action", "bad-status", "resources-object", "resource-without-type",
         "bad-time", "bad-count", "run_list-not-json", "malformed", "not-an-object"],
)  # fmt: skip
async def test_end_with_missing_or_bad_fields_is_400_and_stores_nothing(client, body, fragment):
    response = await end(client, body)
    message = await chef_error(response, 400)
    assert fragment in message
    await assert_nothing_stored(client)


async def test_end_with_a_run_id_that_is_not_a_uuid_is_400(client):
    response = await end(client, end_body(), run_id="12345")
    await chef_error(response, 400)
    await assert_nothing_stored(client)


async def test_end_with_a_superscript_count_is_400_not_500(client):
    # "²".isdigit() is True, int("²") raises
    response = await end(client, end_body(total_res_count="²"))
    message = await chef_error(response, 400)
    assert "total_res_count" in message
    await assert_nothing_stored(client)


async def test_organization_is_stored_and_filterable(client):
    for index, org in enumerate(("acme", "globex", "acme")):
        run_id = str(uuid.UUID(int=index + 1))
        node = f"node{index}.example.com"
        assert (await start(client, run_id=run_id, node=node, org=org)).status == 201
        response = await end(client, end_body(end_time=f"2026-11-23 12:0{index}:30 +0200"), run_id=run_id,
                             node=node, org=org)  # fmt: skip
        assert response.status == 201
    items = await wait_until(lambda: count(client, 3))
    assert {i["certname"]: i["organization"] for i in items} == {
        "node0.example.com": "acme", "node1.example.com": "globex", "node2.example.com": "acme",
    }  # fmt: skip
    assert [i["certname"] for i in await stored(client, organization="acme")] == [
        "node2.example.com", "node0.example.com",
    ]  # fmt: skip
    assert [i["certname"] for i in await stored(client, organization="globex")] == ["node1.example.com"]
    assert await stored(client, organization="initech") == []


# -- data collector --------------------------------------------------------------------------------


async def test_data_collector_requires_a_token_with_upload(aiohttp_client, make_app):
    client = await aiohttp_client(make_app(NO_ANONYMOUS))
    reader = {"Authorization": f"Bearer {await make_token(client, 'reader', 'view_reports')}"}
    viewer = await make_token(client, "viewer", "view_reports")
    uploader = await make_token(client, "chef-collector", "upload_config_reports")
    for token in (None, viewer, "rpd_unknown"):
        for message in (run_start(), converge()):
            await chef_error(await collect(client, message, token), 403)
    await assert_nothing_stored(client, reader)
    # the reporting protocol needs credentials too
    await chef_error(await start(client), 403)
    await chef_error(await end(client, end_body()), 403)
    await assert_nothing_stored(client, reader)
    response = await collect(client, run_start(), uploader)
    assert response.status == 200
    response = await collect(client, converge(), uploader)
    assert response.status == 200
    assert await response.json() == {}
    (item,) = await wait_until(lambda: stored(client, reader))
    assert (item["certname"], item["status"], item["transaction_uuid"]) == (NODE, "changed", RUN_ID)
    assert await node_status(client, headers=reader) == "changed"


async def test_run_start_then_run_converge_maps_every_resource_status(client):
    response = await collect(client, run_start())
    assert response.status == 200
    assert await stored(client) == []  # a start is not a report
    resources = [updated(), up_to_date(), skipped(), failed(), unprocessed()]
    response = await collect(client, converge("failure", resources, error=EXCEPTION))
    assert response.status == 200
    (item,) = await wait_until(lambda: stored(client))
    assert (item["certname"], item["format"], item["origin"], item["status"]) == (
        NODE,
        "chef",
        "Chef",
        "failed",
    )
    assert (item["transaction_uuid"], item["organization"]) == (RUN_ID, "acme")
    assert (item["start_time"], item["end_time"]) == ("2026-11-23T10:00:00Z", "2026-11-23T10:00:30Z")
    counts = item["summary"]["resources"]
    assert (counts["total"], counts["changed"], counts["failed"], counts["skipped"]) == (5, 1, 1, 2)
    report = (await detail(client, item["id"]))["report"]
    assert report["extra"]["protocol"] == "data_collector"
    by_title = {r["title"]: r for r in report["resource_statuses"]}
    assert list(by_title) == ["nginx", "curl", "reindex", "broken", "/etc/motd"]

    nginx = by_title["nginx"]  # updated: changed, one success event whose property is the action
    assert (nginx["resource_type"], nginx["changed"], nginx["failed"], nginx["skipped"]) == (
        "service", True, False, False,
    )  # fmt: skip
    (event,) = nginx["events"]
    assert (event["status"], event["property"]) == ("success", "restart")
    assert (event["previous_value"], event["desired_value"]) == ({"running": False}, {"running": True})

    curl = by_title["curl"]  # up-to-date: nothing happened
    assert (curl["changed"], curl["failed"], curl["skipped"], curl["out_of_sync"]) == (
        False,
        False,
        False,
        False,
    )
    assert curl["events"] == []

    for title in ("reindex", "/etc/motd"):  # skipped by a guard, or never reached
        entry = by_title[title]
        assert (entry["skipped"], entry["changed"], entry["failed"]) == (True, False, False)
        assert entry["events"] == []

    broken = by_title["broken"]  # failed: a failure event and an err log
    assert (broken["failed"], broken["changed"], broken["skipped"]) == (True, False, False)
    (event,) = broken["events"]
    assert (event["status"], event["property"]) == ("failure", "install")
    logs = [(entry["level"], entry["source"], entry["message"]) for entry in report["logs"]]
    assert logs == [
        ("err", "package[broken]", failed()["error_message"]),
        ("err", "Chef", "RuntimeError: boom"),
    ]
    assert by_title["nginx"]["evaluation_time"] == 0.25
    assert by_title["/etc/motd"]["evaluation_time"] is None
    assert await node_status(client) == "failed"


@pytest.mark.parametrize(
    ("status", "resources", "expected"),
    [("success", [updated(), up_to_date()], "changed"), ("success", [up_to_date(), skipped()], "unchanged"),
     ("success", [], "unchanged"), ("failure", [], "failed"), ("failure", [updated()], "failed")],
)  # fmt: skip
async def test_run_converge_status(client, status, resources, expected):
    response = await collect(client, converge(status, resources))
    assert response.status == 200
    (item,) = await wait_until(lambda: stored(client))
    assert item["status"] == expected
    assert await node_status(client) == expected


async def test_run_converge_sent_twice_is_stored_once(client):
    for _ in range(2):
        response = await collect(client, converge())
        assert response.status == 200
    await wait_until(lambda: count(client, 1))
    await wait_until(lambda: drained(client))
    assert len(await stored(client)) == 1


async def test_policyfile_run_keeps_policy_group_as_environment(client):
    response = await collect(client, converge(policy_name="web", policy_group="production"))
    assert response.status == 200
    (item,) = await wait_until(lambda: stored(client))
    assert item["environment"] == "production"
    report = (await detail(client, item["id"]))["report"]
    assert (report["extra"]["policy_name"], report["extra"]["policy_group"]) == ("web", "production")


@pytest.mark.parametrize("order", ["reporting-first", "data-collector-first"])
async def test_same_run_via_reporting_and_data_collector_is_stored_once(client, order):
    async def reporting():
        if order == "reporting-first":
            assert (await start(client)).status == 201
        # else the data collector's run_start came first and a reporting start would be a 409,
        # after which Chef disables reporting for the run: only an end can still arrive
        response = await end(client, end_body(resources=[NGINX]))
        assert response.status == 201
        assert await response.json() == {}

    async def data_collector():
        assert (await collect(client, run_start())).status == 200
        assert (await collect(client, converge("success", [updated(), up_to_date()]))).status == 200

    senders = (reporting, data_collector) if order == "reporting-first" else (data_collector, reporting)
    for send in senders:
        await send()
    await wait_until(lambda: count(client, 1))
    await wait_until(lambda: drained(client))
    (item,) = await stored(client)
    assert (item["certname"], item["transaction_uuid"], item["status"]) == (NODE, RUN_ID, "changed")
    nodes = (await (await client.get("/api/v1/nodes")).json())["items"]
    assert [(n["certname"], n["status"], n["report_id"]) for n in nodes] == [(NODE, "changed", item["id"])]


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ({**converge(), "node_name": None}, "node_name"),
        ({key: value for key, value in converge().items() if key != "node_name"}, "node_name"),
        ({**converge(), "run_id": "not-a-uuid"}, "run_id"),
        ({**converge(), "message_type": "run_finished"}, "message_type"),
        ({**converge(), "status": "exploded"}, "status"),
        ({**converge(), "end_time": "later"}, "end_time"),
        (converge(resources=[resource("broken-ish", "file", "/x", "create")]), "status"),
        (converge(resources=[{"name": "x", "status": "updated"}]), "resources"),
        ({**converge(), "resources": {"type": "file"}}, "resources"),
        ({**run_start(), "run_id": "not-a-uuid"}, "run_id"),
        ({**run_start(), "start_time": "soon"}, "start_time"),
    ],
    ids=["null-node", "no-node", "bad-run-id", "unknown-type", "bad-status", "bad-time", "bad-resource-status",
         "resource-without-type", "resources-object", "start-bad-run-id", "start-bad-time"],
)  # fmt: skip
async def test_data_collector_bad_message_is_400_and_stores_nothing(client, message, fragment):
    response = await collect(client, message)
    assert fragment in await chef_error(response, 400)
    await assert_nothing_stored(client)


async def test_data_collector_malformed_json_is_400(client):
    response = await client.post(
        "/data-collector/v0/",
        data=b'{"message_type": "run_converge", ',
        headers={"Content-Type": "application/json"},
    )
    await chef_error(response, 400)
    await assert_nothing_stored(client)
