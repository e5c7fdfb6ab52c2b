"""Foreman-style uploads (spec/foreman.md) through real HTTP, read back through the store's API.

The bodies are what the real clients send: Foreman's Puppet report processor
(``puppetserver_foreman``), Foreman's Ansible callback and chef-handler-foreman.
"""

from __future__ import annotations

import base64
import gzip
import time

import orjson
import pytest
from yarl import URL

from reportd.appkeys import STORAGE
from reportd.auth import hash_token, new_token
from reportd.formats.foreman import status_bits, unpack_status_bits
from tests.support import wait_until

JSON_V2 = {"Accept": "application/json,version=2", "Content-Type": "application/json"}
ROUTES = ("/api/reports", "/api/v2/reports", "/api/config_reports", "/api/v2/config_reports", "//api/reports")
ZERO = {"applied": 0, "restarted": 0, "failed": 0, "failed_restarts": 0, "skipped": 0, "pending": 0}
EMPTY_QUEUE = {"processors": {"store": {"pending": 0, "dead": 0, "oldest_pending_seconds": None}}}
FORBIDDEN = (
    b'{"error":{"message":"Access denied","details":"Missing one of the required permissions:'
    b' upload_config_reports","missing_permissions":["upload_config_reports"]}}'
)
HOST_BLANK = {
    "error": {"id": None, "errors": {"host": ["can't be blank"]}, "full_messages": ["Host can't be blank"]}
}
TAKEN = {
    "error": {
        "id": None,
        "errors": {"reported_at": ["has already been taken"]},
        "full_messages": ["Reported at has already been taken"],
    }
}
NO_ANONYMOUS = "anonymous_networks =\n"


def log(source: str, message: str, level: str = "notice") -> dict:
    return {"log": {"sources": {"source": source}, "messages": {"message": message}, "level": level}}


def puppet_processor_report(
    host: str = "web01.example.com", reported_at: str = "2017-06-28 17:28:03 UTC"
) -> dict:
    """What ``puppetserver_foreman``'s report processor builds from a Puppet 7 report."""
    return {
        "host": host,
        "reported_at": reported_at,
        "status": {
            "applied": 2,
            "restarted": 0,
            "failed": 0,
            "failed_restarts": 0,
            "skipped": 0,
            "pending": 0,
        },
        "metrics": {
            "resources": {
                "changed": 2,
                "corrective_change": 0,
                "failed": 0,
                "failed_to_restart": 0,
                "out_of_sync": 2,
                "restarted": 0,
                "scheduled": 0,
                "skipped": 0,
                "total": 12,
            },
            "time": {"config_retrieval": 1.2, "file": 0.03, "service": 0.4, "total": 2.5},
            "changes": {"total": 2},
            "events": {"total": 2, "success": 2, "failure": 0},
        },
        "logs": [
            log("/Stage[main]/Main/File[/tmp/x]/ensure", "created"),
            log("/Stage[main]/Main/Service[nginx]/ensure", "ensure changed 'stopped' to 'running'"),
            log("Puppet", "Applied catalog in 0.51 seconds"),
        ],
    }


# Seed 000: a node whose catalog could not be compiled.
SEED_000 = {
    "report": {
        "host": "rhel6n01.corp.com",
        "reported_at": "2010-11-19 02:39:04 UTC",
        "metrics": {},
        "status": {"applied": 0, "failed": 0, "failed_restarts": 0, "pending": 0, "restarted": 0, "skipped": 0},
        "logs": [
            log("Puppet", "Could not retrieve catalog from remote server: Error 400 on SERVER: Could not find"
                " node 'rhel6n01.corp.com'; cannot compile", "err"),
            log("Puppet", "Using cached catalog"),
            log("Puppet", "Could not retrieve catalog; skipping run", "err"),
        ],
    }
}  # fmt: skip


