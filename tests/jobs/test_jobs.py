"""Jobs through real HTTP: deploy, reports with job_id, timeouts, every endpoint's body (jobs.md)."""

from __future__ import annotations

import json
import re
import time

import pytest
import structlog

from tests.support import PUPPET, wait_until
from tests.support.jobs import DEPLOYER, READER, Orchestrator, states
from tests.support.pg import fresh_database

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
NODES = ["a.example.test", "b.example.test", "c.example.test"]
SAMPLE = json.loads((PUPPET / "agent-changes.json").read_text())
SAMPLE_TOTAL = SAMPLE["metrics"]["time"]["values"][-1][2]
CHANGED_METRICS = {
    "total": 13, "failed": 0, "changed": 6, "skipped": 0, "restarted": 0, "scheduled": 0,
    "out_of_sync": 6, "failed_to_restart": 0, "corrective_change": 0,
}  # fmt: skip
ZERO_METRICS = dict.fromkeys(CHANGED_METRICS, 0)
CATALOG_ERROR = (
    "Could not retrieve catalog from remote server: Error 500 on SERVER: Server Error: Evaluation Error:"
    " Error while evaluating a Function Call, lab-simulated compilation failure (file:"
    " /etc/puppetlabs/code/environments/production/manifests/site.pp, line: 1, column: 1) on node"
    " lab-agent.example.test"
)


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request):
    """INI lines putting the app on this backend (PostgreSQL: a database of its own)."""
    if request.param == "sqlite":
        yield ""
        return
    async with fresh_database(request.getfixturevalue("pg_dsn")) as url:
        yield f"database = {url}\n"


@pytest.fixture
async def orchestrator(backend, aiohttp_client, make_app):
    client = await aiohttp_client(make_app(backend))
    orchestrator = Orchestrator(client)
    await orchestrator.add_token(DEPLOYER, "deployer", "view_jobs", "edit_jobs")
    await orchestrator.add_token(READER, "reader", "view_jobs")
    return orchestrator


def without_times(body: dict, *keys: str) -> dict:
    for key in keys:
        assert body[key] is None or ISO.match(body[key]), (key, body[key])
    return {k: v for k, v in body.items() if k not in keys}


JOB_TIMES = ("timestamp", "created_timestamp", "finished_timestamp")
NODE_TIMES = ("timestamp", "start_timestamp", "finish_timestamp")


