"""The scheduler with a real SMTP server (aiosmtpd) and a clock the tests move.

Digests' headers, recipients and both parts; a period sent once across polls,
restarts, downtime and two instances on one database; SMTP failures retried.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from reportd_plugins.email_digest import Digest, message
from reportd_plugins.email_periods import latest_period
from reportd_plugins.email_scheduler import EmailMetrics, Mailer, RetryPolicy, Scheduler, SMTPSettings

from reportd.storage.schedules import RUN_EMPTY, RUN_FAILED, RUN_PENDING, RUN_SENT
from tests.support import free_port
from tests.support.mail import (  # noqa: F401
    ROME,
    SID,
    ManualClock,
    a_schedule,
    ingest,
    local,
    micros,
    parts,
    puppet_report,
    smtp_server,
)


def make_scheduler(
    storage, controller, clock, *, owner="one", max_attempts=3, registry=None, port=None, settle=0.0
):
    settings = SMTPSettings(
        host=controller.hostname, port=port or controller.port, security="auto", user="", password_file=None,
        sender="reportd@reportd.example.test", timeout=5.0, ca_file=None,
    )  # fmt: skip
    return Scheduler(
        storage,
        Mailer(settings),
        clock=clock,
        retry=RetryPolicy(60.0, 600.0, max_attempts),
        metrics=EmailMetrics(registry or CollectorRegistry()),
        poll_interval=30.0,
        lease=600.0,
        settle=settle,
        owner=owner,
    )


async def last_report(storage, host: str) -> str:
    """How a digest shows when ``host``.web.example.test last reported (received: the real time)."""
    node = await storage.get_node(f"{host}.web.example.test")
    return datetime.fromtimestamp(node.last_received_at, UTC).astimezone(ROME).strftime("%Y-%m-%d %H:%M %Z")


async def seed_reports(storage) -> None:
    day = local(2026, 11, 22)
    failing = (("/etc/app.conf", "Could not write <app.conf>: No space left on device"),)
    for body in (
        puppet_report("a.web.example.test", day + timedelta(hours=3), status="failed", failed=failing,
                      errors=("Failed to apply catalog: 1 resource failed",)),
        puppet_report("a.web.example.test", day + timedelta(hours=9), status="changed"),
        puppet_report("a.web.example.test", day + timedelta(hours=21), status="failed", failed=failing),
        puppet_report("b.web.example.test", day + timedelta(hours=4), status="changed"),
        puppet_report("b.web.example.test", day + timedelta(hours=5)),
        puppet_report("c.web.example.test", day + timedelta(hours=6), noop_pending=True),
        puppet_report("db1.example.test", day + timedelta(hours=7), environment="staging"),
        puppet_report("mail.example.test", day + timedelta(hours=7), status="failed"),  # not named
        puppet_report("b.web.example.test", day - timedelta(minutes=1), status="failed"),  # the day before
        puppet_report("b.web.example.test", day + timedelta(days=1, minutes=1), status="failed"),  # after
        puppet_report("old.web.example.test", day - timedelta(days=2)),  # known, silent: stale
    ):  # fmt: skip
        await ingest(storage, body)


@pytest.fixture
async def storage(open_instances):
    return await open_instances()


async def test_the_daily_digest_arrives_with_headers_recipients_and_both_parts(storage, smtp_server):  # noqa: F811
    controller, smtp = smtp_server
    await seed_reports(storage)
    await storage.create_schedule(a_schedule())
    clock = ManualClock(local(2026, 11, 22, 23, 59, 59))
    scheduler = make_scheduler(storage, controller, clock)
    assert await scheduler.tick() == {}  # the day has not ended
    clock.set(local(2026, 11, 23, 0, 0, 30))
    assert await scheduler.tick() == {SID: "sent"}
    (mail,) = smtp.received
    assert mail.sender == "reportd@reportd.example.test"
    assert mail.recipients == ["ops@example.test", "lead@example.test"]
    assert not mail.encrypted  # auto, and this server offers no STARTTLS
    message = mail.message
    subject = "[reportd] daily report 2026-11-22 (Europe/Rome): 1 failed, 1 changed, 1 noop pending, 1 unchanged, 2 stale"
    assert message["Subject"] == subject
    assert message["From"] == "reportd@reportd.example.test"
    assert message["To"] == "ops@example.test, lead@example.test"
    assert message["Message-ID"].strip() == f"<{SID}.{micros(local(2026, 11, 22))}@reportd.example.test>"
    assert message["X-Reportd-Schedule"] == SID
    assert message["Date"] == "Sun, 22 Nov 2026 23:00:30 +0000"
    text, html = parts(message)
    lines = text.splitlines()
    assert lines[0] == subject.removeprefix("[reportd] ")
    assert "Schedule: web <nightly> (5f0c6a4e-2b1d-4c3e-9a8b-7d6e5f4a3b2c), generic" in lines
    assert "Period:   2026-11-22 00:00 CET to 2026-11-23 00:00 CET" in lines
    failed_at = lines.index("FAILED HOSTS")
    assert lines[failed_at + 1 : failed_at + 3] == [
        "* a.web.example.test: 2 of 3 runs failed",
        "    - File[/etc/app.conf]: Could not write <app.conf>: No space left on device",
    ]
    hosts_at = lines.index("HOSTS")
    rows = [line.split() for line in lines[hosts_at + 2 : hosts_at + 6]]
    # failed hosts first, then by name; runs, failed, changed, noop pending, last status and time
    assert rows == [
        ["a.web.example.test", "3", "2", "1", "0", "failed,", "2026-11-22", "21:00", "CET"],
        ["b.web.example.test", "2", "0", "1", "0", "unchanged,", "2026-11-22", "05:00", "CET"],
        ["c.web.example.test", "1", "0", "0", "1", "noop_pending,", "2026-11-22", "06:00", "CET"],
        ["db1.example.test", "1", "0", "0", "0", "unchanged,", "2026-11-22", "07:00", "CET"],
    ]
    assert "mail.example.test" not in text
    stale_at = lines.index("STALE HOSTS (sent nothing in this period)")
    assert lines[stale_at + 1].startswith("* ghost.example.test (last report: never)")
    assert lines[stale_at + 2] == f"* old.web.example.test (last report: {await last_report(storage, 'old')})"
    # the HTML says the same, escaped
    assert "<h1>daily report 2026-11-22 (Europe/Rome): 1 failed" in html
    assert "Schedule <b>web &lt;nightly&gt;</b>" in html
    assert (
        "<code>File[/etc/app.conf]</code>: Could not write &lt;app.conf&gt;: No space left on device" in html
    )
    assert "<app.conf>" not in html and "<nightly>" not in html
    assert "<tr><td>a.web.example.test</td><td>3</td><td>2</td><td>1</td><td>0</td><td>failed</td>" in html
    assert html.index("a.web.example.test") < html.index("b.web.example.test")
    assert "<li>ghost.example.test (last report: never)</li>" in html
    got = await storage.get_schedule(SID)
    assert got.start_timestamp == got.end_timestamp == micros(local(2026, 11, 23, 0, 0, 30))
    assert scheduler.metrics.digests.labels("sent")._value.get() == 1


async def test_services_filter_by_environment(storage, smtp_server):  # noqa: F811
    controller, smtp = smtp_server
    await seed_reports(storage)
    await storage.create_schedule(a_schedule(services=("staging",)))
    clock = ManualClock(local(2026, 11, 23, 0, 1))
    assert await make_scheduler(storage, controller, clock).tick() == {SID: "sent"}
    text, _ = parts(smtp.received[0].message)
    assert "db1.example.test" in text and "a.web.example.test" not in text and "old.web" not in text
    assert smtp.received[0].message["Subject"].endswith(": 0 failed, 0 changed, 1 unchanged, 1 stale")


async def test_a_period_is_sent_once_across_polls_and_restarts(open_instances, smtp_server):  # noqa: F811
    controller, smtp = smtp_server
    storage = await open_instances()
    await storage.create_schedule(a_schedule())
    clock = ManualClock(local(2026, 11, 23, 0, 0, 1))
    assert await make_scheduler(storage, controller, clock).tick() == {SID: "sent"}
    clock.advance(3600)
    assert await make_scheduler(storage, controller, clock).tick() == {}
    restarted = make_scheduler(await open_instances(), controller, clock, owner="after-restart")
    assert await restarted.tick() == {}
    assert len(smtp.received) == 1
    clock.set(local(2026, 11, 24, 0, 0, 1))
    assert await restarted.tick() == {SID: "sent"}
    assert [m.message["Subject"].split(" (")[0] for m in smtp.received] == [
        "[reportd] daily report 2026-11-22", "[reportd] daily report 2026-11-23",
    ]  # fmt: skip


async def test_downtime_gets_one_catch_up_for_the_latest_period(storage, smtp_server):  # noqa: F811
    controller, smtp = smtp_server
    await storage.create_schedule(a_schedule())
    clock = ManualClock(local(2026, 11, 23, 0, 0, 1))
    scheduler = make_scheduler(storage, controller, clock)
    assert await scheduler.tick() == {SID: "sent"}
    clock.set(local(2026, 11, 27, 8, 15))  # down from the 23rd to the 27th in the morning
    assert await scheduler.tick() == {SID: "sent"}
    assert await scheduler.tick() == {}
    labels = [m.message["Subject"].split(" (")[0] for m in smtp.received]
    assert labels == ["[reportd] daily report 2026-11-22", "[reportd] daily report 2026-11-26"]


async def test_a_dst_day_digest_covers_its_25_hours(storage, smtp_server):  # noqa: F811
    controller, smtp = smtp_server
    for at in (
        datetime(2026, 10, 24, 21, 59, tzinfo=UTC),  # 23:59 CEST, the day before
        datetime(2026, 10, 24, 22, 30, tzinfo=UTC),  # 00:30 CEST
        datetime(2026, 10, 25, 1, 30, tzinfo=UTC),  # 02:30 CET, the repeated hour
        datetime(2026, 10, 25, 22, 59, tzinfo=UTC),  # 23:59 CET
        datetime(2026, 10, 25, 23, 0, tzinfo=UTC),  # 00:00 CET, the day after
    ):
        await ingest(storage, puppet_report("a.web.example.test", at))
    await storage.create_schedule(
        a_schedule(hosts=("a.web.example.test",), scheduled_at=micros(local(2026, 10, 1)))
    )
    clock = ManualClock(datetime(2026, 10, 25, 23, 0, 1, tzinfo=UTC))
    assert await make_scheduler(storage, controller, clock).tick() == {SID: "sent"}
    message = smtp.received[0].message
    assert (
        message["Subject"]
        == "[reportd] daily report 2026-10-25 (Europe/Rome): 0 failed, 0 changed, 1 unchanged, 0 stale"
    )
    text, _ = parts(message)
    assert "Period:   2026-10-25 00:00 CEST to 2026-10-26 00:00 CET" in text
    row = next(line for line in text.splitlines() if line.startswith("a.web.example.test"))
    assert row.split()[1] == "3" and row.endswith("unchanged, 2026-10-25 23:59 CET")


async def test_failures_schedules_send_nothing_when_nothing_failed(storage, smtp_server):  # noqa: F811
    controller, smtp = smtp_server
    await seed_reports(storage)
    await storage.create_schedule(
        a_schedule(type="failures", hosts=("b.web.example.test", "c.web.example.test"))
    )
    clock = ManualClock(local(2026, 11, 23, 0, 1))
    scheduler = make_scheduler(storage, controller, clock)
    assert await scheduler.tick() == {SID: "empty"}
    assert smtp.received == []
    (run,) = await storage.schedule_runs(SID, 5)
    assert run.state == RUN_EMPTY
    assert (await storage.get_schedule(SID)).end_timestamp == micros(local(2026, 11, 23, 0, 1))
    assert await scheduler.tick() == {}
    # with a failed host: only the failed ones are listed
    await storage.update_schedule(SID, {"hosts": ["z.web.example.test", "c.web.example.test"]})
    clock.set(local(2026, 11, 23, 0, 2))
    await ingest(storage, puppet_report("z.web.example.test", local(2026, 11, 23, 0, 0, 30), status="failed"))
    clock.set(local(2026, 11, 24, 0, 1))
    assert await scheduler.tick() == {SID: "sent"}
    text, _ = parts(smtp.received[0].message)
    assert "z.web.example.test" in text and "c.web.example.test" not in text and "STALE" not in text
    assert "the run failed (no failed resource or error message reported)" in text


async def test_a_refused_send_is_retried_with_backoff_then_given_up(storage, smtp_server):  # noqa: F811
    controller, smtp = smtp_server
    await storage.create_schedule(a_schedule())
    clock = ManualClock(local(2026, 11, 23, 0, 0, 1))
    registry = CollectorRegistry()
    scheduler = make_scheduler(storage, controller, clock, max_attempts=4, registry=registry)
    smtp.refuse = "451 4.3.0 Mailbox temporarily unavailable"
    assert await scheduler.tick() == {SID: "failed"}
    (run,) = await storage.schedule_runs(SID, 5)
    assert (run.state, run.attempts, run.next_attempt_at) == (RUN_PENDING, 1, clock.now() + 60)
    assert "451" in run.last_error and "Mailbox temporarily unavailable" in run.last_error
    assert "451" in (await storage.get_schedule(SID)).last_error
    assert registry.get_sample_value("reportd_email_digests_total", {"outcome": "failed"}) == 1
    clock.advance(59)
    assert await scheduler.tick() == {}  # not yet
    clock.advance(1)
    assert await scheduler.tick() == {SID: "failed"}
    (run,) = await storage.schedule_runs(SID, 5)
    assert run.next_attempt_at == clock.now() + 120  # doubled
    clock.advance(120)
    smtp.refuse = None
    assert await scheduler.tick() == {SID: "sent"}
    assert len(smtp.received) == 1
    (run,) = await storage.schedule_runs(SID, 5)
    assert (run.state, run.attempts, run.last_error) == (RUN_SENT, 2, None)
    assert (await storage.get_schedule(SID)).last_error is None
    assert registry.get_sample_value("reportd_email_digests_total", {"outcome": "sent"}) == 1
    # the next day the server refuses every attempt: given up after max_attempts
    smtp.refuse = "554 5.7.1 Relay access denied"
    clock.set(local(2026, 11, 24, 0, 0, 1))
    outcomes = []
    for _ in range(6):
        outcomes.append((await scheduler.tick()).get(SID))
        clock.advance(600)
    assert outcomes == ["failed", "failed", "failed", "given_up", None, None]
    run = (await storage.schedule_runs(SID, 5))[0]
    assert (run.state, run.attempts) == (RUN_FAILED, 4)
    assert registry.get_sample_value("reportd_email_digests_total", {"outcome": "given_up"}) == 1


async def test_an_unreachable_server_is_a_failed_send(storage, smtp_server):  # noqa: F811
    controller, smtp = smtp_server
    await storage.create_schedule(a_schedule())
    clock = ManualClock(local(2026, 11, 23, 0, 0, 1))
    nobody_listens = make_scheduler(storage, controller, clock, port=free_port())
    assert await nobody_listens.tick() == {SID: "failed"}
    assert "SMTPConnect" in (await storage.get_schedule(SID)).last_error
    # the server is back (a daemon restarted with the right port): the retry is sent
    clock.advance(60)
    assert await make_scheduler(storage, controller, clock).tick() == {SID: "sent"}
    assert len(smtp.received) == 1


async def test_two_daemons_on_one_database_send_a_period_once(open_instances, smtp_server):  # noqa: F811
    controller, smtp = smtp_server
    one, two = await open_instances(), await open_instances()
    for n in range(4):
        await one.create_schedule(a_schedule(id=f"{SID[:-1]}{n}", name=f"s{n}"))
    clock = ManualClock(local(2026, 11, 23, 0, 0, 1))
    first, second = (
        make_scheduler(one, controller, clock, owner="one"),
        make_scheduler(two, controller, clock, owner="two"),
    )
    results = await asyncio.gather(first.tick(), second.tick(), first.tick(), second.tick())
    sent = [sid for outcome in results for sid, what in outcome.items() if what == "sent"]
    assert sorted(sent) == [f"{SID[:-1]}{n}" for n in range(4)]
    assert sorted(m.message["X-Reportd-Schedule"] for m in smtp.received) == sorted(sent)


async def test_a_claim_left_by_a_dead_daemon_is_taken_over_after_its_lease(open_instances, smtp_server):  # noqa: F811
    controller, smtp = smtp_server
    storage = await open_instances()
    await storage.create_schedule(a_schedule())
    clock = ManualClock(local(2026, 11, 23, 0, 0, 1))
    start, end = micros(local(2026, 11, 22)), micros(local(2026, 11, 23))
    # the dead one claimed the period and never got to send
    assert await storage.claim_schedule_run(SID, start, end, "dead", clock.now(), 600) is not None
    survivor = make_scheduler(await open_instances(), controller, clock, owner="survivor")
    assert await survivor.tick() == {}
    clock.advance(599)
    assert await survivor.tick() == {}
    clock.advance(2)
    assert await survivor.tick() == {SID: "sent"}
    assert len(smtp.received) == 1


async def test_once_runs_once_covering_the_day_before_creation(storage, smtp_server):  # noqa: F811
    controller, smtp = smtp_server
    created = local(2026, 11, 22, 15, 30)
    await ingest(
        storage, puppet_report("a.web.example.test", created - timedelta(hours=23), status="changed")
    )
    await ingest(
        storage, puppet_report("b.web.example.test", created - timedelta(hours=25), status="changed")
    )
    await storage.create_schedule(
        a_schedule(schedule="once", scheduled_at=micros(created), hosts=("*.web.example.test",))
    )
    clock = ManualClock(created + timedelta(seconds=5))
    scheduler = make_scheduler(storage, controller, clock)
    assert await scheduler.tick() == {SID: "sent"}
    clock.advance(86400 * 40)
    assert await scheduler.tick() == {}
    (mail,) = smtp.received
    assert mail.message["Subject"] == (
        "[reportd] one-off report 2026-11-22 15:30 (Europe/Rome): 0 failed, 1 changed, 0 unchanged, 1 stale"
    )


async def test_literal_certnames_are_read_alone_and_silent_ones_are_stale(storage, smtp_server):  # noqa: F811
    controller, smtp = smtp_server
    await seed_reports(storage)
    hosts = ("b.web.example.test", "old.web.example.test", "ghost.example.test", "b.web.example.test")
    await storage.create_schedule(a_schedule(hosts=hosts))
    clock = ManualClock(local(2026, 11, 23, 0, 1))
    assert await make_scheduler(storage, controller, clock).tick() == {SID: "sent"}
    message = smtp.received[0].message
    assert message["Subject"].endswith(": 0 failed, 1 changed, 0 unchanged, 2 stale")  # b: by its worst run
    text, _ = parts(message)
    row = next(line for line in text.splitlines() if line.startswith("b.web.example.test"))
    assert row.split()[1:5] == ["2", "0", "1", "0"]  # named twice, counted once
    stale = text.split("STALE HOSTS (sent nothing in this period)")[1].splitlines()
    assert stale[1] == "* ghost.example.test (last report: never)"
    assert stale[2] == f"* old.web.example.test (last report: {await last_report(storage, 'old')})"


async def test_a_shutdown_mid_send_gives_the_period_back(storage, smtp_server):  # noqa: F811
    """Cancelled while the server takes its time: the next daemon sends at once, not after the lease."""
    controller, smtp = smtp_server
    await storage.create_schedule(a_schedule())
    clock = ManualClock(local(2026, 11, 23, 0, 0, 1))
    entered, release = threading.Event(), threading.Event()
    accept = smtp.handle_DATA

    async def slow_data(server, session, envelope):
        entered.set()
        await asyncio.to_thread(release.wait, 10)  # the test runs in another thread and loop
        return "421 4.3.2 going away"

    smtp.handle_DATA = slow_data
    try:
        sending = asyncio.create_task(make_scheduler(storage, controller, clock, owner="stopping").tick())
        await asyncio.to_thread(entered.wait, 10)
        assert entered.is_set()
        sending.cancel()
        await asyncio.sleep(0)  # the cancellation is delivered while the server still holds DATA
        release.set()  # then the server answers, and aiosmtplib's QUIT on the way out is not kept waiting
        with pytest.raises(asyncio.CancelledError):
            await sending
    finally:
        release.set()
        smtp.handle_DATA = accept
    (run,) = await storage.schedule_runs(SID, 5)
    assert (run.state, run.attempts, run.lease_until) == (RUN_PENDING, 0, None)
    assert await make_scheduler(storage, controller, clock, owner="next").tick() == {SID: "sent"}
    assert len(smtp.received) == 1


def test_a_sender_with_a_display_name_gives_a_well_formed_message_id():
    schedule = a_schedule()
    period = latest_period("daily", "Europe/Rome", local(2026, 11, 23, 1), created=local(2026, 1, 1))
    mail = message(Digest(schedule, period, [], []), "Reportd <digests@ops.example.test>", 0.0)
    assert mail["From"] == "Reportd <digests@ops.example.test>"
    assert mail["Message-ID"] == f"<{SID}.{period.start_us}@ops.example.test>"


async def test_a_digest_waits_settle_for_the_last_runs_of_its_period(storage, smtp_server):  # noqa: F811
    controller, smtp = smtp_server
    await storage.create_schedule(a_schedule(hosts=("a.web.example.test",)))
    clock = ManualClock(local(2026, 11, 23, 0, 0, 30))
    scheduler = make_scheduler(storage, controller, clock, settle=60.0)
    assert await scheduler.tick() == {}  # the day has ended, its last report may still be coming
    # a run that ended at 23:59:50, stored 45 s after midnight
    await ingest(
        storage, puppet_report("a.web.example.test", local(2026, 11, 22, 23, 59, 50), status="failed")
    )
    clock.set(local(2026, 11, 23, 0, 1, 0, 1))
    assert await scheduler.tick() == {SID: "sent"}
    assert smtp.received[0].message["Subject"].endswith(": 1 failed, 0 changed, 0 unchanged, 0 stale")


async def test_once_does_not_wait_settle(storage, smtp_server):  # noqa: F811
    controller, smtp = smtp_server
    created = local(2026, 11, 22, 15, 30)
    await storage.create_schedule(a_schedule(schedule="once", scheduled_at=micros(created)))
    clock = ManualClock(created + timedelta(seconds=1))
    assert await make_scheduler(storage, controller, clock, settle=600.0).tick() == {SID: "sent"}
    assert len(smtp.received) == 1


async def test_one_broken_schedule_does_not_stop_the_others(storage, smtp_server):  # noqa: F811
    controller, smtp = smtp_server
    # a timezone gone from tzdata since the schedule was made
    await storage.create_schedule(a_schedule(id=f"{SID[:-1]}0", timezone="Mars/Olympus"))
    await storage.create_schedule(a_schedule())
    clock = ManualClock(local(2026, 11, 23, 0, 0, 1))
    assert await make_scheduler(storage, controller, clock).tick() == {SID: "sent"}
    assert [m.message["X-Reportd-Schedule"] for m in smtp.received] == [SID]