def ansible_report(reported_at: str = "2026-11-23T10:00:00.123456", *, check_mode: bool = True) -> dict:
    """Foreman's Ansible callback (``foreman.py``), one host of a check-mode playbook."""
    changed = {"changed": True, "failed": False, "module": "apt"}
    return {
        "config_report": {
            "host": "db01.example.com",
            "reported_at": reported_at,
            "metrics": {"time": {"total": 12}},
            "status": {"applied": 0, "failed": 0, "skipped": 1, "pending": 3}
            if check_mode
            else {"applied": 3, "failed": 0, "skipped": 1},
            "logs": [log("Install packages", orjson.dumps(changed).decode())],
            "reporter": "ansible",
            "check_mode": check_mode,
        }
    }


def chef_handler_report() -> dict:
    """chef-handler-foreman's upload of a failed Chef run."""
    return {
        "report": {
            "host": "chef01.example.com",
            "reported_at": "2026-11-23 12:00:00 +0200",
            "status": {"applied": 1, "restarted": 0, "failed": 1, "failed_restarts": 0, "skipped": 0, "pending": 0},
            "metrics": {"resources": {"total": 5}, "time": {"package": 1.5, "service": 0.2}},
            "logs": [
                log("package[nginx]", "install (Chef::Exceptions::Package nginx=1.24 could not be installed)", "err"),
                log("Chef", "run (RuntimeError boom)", "err"),
            ],
        }
    }  # fmt: skip


def minimal(**fields) -> dict:
    report = {"host": "node.example.com", "reported_at": "2024-05-01T12:00:00Z", "status": {}, "metrics": {}}
    report.update(fields)
    return {"config_report": report}


def absolute(client, path: str) -> URL:
    # "//api/reports" must reach the server as is, not be read as a network-path reference.
    return URL(str(client.make_url("/")).rstrip("/") + path)


async def post(client, document, path: str = "/api/config_reports", *, params=None, headers=None):
    body = document if isinstance(document, bytes) else orjson.dumps(document)
    return await client.session.post(
        absolute(client, path), data=body, params=params, headers={**JSON_V2, **(headers or {})}
    )


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


async def node(client, certname: str, headers=None) -> dict:
    response = await client.get(f"/api/v1/nodes/{certname}", headers=headers)
    assert response.status == 200
    return await response.json()


async def detail(client, report_id: int, headers=None) -> dict:
    response = await client.get(f"/api/v1/reports/{report_id}", headers=headers)
    assert response.status == 200
    return await response.json()


async def assert_nothing_stored(client, headers=None) -> None:
    assert await stored(client, headers) == []
    queue = await client.get("/api/v1/queue", headers=headers)
    assert await queue.json() == EMPTY_QUEUE
    nodes = await client.get("/api/v1/nodes", headers=headers)
    assert (await nodes.json())["items"] == []


async def make_token(client, name: str, *permissions: str) -> str:
    secret = new_token()
    await client.app[STORAGE].create_token(name, hash_token(secret), permissions, time.time())
    return secret


# -- status_bits ------------------------------------------------------------------------------------


def test_status_bits_packs_ten_bits_per_counter_in_foreman_order():
    order = ("applied", "restarted", "failed", "failed_restarts", "skipped", "pending")
    for index, name in enumerate(order):
        assert status_bits({name: 1}) == 1 << (10 * index)
        assert status_bits({name: 1023}) == 1023 << (10 * index)
    assert status_bits({}) == 0
    counters = {"applied": 3, "restarted": 1, "failed": 2, "failed_restarts": 4, "skipped": 7, "pending": 9}
    packed = 3 + (1 << 10) + (2 << 20) + (4 << 30) + (7 << 40) + (9 << 50)
    assert status_bits(counters) == packed
    assert unpack_status_bits(packed) == counters
    assert packed < 1 << 60


def test_status_bits_clamps_each_counter_without_spilling_into_its_neighbour():
    assert status_bits({"applied": 5000}) == 1023
    assert status_bits({"applied": 1024, "restarted": 0}) == 1023
    assert status_bits({"failed": -3}) == 0
    everything = dict.fromkeys(
        ("applied", "restarted", "failed", "failed_restarts", "skipped", "pending"), 10**6
    )
    assert status_bits(everything) == (1 << 60) - 1
    assert unpack_status_bits((1 << 60) - 1) == dict.fromkeys(everything, 1023)
    assert unpack_status_bits(status_bits({"skipped": 2000, "pending": 1})) == {
        **ZERO, "skipped": 1023, "pending": 1,
    }  # fmt: skip
    assert unpack_status_bits(0) == ZERO