async def test_deploy_three_nodes_one_failed_one_late(orchestrator):
    o = orchestrator
    deployed = time.time()  # before the job is created: its deadline is 2 s after
    status, body = await o.post(
        "/orchestrator/v1/command/deploy",
        {"environment": "production", "scope": {"nodes": NODES}, "noop": False, "concurrency": 2,
         "description": "roll out ntp", "timeout": 2},
    )  # fmt: skip
    assert status == 202, body
    url = f"{o.base}/orchestrator/v1/jobs/1"
    assert body == {"job": {"id": url, "name": "1"}}

    job = await o.job(1)
    options = {
        "concurrency": 2, "noop": False, "trace": False, "debug": False, "scope": {"nodes": NODES},
        "enforce_environment": True, "environment": "production", "evaltrace": False, "target": None,
    }  # fmt: skip
    expected = {
        "id": url,
        "name": "1",
        "type": "deploy",
        "state": "running",
        "command": "deploy",
        "description": "roll out ntp",
        "options": options,
        "owner": {"id": "token:deployer", "login": "deployer"},
        "environment": {"name": "production"},
        "timeout": 2.0,
        "node_count": 3,
        "node_states": states(ready=3),
        "nodes": {"id": f"{url}/nodes"},
        "report": {"id": f"{url}/report"},
        "events": {"id": f"{url}/events"},
    }
    assert without_times({**job, "status": None}, *JOB_TIMES) == {**expected, "status": None}
    assert job["finished_timestamp"] is None
    assert [(s["state"], s["exit_time"] is None) for s in job["status"]] == [
        ("new", False), ("ready", False), ("running", True)
    ]  # fmt: skip
    assert job["timestamp"] == job["status"][-1]["enter_time"]

    # no trigger is configured: the nodes wait for their reports
    status, nodes = await o.get("/orchestrator/v1/jobs/1/nodes")
    assert [(n["name"], n["state"], n["details"]) for n in nodes["items"]] == [
        (n, "ready", {}) for n in NODES
    ]

    await o.report("a.example.test", "1")
    await o.wait_for_node(1, "a.example.test", "finished")
    await o.report("b.example.test", "1", failed=True)
    await o.wait_for_node(1, "b.example.test", "failed")
    assert (await o.job(1))["state"] == "running"  # c has until the timeout

    job = await o.wait_for_job(1, "failed", within=10)
    assert time.time() - deployed >= 2.0  # not before the timeout
    assert job["node_states"] == states(finished=1, failed=1, errored=1)
    assert [s["state"] for s in job["status"]] == ["new", "ready", "running", "failed"]
    for before, after in zip(job["status"], job["status"][1:], strict=False):
        assert before["exit_time"] == after["enter_time"]
    assert job["status"][-1]["exit_time"] is None
    assert job["timestamp"] == job["status"][-1]["enter_time"] == job["finished_timestamp"]

    # c's run reports after the timeout: the verdict stands, the report is shown with it
    await o.report("c.example.test", "1")
    ids = {n: await o.report_id(n) for n in NODES}

    async def c_has_its_report():
        _, body = await o.get("/orchestrator/v1/jobs/1/nodes")
        return body if body["items"][2]["transaction_uuid"] else None

    nodes = await wait_until(c_has_its_report)
    timeout_message = (
        "Puppet run on c.example.test timed out: no report within the job's timeout of 2 seconds"
    )
    late_message = (
        f"{timeout_message} (a report arrived afterwards: Finished puppet run on c.example.test - Success!)"
    )
    result = {"status": "changed", "change_kind": "intentional", "noop": False, "corrective_change": False}
    items = [without_times(item, *NODE_TIMES) for item in nodes["items"]]
    assert items == [
        {
            "name": "a.example.test",
            "state": "finished",
            "transaction_uuid": o.reports["a.example.test"],
            "duration": round(SAMPLE_TOTAL, 3),
            "details": {
                "metrics": CHANGED_METRICS,
                "report-url": f"{o.base}/api/v1/reports/{ids['a.example.test']}",
                "message": "Finished puppet run on a.example.test - Success!",
            },
            "result": {**result, "report_id": ids["a.example.test"]},
            "message": "Finished puppet run on a.example.test - Success!",
        },
        {
            "name": "b.example.test",
            "state": "failed",
            "transaction_uuid": o.reports["b.example.test"],
            "duration": 0.964,
            "details": {
                "metrics": ZERO_METRICS,
                "report-url": f"{o.base}/api/v1/reports/{ids['b.example.test']}",
                "message": f"Error running puppet on b.example.test: {CATALOG_ERROR}",
            },
            "result": {
                "status": "failed",
                "change_kind": None,
                "noop": False,
                "corrective_change": False,
                "report_id": ids["b.example.test"],
            },
            "message": f"Error running puppet on b.example.test: {CATALOG_ERROR}",
        },
        {
            "name": "c.example.test",
            "state": "errored",
            "transaction_uuid": o.reports["c.example.test"],
            "duration": None,
            "details": {
                "message": late_message,
                "metrics": CHANGED_METRICS,
                "report-url": f"{o.base}/api/v1/reports/{ids['c.example.test']}",
            },
            "result": {**result, "report_id": ids["c.example.test"]},
            "message": late_message,
        },
    ]
    a, _, c = nodes["items"]
    assert a["start_timestamp"] < a["finish_timestamp"] <= a["timestamp"]
    assert c["start_timestamp"] is None and c["finish_timestamp"] == c["timestamp"]
    # report-url is reportd's own stored report
    response = await o.client.get(a["details"]["report-url"].removeprefix(o.base))
    assert (await response.json())["certname"] == "a.example.test"
    assert (await o.job(1))["state"] == "failed"

    status, events = await o.get("/orchestrator/v1/jobs/1/events")
    assert status == 200
    assert [(e["type"], e["details"]["node"], e["message"]) for e in events["items"]] == [
        ("node_finished", "a.example.test", "Finished puppet run on a.example.test - Success!"),
        ("node_failed", "b.example.test", f"Error running puppet on b.example.test: {CATALOG_ERROR}"),
        ("node_errored", "c.example.test", timeout_message),
        ("job_finished", None, "Job 1 failed"),
    ]
    event_ids = [int(e["id"]) for e in events["items"]]
    assert all(isinstance(e["id"], str) for e in events["items"]) and event_ids == sorted(set(event_ids))
    assert events["items"][0]["details"]["detail"] == {"metrics": CHANGED_METRICS}
    assert events["items"][2]["details"]["detail"] == {"message": timeout_message}
    assert events["items"][3]["details"]["detail"] == {"state": "failed"}
    assert all(ISO.match(e["timestamp"]) for e in events["items"])
    following = str(event_ids[-1] + 1)
    assert events["next-events"] == {"id": f"{url}/events?start={following}", "event": following}
    assert nodes["next-events"] == events["next-events"]

    status, tail = await o.get(f"/orchestrator/v1/jobs/1/events?start={event_ids[2]}")
    assert [e["type"] for e in tail["items"]] == ["node_errored", "job_finished"]
    status, none = await o.get(f"/orchestrator/v1/jobs/1/events?start={following}")
    assert none == {"items": [], "next-events": events["next-events"]}

    status, report = await o.get("/orchestrator/v1/jobs/1/report")
    assert [(i["node"], i["state"], len(i["events"])) for i in report["items"]] == [
        ("a.example.test", "finished", 6), ("b.example.test", "failed", 0), ("c.example.test", "errored", 6)
    ]  # fmt: skip
    assert all(ISO.match(i["timestamp"]) for i in report["items"])
    first = report["items"][0]["events"][0]
    assert first == {
        "resource_type": "File",
        "resource_title": "/srv/app",
        "property": "ensure",
        "old_value": "absent",
        "new_value": "directory",
        "message": "created",
        "status": "success",
        "timestamp": "2026-11-23T17:23:02.621Z",
        "file": "/etc/puppetlabs/code/environments/production/manifests/site.pp",
        "line": 3,
        "containment_path": ["Stage[main]", "Main", "File[/srv/app]"],
        "corrective_change": False,
    }

    status, listing = await o.get("/orchestrator/v1/jobs")
    assert listing["pagination"] == {
        "limit": None, "offset": 0, "total": 1, "order_by": None, "order": "desc", "type": None
    }  # fmt: skip
    assert listing["items"] == [await o.job(1)]


