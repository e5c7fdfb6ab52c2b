"""/metrics: puppet-prometheus_reporter's series for every node and format, and the daemon's own."""

from __future__ import annotations

import asyncio
import gzip
import re
import time
import uuid

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reportd import __version__
from reportd.appkeys import CONTEXT
from tests.support import ROOT, SAMPLE_CERTNAME, ini_for, sample, wait_until

HOST = SAMPLE_CERTNAME


async def scrape(client, **headers) -> dict:
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: dict = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample_ in family.samples:
            samples[(sample_.name, tuple(sorted(sample_.labels.items())))] = sample_.value
    return samples


def value(samples: dict, metric: str, /, **labels) -> float | None:
    return samples.get((metric, tuple(sorted(labels.items()))))


def node(host: str = HOST, env: str = "production", **extra) -> dict:
    return {"environment": env, "host": host, **extra}


async def put(client, name: str, host: str = HOST, **changes) -> int:
    """Send a sample as ``host``; returns the body's size."""
    data = orjson.loads(sample(name))
    data.update(host=host, transaction_uuid=str(uuid.uuid4()), **changes)
    body = orjson.dumps(data)
    response = await client.put(f"/puppet/v3/report/{host}?environment=production", data=body,
                                headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status == 200
    return len(body)


async def drained(client) -> bool:
    queue = await (await client.get("/api/v1/queue")).json()
    return all(p["pending"] == 0 for p in queue["processors"].values())


@pytest.fixture
async def client(aiohttp_client, make_app):
    return await aiohttp_client(make_app(processors="store, metrics"))


async def test_metrics_is_on_by_default(aiohttp_client, tmp_path):
    from reportd.app import create_app
    from reportd.config import load_config_string
    from reportd.plugin_manager import get_plugin_manager

    config = load_config_string(f"[reportd]\ndata_dir = {tmp_path}\n")
    assert config.processors == ("store", "metrics")
    client = await aiohttp_client(create_app(config, get_plugin_manager(load_entrypoints=False)))
    samples = await scrape(client)
    assert value(samples, "reportd_processor_queue_depth", processor="store") == 0


async def test_changed_run(client):
    report = orjson.loads(sample("agent-changes.json"))
    size = await put(client, "agent-changes.json")
    await wait_until(lambda: drained(client))
    s = await scrape(client)
    assert value(s, "puppet_report_resources", **node(name="Changed")) == 6
    assert value(s, "puppet_report_resources", **node(name="Total")) == 13
    assert value(s, "puppet_report_resources", **node(name="Failed to restart")) == 0
    assert value(s, "puppet_report_resources", **node(name="Corrective change")) == 0
    totals = {v[0]: v[2] for v in report["metrics"]["time"]["values"]}
    assert value(s, "puppet_report_time", **node(name="Total")) == pytest.approx(totals["total"])
    assert value(s, "puppet_report_time", **node(name="Config retrieval")) == pytest.approx(
        totals["config_retrieval"]
    )
    assert value(s, "puppet_report_changes", **node(name="Total")) == 6
    assert value(s, "puppet_report_events", **node(name="Success")) == 6
    assert value(s, "puppet_report_events", **node(name="Failure")) == 0
    assert value(s, "puppet_transaction_completed", **node()) == 1
    assert [value(s, "puppet_status", **node(state=x)) for x in ("failed", "changed", "unchanged")] == [
        0,
        1,
        0,
    ]
    assert value(s, "puppet_cache_catalog_status", **node(state="not_used")) == 1
    assert value(s, "puppet_cache_catalog_status", **node(state="on_failure")) == 0
    assert value(s, "reportd_node_status", **node(state="intentional")) == 1
    assert value(s, "reportd_node_stale", **node()) == 0
    assert time.time() - 60 < value(s, "puppet_report", **node()) <= time.time()
    assert value(s, "reportd_reports_received_total", format="puppet", outcome="accepted") == 1
    assert value(s, "reportd_ingest_duration_seconds_count") == 1
    assert value(s, "reportd_report_bytes_sum") == size
    assert value(s, "reportd_store_reports") == 1


async def test_noop_and_failed_catalog(client):
    await put(client, "agent-noop.json", host="noop.example.test")
    await put(client, "agent-catalog-failure.json", host="broken.example.test")
    await wait_until(lambda: drained(client))
    s = await scrape(client)
    noop, broken = node("noop.example.test"), node("broken.example.test")
    assert value(s, "reportd_node_status", **noop, state="noop_pending") == 1
    assert value(s, "puppet_status", **noop, state="unchanged") == 1
    assert value(s, "puppet_report_events", **noop, name="Noop") == 6
    assert value(s, "puppet_status", **broken, state="failed") == 1
    assert value(s, "puppet_transaction_completed", **broken) == 0
    assert value(s, "reportd_node_status", **broken, state="failed") == 1


async def test_foreman_and_chef_nodes_get_series_too(client):
    response = await client.post("/api/config_reports", json={"config_report": {
        "host": "web09.example.com", "reported_at": "2026-11-23 10:00:00 UTC",
        "status": {"applied": 2, "failed": 1}, "metrics": {"time": {"total": 4.5}}, "logs": []}})  # fmt: skip
    assert response.status == 201
    response = await client.post("/data-collector/v0/", json={
        "message_type": "run_converge", "node_name": "chef09.example.com", "run_id": str(uuid.uuid4()),
        "status": "success", "start_time": "2026-11-23T10:00:00Z", "end_time": "2026-11-23T10:00:30Z",
        "resources": [{"type": "file", "name": "/a", "id": "/a", "status": "updated", "result": "create",
                       "duration": "10"}]})  # fmt: skip
    assert response.status == 200
    await wait_until(lambda: drained(client))
    s = await scrape(client)
    foreman = node("web09.example.com", env="")
    assert value(s, "puppet_status", **foreman, state="failed") == 1
    assert value(s, "puppet_report_resources", **foreman, name="Changed") == 2
    assert value(s, "puppet_report_time", **foreman, name="Total") == 4.5
    chef = node("chef09.example.com", env="")
    assert value(s, "puppet_status", **chef, state="changed") == 1
    assert value(s, "puppet_report_time", **chef, name="Total") == 30
    assert value(s, "puppet_report_time", **chef, name="File") == pytest.approx(0.01)
    assert value(s, "reportd_reports_received_total", format="foreman", outcome="accepted") == 1
    assert value(s, "reportd_reports_received_total", format="chef", outcome="accepted") == 1


async def test_label_values_are_escaped(client):
    evil = 'web"01\\x.example.com'
    response = await client.post("/api/config_reports", json={"config_report": {
        "host": evil, "reported_at": "2026-11-23 10:00:00 UTC", "status": {}, "metrics": {}, "logs": []}})  # fmt: skip
    assert response.status == 201
    await wait_until(lambda: drained(client))
    s = await scrape(client)  # the parser would choke on an unescaped quote
    assert value(s, "puppet_status", **node(evil, env=""), state="unchanged") == 1


async def test_rejections_and_queue_series(client):
    response = await client.put(f"/puppet/v3/report/{HOST}?environment=production", data=b"{",
                                headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status == 400
    s = await scrape(client)
    assert value(s, "reportd_rejected_total", reason="parse") == 1
    for processor in ("store", "metrics"):
        assert value(s, "reportd_processor_queue_depth", processor=processor) == 0
        assert value(s, "reportd_processor_dead_letters", processor=processor) == 0


async def test_late_older_report_keeps_the_newer_figures(client):
    await put(client, "agent-changes.json", time="2026-11-23T12:00:00+00:00")
    await put(client, "agent-catalog-failure.json", time="2026-11-23T11:00:00+00:00")
    await wait_until(lambda: drained(client))
    s = await scrape(client)
    assert value(s, "puppet_status", **node(state="changed")) == 1


async def test_categories_stale_ttl_and_token(aiohttp_client, make_app):
    plugins = "[plugin:metrics]\ncategories = resources\nstale_ttl = 1s\ntoken = s3cret\n"
    client = await aiohttp_client(
        make_app("anonymous_networks =\n", processors="store, metrics", plugins=plugins)
    )
    assert (await client.get("/metrics")).status == 403
    auth = {"Authorization": "Bearer s3cret"}
    response = await client.put(f"/puppet/v3/report/{HOST}?environment=production", data=sample("agent-changes.json"),
                                headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status == 403  # no anonymous uploads here; send as a token holder instead
    from reportd.appkeys import STORAGE
    from reportd.auth import hash_token

    await client.app[STORAGE].create_token("up", hash_token("rpd_up"), ["upload_config_reports"], 0)
    response = await client.put(f"/puppet/v3/report/{HOST}?environment=production", data=sample("agent-changes.json"),
                                headers={"Content-Type": "application/json", "Authorization": "Bearer rpd_up"})  # fmt: skip
    assert response.status == 200

    async def has_node():
        return value(await scrape(client, **auth), "puppet_report_resources", **node(name="Changed")) == 6

    await wait_until(has_node)
    s = await scrape(client, **auth)
    assert not any(name == "puppet_report_time" for name, _ in s)
    await asyncio.sleep(1.1)  # past stale_ttl: the node's series are dropped
    s = await scrape(client, **auth)
    assert value(s, "puppet_report_resources", **node(name="Changed")) is None


async def test_scraping_is_a_read_that_needs_view_reports(aiohttp_client, make_app):
    from reportd.appkeys import STORAGE
    from reportd.auth import hash_token

    client = await aiohttp_client(make_app("anonymous_networks =\n", processors="store, metrics"))
    storage = client.app[STORAGE]
    await storage.create_token("viewer", hash_token("rpd_viewer"), ["view_reports"], time.time())
    await storage.create_token("up", hash_token("rpd_up"), ["upload_config_reports"], time.time())
    response = await client.put(f"/puppet/v3/report/{HOST}?environment=production", data=sample("agent-changes.json"),
                                headers={"Content-Type": "application/json", "Authorization": "Bearer rpd_up"})  # fmt: skip
    assert response.status == 200
    for headers in ({}, {"Authorization": "Bearer rpd_up"}, {"Authorization": "Bearer rpd_nothing"}):
        response = await client.get("/metrics", headers=headers)
        assert response.status == 403, headers
        assert await response.json() == {
            "error": {"message": "Access denied", "details": {"missing_permissions": ["view_reports"]}}
        }
        assert HOST not in await response.text()

    async def listed() -> bool:
        return (
            value(
                await scrape(client, Authorization="Bearer rpd_viewer"),
                "puppet_status",
                **node(state="changed"),
            )
            == 1
        )

    await wait_until(listed)


async def test_the_scrape_token_is_compared_whole(aiohttp_client, make_app):
    from reportd.appkeys import STORAGE
    from reportd.auth import hash_token

    plugins = "[plugin:metrics]\ntoken = s3cret\n"
    client = await aiohttp_client(
        make_app("anonymous_networks =\n", processors="store, metrics", plugins=plugins)
    )
    for wrong in ("Bearer s3creT", "Bearer s3cre", "Bearer s3cretX", "s3cret", "Bearer ş3cret"):
        assert (await client.get("/metrics", headers={"Authorization": wrong})).status == 403, wrong
    await scrape(client, Authorization="Bearer s3cret")
    # an API token that may read reports scrapes too
    await client.app[STORAGE].create_token("viewer", hash_token("rpd_viewer"), ["view_reports"], time.time())
    await scrape(client, Authorization="Bearer rpd_viewer")


async def test_series_are_rebuilt_from_the_store_after_a_restart(daemon_factory, tmp_path):
    ini = ini_for(tmp_path / "data", processors="store, metrics")
    daemon = daemon_factory(ini).start()
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{daemon.url}/puppet/v3/report/{HOST}?environment=production",
                               data=sample("agent-changes.json"), headers={"Content-Type": "application/json"}) as r:  # fmt: skip
            assert r.status == 200

        async def stored():
            async with session.get(f"{daemon.url}/api/v1/nodes") as r:
                return (await r.json())["items"]

        await wait_until(stored)
        assert daemon.stop() == 0
        restarted = daemon_factory(ini, name="restarted").start()
        async with session.get(f"{restarted.url}/metrics") as r:
            text = await r.text()
        s = {(x.name, tuple(sorted(x.labels.items()))): x.value
             for f in text_string_to_metric_families(text) for x in f.samples}  # fmt: skip
        assert value(s, "puppet_report_resources", **node(name="Changed")) == 6
        assert value(s, "puppet_status", **node(state="changed")) == 1
        assert restarted.stop() == 0


async def test_a_renderer_process_that_dies_is_replaced(client):
    await put(client, "agent-changes.json")
    await wait_until(lambda: drained(client))
    assert value(await scrape(client), "puppet_report_resources", **node(), name="Total") == 13
    context = client.app[CONTEXT]
    worker = context.state["metrics"].worker
    for process in list(worker._processes.values()):  # the executor's own processes
        process.kill()
        await asyncio.to_thread(process.join, 10)
    await put(client, "agent-changes.json", host="later.example.test")
    await wait_until(lambda: drained(client))
    samples = await scrape(client)
    assert value(samples, "puppet_report_resources", **node("later.example.test"), name="Total") == 13
    assert context.state["metrics"].worker is not worker


# -- Prometheus conventions and the Grafana dashboard ------------------------------
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
}


def dashboard_series(dashboard: dict) -> set[str]:
    """The metric names the dashboard's queries select (functions, labels and keywords left out)."""
    names: set[str] = set()
    panels = [p for row in dashboard["panels"] for p in [row, *row.get("panels", [])]]
    for target in (t for p in panels for t in p.get("targets", ())):
        expr = re.sub(r"\{[^}]*\}", " ", target["expr"])  # label matchers
        expr = re.sub(r"\b(by|without)\s*\([^)]*\)", " ", expr)  # grouping labels
        expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
        for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
            following = expr[match.end() :].lstrip()[:1]
            if following != "(" and match.group() not in _PROMQL_WORDS:
                names.add(match.group())
    return names


async def test_the_grafana_dashboard_queries_only_series_reportd_exports(client):
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    assert dashboard["title"] == "reportd" and dashboard["panels"]
    await put(client, "agent-changes.json")
    await put(client, "agent-catalog-failure.json", host="broken.example.test")
    await wait_until(lambda: drained(client))
    exported = {name for name, _labels in await scrape(client)}
    wanted = dashboard_series(dashboard)
    assert len(wanted) >= 15
    assert wanted - exported == set()


async def test_scrapes_are_gzipped_when_asked_and_follow_the_conventions(client):
    await put(client, "agent-changes.json")
    await wait_until(lambda: drained(client))
    response = await client.get("/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert response.status == 200 and response.headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(await response.read()).decode()
    assert (
        'puppet_report_resources{environment="production",host="lab-agent.example.test",name="Total"}' in text
    )
    plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    samples = await scrape(client)
    assert value(samples, "reportd_build_info", version=__version__) == 1
    assert value(samples, "process_resident_memory_bytes") > 0
    assert not [name for name, _ in samples if name.endswith("_created")]