# -- the real clients -------------------------------------------------------------------------------


async def test_puppet_report_processor_upload_is_201_and_stored(client):
    response = await post(client, {"config_report": puppet_processor_report()})
    assert response.status == 201
    assert response.content_type == "application/json"
    body = await response.json()
    assert isinstance(body["id"], int)
    assert body == {
        "id": body["id"],
        "host": "web01.example.com",
        "reported_at": "2017-06-28T17:28:03Z",
        "status": {
            "applied": 2,
            "restarted": 0,
            "failed": 0,
            "failed_restarts": 0,
            "skipped": 0,
            "pending": 0,
        },
        "origin": "Puppet",
    }
    (item,) = await wait_until(lambda: stored(client))
    assert item["id"] == body["id"]
    assert (item["certname"], item["format"], item["origin"], item["status"], item["change_kind"]) == (
        "web01.example.com", "foreman", "Puppet", "changed", "intentional",
    )  # fmt: skip
    assert item["start_time"] == "2017-06-28T17:28:03Z"
    assert item["end_time"] == "2017-06-28T17:28:05.500000Z"  # reported_at + time.total
    assert item["transaction_uuid"] is None
    summary = item["summary"]
    assert summary["resources"]["total"] == 12
    assert summary["resources"]["changed"] == 2
    assert summary["events"] == {"total": 2, "success": 2, "failure": 0}
    assert summary["run_seconds"] == 2.5
    assert summary["status"] == body["status"]
    assert summary["status_bits"] == 2
    assert summary["time_without_offset"] is False
    report = (await detail(client, item["id"]))["report"]
    assert [(entry["level"], entry["source"], entry["message"]) for entry in report["logs"]] == [
        ("notice", "/Stage[main]/Main/File[/tmp/x]/ensure", "created"),
        ("notice", "/Stage[main]/Main/Service[nginx]/ensure", "ensure changed 'stopped' to 'running'"),
        ("notice", "Puppet", "Applied catalog in 0.51 seconds"),
    ]
    assert report["metrics"]["time"]["config_retrieval"] == 1.2
    status = await node(client, "web01.example.com")
    assert (status["status"], status["report_id"]) == ("changed", body["id"])


async def test_raw_body_is_kept_byte_for_byte(client):
    body = orjson.dumps({"config_report": puppet_processor_report()}, option=orjson.OPT_INDENT_2)
    response = await post(client, gzip.compress(body), headers={"Content-Encoding": "gzip"})
    assert response.status == 201
    (item,) = await wait_until(lambda: stored(client))
    raw = await client.get(f"/api/v1/reports/{item['id']}", params={"format": "raw"})
    assert raw.status == 200
    assert raw.content_type == "application/json"
    assert await raw.read() == body


async def test_seed_000_catalog_failure_is_stored_failed(client):
    response = await post(client, SEED_000, "/api/reports")
    assert response.status == 201
    body = await response.json()
    assert body == {
        "id": body["id"],
        "host": "rhel6n01.corp.com",
        "reported_at": "2010-11-19T02:39:04Z",
        "status": ZERO,
        "origin": "Puppet",
    }
    (item,) = await wait_until(lambda: stored(client))
    assert (item["certname"], item["status"], item["origin"]) == ("rhel6n01.corp.com", "failed", "Puppet")
    assert item["run_time"] == "2010-11-19T02:39:04Z"
    assert item["summary"]["status_bits"] == 0
    assert item["summary"]["agent_status"] == "unchanged"  # the counters alone say nothing happened
    status = await node(client, "rhel6n01.corp.com")
    assert (status["status"], status["report_id"]) == ("failed", body["id"])