async def test_a_report_with_an_unknown_job_id_creates_the_job(orchestrator):
    o = orchestrator
    await o.report("adhoc.example.test", "4242")
    job = await o.wait_for_job(4242, "finished")
    assert without_times(job, *JOB_TIMES) == {
        "id": f"{o.base}/orchestrator/v1/jobs/4242",
        "name": "4242",
        "type": "deploy",
        "state": "finished",
        "command": "deploy",
        "description": None,
        "options": {
            "concurrency": None,
            "noop": False,
            "trace": False,
            "debug": False,
            "scope": {},
            "enforce_environment": False,
            "environment": "production",
            "evaltrace": False,
            "target": None,
        },
        "owner": {"id": "unknown", "login": "unknown"},
        "environment": {"name": "production"},
        "timeout": None,
        "node_count": 1,
        "node_states": states(finished=1),
        "status": job["status"],
        "nodes": {"id": f"{o.base}/orchestrator/v1/jobs/4242/nodes"},
        "report": {"id": f"{o.base}/orchestrator/v1/jobs/4242/report"},
        "events": {"id": f"{o.base}/orchestrator/v1/jobs/4242/events"},
    }
    assert [s["state"] for s in job["status"]] == ["new", "ready", "running", "finished"]
    # a second node of the same run joins it; its failure fails the job
    await o.report("adhoc2.example.test", "4242", failed=True)
    job = await o.wait_for_job(4242, "failed")
    assert job["node_states"] == states(finished=1, failed=1)
    # a job id that is not an orchestrator id, and no job id: no job
    await o.report("other.example.test", "not-a-number")
    await o.report("plain.example.test", None)
    await o.report_id("plain.example.test")
    await o.report_id("other.example.test")
    _, listing = await o.get("/orchestrator/v1/jobs")
    assert [j["name"] for j in listing["items"]] == ["4242"]
    # a deploy afterwards gets the next id
    status, body = await o.post(
        "/orchestrator/v1/command/deploy",
        {"environment": "production", "scope": {"nodes": ["x.example.test"]}},
    )
    assert status == 202 and body["job"]["name"] == "4243"
    assert (await o.job(4243))["timeout"] == 3600.0  # [reportd] job_timeout


