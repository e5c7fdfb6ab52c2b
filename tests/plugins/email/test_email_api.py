"""/api/v1/reports/schedules and /api/v1/reports/registries through real HTTP: every status, exact bodies."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import pytest
from reportd_plugins.email import plugin_state

from reportd.appkeys import CONTEXT, STORAGE
from reportd.auth import hash_token
from tests.support.mail import ManualClock

URL = "/api/v1/reports/schedules"
CREATED_AT = datetime(2024, 1, 17, 13, 12, 19, 412776, tzinfo=UTC)
SEED_ATTRS = {
    "hosts": ["www.service-test-host.it"],
    "name": "one_shot_generic",
    "schedule": "daily",
    "send_to": ["test@test.it"],
    "send_via": "email",
    "timezone": "Europe/Rome",
    "type": "generic",
}
FORBIDDEN = {"message": "Forbidden", "status": "error"}
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture
async def api(aiohttp_client, make_app):
    app = make_app()
    clock = plugin_state(app[CONTEXT]).clock = ManualClock(CREATED_AT)
    client = await aiohttp_client(app)
    tokens = {}
    for name, permissions in {
        "username": ["view_schedules", "edit_schedules"],
        "viewer": ["view_schedules"],
        "reports-only": ["view_reports"],
        "root": ["admin"],
    }.items():
        tokens[name] = {"Authorization": f"Bearer secret-{name}"}
        await app[STORAGE].create_token(name, hash_token(f"secret-{name}"), permissions, time.time())
    client.tokens, client.clock = tokens, clock
    return client


async def call(client, method, path, *, token="username", **kwargs):
    headers = client.tokens[token] if token else {}
    async with client.request(method, path, headers=headers, **kwargs) as response:
        return response.status, await response.json()


async def create(client, **attrs) -> dict:
    status, body = await call(client, "POST", URL, json={"attrs": {**SEED_ATTRS, **attrs}})
    assert status == 200, body
    return body["data"]["schedule"]


async def test_create_answers_the_seeds_envelope(api):
    status, body = await call(api, "POST", URL, json={"attrs": SEED_ATTRS})
    assert status == 200
    schedule = body["data"]["schedule"]
    assert UUID.match(schedule["id"])
    assert body == {
        "data": {
            "schedule": {
                "end_timestamp": None,
                "hosts": ["www.service-test-host.it"],
                "id": schedule["id"],
                "name": "one_shot_generic",
                "schedule": "daily",
                "scheduled_at": 1705497139412776,
                "scheduled_by": "username",
                "send_to": ["test@test.it"],
                "send_via": "email",
                "services": None,
                "start_timestamp": None,
                "timezone": "Europe/Rome",
                "type": "generic",
            }
        },
        "message": "Report schedule created succesfully",
        "status": "ok",
    }
    status, got = await call(api, "GET", f"{URL}/{schedule['id']}", token="viewer")
    assert (status, got) == (200, {"data": {"schedule": schedule}, "message": "Report schedule retrieved",
                                   "status": "ok"})  # fmt: skip


async def test_create_defaults_and_scheduled_by_of_an_admin_token(api):
    attrs = {"name": "x", "hosts": ["*.web.example.com"], "send_to": ["ops@example.com"], "timezone": "UTC"}
    status, body = await call(api, "POST", URL, json={"attrs": attrs}, token="root")
    assert status == 200
    schedule = body["data"]["schedule"]
    assert (schedule["type"], schedule["schedule"], schedule["send_via"], schedule["services"]) == (
        "generic", "daily", "email", None,
    )  # fmt: skip
    assert schedule["scheduled_by"] == "root"


async def test_create_names_each_bad_field(api):
    attrs = {
        "name": "",
        "hosts": [],
        "services": "production",
        "type": "sometimes",
        "schedule": "yearly",
        "send_to": ["test@test.it", "not an address"],
        "send_via": "sms",
        "timezone": "Europe/Atlantis",
        "colour": "red",
        "scheduled_by": "mallory",
    }
    status, body = await call(api, "POST", URL, json={"attrs": attrs})
    assert status == 400
    assert body == {
        "message": "Error creating new schedule",
        "status": "error",
        "details": {
            "name": "a string of 1 to 200 characters",
            "hosts": "a non-empty list of certnames or shell globs",
            "services": "null (every environment) or a list of environment names",
            "type": "one of generic, failures",
            "schedule": "one of once, hourly, daily, weekly, monthly",
            "send_to": "not an email address: not an address",
            "send_via": "one of email",
            "timezone": "unknown timezone 'Europe/Atlantis' (an IANA name, e.g. Europe/Rome)",
            "colour": "unknown field",
            "scheduled_by": "read-only: set by reportd",
        },
    }
    status, body = await call(api, "POST", URL, json={"attrs": {"name": "x"}})
    assert (status, body["details"]) == (
        400,
        {"hosts": "required", "send_to": "required", "timezone": "required"},
    )
    for bad_body in ({"name": "no attrs"}, [1, 2]):
        status, body = await call(api, "POST", URL, json=bad_body)
        assert status == 400 and body["message"] == "Error creating new schedule"
        assert "attrs" in body["details"]
    status, body = await call(api, "POST", URL, data=b"{not json")
    assert (status, body["message"]) == (400, "Error creating new schedule")
    assert (await call(api, "GET", URL, params={"paginate": "false"}))[1]["data"]["pagination"]["total"] == 0


async def test_update_is_partial_and_answers_the_seeds_envelope(api):
    schedule = await create(api)
    change = {"attrs": {"send_to": ["test@test.it", "test2@test.it"], "send_via": "email"}}
    status, body = await call(api, "PUT", f"{URL}/{schedule['id']}", json=change)
    assert status == 200
    assert body == {
        "data": {"schedule": {**schedule, "send_to": ["test@test.it", "test2@test.it"]}},
        "message": "Report schedule updated succesfully",
        "status": "ok",
    }
    status, body = await call(api, "PUT", f"{URL}/{schedule['id']}", json={"attrs": {"schedule": "hourly",
                                                                                       "services": ["prod"]}})  # fmt: skip
    assert status == 200 and body["data"]["schedule"]["schedule"] == "hourly"
    assert body["data"]["schedule"]["services"] == ["prod"]
    assert body["data"]["schedule"]["send_to"] == ["test@test.it", "test2@test.it"]


async def test_update_errors(api):
    schedule = await create(api)
    status, body = await call(api, "PUT", f"{URL}/{schedule['id']}", json={"attrs": {"timezone": "Mars/Olympus",
                                                                                       "id": "x"}})  # fmt: skip
    assert (status, body) == (400, {
        "message": "Error updating schedule", "status": "error",
        "details": {"timezone": "unknown timezone 'Mars/Olympus' (an IANA name, e.g. Europe/Rome)",
                    "id": "read-only: set by reportd"},
    })  # fmt: skip
    status, body = await call(api, "PUT", f"{URL}/{schedule['id']}", json={"attrs": {}})
    assert (status, body["details"]) == (400, {"attrs": "nothing to update: give at least one field"})
    status, body = await call(api, "PUT", f"{URL}/nope", json={"attrs": {"name": "y"}})
    assert (status, body) == (400, {"message": "Error updating schedule", "status": "error",
                                    "details": {"id": "no schedule nope"}})  # fmt: skip
    status, got = await call(api, "GET", f"{URL}/{schedule['id']}")
    assert got["data"]["schedule"] == schedule  # nothing changed


async def test_get_unknown_id(api):
    status, body = await call(api, "GET", f"{URL}/407xxxab-xxxx-4b04-xxxx-7xxxcdxxa2x8")
    assert (status, body) == (400, {"message": "Error retrieving schedules", "status": "error"})


async def test_list_paginates_and_filters(api):
    made = []
    for n in range(5):
        api.clock.advance(1)
        made.append(await create(api, name=f"Report {n}", type="failures" if n >= 3 else "generic",
                                 schedule="weekly" if n == 1 else "daily"))  # fmt: skip
    status, body = await call(api, "GET", URL, params={"paginate": "true", "page": "2", "page_size": "2"})
    assert status == 200
    assert body == {
        "data": {"registries": made[2:4], "pagination": {"page": 2, "page_size": 2, "total": 5}},
        "message": "List of report schedules",
        "status": "ok",
    }
    status, body = await call(api, "GET", URL, params={"paginate": "false"}, token="viewer")
    assert body["data"] == {"registries": made, "pagination": {"page": 1, "page_size": 5, "total": 5}}

    async def names(**params) -> list[str]:
        status, body = await call(api, "GET", URL, params={"paginate": "false", **params})
        assert status == 200, body
        return [s["name"] for s in body["data"]["registries"]]

    assert await names(name="report 3") == ["Report 3"]
    assert await names(type="failures") == ["Report 3", "Report 4"]
    assert await names(schedule="weekly") == ["Report 1"]
    assert await names(id=made[2]["id"]) == ["Report 2"]
    assert await names(id_list=f"{made[0]['id']},{made[4]['id']}") == ["Report 0", "Report 4"]
    status, body = await call(
        api, "GET", f"{URL}?paginate=false&id_list={made[1]['id']}&id_list={made[3]['id']}"
    )
    assert [s["name"] for s in body["data"]["registries"]] == ["Report 1", "Report 3"]
    at = [s["scheduled_at"] for s in made]
    assert await names(scheduled_at_start=str(at[3])) == ["Report 3", "Report 4"]
    assert await names(scheduled_by_end=str(at[1])) == ["Report 0", "Report 1"]
    assert await names(scheduled_at_start=str(at[1]), scheduled_by_end=str(at[2])) == ["Report 1", "Report 2"]
    assert await names(scheduled_by="username") == [f"Report {n}" for n in range(5)]
    assert await names(scheduled_by="someone else") == []


@pytest.mark.parametrize(
    ("params", "details"),
    [
        ({}, {"paginate": "required: true or false"}),
        ({"paginate": "maybe"}, {"paginate": "required: true or false"}),
        (
            {"paginate": "true"},
            {"page": "required when paginate is true", "page_size": "required when paginate is true"},
        ),
        ({"paginate": "true", "page": "0", "page_size": "20"}, {"page": "an integer from 1"}),
        ({"paginate": "true", "page": "1", "page_size": "1001"}, {"page_size": "an integer from 1 to 1000"}),
        (
            {"paginate": "true", "page": "one", "page_size": "0"},
            {"page": "an integer", "page_size": "an integer from 1 to 1000"},
        ),
        ({"paginate": "false", "scheduled_at_start": "yesterday"}, {"scheduled_at_start": "an integer"}),
    ],
)
async def test_list_pagination_errors(api, params, details):
    status, body = await call(api, "GET", URL, params=params)
    assert (status, body) == (
        400,
        {"message": "Error with pagination fields", "status": "error", "details": details},
    )


async def test_delete_many_is_all_or_nothing(api):
    a, b, c = [await create(api, name=n) for n in "abc"]
    status, body = await call(api, "DELETE", "/api/v1/reports/registries",
                              json={"schedules_ids": [a["id"], "09x04xx2-xxxx-48b5-xxxx-2x0xxx263xxf"]})  # fmt: skip
    assert (status, body) == (400, {
        "message": "Error deleting report schedules", "status": "error",
        "details": {"schedules_ids": "unknown: 09x04xx2-xxxx-48b5-xxxx-2x0xxx263xxf"},
    })  # fmt: skip
    assert (await call(api, "GET", f"{URL}/{a['id']}"))[0] == 200
    status, body = await call(
        api, "DELETE", "/api/v1/reports/registries", json={"schedules_ids": [a["id"], c["id"]]}
    )
    assert (status, body) == (200, {"message": "Schedules succesfully deleted", "status": "ok"})
    status, body = await call(api, "GET", URL, params={"paginate": "false"})
    assert [s["id"] for s in body["data"]["registries"]] == [b["id"]]
    for bad in ({"schedules_ids": []}, {"ids": [b["id"]]}, {"schedules_ids": "b"}):
        status, body = await call(api, "DELETE", "/api/v1/reports/registries", json=bad)
        assert (status, body) == (400, {"message": "Error deleting report schedules", "status": "error",
                                        "details": {"schedules_ids": "a non-empty list of schedule ids"}})  # fmt: skip


async def test_forbidden_without_the_permission(api):
    schedule = await create(api)
    reading = [("GET", URL + "?paginate=false"), ("GET", f"{URL}/{schedule['id']}")]
    writing = [
        ("POST", URL, {"attrs": SEED_ATTRS}),
        ("PUT", f"{URL}/{schedule['id']}", {"attrs": {"name": "taken"}}),
        ("DELETE", "/api/v1/reports/registries", {"schedules_ids": [schedule["id"]]}),
    ]
    for token in (None, "reports-only"):  # anonymous loopback callers may only upload and read reports
        for method, path in reading:
            assert await call(api, method, path, token=token) == (403, FORBIDDEN)
    for token in (None, "reports-only", "viewer"):
        for method, path, body in writing:
            assert await call(api, method, path, token=token, json=body) == (403, FORBIDDEN)
    assert await call(api, "GET", f"{URL}/{schedule['id']}") == (
        200, {"data": {"schedule": schedule}, "message": "Report schedule retrieved", "status": "ok"},
    )  # fmt: skip


async def test_the_store_routes_beside_the_schedules_still_answer(api):
    status, body = await call(api, "GET", "/api/v1/reports", token=None)
    assert (status, body) == (200, {"items": [], "next": None})
    status, body = await call(api, "GET", "/api/v1/reports/12345", token=None)
    assert status == 404
