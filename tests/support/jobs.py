"""What the jobs tests share: tokens, an orchestrator client over a real app, node-state counts."""

from __future__ import annotations

import json
import time

from reportd.appkeys import STORAGE
from reportd.auth import hash_token
from tests.support import wait_until
from tests.support.jobs_agent import make_report

DEPLOYER = "rpd_deployer-token"


READER = "rpd_reader-token"


def states(**counts: int) -> dict[str, int]:
    return {state: counts.get(state, 0) for state in ALL_STATES}


class Orchestrator:
    """A client of one app: tokens, orchestrator calls, agent reports."""

    def __init__(self, client) -> None:
        self.client = client
        self.base = f"http://127.0.0.1:{client.port}"
        self.reports: dict[str, str] = {}  # certname -> transaction_uuid of its last report

    async def add_token(self, token: str, name: str, *permissions: str) -> None:
        await self.client.app[STORAGE].create_token(name, hash_token(token), permissions, time.time())

    async def get(self, path: str, token: str | None = READER, **headers) -> tuple[int, dict]:
        if token:
            headers.setdefault("X-Authentication", token)
        response = await self.client.get(path, headers=headers)
        return response.status, await response.json()

    async def post(self, path: str, body, token: str | None = DEPLOYER, **headers) -> tuple[int, dict]:
        if token:
            headers.setdefault("X-Authentication", token)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = await self.client.post(
            path, data=data, headers={"Content-Type": "application/json", **headers}
        )
        return response.status, await response.json()

    async def report(self, certname: str, job_id: str | None, *, failed: bool = False) -> None:
        body = json.loads(make_report(certname, job_id or "", failed=failed))
        if job_id is None:
            del body["job_id"]
        self.reports[certname] = body["transaction_uuid"]
        response = await self.client.put(
            f"/puppet/v3/report/{certname}?environment=production",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert response.status == 200, await response.text()
        assert await response.json() == ["store"]  # the internal jobs consumer is not the agent's business

    async def report_id(self, certname: str) -> int:
        async def stored():
            response = await self.client.get(f"/api/v1/reports?certname={certname}")
            items = (await response.json())["items"]
            return items[0]["id"] if items else None

        return await wait_until(stored)

    async def job(self, job_id: int | str) -> dict:
        status, body = await self.get(f"/orchestrator/v1/jobs/{job_id}")
        assert status == 200, body
        return body

    async def wait_for_node(self, job_id, certname: str, state: str) -> dict:
        async def reached():
            _, body = await self.get(f"/orchestrator/v1/jobs/{job_id}/nodes")
            nodes = {item["name"]: item for item in body.get("items", ())}
            node = nodes.get(certname)
            return node if node and node["state"] == state else None

        return await wait_until(reached)

    async def wait_for_job(self, job_id, state: str, within: float = 10.0) -> dict:
        async def reached():
            status, job = await self.get(f"/orchestrator/v1/jobs/{job_id}")
            assert status in (200, 404), job
            return job if status == 200 and job["state"] == state else None

        return await wait_until(reached, within=within)


ALL_STATES = ("new", "ready", "running", "finished", "failed", "errored", "skipped")