async def test_a_node_outside_a_deployed_scope_is_an_event_not_a_node(orchestrator):
    o = orchestrator
    status, _ = await o.post(
        "/orchestrator/v1/command/deploy",
        {"environment": "production", "scope": {"nodes": ["in.example.test"]}},
    )
    assert status == 202
    await o.report("outside.example.test", "1", failed=True)

    async def noted():
        _, events = await o.get("/orchestrator/v1/jobs/1/events")
        return events["items"]

    (event,) = await wait_until(noted)
    assert (event["type"], event["details"]["node"]) == ("node_outside_scope", "outside.example.test")
    assert event["details"]["detail"]["report_id"] == await o.report_id("outside.example.test")
    job = await o.job(1)
    assert (job["state"], job["node_count"], job["node_states"]) == ("running", 1, states(ready=1))
    _, nodes = await o.get("/orchestrator/v1/jobs/1/nodes")
    assert [item["name"] for item in nodes["items"]] == ["in.example.test"]
    await o.report("in.example.test", "1")
    job = await o.wait_for_job(1, "finished")  # not failed: outside.example.test's failure does not count
    assert (job["node_count"], job["node_states"]) == (1, states(finished=1))


async def test_a_deploy_to_many_nodes_logs_one_line_also_after_a_restart(backend, aiohttp_client, make_app):
    nodes = [f"n{n}.t" for n in range(50_000)]
    with structlog.testing.capture_logs() as logs:

        async def summaries() -> list[dict]:
            return [line for line in logs if line["event"] == "job_nodes_wait_for_reports"]

        client = await aiohttp_client(make_app(backend))
        o = Orchestrator(client)
        await o.add_token(DEPLOYER, "deployer", "view_jobs", "edit_jobs")
        status, _ = await o.post(
            "/orchestrator/v1/command/deploy", {"environment": "production", "scope": {"nodes": nodes}}
        )
        assert status == 202
        await wait_until(summaries, within=60)
        await client.close()
        restarted = await aiohttp_client(make_app(backend))  # the same database: the job resumes
        await wait_until(lambda: _at_least(summaries, 2), within=60)
        await restarted.close()
    assert [(line["job_id"], line["nodes"]) for line in await summaries()] == [(1, 50_000), (1, 50_000)]
    assert [line for line in logs if "certname" in line] == []
    assert len(logs) < 20, [line["event"] for line in logs]


async def _at_least(lines, count: int) -> bool:
    return len(await lines()) >= count