@pytest.mark.parametrize(
    ("reported_at", "expected"),
    [("2026-11-23T10:00:00.123456", "2026-11-23T10:00:00.123456Z"),
     # older callbacks: datetime.now().strftime("%Y-%m-%d %H:%M:%S %f")
     ("2026-11-23 10:00:00 123456", "2026-11-23T10:00:00.123456Z")],
    ids=["iso", "old-callback"],
)  # fmt: skip
async def test_ansible_check_mode_run_is_noop_pending_and_its_time_flagged(client, reported_at, expected):
    response = await post(client, ansible_report(reported_at), "/api/v2/config_reports")
    assert response.status == 201
    body = await response.json()
    assert body == {
        "id": body["id"],
        "host": "db01.example.com",
        "reported_at": expected,
        "status": {**ZERO, "skipped": 1, "pending": 3},
        "origin": "Ansible",
    }
    (item,) = await wait_until(lambda: stored(client))
    assert (item["status"], item["origin"], item["noop"]) == ("noop_pending", "Ansible", True)
    # the callback reports when the play ended: the run began metrics.time.total (12 s) earlier
    assert item["end_time"] == item["run_time"] == expected
    assert item["start_time"] == expected.replace("10:00:00", "09:59:48")
    summary = item["summary"]
    assert summary["time_without_offset"] is True
    assert summary["reporter"] == "ansible"
    assert summary["check_mode"] is True
    assert summary["noop_pending"] is True
    assert summary["status_bits"] == (1 << 40) + (3 << 50)
    report = (await detail(client, item["id"]))["report"]
    assert report["logs"] == [
        {"level": "notice", "message": '{"changed":true,"failed":false,"module":"apt"}',
         "source": "Install packages", "tags": [], "time": None, "file": None, "line": None},
    ]  # fmt: skip
    assert (await node(client, "db01.example.com"))["status"] == "noop_pending"


async def test_ansible_run_that_applied_changes_is_changed(client):
    response = await post(client, ansible_report(check_mode=False), "/api/v2/config_reports")
    assert response.status == 201
    assert (await response.json())["status"] == {**ZERO, "applied": 3, "skipped": 1}
    (item,) = await wait_until(lambda: stored(client))
    assert (item["status"], item["noop"], item["summary"]["check_mode"]) == ("changed", False, False)
    assert (await node(client, "db01.example.com"))["status"] == "changed"


async def test_chef_handler_foreman_double_slash_upload(client):
    headers = {
        "X-Foreman-Client": "chef01.example.com",
        "X-Foreman-Signature": "c2lnbmVkIHdpdGggdGhlIGNsaWVudCBrZXk=",
    }
    response = await post(client, chef_handler_report(), "//api/reports", headers=headers)
    assert response.status == 201
    body = await response.json()
    assert body == {
        "id": body["id"],
        "host": "chef01.example.com",
        "reported_at": "2026-11-23T10:00:00Z",
        "status": {
            "applied": 1,
            "restarted": 0,
            "failed": 1,
            "failed_restarts": 0,
            "skipped": 0,
            "pending": 0,
        },
        "origin": "Chef",
    }
    (item,) = await wait_until(lambda: stored(client))
    assert (item["certname"], item["status"], item["origin"]) == ("chef01.example.com", "failed", "Chef")
    assert item["start_time"] == "2026-11-23T10:00:00Z"
    assert item["summary"]["time_without_offset"] is False
    assert item["summary"]["status_bits"] == 1 + (1 << 20)
    assert item["summary"]["resources"]["failed"] == 1
    assert (await node(client, "chef01.example.com"))["status"] == "failed"


# -- routes, envelopes, encodings --------------------------------------------------------------------


@pytest.mark.parametrize("envelope", ["config_report", "report"])
@pytest.mark.parametrize("path", ROUTES)
async def test_every_route_takes_both_envelopes(client, path, envelope):
    response = await post(client, {envelope: puppet_processor_report()}, path)
    assert response.status == 201
    body = await response.json()
    assert (body["host"], body["origin"]) == ("web01.example.com", "Puppet")
    (item,) = await wait_until(lambda: stored(client))
    assert (item["id"], item["certname"], item["status"]) == (body["id"], "web01.example.com", "changed")
    assert (await node(client, "web01.example.com"))["status"] == "changed"


