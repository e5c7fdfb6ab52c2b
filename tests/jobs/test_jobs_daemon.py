"""Jobs in a real ``reportd serve`` process: kill -9 in the middle of a job, timeouts applied on start."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from tests.support import ini_for, wait_until
from tests.support.jobs_agent import make_report

PERMISSIONS = "anonymous_permissions = upload_config_reports, view_reports, view_jobs, edit_jobs\n"
NODES = ["a.example.test", "b.example.test", "c.example.test"]


async def test_kill_9_mid_job_then_restart_applies_the_timeout(daemon_factory, tmp_path):
    daemon = daemon_factory(ini_for(tmp_path / "data", PERMISSIONS)).start()
    async with aiohttp.ClientSession(daemon.url) as http:
        async with http.post(
            "/orchestrator/v1/command/deploy",
            json={"environment": "production", "scope": {"nodes": NODES}, "timeout": 2},
        ) as response:
            assert response.status == 202
            assert (await response.json())["job"] == {
                "id": f"{daemon.url}/orchestrator/v1/jobs/1",
                "name": "1",
            }
        deployed = time.time()
        async with http.put(
            "/puppet/v3/report/a.example.test?environment=production",
            data=make_report("a.example.test", "1", failed=False),
            headers={"Content-Type": "application/json"},
        ) as response:
            assert response.status == 200
        # acknowledged, maybe not yet processed: the job delivery is spooled durably
        daemon.kill()

    # the job's deadline passes while reportd is down
    await asyncio.sleep(max(0.0, deployed + 2.2 - time.time()))
    daemon.log_path.rename(tmp_path / "before-kill.log")  # start() waits for a new "listening" line
    daemon.start()
    async with aiohttp.ClientSession(daemon.url) as http:

        async def nodes() -> dict[str, dict]:
            async with http.get("/orchestrator/v1/jobs/1/nodes") as response:
                assert response.status == 200
                return {n["name"]: n for n in (await response.json())["items"]}

        # applied before reportd listened again: the very first answer shows it
        first = await nodes()
        for name in ("b.example.test", "c.example.test"):
            assert first[name]["state"] == "errored"
            assert first[name]["message"] == (
                f"Puppet run on {name} timed out: no report within the job's timeout of 2 seconds"
            )

        async def a_finished():
            return (await nodes())["a.example.test"]["state"] == "finished"

        # a's report arrived in time, so it counts even if it was processed after the restart
        await wait_until(a_finished)
        async with http.get("/orchestrator/v1/jobs/1") as response:
            job = await response.json()
        assert job["state"] == "failed"
        assert {k: v for k, v in job["node_states"].items() if v} == {"finished": 1, "errored": 2}
        async with http.get("/orchestrator/v1/jobs/1/events") as response:
            events = (await response.json())["items"]
        assert [e["type"] for e in events].count("job_finished") == 1
        assert [int(e["id"]) for e in events] == sorted(int(e["id"]) for e in events)
    assert daemon.stop() == 0
    log = daemon.log_path.read_text()
    assert '"event": "job_timed_out"' in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(line.get("event") == "job_timed_out" and line.get("job_id") == 1 for line in lines)