async def test_stop_skips_nodes_not_started(orchestrator):
    o = orchestrator
    await o.post("/orchestrator/v1/command/deploy", {"environment": "production", "scope": {"nodes": NODES}})
    await o.report("a.example.test", "1")
    await o.wait_for_node(1, "a.example.test", "finished")
    status, body = await o.post("/orchestrator/v1/command/stop", {"job": "1"})
    assert status == 202
    assert body == {
        "job": {
            "id": f"{o.base}/orchestrator/v1/jobs/1",
            "name": "1",
            "state": "stopped",
            "nodes": states(finished=1, skipped=2),
        }
    }
    job = await o.job(1)
    assert [s["state"] for s in job["status"]] == ["new", "ready", "running", "stopping", "stopped"]
    _, nodes = await o.get("/orchestrator/v1/jobs/1/nodes")
    skipped = nodes["items"][1]
    assert skipped["state"] == "skipped"
    assert skipped["details"] == {
        "message": "Skipped puppet run on b.example.test: job 1 was stopped before it started"
    }
    _, events = await o.get("/orchestrator/v1/jobs/1/events")
    assert [e["type"] for e in events["items"]] == [
        "node_finished",
        "node_skipped",
        "node_skipped",
        "job_aborted",
    ]
    # stopping a job that ended changes nothing
    status, again = await o.post("/orchestrator/v1/command/stop", {"job": 1})
    assert status == 202 and again["job"]["state"] == "stopped"


async def test_listing_order_and_pagination(orchestrator):
    o = orchestrator
    await o.add_token("rpd_alice", "alice", "view_jobs", "edit_jobs")
    for environment, token in (("production", DEPLOYER), ("staging", "rpd_alice"), ("dev", DEPLOYER)):
        status, _ = await o.post(
            "/orchestrator/v1/command/deploy",
            {"environment": environment, "scope": {"nodes": ["n.example.test"]}},
            token=token,
        )
        assert status == 202
    await o.post("/orchestrator/v1/command/stop", {"job": "2"})  # its timestamp is now the latest

    async def names(query: str) -> list[str]:
        status, body = await o.get(f"/orchestrator/v1/jobs{query}")
        assert status == 200, body
        return [job["name"] for job in body["items"]]

    assert await names("") == ["3", "2", "1"]
    assert await names("?order=asc") == ["1", "2", "3"]
    assert await names("?limit=2") == ["3", "2"]
    assert await names("?limit=2&offset=2") == ["1"]
    assert await names("?offset=5") == []
    assert await names("?order_by=name") == ["1", "2", "3"]
    assert await names("?order_by=name&order=desc") == ["3", "2", "1"]
    assert await names("?order_by=environment") == ["3", "1", "2"]  # dev, production, staging
    assert await names("?order_by=owner&order=desc") == ["3", "1", "2"]  # deployer (3, 1 by id desc), alice
    assert await names("?order_by=state") == ["1", "3", "2"]  # running, running, stopped
    assert await names("?order_by=timestamp&order=desc&limit=1") == ["2"]
    assert await names("?type=deploy&limit=1") == ["3"]
    assert await names("?type=task") == []
    _, body = await o.get("/orchestrator/v1/jobs?limit=1&offset=1&order_by=name&order=asc&type=deploy")
    assert [j["name"] for j in body["items"]] == ["2"]
    assert body["pagination"] == {
        "limit": 1, "offset": 1, "total": 3, "order_by": "name", "order": "asc", "type": "deploy"
    }  # fmt: skip


def orchestrator_error(kind: str, msg: str, **details) -> dict:
    return {"kind": f"puppetlabs.orchestrator/{kind}", "msg": msg, "details": details}