async def test_gzip_body_is_accepted(client):
    body = gzip.compress(orjson.dumps({"config_report": puppet_processor_report()}))
    response = await post(client, body, headers={"Content-Encoding": "gzip"})
    assert response.status == 201
    assert (await response.json())["host"] == "web01.example.com"
    (item,) = await wait_until(lambda: stored(client))
    assert (item["certname"], item["status"]) == ("web01.example.com", "changed")


@pytest.mark.parametrize(
    ("reported_at", "expected", "has_offset"),
    [
        ("2010-11-19 02:39:04 UTC", "2010-11-19T02:39:04Z", True),
        ("2024-05-01 12:00:00 +0200", "2024-05-01T10:00:00Z", True),
        ("2024-05-01 12:00:00 -0530", "2024-05-01T17:30:00Z", True),
        ("2024-05-01T12:00:00+00:00", "2024-05-01T12:00:00Z", True),
        ("2024-05-01T12:00:00+02:00", "2024-05-01T10:00:00Z", True),
        ("2024-05-01T12:00:00Z", "2024-05-01T12:00:00Z", True),
        ("2024-05-01T12:00:00.5", "2024-05-01T12:00:00.500000Z", False),
        ("2024-05-01T12:00:00", "2024-05-01T12:00:00Z", False),
        ("2024-05-01 12:00:00 123456", "2024-05-01T12:00:00.123456Z", False),
    ],
)
async def test_reported_at_formats_are_stored_in_utc(client, reported_at, expected, has_offset):
    response = await post(client, minimal(reported_at=reported_at))
    assert response.status == 201
    assert (await response.json())["reported_at"] == expected
    (item,) = await wait_until(lambda: stored(client))
    assert (item["start_time"], item["run_time"]) == (expected, expected)
    assert item["summary"]["time_without_offset"] is (not has_offset)
    assert (await node(client, "node.example.com"))["run_time"] == expected


async def test_status_bits_and_plain_counters_are_in_the_stored_summary(client):
    counters = {
        "applied": 3,
        "restarted": 1,
        "failed": 2,
        "failed_restarts": 1,
        "skipped": 7,
        "pending": 1500,
    }
    response = await post(client, minimal(status=counters))
    assert response.status == 201
    (item,) = await wait_until(lambda: stored(client))
    assert item["summary"]["status_bits"] == 3 + (1 << 10) + (2 << 20) + (1 << 30) + (7 << 40) + (1023 << 50)
    assert item["summary"]["status"] == counters  # the model keeps the plain, unclamped counters
    assert unpack_status_bits(item["summary"]["status_bits"]) == {**counters, "pending": 1023}
    assert item["status"] == "failed"
    assert (await node(client, "node.example.com"))["status"] == "failed"


async def test_numeric_string_counters_are_decoded_and_missing_ones_are_zero(client):
    response = await post(client, minimal(status={"applied": "4", "skipped": " 1 "}))
    assert response.status == 201
    assert (await response.json())["status"] == {**ZERO, "applied": 4, "skipped": 1}
    (item,) = await wait_until(lambda: stored(client))
    assert item["summary"]["status_bits"] == 4 + (1 << 40)
    assert item["status"] == "changed"


@pytest.mark.parametrize(
    ("counters", "status"),
    [({"restarted": 1}, "changed"), ({"failed_restarts": 1}, "failed"), ({"pending": 2}, "noop_pending"),
     ({"skipped": 4}, "unchanged"), ({"applied": 1, "pending": 1}, "changed")],
)  # fmt: skip
async def test_run_status_follows_the_counters(client, counters, status):
    response = await post(client, minimal(status=counters))
    assert response.status == 201
    (item,) = await wait_until(lambda: stored(client))
    assert item["status"] == status
    assert (await node(client, "node.example.com"))["status"] == status


