"""Absolute URLs in answers: base_url, else a trusted proxy's word, else the listener's own address.

A client's ``Host`` and ``X-Forwarded-*`` must not put another name into the links
(reportd.web.public_base_url): the store's API, the jobs API and Chef's run URI.
"""

from __future__ import annotations

import uuid

import orjson
import pytest

from tests.support import SAMPLE_CERTNAME, sample, wait_until

EVIL = {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}
PROXIED = {
    "Host": "reportd.example.com",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "public.example.com",
}
CHEF = {"Content-Type": "application/json", "X-Ops-Reporting-Protocol-Version": "0.1.0"}


async def fill(client) -> None:
    """Two reports of two nodes, stored."""
    for host in (SAMPLE_CERTNAME, "other.example.test"):
        body = orjson.loads(sample("agent-changes.json"))
        body.update(host=host, transaction_uuid=str(uuid.uuid4()))
        response = await client.put(
            f"/puppet/v3/report/{host}?environment=production",
            data=orjson.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        assert response.status == 200

    async def stored():
        response = await client.get("/api/v1/nodes")
        return len((await response.json())["items"]) == 2

    await wait_until(stored)


async def links(client, headers: dict[str, str]) -> list[str]:
    """Every absolute URL the store's API and Chef's run start answer with, asked with ``headers``."""
    urls = []
    reports = await (await client.get("/api/v1/reports?limit=1", headers=headers)).json()
    urls += [reports["next"], reports["items"][0]["url"]]
    report = await (await client.get(f"/api/v1/reports/{reports['items'][0]['id']}", headers=headers)).json()
    urls.append(report["url"])
    nodes = await (await client.get("/api/v1/nodes?limit=1", headers=headers)).json()
    urls += [nodes["next"], nodes["items"][0]["report_url"]]
    node = await (await client.get(f"/api/v1/nodes/{SAMPLE_CERTNAME}", headers=headers)).json()
    urls.append(node["report_url"])
    run_id = str(uuid.uuid4())
    start = {"action": "start", "run_id": run_id, "start_time": "2026-11-23 10:00:00 +0000"}
    response = await client.post(
        f"/organizations/acme/reports/nodes/{SAMPLE_CERTNAME}/runs",
        data=orjson.dumps(start),
        headers={**CHEF, **headers},
    )
    assert response.status == 201, await response.text()
    urls.append((await response.json())["uri"])
    assert all(urls), urls
    return urls


@pytest.mark.parametrize(
    ("extra", "headers", "base"),
    [
        # nobody trusted: the address and scheme the request came in on
        ("", EVIL, "http://127.0.0.1:{port}"),
        ("trusted_proxies = 10.0.0.0/8\n", EVIL, "http://127.0.0.1:{port}"),
        # base_url always wins
        ("base_url = https://reportd.example.com:8141/\n", EVIL, "https://reportd.example.com:8141"),
        (
            "base_url = https://reportd.example.com/\ntrusted_proxies = 127.0.0.1\n",
            PROXIED,
            "https://reportd.example.com",
        ),
        # a trusted proxy's word: X-Forwarded-*, else its Host
        ("trusted_proxies = 127.0.0.1, 10.1.2.3\n", PROXIED, "https://public.example.com"),
        (
            "trusted_proxies = 127.0.0.0/8\n",
            {"Host": "proxy.example.com:8443"},
            "http://proxy.example.com:8443",
        ),
        # ... but not a name that is not a host name
        (
            "trusted_proxies = 127.0.0.0/8\n",
            {"X-Forwarded-Host": "evil.example/x?"},
            "http://127.0.0.1:{port}",
        ),
    ],
)
async def test_links_name_reportd_as_configured(aiohttp_client, make_app, extra, headers, base):
    client = await aiohttp_client(make_app(extra))
    await fill(client)
    base = base.format(port=client.port)
    urls = await links(client, headers)
    assert all(url.startswith(base + "/") for url in urls), (base, urls)
    assert urls[0] == f"{base}/api/v1/reports?limit=1&cursor={urls[0].rsplit('cursor=', 1)[1]}"
    assert urls[3] == f"{base}/api/v1/nodes?limit=1&cursor={SAMPLE_CERTNAME}"
    # the next page is where it says
    following = urls[0].removeprefix(base)
    response = await client.get(following)
    assert response.status == 200 and len((await response.json())["items"]) == 1