async def test_errors_have_the_orchestrator_shape(orchestrator):
    o = orchestrator
    cases = [
        ("/orchestrator/v1/jobs/abc", 400,
         orchestrator_error("validation-error", "The job id must be an integer, got 'abc'", job_id="abc")),
        ("/orchestrator/v1/jobs/-1/nodes", 400,
         orchestrator_error("validation-error", "The job id must be an integer, got '-1'", job_id="-1")),
        ("/orchestrator/v1/jobs/999", 404, orchestrator_error("unknown-job", "No job exists with id 999", job_id=999)),
        ("/orchestrator/v1/jobs/999/nodes", 404,
         orchestrator_error("unknown-job", "No job exists with id 999", job_id=999)),
        ("/orchestrator/v1/jobs/999/report", 404,
         orchestrator_error("unknown-job", "No job exists with id 999", job_id=999)),
        ("/orchestrator/v1/jobs/999/events", 404,
         orchestrator_error("unknown-job", "No job exists with id 999", job_id=999)),
        ("/orchestrator/v1/jobs/1/events?start=x", 400,
         orchestrator_error("validation-error", "start must be an integer, got 'x'", start="x")),
        ("/orchestrator/v1/jobs?limit=ten", 400,
         orchestrator_error("validation-error", "limit must be an integer, got 'ten'", limit="ten")),
        ("/orchestrator/v1/jobs?limit=-3", 400,
         orchestrator_error("validation-error", "limit must be at least 0, got -3", limit="-3")),
        ("/orchestrator/v1/jobs?offset=1.5", 400,
         orchestrator_error("validation-error", "offset must be an integer, got '1.5'", offset="1.5")),
        ("/orchestrator/v1/jobs?limit=1_0", 400,
         orchestrator_error("validation-error", "limit must be an integer, got '1_0'", limit="1_0")),
        ("/orchestrator/v1/jobs?offset=" + "9" * 19, 400,
         orchestrator_error("validation-error", f"offset must be an integer, got '{'9' * 19}'", offset="9" * 19)),
        ("/orchestrator/v1/jobs/1/events?start=" + "9" * 19, 400,
         orchestrator_error("validation-error", f"start must be an integer, got '{'9' * 19}'", start="9" * 19)),
        ("/orchestrator/v1/jobs/" + "9" * 19, 400,
         orchestrator_error("validation-error", f"The job id must be an integer, got '{'9' * 19}'", job_id="9" * 19)),
        ("/orchestrator/v1/jobs?order_by=color", 400,
         orchestrator_error("validation-error",
                            "order_by must be one of owner, timestamp, environment, name, state, got 'color'",
                            order_by="color")),
        ("/orchestrator/v1/jobs?order=up", 400,
         orchestrator_error("validation-error", "order must be asc or desc, got 'up'", order="up")),
        ("/orchestrator/v1/jobs?type=chore", 400,
         orchestrator_error("validation-error", "type must be one of deploy, task, plan, got 'chore'", type="chore")),
    ]  # fmt: skip
    for path, status, body in cases:
        response = await o.client.get(path, headers={"X-Authentication": READER})
        assert (response.status, response.content_type, await response.json()) == (
            status, "application/json", body
        ), path  # fmt: skip

    nodes = {"nodes": ["a.example.test"]}
    deploys = [
        (b"{not json", 400, "validation-error", None),
        (b"[1]", 400, orchestrator_error("validation-error", "The body must be a JSON object"), None),
        ({"scope": nodes}, 400, orchestrator_error(
            "validation-error", "environment is required: the name of a Puppet environment", environment=None), None),
        ({"environment": "production", "scope": {"nodes": []}}, 400, orchestrator_error(
            "empty-target", "The deploy names no nodes (scope.nodes is empty)"), None),
        ({"environment": "production", "scope": {"application": "Wordpress_app"}}, 400, orchestrator_error(
            "validation-error",
            'scope must be {"nodes": [certname, ...]} (applications, queries and node groups are not supported)',
            scope={"application": "Wordpress_app"}), None),
        ({"environment": "production", "scope": {"nodes": ["a", 3]}}, 400, orchestrator_error(
            "validation-error", "scope.nodes must be a list of certnames", nodes=["a", 3]), None),
        ({"environment": "production", "scope": {"nodes": ["web1.example.test", "Web1.Example.COM", "a/b"]}},
         400, orchestrator_error("validation-error", "scope.nodes: 'Web1.Example.COM' must be lower case",
                                 nodes=["Web1.Example.COM", "a/b"]), None),
        ({"environment": "production", "scope": nodes, "concurrency": 0}, 400, orchestrator_error(
            "validation-error", "concurrency must be a positive integer, got 0", concurrency=0), None),
        ({"environment": "production", "scope": nodes, "timeout": "soon"}, 400, orchestrator_error(
            "validation-error", "timeout must be a positive number of seconds, got 'soon'", timeout="soon"), None),
        ({"environment": "production", "scope": nodes, "noop": "yes"}, 400, orchestrator_error(
            "validation-error", "noop must be true or false, got 'yes'", noop="yes"), None),
        ({"environment": "production", "scope": nodes, "nodes": ["x"]}, 400, orchestrator_error(
            "validation-error", "Unknown key 'nodes' in the deploy command", key="nodes"), None),
    ]  # fmt: skip
    for body, status, expected, _ in deploys:
        code, answer = await o.post("/orchestrator/v1/command/deploy", body)
        assert code == status, (body, answer)
        if isinstance(expected, str):
            assert answer["kind"] == f"puppetlabs.orchestrator/{expected}"
            assert answer["msg"].startswith("The body is not valid JSON: ")
        else:
            assert answer == expected, body
    for body, status, expected in [
        ({"job": "x1"}, 400, orchestrator_error("validation-error", "job must be a job id such as \"81\", got 'x1'",
                                                job="x1")),
        ({}, 400, orchestrator_error("validation-error", 'job must be a job id such as "81", got None', job=None)),
        ({"job": "9" * 19}, 400, orchestrator_error(
            "validation-error", f"job must be a job id such as \"81\", got '{'9' * 19}'", job="9" * 19)),
        ({"job": "77"}, 404, orchestrator_error("unknown-job", "No job exists with id 77", job_id=77)),
    ]:  # fmt: skip
        assert await o.post("/orchestrator/v1/command/stop", body) == (status, expected)
    _, listing = await o.get("/orchestrator/v1/jobs")
    assert listing["items"] == []  # nothing refused left a job behind


