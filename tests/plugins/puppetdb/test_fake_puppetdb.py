"""The PuppetDB test double is strict and right (tests/support/fakes/puppetdb.py)."""

from __future__ import annotations

import asyncio
import copy
import gzip
import json
import re
import ssl
import time
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
import trustme

from tests.support import DATA
from tests.support.fakes.puppetdb import (
    DOWN_MESSAGE,
    FakePuppetDB,
    normalize_time,
    report_hash,
    validate_report_v8,
)

AGENT_CHANGES = DATA / "puppet" / "agent-changes.json"
CERTNAME = "lab-agent.example.test"
PRODUCER_TS = "2026-11-23T17:23:05.123+00:00"  # the terminus: Time.now.iso8601(3), local offset
PRODUCER_TS_PARAM = "2026-11-23T17:23:05.123Z"  # ...and current_time.utc.iso8601(3) in the URL


# ------------------------------------------------- Puppet's terminus, in miniature


def wire_time(value: str) -> str:
    """Puppet::Util::Puppetdb.to_wire_time: Time#iso8601(3), digits truncated."""
    m = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(.*)", value)
    assert m is not None
    return f"{m[1]}.{(m[2] or '').ljust(3, '0')[:3]}{m[3]}"


def time_plus(value: str, seconds: float) -> str:
    """Ruby ``time + run_duration``, then to_wire_time."""
    m = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(.*)", value)
    assert m is not None
    base = datetime.fromisoformat(m[1] + m[3])
    nanos = int((m[2] or "").ljust(9, "0")[:9]) + round(seconds * 1e9)
    moment = base + timedelta(seconds=nanos // 10**9)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos % 10**9 // 10**6:03d}" + m[3]


def ruby_inspect(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{ruby_inspect(k)}=>{ruby_inspect(v)}" for k, v in value.items()) + "}"
    return ruby_to_s(value)


def ruby_to_s(value: Any) -> str:
    """Ruby's #to_s, which the terminus applies to desired_value/previous_value."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + ", ".join(ruby_inspect(v) for v in value) + "]"
    if isinstance(value, dict):
        return ruby_inspect(value)
    return str(value)


def terminus_report(agent: dict[str, Any], producer_timestamp: str = PRODUCER_TS) -> dict[str, Any]:
    """puppet/reports/puppetdb.rb report_to_hash, from a native Puppet report."""
    resources = []
    for status in agent["resource_statuses"].values():
        events = [
            {
                "status": e["status"],
                "timestamp": wire_time(e["time"]),
                "name": e["name"],
                "property": e["property"],
                "new_value": ruby_to_s(e["desired_value"]),
                "old_value": ruby_to_s(e["previous_value"]),
                "corrective_change": e["corrective_change"],
                "message": e["message"],
            }
            for e in status["events"]
        ]
        if events or status["skipped"]:  # not include_unchanged_resources
            resources.append(
                {
                    "skipped": status["skipped"],
                    "timestamp": wire_time(status["time"]),
                    "resource_type": status["resource_type"],
                    "resource_title": str(status["title"]),
                    "file": status["file"],
                    "line": status["line"],
                    "containment_path": status["containment_path"],
                    "corrective_change": status["corrective_change"],
                    "events": events,
                }
            )
    metrics = [
        {"category": data["name"], "name": key, "value": value}
        for data in agent["metrics"].values()
        for key, _label, value in data["values"]
    ]
    logs = [
        {
            "file": log["file"],
            "line": log["line"],
            "level": log["level"],
            "message": log["message"],
            "source": log["source"],
            "tags": list(log["tags"]),
            "time": wire_time(log["time"]),
        }
        for log in agent["logs"]
    ]
    total = next((v for k, _l, v in agent["metrics"].get("time", {}).get("values", []) if k == "total"), 0)
    return {
        "certname": agent["host"],
        "job_id": agent.get("job_id"),
        "puppet_version": agent["puppet_version"],
        "report_format": agent["report_format"],
        "configuration_version": ruby_to_s(agent["configuration_version"]),
        "producer_timestamp": producer_timestamp,
        "start_time": wire_time(agent["time"]),
        "end_time": time_plus(agent["time"], total),
        "environment": agent["environment"],
        "transaction_uuid": agent["transaction_uuid"],
        "status": agent["status"],
        "noop": agent["noop"],
        "noop_pending": agent["noop_pending"],
        "corrective_change": agent["corrective_change"],
        "logs": logs,
        "metrics": metrics,
        "resources": resources,
        "catalog_uuid": agent.get("catalog_uuid"),
        "code_id": agent.get("code_id"),
        "cached_catalog_status": agent.get("cached_catalog_status"),
        "producer": "puppet.example.test",
    }


@pytest.fixture
def report() -> dict[str, Any]:
    return terminus_report(json.loads(AGENT_CHANGES.read_text()))


@pytest.fixture
async def pdb():
    fake = FakePuppetDB()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


def cmd_params(**extra: str) -> dict[str, str]:
    params = {
        "command": "store_report",
        "version": "8",
        "certname": CERTNAME,
        "producer-timestamp": PRODUCER_TS_PARAM,
    }
    params.update(extra)
    return {k: v for k, v in params.items() if v is not None}


async def submit(
    http: aiohttp.ClientSession,
    pdb: FakePuppetDB,
    body: Any,
    *,
    compress: bool = False,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, str, Any]:
    """POST like the terminus does; returns (status, content type, JSON or text)."""
    data = raw if raw is not None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json; charset=utf-8", "Accept": "application/json"}
    sent["X-Uncompressed-Length"] = str(len(data))
    if compress:
        data = gzip.compress(data)
        sent["Content-Encoding"] = "gzip"
    sent.update(headers or {})
    url = f"{pdb.url}/pdb/cmd/v1"
    async with http.post(url, params=params or cmd_params(), data=data, headers=sent) as resp:
        text = await resp.text()
        answer = json.loads(text) if resp.content_type == "application/json" else text
        return resp.status, resp.content_type, answer


async def query(http: aiohttp.ClientSession, pdb: FakePuppetDB, q: Any) -> list[dict[str, Any]]:
    async with http.get(f"{pdb.url}/pdb/query/v4/reports", params={"query": json.dumps(q)}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


# ----------------------------------------------------------------- a valid report


def test_terminus_conversion_is_valid_v8(report):
    assert validate_report_v8(report) == []
    assert [r["resource_type"] for r in report["resources"]] == ["File"] * 3 + ["Notify"] * 2 + ["Exec"]
    exec_event = report["resources"][-1]["events"][0]
    assert exec_event["new_value"] == '["0"]' and exec_event["old_value"] == "notrun"
    assert report["start_time"] == "2026-11-23T17:23:01.706+00:00"
    assert report["end_time"] == "2026-11-23T17:23:02.683+00:00"  # time + metrics.time.total
    assert report["configuration_version"] == "1795454580"


async def test_valid_report_is_stored_and_queryable(pdb, http, report):
    status, ctype, answer = await submit(http, pdb, report, compress=True)
    assert (status, ctype) == (200, "application/json")
    assert set(answer) == {"uuid"}

    digest = report_hash(report)
    assert pdb.reports == {digest: report}
    assert pdb.dead_letters == []
    assert pdb.commands[-1].outcome == "stored" and pdb.commands[-1].body == report

    rows = await query(http, pdb, ["=", "hash", digest])
    assert len(rows) == 1
    row = rows[0]
    assert row["hash"] == digest
    assert row["certname"] == CERTNAME
    assert row["transaction_uuid"] == report["transaction_uuid"]
    assert row["status"] == "changed"
    assert row["producer_timestamp"] == "2026-11-23T17:23:05.123Z"
    assert row["start_time"] == "2026-11-23T17:23:01.706Z"
    assert row["latest_report?"] is True
    assert await query(http, pdb, ["=", "certname", CERTNAME]) == rows
    assert await query(http, pdb, ["=", "hash", "0" * 40]) == []
    assert await query(http, pdb, ["=", "certname", "elsewhere.example.test"]) == []


async def test_absent_content_type_is_accepted(pdb, http, report):
    # rmc/wrap-content-type only refuses a Content-Type that is present and not JSON
    async with http.post(
        f"{pdb.url}/pdb/cmd/v1",
        params=cmd_params(),
        data=json.dumps(report).encode(),
        skip_auto_headers=["Content-Type"],
    ) as resp:
        assert resp.status == 200
    assert len(pdb.reports) == 1


async def test_old_format_without_query_parameters(pdb, http, report):
    envelope = {"command": "store report", "version": 8, "payload": report}
    async with http.post(f"{pdb.url}/pdb/cmd/v1", json=envelope) as resp:
        assert resp.status == 200
    assert list(pdb.reports) == [report_hash(report)]

    async with http.post(f"{pdb.url}/pdb/cmd/v1", json={"payload": report}) as resp:
        assert resp.status == 400
        assert "old format" in (await resp.json())["error"]


# ------------------------------------------------- invalid bodies: 200, then dead letter


def _drop_logs(r):
    del r["logs"]


def _extra_top(r):
    r["transaction_completed"] = True


def _extra_event_key(r):
    r["resources"][0]["events"][0]["audited"] = False


def _int_config_version(r):
    r["configuration_version"] = 1795454580


def _bad_uuid(r):
    r["transaction_uuid"] = "run-1795454580"


def _zoneless_time(r):
    r["start_time"] = "2026-11-23T17:23:01.706"


def _string_line(r):
    r["logs"][5]["line"] = "3"


def _string_resource_line(r):
    r["resources"][0]["line"] = "3"


def _null_metrics(r):
    r["metrics"] = None


def _null_resources(r):
    r["resources"] = None


def _no_property(r):
    del r["resources"][0]["events"][0]["property"]


def _string_metric(r):
    r["metrics"][0]["value"] = "13"


def _null_containment(r):
    r["resources"][0]["containment_path"] = None


def _bad_type(r):
    r["type"] = "apply"


def _nul_in_message(r):
    r["logs"][0]["message"] = "nul\x00byte"


INVALID = [
    (_extra_top, "transaction_completed: disallowed key"),
    (_extra_event_key, "resources[0].events[0].audited: disallowed key"),
    (_drop_logs, "logs: missing required key"),
    (_int_config_version, "configuration_version: expected string, got integer"),
    (_bad_uuid, 'invalid input syntax for type uuid: "run-1795454580"'),
    (_zoneless_time, "start_time: expected ISO-8601 timestamp with zone"),
    (_string_line, "logs[5].line: expected integer, got string"),
    (_string_resource_line, "resources[0].line: expected integer, got string"),
    (_null_metrics, "metrics: must not be null"),
    (_null_resources, "resources: must not be null"),
    (_no_property, "resources[0].events[0].property: missing required key"),
    (_string_metric, "metrics[0].value: expected number"),
    (_null_containment, "resources[0].containment_path: must not be null"),
    (_bad_type, "type: expected one of"),
    (_nul_in_message, "logs[0].message: contains NUL"),
]


@pytest.mark.parametrize(("mutate", "reason"), INVALID, ids=[m.__name__.strip("_") for m, _ in INVALID])
async def test_invalid_body_is_dead_lettered_behind_a_200(pdb, http, report, mutate, reason):
    mutate(report)
    assert any(reason in p for p in validate_report_v8(report)), validate_report_v8(report)

    status, _, answer = await submit(http, pdb, report)
    assert status == 200 and set(answer) == {"uuid"}  # the client is never told
    assert pdb.reports == {}
    assert len(pdb.dead_letters) == 1
    body, why = pdb.dead_letters[0]
    assert body == report
    assert reason in why
    assert await query(http, pdb, ["=", "hash", report_hash(report)]) == []


async def test_lenient_times_accept_what_puppetdb_really_accepts(http, report):
    # pls/Timestamp (clj-time from-string) takes a zone-less time as UTC
    _zoneless_time(report)
    async with FakePuppetDB(lenient_times=True) as pdb:
        status, _, _ = await submit(http, pdb, report)
        assert status == 200
        assert pdb.dead_letters == []
        (row,) = await query(http, pdb, ["=", "hash", report_hash(report)])
        assert row["start_time"] == "2026-11-23T17:23:01.706Z"


async def test_body_that_does_not_parse_is_dead_lettered(pdb, http):
    status, _, answer = await submit(
        http, pdb, None, raw=b"\x1f\x8bnot gzip", headers={"Content-Encoding": "gzip"}
    )
    assert status == 200 and set(answer) == {"uuid"}
    status, _, _ = await submit(http, pdb, None, raw=b'{"certname": ')
    assert status == 200
    assert [why.split(":")[0] for _, why in pdb.dead_letters] == ["Error parsing command"] * 2
    assert pdb.reports == {}


# ----------------------------------------------------------------- HTTP-level refusals


REFUSALS = [
    pytest.param(
        cmd_params(foo="1"),
        {},
        400,
        'Command "store report" for certname "lab-agent.example.test" is invalid. '
        "Command has invalid parameters: foo.",
        id="unknown-parameter",
    ),
    pytest.param(
        cmd_params(command="store_reports"),
        {},
        400,
        "Command must be one of: configure expiration",
        id="command",
    ),
    pytest.param(
        cmd_params(version="4"),
        {},
        400,
        'Version 4 of command "store report" is retired. The minimum supported version is 5.',
        id="retired-version",
    ),
    pytest.param(cmd_params(version="v8"), {}, 400, "Version must be a valid integer.", id="version-not-int"),
    pytest.param(
        cmd_params(certname=None),
        {},
        400,
        'Command "store report" for certname nil is invalid. Command is missing required parameters: certname.',
        id="missing-certname",
    ),
    pytest.param(
        cmd_params(certname=" "), {}, 400, "Certname must be a non-empty string.", id="blank-certname"
    ),
    pytest.param(
        cmd_params(),
        {"Content-Type": "text/plain"},
        415,
        "content-type text/plain is not a supported type for request of type :post at /pdb/cmd/v1",
        id="content-type",
    ),
    pytest.param(
        cmd_params(),
        {"Content-Encoding": "deflate"},
        415,
        "content encoding deflate not supported",
        id="encoding",
    ),
    pytest.param(cmd_params(), {"Accept": "text/html"}, 406, "accept header must include", id="accept"),
    pytest.param(
        cmd_params(secondsToWaitForCompletion="soon"),
        {},
        500,
        'For input string: "soon"',
        id="wait-not-number",
    ),
]


@pytest.mark.parametrize(("params", "headers", "status", "message"), REFUSALS)
async def test_http_refusals(pdb, http, report, params, headers, status, message):
    got, ctype, answer = await submit(http, pdb, report, params=params, headers=headers)
    assert got == status
    if status == 400:
        assert ctype == "application/json" and message in answer["error"]
    elif ctype == "application/json":  # 406 and 415 for the content type: {"kind", "msg"}
        assert message in answer["msg"]
    else:
        assert ctype == "text/plain" and message in answer
    assert pdb.reports == {} and pdb.dead_letters == []
    assert pdb.commands[-1].status == status and pdb.commands[-1].outcome is None


async def test_version_above_8_is_accepted_then_fails(pdb, http, report):
    status, _, _ = await submit(http, pdb, report, params=cmd_params(version="9"))
    assert status == 200
    assert pdb.reports == {}
    assert "No matching clause" in pdb.dead_letters[0][1]


# ----------------------------------------------------------------- secondsToWaitForCompletion


async def test_wait_answers_processed(pdb, http, report):
    status, _, answer = await submit(http, pdb, report, params=cmd_params(secondsToWaitForCompletion="5"))
    assert status == 200
    assert answer == {"uuid": answer["uuid"], "processed": True, "timed_out": False}
    assert len(pdb.reports) == 1


async def test_wait_on_schema_invalid_body_times_out(pdb, http, report):
    # a fatal (schema) failure discards the command without calling back: the
    # request is held for the whole wait, then 503 timed_out
    _extra_top(report)
    started = time.monotonic()
    status, _, answer = await submit(http, pdb, report, params=cmd_params(secondsToWaitForCompletion="0.3"))
    assert time.monotonic() - started >= 0.3
    assert status == 503
    assert answer == {"uuid": answer["uuid"], "processed": False, "timed_out": True}
    assert pdb.reports == {} and len(pdb.dead_letters) == 1


async def test_wait_on_storage_failure_reports_the_error(pdb, http, report):
    _bad_uuid(report)
    status, _, answer = await submit(http, pdb, report, params=cmd_params(secondsToWaitForCompletion="5"))
    assert status == 503
    assert answer["processed"] is True and answer["timed_out"] is False
    assert "invalid input syntax for type uuid" in answer["error"]
    assert pdb.reports == {}


async def test_wait_of_zero_does_not_wait(pdb, http, report):
    _extra_top(report)
    status, _, answer = await submit(http, pdb, report, params=cmd_params(secondsToWaitForCompletion="0"))
    assert status == 200 and set(answer) == {"uuid"}


# ----------------------------------------------------------------- the hash


async def test_same_hash_is_stored_once(pdb, http, report):
    assert (await submit(http, pdb, report, compress=True))[0] == 200
    assert (await submit(http, pdb, copy.deepcopy(report)))[0] == 200
    assert len(pdb.reports) == 1
    assert [c.outcome for c in pdb.commands] == ["stored", "duplicate"]


def test_hash_is_what_a_real_puppetdb_computes():
    """The body and hash recorded from a real PuppetDB 7.12.1 (tests/integration/puppetdb.sh)."""
    data = DATA / "puppetdb"
    body = orjson.loads((data / "store_report_v8.json").read_bytes())
    assert report_hash(body) == (data / "store_report_v8.hash").read_text().strip()


def test_hash_normalizes_times_and_ignores_events(report):
    digest = report_hash(report)
    same_instant = copy.deepcopy(report)
    same_instant["start_time"] = "2026-11-23T22:53:01.706999999+05:30"  # same millisecond, other zone
    same_instant["producer_timestamp"] = "2026-11-23T17:23:05.123Z"
    assert report_hash(same_instant) == digest

    resent_later = copy.deepcopy(report)
    resent_later["producer_timestamp"] = "2026-11-23T17:23:06.000+00:00"
    assert report_hash(resent_later) != digest  # fix producer_timestamp per report

    not_hashed = copy.deepcopy(report)
    not_hashed["logs"] = []
    not_hashed["status"] = "failed"
    not_hashed["resources"][0]["events"][0]["message"] = "made"
    assert report_hash(not_hashed) == digest


def test_normalize_time():
    assert normalize_time("2026-11-23T17:23:01.706125773+00:00") == "2026-11-23T17:23:01.706Z"
    assert normalize_time("2026-11-24T04:53:01-11:30") == "2026-11-24T16:23:01.000Z"
    assert normalize_time("yesterday") is None


# ----------------------------------------------------------------- outages


async def test_starting_mode_answers_503(pdb, http, report):
    pdb.mode = "starting"
    status, ctype, answer = await submit(http, pdb, report)
    assert (status, ctype, answer) == (503, "text/plain", DOWN_MESSAGE)
    async with http.get(f"{pdb.url}/pdb/query/v4/reports") as resp:
        assert resp.status == 503 and await resp.text() == DOWN_MESSAGE
    assert pdb.reports == {} and pdb.commands[-1].status == 503

    pdb.mode = "up"
    assert (await submit(http, pdb, report))[0] == 200
    assert len(pdb.reports) == 1


async def test_slow_mode_delays_but_still_stores(pdb, http, report):
    pdb.mode, pdb.slow_seconds = "slow", 0.4
    with pytest.raises(TimeoutError):
        async with http.post(
            f"{pdb.url}/pdb/cmd/v1",
            params=cmd_params(),
            json=report,
            timeout=aiohttp.ClientTimeout(total=0.1),
        ):
            pass
    await asyncio.sleep(0.5)
    assert len(pdb.reports) == 1  # PuppetDB got it although the client gave up


async def test_reject_next(pdb, http, report):
    pdb.reject_next(2, status=503, body="Service Unavailable")
    assert (await submit(http, pdb, report))[:2] == (503, "text/plain")
    assert (await submit(http, pdb, report))[0] == 503
    assert pdb.reports == {}
    assert (await submit(http, pdb, report))[0] == 200
    assert len(pdb.reports) == 1 and len(pdb.commands) == 3


async def test_stop_refuses_connections_and_start_recovers(pdb, http, report):
    url = pdb.url
    assert (await submit(http, pdb, report))[0] == 200
    await pdb.stop()
    with pytest.raises(aiohttp.ClientConnectorError):
        await submit(http, pdb, report)
    assert await pdb.start() == url  # same port
    later = copy.deepcopy(report)
    later["producer_timestamp"] = "2026-11-23T17:33:05.123+00:00"
    assert (await submit(http, pdb, later))[0] == 200
    assert len(pdb.reports) == 2  # state survives the outage
    rows = await query(http, pdb, ["=", "certname", CERTNAME])
    assert sorted(r["latest_report?"] for r in rows) == [False, True]


async def test_tls_and_restart_keep_https(report):
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    pdb = FakePuppetDB()
    url = await pdb.start(ssl_context=server_ctx)
    assert url.startswith("https://127.0.0.1:")
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_ctx, force_close=True)
        ) as http:
            assert (await submit(http, pdb, report))[0] == 200
            await pdb.stop()
            assert await pdb.start() == url
            assert (await query(http, pdb, ["=", "certname", CERTNAME]))[0]["hash"] == report_hash(report)
    finally:
        await pdb.stop()


async def test_query_refuses_unknown_fields(pdb, http):
    async with http.get(
        f"{pdb.url}/pdb/query/v4/reports", params={"query": json.dumps(["=", "nodename", "x"])}
    ) as resp:
        assert resp.status == 400
        assert "not a queryable object" in await resp.text()