async def test_location_and_organization_are_stored_and_filterable(client):
    sends = [
        ("a.example.com", {"location_id": "3", "organization_id": "7"}),
        ("b.example.com", {"location_id": "4", "organization_id": "7"}),
        ("c.example.com", None),
    ]
    for index, (host, params) in enumerate(sends):
        document = minimal(host=host, reported_at=f"2024-05-01T1{index}:00:00Z")
        response = await post(client, document, params=params)
        assert response.status == 201
    items = await wait_until(lambda: count(client, 3))
    ids = {i["certname"]: (i["location_id"], i["organization_id"]) for i in items}
    assert ids == {"a.example.com": (3, 7), "b.example.com": (4, 7), "c.example.com": (None, None)}
    assert [i["certname"] for i in await stored(client, location_id=3)] == ["a.example.com"]
    assert [i["certname"] for i in await stored(client, location_id=4)] == ["b.example.com"]
    assert [i["certname"] for i in await stored(client, organization_id=7)] == [
        "b.example.com",
        "a.example.com",
    ]
    assert [i["certname"] for i in await stored(client, location_id=3, organization_id=7)] == [
        "a.example.com"
    ]
    assert await stored(client, location_id=5) == []
    assert await stored(client, organization_id=8) == []


@pytest.mark.parametrize(
    ("logs", "reporter", "origin"),
    [
        ([log("Puppet", "Applied catalog in 1 seconds")], "ansible", "Ansible"),
        (
            [log("/Stage[main]/Main/File[/x]/ensure", "created"), log("Puppet", "Applied catalog")],
            None,
            "Puppet",
        ),
        ([log("//web01/Puppet", "Applied catalog")], None, "Puppet"),
        ([log("Puppet", "Applied catalog"), log("/Stage[main]/Main/File[/x]/ensure", "created")], None, None),
        ([log("Chef", "run (RuntimeError boom)", "err"), log("package[nginx]", "installed")], None, "Chef"),
        ([log("recipe[base]", "ran")], None, None),
        ([], None, None),
        (None, None, None),
    ],
    ids=[
        "ansible",
        "puppet-last",
        "puppet-contained",
        "puppet-not-last",
        "chef",
        "unknown",
        "no-logs",
        "null-logs",
    ],
)
async def test_origin_detection(client, logs, reporter, origin):
    fields = {"logs": logs}
    if reporter:
        fields["reporter"] = reporter
    response = await post(client, minimal(**fields))
    assert response.status == 201
    assert (await response.json())["origin"] == origin
    (item,) = await wait_until(lambda: stored(client))
    assert item["origin"] == origin


# -- refusals ---------------------------------------------------------------------------------------


async def test_403_without_upload_permission_is_foremans_body_exactly(aiohttp_client, make_app):
    client = await aiohttp_client(make_app(NO_ANONYMOUS))
    reader = {"Authorization": f"Bearer {await make_token(client, 'reader', 'view_reports')}"}
    uploader = await make_token(client, "uploader", "upload_config_reports")
    for path in ("/api/reports", "/api/config_reports"):
        for headers in ({}, reader, {"Authorization": "Bearer rpd_not-a-token"}):
            response = await post(client, SEED_000, path, headers=headers)
            assert response.status == 403
            assert response.content_type == "application/json"
            assert await response.read() == FORBIDDEN
    await assert_nothing_stored(client, reader)
    # the Foreman clients' habit: the token as the password of HTTP Basic
    basic = {"Authorization": "Basic " + base64.b64encode(f"foreman:{uploader}".encode()).decode()}
    response = await post(client, SEED_000, "/api/reports", headers=basic)
    assert response.status == 201
    (item,) = await wait_until(lambda: stored(client, reader))
    assert (item["certname"], item["status"]) == ("rhel6n01.corp.com", "failed")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_415_for_a_body_that_is_not_json(client, content_type):
    body = orjson.dumps({"config_report": puppet_processor_report()})
    if content_type is None:
        response = await client.post("/api/config_reports", data=body, skip_auto_headers=["Content-Type"])
        given = ""
    else:
        response = await client.post("/api/config_reports", data=body, headers={"Content-Type": content_type})
        given = content_type
    assert response.status == 415
    assert await response.json() == {
        "error": {
            "message": f"Media type in 'Content-Type: {given}' is unsupported in API v2 for POST and PUT"
            " requests. Please use 'Content-Type: application/json'."
        }
    }
    await assert_nothing_stored(client)