async def test_permissions(orchestrator):
    o = orchestrator
    deploy = {"environment": "production", "scope": {"nodes": ["a.example.test"]}}

    def denied(permission: str) -> dict:
        return orchestrator_error(
            "not-permitted",
            f"Permission denied: this request needs the {permission} permission",
            missing_permissions=[permission],
        )

    # loopback is anonymous with the defaults (upload and read reports), not jobs
    assert await o.get("/orchestrator/v1/jobs", token=None) == (403, denied("view_jobs"))
    assert await o.get("/orchestrator/v1/jobs/1/nodes", token=None) == (403, denied("view_jobs"))
    assert await o.post("/orchestrator/v1/command/deploy", deploy, token=None) == (403, denied("edit_jobs"))
    assert await o.post("/orchestrator/v1/command/deploy", deploy, token="rpd_nonsense") == (
        403, denied("edit_jobs")
    )  # fmt: skip
    # view_jobs reads, but neither deploys nor stops
    assert await o.post("/orchestrator/v1/command/deploy", deploy, token=READER) == (403, denied("edit_jobs"))
    assert await o.post("/orchestrator/v1/command/stop", {"job": "1"}, token=READER) == (
        403,
        denied("edit_jobs"),
    )
    assert (await o.get("/orchestrator/v1/jobs", token=READER))[0] == 200
    # edit_jobs deploys; Bearer works as X-Authentication does; admin may do anything
    status, _ = await o.post(
        "/orchestrator/v1/command/deploy", deploy, token=None, Authorization=f"Bearer {DEPLOYER}"
    )
    assert status == 202
    await o.add_token("rpd_admin", "root", "admin")
    assert (await o.get("/orchestrator/v1/jobs/1", token="rpd_admin"))[0] == 200
    assert (await o.post("/orchestrator/v1/command/stop", {"job": "1"}, token="rpd_admin"))[0] == 202


