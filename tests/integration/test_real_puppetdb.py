"""Forwarding to a real PuppetDB (Debian's puppetdb 7.12): ``REPORTD_TEST_PUPPETDB_URL``, else a local one.

Start one with ``tests/integration/puppetdb.sh start`` (about 25 s): the tests find
it on 127.0.0.1:8080 (tests/support/peers.py), or set ``REPORTD_TEST_PUPPETDB_URL``.
"""

from __future__ import annotations

import uuid

import aiohttp
import orjson

from tests.support import sample, wait_until


async def query(session: aiohttp.ClientSession, puppetdb: str, ast: list) -> list[dict]:
    async with session.get(
        f"{puppetdb}/pdb/query/v4/reports", params={"query": orjson.dumps(ast).decode()}
    ) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_every_format_is_stored_by_a_real_puppetdb(aiohttp_client, make_app, puppetdb_url):
    run = uuid.uuid4().hex[:8]  # this run's own certnames: the PuppetDB may hold earlier runs
    plugins = f"[plugin:puppetdb]\nurls = {puppetdb_url}\nverify = true\nproducer = reportd.example.test\n"
    client = await aiohttp_client(make_app(processors="store, puppetdb", plugins=plugins))
    expected = {}
    for name in ("agent-changes.json", "agent-noop.json", "agent-catalog-failure.json"):
        data = orjson.loads(sample(name))
        host = f"{name.split('.')[0]}-{run}.example.test"
        data.update(host=host, transaction_uuid=str(uuid.uuid4()))
        response = await client.put(f"/puppet/v3/report/{host}?environment=production", data=orjson.dumps(data),
                                    headers={"Content-Type": "application/json"})  # fmt: skip
        assert response.status == 200
        expected[host] = data["status"]
    yaml_host = f"yaml-{run}.example.test"
    yaml_body = sample("http-processor-failure.yaml").replace(b"lab-agent.example.test", yaml_host.encode())
    response = await client.post(
        "/reports/upload", data=yaml_body, headers={"Content-Type": "application/x-yaml"}
    )
    assert response.status == 200
    expected[yaml_host] = "failed"
    foreman_host = f"foreman-{run}.example.test"
    response = await client.post("/api/config_reports", json={"config_report": {
        "host": foreman_host, "reported_at": "2026-11-23 10:00:00 UTC", "status": {"applied": 2},
        "metrics": {"time": {"total": 1.5}}, "logs": []}})  # fmt: skip
    assert response.status == 201
    expected[foreman_host] = "changed"
    chef_host, run_id = f"chef-{run}.example.test", str(uuid.uuid4())
    response = await client.post("/data-collector/v0/", json={
        "message_type": "run_converge", "node_name": chef_host, "run_id": run_id, "status": "success",
        "start_time": "2026-11-23T10:00:00Z", "end_time": "2026-11-23T10:00:30Z", "organization_name": "acme",
        "resources": [{"type": "file", "name": "/etc/motd", "id": "/etc/motd", "status": "updated",
                       "result": "create", "duration": "10", "before": {}, "after": {"mode": "0644"}}]})  # fmt: skip
    assert response.status == 200
    expected[chef_host] = "changed"

    async def delivered():
        queue = await (await client.get("/api/v1/queue")).json()
        return queue["processors"]["puppetdb"]["pending"] == 0 and queue

    queue = await wait_until(delivered, within=120)
    assert queue["processors"]["puppetdb"]["dead"] == 0  # verify=true: each was queried back
    async with aiohttp.ClientSession() as session:
        for host, status in expected.items():
            (stored,) = await query(session, puppetdb_url, ["=", "certname", host])
            assert stored["status"] == status, host
            assert stored["producer"] == "reportd.example.test"
        (chef,) = await query(session, puppetdb_url, ["=", "transaction_uuid", run_id])
        assert chef["certname"] == chef_host
