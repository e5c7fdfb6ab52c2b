"""SMTP security: STARTTLS with AUTH from a password file, implicit TLS, an unverifiable certificate."""

from __future__ import annotations

import ssl

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from prometheus_client import CollectorRegistry
from reportd_plugins.email_scheduler import EmailMetrics, Mailer, RetryPolicy, Scheduler, SMTPSettings

from reportd.storage.sqlite import SQLiteStorage
from tests.support import free_port
from tests.support.mail import SID, ManualClock, SMTPRecorder, a_schedule, local, parts


@pytest.fixture
def ca(tmp_path):
    authority = trustme.CA()
    cert = authority.issue_cert("127.0.0.1")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    return server, ca_file


class Logins:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, server, session, envelope, mechanism, auth_data):
        assert isinstance(auth_data, LoginPassword)
        self.seen.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password == b"correct horse")


async def send_one(tmp_path, port: int, **smtp) -> tuple[str | None, SQLiteStorage]:
    storage = SQLiteStorage(tmp_path / "reportd.db")
    await storage.open()
    await storage.create_schedule(a_schedule())
    settings = dict(host="127.0.0.1", port=port, security="auto", user="", password_file=None,
                    sender="reportd@example.test", timeout=5.0, ca_file=None)  # fmt: skip
    settings.update(smtp)
    scheduler = Scheduler(
        storage, Mailer(SMTPSettings(**settings)), clock=ManualClock(local(2026, 11, 23, 0, 0, 1)),
        retry=RetryPolicy(60, 60, 3), metrics=EmailMetrics(CollectorRegistry()), poll_interval=30, lease=60,
    )  # fmt: skip
    outcome = (await scheduler.tick()).get(SID)
    return outcome, storage


async def test_starttls_with_auth_from_a_password_file(tmp_path, ca):
    server_context, ca_file = ca
    logins, recorder = Logins(), SMTPRecorder()
    controller = Controller(
        recorder, hostname="127.0.0.1", port=free_port(), tls_context=server_context, require_starttls=True,
        authenticator=logins, auth_require_tls=True,
    )  # fmt: skip
    controller.start()
    try:
        password = tmp_path / "smtp-password"
        password.write_text("correct horse\n")
        outcome, storage = await send_one(tmp_path, controller.port, security="starttls", user="reportd",
                                          password_file=password, ca_file=ca_file)  # fmt: skip
        assert outcome == "sent"
        assert logins.seen == [("reportd", "correct horse")]  # the file's newline is not the password's
        assert recorder.received[0].encrypted
        text, _ = parts(recorder.received[0].message)
        assert text.startswith("daily report 2026-11-22")
        await storage.close()
    finally:
        controller.stop()


async def test_starttls_refuses_a_certificate_it_cannot_verify(tmp_path, ca):
    server_context, _ = ca
    recorder = SMTPRecorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port(), tls_context=server_context)
    controller.start()
    try:
        outcome, storage = await send_one(tmp_path, controller.port, security="starttls")  # system CAs only
        assert outcome == "failed"
        assert "CERTIFICATE_VERIFY_FAILED" in (await storage.get_schedule(SID)).last_error
        assert recorder.received == []
        await storage.close()
        # auto is opportunistic: the same server, encrypted but unverified, takes the mail
        outcome, storage = await send_one(tmp_path / "auto", controller.port, security="auto")
        assert outcome == "sent" and len(recorder.received) == 1 and recorder.received[0].encrypted
        await storage.close()
    finally:
        controller.stop()


async def test_implicit_tls(tmp_path, ca):
    server_context, ca_file = ca
    recorder = SMTPRecorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port(), ssl_context=server_context)
    controller.start()
    try:
        outcome, storage = await send_one(tmp_path, controller.port, security="tls", ca_file=ca_file)
        assert outcome == "sent"
        assert recorder.received[0].recipients == ["ops@example.test", "lead@example.test"]
        assert recorder.received[0].encrypted
        await storage.close()
    finally:
        controller.stop()


async def test_auto_with_a_user_never_sends_the_password_in_clear(tmp_path):
    """auto is opportunistic, but not with a password: without STARTTLS there is no AUTH."""
    logins, recorder = Logins(), SMTPRecorder()
    controller = Controller(
        recorder, hostname="127.0.0.1", port=free_port(), authenticator=logins, auth_require_tls=False,
    )  # fmt: skip
    controller.start()
    try:
        password = tmp_path / "smtp-password"
        password.write_text("correct horse\n")
        outcome, storage = await send_one(tmp_path, controller.port, security="auto", user="reportd",
                                          password_file=password)  # fmt: skip
        assert outcome == "failed"
        assert "STARTTLS" in (await storage.get_schedule(SID)).last_error
        assert logins.seen == [] and recorder.received == []
        await storage.close()
    finally:
        controller.stop()