@pytest.mark.parametrize("body", [b'{"config_report": {"host": ', b"not json at all", b""])
async def test_400_for_malformed_json(client, body):
    response = await post(client, body)
    assert response.status == 400
    error = await response.json()
    assert list(error) == ["error"]
    assert list(error["error"]) == ["message"]
    assert error["error"]["message"].startswith("malformed JSON")
    await assert_nothing_stored(client)


async def test_422_missing_host_is_foremans_validation_body_exactly(client):
    for document in (minimal(host=None), {"report": {"reported_at": "2024-05-01T12:00:00Z", "status": {},
                                                     "metrics": {}}}, minimal(host="  "), minimal(host=42)):  # fmt: skip
        response = await post(client, document)
        assert response.status == 422
        assert response.content_type == "application/json"
        assert await response.json() == HOST_BLANK
    await assert_nothing_stored(client)


async def test_422_missing_reported_at_names_the_field(client):
    document = minimal()
    del document["config_report"]["reported_at"]
    response = await post(client, document)
    assert response.status == 422
    assert await response.json() == {
        "error": {
            "id": None,
            "errors": {"reported_at": ["can't be blank"]},
            "full_messages": ["Reported at can't be blank"],
        }
    }
    await assert_nothing_stored(client)


def _without(field: str) -> dict:
    document = minimal()
    del document["config_report"][field]
    return document


@pytest.mark.parametrize(
    ("document", "params", "field", "human"),
    [
        (minimal(reported_at="yesterday"), None, "reported_at", "Reported at"),
        (minimal(reported_at=1714564800), None, "reported_at", "Reported at"),
        (minimal(status="applied"), None, "status", "Status"),
        (minimal(status=[0, 0, 0, 0, 0, 0]), None, "status", "Status"),
        (_without("status"), None, "status", "Status"),
        (minimal(status={"changed": 1}), None, "status", "Status"),
        (minimal(status={"applied": -1}), None, "status", "Status"),
        (minimal(status={"applied": 1.5}), None, "status", "Status"),
        (minimal(status={"applied": "many"}), None, "status", "Status"),
        (minimal(status={"applied": True}), None, "status", "Status"),
        (_without("metrics"), None, "metrics", "Metrics"),
        (minimal(metrics={"time": {"total": "long"}}), None, "metrics", "Metrics"),
        (minimal(logs=[log("Puppet", "x", "verbose")]), None, "logs", "Logs"),
        (minimal(logs=[log("Puppet", "x"), log("Puppet", "y", "warn")]), None, "logs", "Logs"),
        (minimal(logs=[{"level": "notice"}]), None, "logs", "Logs"),
        (minimal(logs="Applied catalog"), None, "logs", "Logs"),
        (minimal(), {"location_id": "abc"}, "location_id", "Location"),
        (minimal(), {"location_id": "1.5"}, "location_id", "Location"),
        (minimal(), {"organization_id": "acme"}, "organization_id", "Organization"),
        ({"report": []}, None, "report", "Report"),
        ({"config_report": "web01"}, None, "config_report", "Config report"),
        ({"host": "web01.example.com"}, None, "report", "Report"),
        (b"[1, 2]", None, "report", "Report"),
    ],
    ids=[
        "reported_at-garbage", "reported_at-number", "status-string", "status-array", "status-missing",
        "status-unknown-key", "status-negative", "status-float", "status-word", "status-bool",
        "metrics-missing", "metrics-not-numbers", "log-level", "log-level-second", "log-not-nested",
        "logs-string", "location_id-word", "location_id-float", "organization_id-word", "report-array",
        "config_report-string", "no-envelope", "body-array",
    ],
)  # fmt: skip
async def test_422_validation_names_the_field_and_stores_nothing(client, document, params, field, human):
    response = await post(client, document, params=params)
    assert response.status == 422
    error = (await response.json())["error"]
    assert set(error) == {"id", "errors", "full_messages"}
    assert error["id"] is None
    assert list(error["errors"]) == [field]
    (problem,) = error["errors"][field]
    assert problem
    (message,) = error["full_messages"]
    assert message.startswith(human + " ")
    assert message.endswith(" " + problem)
    await assert_nothing_stored(client)


