"""The ``command`` trigger: a real script per node submits its report to the daemon with the job id."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest
from reportd_plugins.command import render

from reportd.config import load_config_string
from reportd.jobs import JobRun
from reportd.plugin_manager import get_plugin_manager
from reportd.settings import ConfigError
from tests.support import TESTS, free_port, ini_for, wait_until
from tests.support.jobs import DEPLOYER, READER, Orchestrator, states

AGENT = TESTS / "support" / "jobs_agent.py"


def command_section(url: str, *extra_args: str, timeout: str = "20s") -> str:
    agent = f"{shlex.quote(sys.executable)} {shlex.quote(str(AGENT))}"
    args = " ".join(shlex.quote(a) for a in extra_args)
    return f"[plugin:command]\ncommand = {agent} {{certname}} {{job_id}} {url} {args}\ntimeout = {timeout}\n"


@pytest.fixture
def trigger_app(aiohttp_client, make_app):
    async def start(*extra_args: str, command_timeout: str = "20s") -> Orchestrator:
        port = free_port()
        plugins = command_section(f"http://127.0.0.1:{port}", *extra_args, timeout=command_timeout)
        client = await aiohttp_client(make_app(plugins=plugins), server_kwargs={"port": port})
        orchestrator = Orchestrator(client)
        await orchestrator.add_token(DEPLOYER, "deployer", "view_jobs", "edit_jobs")
        await orchestrator.add_token(READER, "reader", "view_jobs")
        return orchestrator

    return start


def max_overlap(log: Path) -> int:
    running, most = 0, 0
    moments = []
    for line in log.read_text().splitlines():
        what, _, at = line.split()
        moments.append((float(at), 0 if what == "end" else 1))
    for _, starts in sorted(moments):
        running += 1 if starts else -1
        most = max(most, running)
    return most


async def test_command_runs_each_node_within_the_concurrency(trigger_app, tmp_path):
    log = tmp_path / "runs.log"
    o = await trigger_app("--log", str(log), "--hold", "0.5")
    nodes = ["broken.example.test", "fail.example.test", "ok1.example.test", "ok2.example.test"]
    status, _ = await o.post(
        "/orchestrator/v1/command/deploy",
        {"environment": "production", "scope": {"nodes": nodes}, "concurrency": 2, "timeout": 30},
    )
    assert status == 202
    job = await o.wait_for_job(1, "failed", within=20)
    assert job["node_states"] == states(finished=2, failed=1, errored=1)
    assert max_overlap(log) == 2  # the concurrency was used, never exceeded
    assert len(log.read_text().splitlines()) == 8  # each node's command ran once

    _, listing = await o.get("/orchestrator/v1/jobs/1/nodes")
    by_name = {n["name"]: n for n in listing["items"]}
    broken = by_name["broken.example.test"]
    message = (
        "Error running puppet on broken.example.test: the command exited with status 3:\n"
        "ssh: connect to host broken.example.test port 22: Connection refused\n"
        "puppet agent did not run"
    )
    assert (broken["state"], broken["details"], broken["message"]) == (
        "errored",
        {"message": message},
        message,
    )
    assert broken["transaction_uuid"] is None and broken["result"] is None
    assert by_name["fail.example.test"]["state"] == "failed"
    for name in ("ok1.example.test", "ok2.example.test"):
        node = by_name[name]
        assert node["state"] == "finished"
        assert node["details"]["message"] == f"Finished puppet run on {name} - Success!"
        assert node["details"]["report-url"].startswith(f"{o.base}/api/v1/reports/")
        assert node["transaction_uuid"]

    _, events = await o.get("/orchestrator/v1/jobs/1/events")
    types = [(e["type"], e["details"]["node"]) for e in events["items"]]
    assert sorted(t for t in types if t[0] == "node_running") == [("node_running", n) for n in nodes]
    assert types[:2] == [("node_running", "broken.example.test"), ("node_running", "fail.example.test")]
    assert types[-1] == ("job_finished", None)
    running = events["items"][0]
    assert running["message"] == "Started puppet run on broken.example.test..."
    # ok2 started only once a slot was free: after the first node settled
    position = {t: i for i, t in enumerate(types)}
    assert position[("node_running", "ok2.example.test")] > position[("node_errored", "broken.example.test")]


async def test_stop_while_a_node_runs(trigger_app, tmp_path):
    gate = tmp_path / "gate"
    o = await trigger_app("--wait-for", str(gate))
    await o.post(
        "/orchestrator/v1/command/deploy",
        {
            "environment": "production",
            "scope": {"nodes": ["one.example.test", "two.example.test"]},
            "concurrency": 1,
        },
    )
    running = await o.wait_for_node(1, "one.example.test", "running")
    assert running["details"] == {"run-time": 0}
    assert running["message"] == "Started puppet run on one.example.test..."
    assert running["start_timestamp"] is not None and running["finish_timestamp"] is None

    status, body = await o.post("/orchestrator/v1/command/stop", {"job": "1"})
    assert status == 202
    assert body["job"]["state"] == "stopping"
    assert body["job"]["nodes"] == states(running=1, skipped=1)

    gate.touch()  # the running node's agent goes on and reports
    job = await o.wait_for_job(1, "stopped")
    assert job["node_states"] == states(finished=1, skipped=1)
    assert [s["state"] for s in job["status"]] == ["new", "ready", "running", "stopping", "stopped"]
    _, events = await o.get("/orchestrator/v1/jobs/1/events")
    assert [e["type"] for e in events["items"]] == [
        "node_running",
        "node_skipped",
        "node_finished",
        "job_aborted",
    ]


async def test_a_command_that_outlives_its_timeout_is_killed(trigger_app, tmp_path):
    o = await trigger_app("--wait-for", str(tmp_path / "never"), command_timeout="0.5s")
    await o.post(
        "/orchestrator/v1/command/deploy",
        {"environment": "production", "scope": {"nodes": ["slow.example.test"]}},
    )
    node = await o.wait_for_node(1, "slow.example.test", "errored")
    assert (
        node["message"]
        == "Error running puppet on slow.example.test: the command took longer than 0.5s (no output)"
    )
    assert (await o.job(1))["state"] == "failed"


async def test_a_huge_line_of_output_is_cut_not_fatal(trigger_app):
    o = await trigger_app("--noise", "300000")  # far over asyncio's 64 KiB line limit
    await o.post(
        "/orchestrator/v1/command/deploy",
        {"environment": "production", "scope": {"nodes": ["broken.example.test"]}},
    )
    node = await o.wait_for_node(1, "broken.example.test", "errored")
    assert node["message"] == (
        "Error running puppet on broken.example.test: the command exited with status 3:\n"
        f"{'x' * 1000}\n"
        "ssh: connect to host broken.example.test port 22: Connection refused\n"
        "puppet agent did not run"
    )


async def test_shutdown_kills_a_running_command(trigger_app, tmp_path):
    pid_file = tmp_path / "agent.pid"
    o = await trigger_app("--wait-for", str(tmp_path / "never"), "--pid-file", str(pid_file))
    await o.post(
        "/orchestrator/v1/command/deploy",
        {"environment": "production", "scope": {"nodes": ["stuck.example.test"]}},
    )
    await o.wait_for_node(1, "stuck.example.test", "running")

    async def written() -> str | None:
        return pid_file.read_text() if pid_file.exists() else None

    pid = int(await wait_until(written))
    await o.client.close()  # the app's cleanup cancels the run

    async def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    await wait_until(gone, within=5)


def test_values_are_shell_quoted():
    job = JobRun(81, "81", "prod env", True, None, None, None, None, "me")
    template = "ssh {certname} sudo puppet agent --onetime --no-daemonize --job_id {job_id} {noop_flag} -E {environment}"
    assert render(template, job, "x; touch /tmp/owned") == (
        "ssh 'x; touch /tmp/owned' sudo puppet agent --onetime --no-daemonize --job_id 81 --noop -E 'prod env'"
    )


def test_a_template_with_an_unknown_field_is_refused(tmp_path):
    from reportd.app import create_app

    config = load_config_string(
        ini_for(tmp_path, plugins="[plugin:command]\ncommand = ssh {host} puppet agent -t\n"), source="t.ini"
    )
    pm = get_plugin_manager(load_entrypoints=False, plugin_paths=config.plugin_paths)
    with pytest.raises(ConfigError, match=r"t\.ini: \[plugin:command\] command: unknown field \{host\}"):
        create_app(config, pm)


async def test_without_a_command_nodes_wait_for_their_reports(aiohttp_client, make_app):
    o = Orchestrator(await aiohttp_client(make_app()))
    await o.add_token(DEPLOYER, "deployer", "view_jobs", "edit_jobs")
    await o.add_token(READER, "reader", "view_jobs")
    await o.post(
        "/orchestrator/v1/command/deploy",
        {"environment": "production", "scope": {"nodes": ["w.example.test"]}},
    )

    async def waiting():
        _, body = await o.get("/orchestrator/v1/jobs/1/nodes", token=DEPLOYER)
        return body["items"][0]["state"] == "ready"

    await wait_until(waiting)
    await o.report("w.example.test", "1")
    assert (await o.wait_for_job(1, "finished"))["node_states"] == states(finished=1)


async def test_a_trigger_that_raises_right_away_errors_its_node_only(aiohttp_client, tmp_path):
    from reportd import hookimpl
    from tests.support.plugins import build

    class Trigger:
        @hookimpl
        def reportd_start_job_run(self, context, job, certname):
            if certname.startswith("raise"):
                raise RuntimeError(f"no route to {certname}")  # a plain function: raised at the call

            async def run():
                pass

            return run()

    o = Orchestrator(await aiohttp_client(build(tmp_path, Trigger(), processors="store")))
    await o.add_token(DEPLOYER, "deployer", "view_jobs", "edit_jobs")
    await o.add_token(READER, "reader", "view_jobs")
    await o.post(
        "/orchestrator/v1/command/deploy",
        {"environment": "production", "scope": {"nodes": ["raise.example.test", "z.example.test"]}},
    )
    node = await o.wait_for_node(1, "raise.example.test", "errored")
    assert node["message"] == "RuntimeError: no route to raise.example.test"
    await o.wait_for_node(1, "z.example.test", "running")  # the runner went on to the next node