async def test_absolute_urls_follow_a_trusted_proxy_or_base_url(aiohttp_client, make_app, tmp_path):
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "reportd.example.com:8143"}
    deploy = {"environment": "production", "scope": {"nodes": ["a.example.test"]}}
    # a client that is no trusted proxy names nothing: the links are the listener's own
    client = await aiohttp_client(make_app(data_dir=tmp_path / "direct"))
    o = Orchestrator(client)
    await o.add_token(DEPLOYER, "deployer", "view_jobs", "edit_jobs")
    status, body = await o.post("/orchestrator/v1/command/deploy", deploy, Host="evil.example", **forwarded)
    assert status == 202
    assert body["job"]["id"] == f"{o.base}/orchestrator/v1/jobs/1"
    _, job = await o.get("/orchestrator/v1/jobs/1", token=DEPLOYER, Host="evil.example")
    assert job["id"] == f"{o.base}/orchestrator/v1/jobs/1"

    proxied = await aiohttp_client(make_app("trusted_proxies = 127.0.0.0/8\n", data_dir=tmp_path / "proxied"))
    p = Orchestrator(proxied)
    await p.add_token(DEPLOYER, "deployer", "view_jobs", "edit_jobs")
    status, body = await p.post("/orchestrator/v1/command/deploy", deploy, **forwarded)
    assert status == 202
    assert body["job"]["id"] == "https://reportd.example.com:8143/orchestrator/v1/jobs/1"
    _, job = await p.get("/orchestrator/v1/jobs/1", token=DEPLOYER)
    assert job["id"] == f"{p.base}/orchestrator/v1/jobs/1"  # its Host: the address it was sent to

    configured = await aiohttp_client(
        make_app(
            "base_url = https://jobs.example.com/\ntrusted_proxies = 127.0.0.1\n",
            data_dir=tmp_path / "configured",
        )
    )
    c = Orchestrator(configured)
    await c.add_token(DEPLOYER, "deployer", "view_jobs", "edit_jobs")
    _, body = await c.post("/orchestrator/v1/command/deploy", deploy, **{"X-Forwarded-Host": "evil.example"})
    assert body == {"job": {"id": "https://jobs.example.com/orchestrator/v1/jobs/1", "name": "1"}}
    _, job = await c.get("/orchestrator/v1/jobs/1", token=DEPLOYER, **{"X-Forwarded-Host": "evil.example"})
    assert job["nodes"] == {"id": "https://jobs.example.com/orchestrator/v1/jobs/1/nodes"}


def test_job_settings_are_checked(tmp_path):
    from reportd.app import create_app
    from reportd.config import load_config_string
    from reportd.plugin_manager import get_plugin_manager
    from reportd.settings import ConfigError

    with pytest.raises(
        ConfigError, match=r"^b\.ini: \[reportd\] base_url: expected an http:// or https:// URL with a host"
    ):
        load_config_string("[reportd]\nbase_url = reportd.example.com\n", source="b.ini")
    with pytest.raises(ConfigError, match=r"^b\.ini: \[reportd\] job_timeout: expected a duration"):
        load_config_string("[reportd]\njob_timeout = forever\n", source="b.ini")
    config = load_config_string("[reportd]\nprocessors = store, jobs\n", source="b.ini")
    with pytest.raises(ConfigError, match=r"processors: 'jobs' is reserved for job tracking"):
        create_app(config, get_plugin_manager(load_entrypoints=False))