async def test_duplicate_reported_at_for_a_host_is_422_and_stored_once(client):
    first = await post(client, {"config_report": puppet_processor_report()})
    assert first.status == 201
    first_id = (await first.json())["id"]
    # the same run again; the same instant spelled differently; the host in capitals; another route
    again = [
        ({"config_report": puppet_processor_report()}, "/api/config_reports"),
        ({"report": puppet_processor_report(reported_at="2017-06-28T19:28:03+02:00")}, "/api/reports"),
        ({"report": puppet_processor_report(host="WEB01.example.com")}, "//api/reports"),
    ]
    for document, path in again:
        response = await post(client, document, path)
        assert response.status == 422
        assert await response.json() == TAKEN
    # another host at the same time, and the same host a second later, are other runs
    other = await post(client, {"config_report": puppet_processor_report(host="web02.example.com")})
    later = await post(
        client, {"config_report": puppet_processor_report(reported_at="2017-06-28 17:28:04 UTC")}
    )
    assert (other.status, later.status) == (201, 201)
    await wait_until(lambda: count(client, 3))
    await wait_until(lambda: drained(client))
    items = await stored(client)
    assert sorted((i["certname"], i["start_time"]) for i in items) == [
        ("web01.example.com", "2017-06-28T17:28:03Z"),
        ("web01.example.com", "2017-06-28T17:28:04Z"),
        ("web02.example.com", "2017-06-28T17:28:03Z"),
    ]
    assert first_id in {i["id"] for i in items}
    assert len(await stored(client, certname="web01.example.com")) == 2


async def test_413_over_the_body_limit_stores_nothing(aiohttp_client, make_app):
    client = await aiohttp_client(make_app("max_body_size = 1KiB\n"))
    document = minimal(logs=[log("Puppet", "x" * 200) for _ in range(10)])
    response = await post(client, document)
    assert response.status == 413
    assert "1024" in (await response.json())["error"]["message"]
    await assert_nothing_stored(client)


# -- input that must be refused with a 4xx, not a 500 ---------------------------------------------------


@pytest.mark.parametrize(
    ("document", "params", "field"),
    [
        # str.isdigit() accepts digits int() does not read
        (minimal(status={"applied": "²"}), None, "status"),
        (minimal(), {"location_id": "²"}, "location_id"),
        # log entries whose parts are not objects
        (minimal(logs=[{"log": {"level": "notice", "messages": "created", "sources": {"source": "Puppet"}}}]),
         None, "logs"),
        (minimal(logs=[{"log": {"level": "notice", "messages": {"message": "x"}, "sources": "Puppet"}}]),
         None, "logs"),
        # a run time that ends outside the calendar
        (minimal(metrics={"time": {"total": 1e300}}), None, "metrics"),
        (minimal(reported_at="9999-12-31T23:59:59Z", metrics={"time": {"total": 5}}), None, "reported_at|metrics"),
    ],
    ids=["counter-superscript", "location_id-superscript", "messages-string", "sources-string",
         "time-total-huge", "end-after-year-9999"],
)  # fmt: skip
async def test_odd_input_is_a_422_not_a_500(client, document, params, field):
    response = await post(client, document, params=params)
    assert response.status == 422, await response.text()
    (named,) = (await response.json())["error"]["errors"]
    assert named in field.split("|")
    await assert_nothing_stored(client)
