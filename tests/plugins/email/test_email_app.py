"""The email plugin in the whole application: reports ingested over HTTP arrive by mail; the CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from reportd_plugins.email import plugin_state

from reportd.appkeys import CONTEXT, STORAGE
from reportd.auth import hash_token
from reportd.storage.schedules import Schedule
from reportd.storage.sqlite import SQLiteStorage
from tests.support import ini_for, wait_until
from tests.support.mail import ingest, parts, puppet_report, smtp_server  # noqa: F401


def email_section(controller, **extra) -> str:
    lines = [f"host = {controller.hostname}", f"port = {controller.port}", "poll_interval = 1h",
             "from = digests@reportd.example.test", *(f"{k} = {v}" for k, v in extra.items())]  # fmt: skip
    return "[plugin:email]\n" + "\n".join(lines) + "\n"


async def test_reports_ingested_over_http_arrive_in_a_once_digest(aiohttp_client, make_app, smtp_server):  # noqa: F811
    """A ``once`` schedule is sent at its creation, not at the next poll (an hour away here)."""
    controller, smtp = smtp_server
    app = make_app(plugins=email_section(controller))
    client = await aiohttp_client(app)
    now = datetime.now(UTC)
    failing = (("/etc/nginx/nginx.conf", "Could not evaluate: permission denied"),)
    for certname, status in (("web1.example.test", "failed"), ("web2.example.test", "changed")):
        body = puppet_report(
            certname, now - timedelta(hours=1), status=status, failed=failing if status == "failed" else ()
        )
        response = await client.put(f"/puppet/v3/report/{certname}?environment=production", data=body,
                                    headers={"Content-Type": "application/json"})  # fmt: skip
        assert response.status == 200, await response.text()

    async def stored():
        response = await client.get("/api/v1/reports")
        return len((await response.json())["items"]) == 2

    await wait_until(stored)
    await app[STORAGE].create_token("ops-lead", hash_token("s3cret"), ["edit_schedules"], time.time())
    attrs = {"name": "right now", "hosts": ["*.example.test"], "schedule": "once", "type": "generic",
             "send_to": ["ops@example.test"], "send_via": "email", "timezone": "Europe/Rome"}  # fmt: skip
    response = await client.post("/api/v1/reports/schedules", json={"attrs": attrs},
                                 headers={"Authorization": "Bearer s3cret"})  # fmt: skip
    assert response.status == 200
    schedule = (await response.json())["data"]["schedule"]
    assert schedule["scheduled_by"] == "ops-lead"

    async def delivered():
        return smtp.received

    (mail,) = await wait_until(delivered)
    assert mail.recipients == ["ops@example.test"]
    assert mail.message["From"] == "digests@reportd.example.test"
    assert mail.message["Subject"].startswith("[reportd] one-off report ")
    assert mail.message["Subject"].endswith("(Europe/Rome): 1 failed, 1 changed, 0 unchanged, 0 stale")
    text, html = parts(mail.message)
    assert "File[/etc/nginx/nginx.conf]: Could not evaluate: permission denied" in text
    assert "<td>web2.example.test</td><td>1</td><td>0</td><td>1</td>" in html

    async def marked():
        got = await app[STORAGE].get_schedule(schedule["id"])
        return got.end_timestamp is not None

    await wait_until(marked)
    metrics = await (await client.get("/metrics")).text()
    assert 'reportd_email_digests_total{outcome="sent"} 1.0' in metrics
    assert 'reportd_email_digests_total{outcome="failed"} 0.0' in metrics
    await plugin_state(app[CONTEXT]).scheduler.tick()  # the next poll: nothing more
    assert len(smtp.received) == 1
    assert plugin_state(app[CONTEXT]).task is not None


async def test_without_an_smtp_host_the_api_works_and_nothing_is_sent(aiohttp_client, make_app):
    app = make_app("", plugins="[plugin:email]\npoll_interval = 0.01s\n")
    client = await aiohttp_client(app)
    assert plugin_state(app[CONTEXT]).task is None
    await app[STORAGE].create_token("t", hash_token("tok"), ["edit_schedules", "view_schedules"], time.time())
    attrs = {"name": "n", "hosts": ["a"], "schedule": "once", "send_to": ["a@b.test"], "timezone": "UTC"}
    auth = {"Authorization": "Bearer tok"}
    response = await client.post("/api/v1/reports/schedules", json={"attrs": attrs}, headers=auth)
    assert response.status == 200
    schedule_id = (await response.json())["data"]["schedule"]["id"]
    state = plugin_state(app[CONTEXT])
    assert state.scheduler is None and state.soon == set()  # no poller, and the once run was not started
    assert await app[STORAGE].schedule_runs(schedule_id, 10) == []
    assert (await app[STORAGE].get_schedule(schedule_id)).end_timestamp is None


def test_dry_run_prints_the_digest_and_list_shows_errors(tmp_path):
    data = tmp_path / "data"
    ini = tmp_path / "reportd.ini"
    ini.write_text(ini_for(data))
    yesterday = datetime.now(UTC) - timedelta(days=1)

    async def seed() -> None:
        storage = SQLiteStorage(data / "reportd.sqlite3")
        await storage.open()
        await ingest(storage, puppet_report("db1.example.test", yesterday.replace(hour=12), status="failed",
                                            errors=("Could not retrieve catalog from remote server",)))  # fmt: skip
        await storage.create_schedule(Schedule(
            id="d1", name="db daily", hosts=("db*.example.test",), services=None, type="generic",
            schedule="daily", send_to=("dba@example.test",), send_via="email", timezone="UTC",
            scheduled_at=int(time.time() * 1e6), scheduled_by="alice",
        ))  # fmt: skip
        await storage.claim_schedule_run("d1", 0, 1, "me", time.time(), 60)
        await storage.fail_schedule_run("d1", 0, "SMTPConnectError: refused", time.time(), give_up=False)
        await storage.close()

    def reportd(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "reportd", "--config", str(ini), *args],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    empty = reportd("schedules", "list")
    assert empty.returncode == 0, empty.stderr
    assert (empty.stdout, empty.stderr) == (
        "",
        "no schedules (create one with POST /api/v1/reports/schedules)\n",
    )
    asyncio.run(seed())

    dry = reportd("schedules", "run", "d1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    day = yesterday.date().isoformat()
    assert (
        lines[0] == f"Subject: [reportd] daily report {day} (UTC): 1 failed, 0 changed, 0 unchanged, 0 stale"
    )
    assert "* db1.example.test: 1 of 1 runs failed" in lines
    assert "    - Could not retrieve catalog from remote server" in lines
    whole = reportd("schedules", "run", "d1", "--dry-run", "--html")
    assert "Content-Type: multipart/alternative" in whole.stdout and "<h1>daily report" in whole.stdout
    listing = reportd("schedules", "list")
    assert listing.returncode == 0
    header, row = listing.stdout.splitlines()
    assert header.split() == [
        "ID",
        "SCHEDULE",
        "TYPE",
        "TIMEZONE",
        "LAST",
        "RUN",
        "NAME",
        "SEND",
        "TO",
        "LAST",
        "ERROR",
    ]
    assert row.startswith("d1  daily") and row.endswith("  SMTPConnectError: refused")
    runs = reportd("schedules", "runs", "d1")
    assert runs.stdout.splitlines()[0].split() == ["PERIOD", "START", "PERIOD", "END", "STATE", "ATTEMPTS",
                                                   "LAST", "ERROR"]  # fmt: skip
    assert runs.stdout.splitlines()[1].endswith("SMTPConnectError: refused")
    assert reportd("schedules", "runs", "nope").stderr == "Error: no schedule nope\n"
    unknown = reportd("schedules", "run", "nope", "--dry-run")
    assert unknown.returncode == 1 and "no schedule nope" in unknown.stderr
    send = reportd("schedules", "run", "d1")
    assert send.returncode == 1 and "[plugin:email] host is not set" in send.stderr
