"""Log output as ``reportd serve`` writes it: tracebacks in both renderers, floods of warnings held back.

Each case runs in a process of its own: logging's and structlog's configuration is global.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import orjson
import pytest

PRELUDE = """
import asyncio, logging, sys, time
import structlog
from reportd.log import configure_logging, report_suppressed_logs
from reportd.serve import log_loop_exception
configure_logging("info", sys.argv[1], burst=int(sys.argv[2]), interval=float(sys.argv[3]))
log = structlog.get_logger("reportd.test")
aiohttp_server = logging.getLogger("aiohttp.server")
"""


def run(script: str, fmt: str = "json", burst: int = 10, interval: float = 10.0) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-c",
            PRELUDE + textwrap.dedent(script),
            fmt,
            str(burst),
            str(interval),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def json_lines(output: str) -> list[dict]:
    return [orjson.loads(line) for line in output.splitlines()]


RAISE_AND_LOG = """
def fail():
    return 1 / 0

try:
    fail()
except ZeroDivisionError as error:
    log.exception("structlog_exception", node="a")
    aiohttp_server.exception("Error handling request from %s", "192.0.2.7")
    aiohttp_server.error("Error with an exception object", exc_info=error)
"""


def test_json_renders_exc_info_as_a_traceback_from_structlog_and_from_the_stdlib():
    output = run(RAISE_AND_LOG, "json")
    assert "<traceback object" not in output
    lines = json_lines(output)
    assert [line["event"] for line in lines] == [
        "structlog_exception",
        "Error handling request from 192.0.2.7",
        "Error with an exception object",
    ]
    for line in lines:
        assert "exc_info" not in line, line
        assert line["exception"].startswith("Traceback (most recent call last):\n"), line
        assert ", in fail\n" in line["exception"]
        assert line["exception"].endswith("ZeroDivisionError: division by zero")
    assert lines[1]["logger"] == "aiohttp.server" and lines[1]["level"] == "error"


def test_console_renders_exc_info_as_a_traceback_from_structlog_and_from_the_stdlib():
    output = run(RAISE_AND_LOG, "console")
    assert "<traceback object" not in output
    assert output.count("Traceback (most recent call last):\n") == 3
    assert output.count("ZeroDivisionError: division by zero\n") == 3
    for event in (
        "structlog_exception",
        "Error handling request from 192.0.2.7",
        "Error with an exception object",
    ):
        line = next(line for line in output.splitlines() if event in line)
        assert "[error" in line, line


def test_a_request_aiohttp_refused_as_malformed_is_a_warning_without_a_traceback():
    output = run(
        """
from aiohttp.http_exceptions import BadHttpMessage
try:
    raise BadHttpMessage("Invalid header value char:\\n\\n  b'X-Probe: \\\\x00'")
except BadHttpMessage:
    aiohttp_server.exception("Error handling request from %s", "192.0.2.7")
try:
    fail = 1 / 0
except ZeroDivisionError:
    aiohttp_server.exception("Error handling request from %s", "192.0.2.8")
""",
        "json",
    )
    malformed, failed = json_lines(output)
    assert malformed == {
        "event": "Error handling request from 192.0.2.7: Invalid header value char:",
        "level": "warning",
        "logger": "aiohttp.server",
        "timestamp": malformed["timestamp"],
    }
    # reportd's own failures keep their level and traceback.
    assert failed["level"] == "error" and failed["exception"].endswith("ZeroDivisionError: division by zero")


FLOOD = """
loop = asyncio.new_event_loop()
loop.set_exception_handler(log_loop_exception)
for i in range(50):
    log.warning("upstream_down", attempt=i)
    aiohttp_server.error("Error handling request from %s", f"192.0.2.{i}")
    # What asyncio's accept loop reports when it is out of file descriptors.
    loop.call_exception_handler({
        "message": "socket.accept() out of system resource",
        "exception": OSError(24, "Too many open files"),
        "socket": f"<asyncio.TransportSocket fd={i}>",
    })
    if i < 20:
        loop.call_exception_handler({"message": "Task exception was never retrieved"})
    log.info("report_accepted", report_id=i)
loop.close()
time.sleep(0.6)
report_suppressed_logs()
log.warning("upstream_down", attempt="after")
"""


def test_repeated_warnings_errors_and_loop_errors_are_held_back_and_counted():
    lines = json_lines(run(FLOOD, "json", burst=3, interval=0.5))

    def kind(event: str, **fields) -> list[dict]:
        return [line for line in lines if line["event"] == event and fields.items() <= line.items()]

    assert [line["attempt"] for line in kind("upstream_down")] == [0, 1, 2, "after"]
    assert len(kind("Error handling request from 192.0.2.0")) == 1
    assert len([line for line in lines if line["event"].startswith("Error handling request")]) == 3
    accept_errors = kind("event_loop_error", message="socket.accept() out of system resource")
    assert len(accept_errors) == 3
    assert accept_errors[0]["exception"] == "OSError: [Errno 24] Too many open files"
    assert accept_errors[0]["socket"] == "'<asyncio.TransportSocket fd=0>'"
    assert len(kind("event_loop_error", message="Task exception was never retrieved")) == 3
    # Below warning nothing is held back: one line per report, on purpose.
    assert len(kind("report_accepted")) == 50

    summaries = {
        (line["logger"], line["similar_to"], line.get("similar_message")): line
        for line in kind("log_messages_suppressed")
    }
    assert set(summaries) == {
        ("reportd.test", "upstream_down", None),
        ("aiohttp.server", "Error handling request from %s", None),
        ("reportd.serve", "event_loop_error", "socket.accept() out of system resource"),
        ("reportd.serve", "event_loop_error", "Task exception was never retrieved"),
    }
    upstream = summaries["reportd.test", "upstream_down", None]
    assert upstream["message"] == "suppressed 47 similar messages"
    assert (upstream["suppressed"], upstream["level"], upstream["seconds"]) == (47, "warning", 0.5)
    assert summaries["aiohttp.server", "Error handling request from %s", None]["suppressed"] == 47
    assert (
        summaries["reportd.serve", "event_loop_error", "socket.accept() out of system resource"]["suppressed"]
        == 47
    )
    assert (
        summaries["reportd.serve", "event_loop_error", "Task exception was never retrieved"]["suppressed"]
        == 17
    )
    # The summary comes before the first message of the next interval.
    assert lines.index(upstream) < lines.index(kind("upstream_down", attempt="after")[0])


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_what_is_held_back_when_the_process_exits_is_still_counted(fmt):
    output = run("for i in range(20):\n    log.error('disk_full', i=i)\n", fmt, burst=3, interval=60.0)
    assert output.count("disk_full") == 3 + 1  # three, then the summary's similar_to
    assert output.splitlines()[-1].count("suppressed 17 similar messages") == 1


@pytest.mark.parametrize("journal", [True, False])
def test_under_journald_each_line_starts_with_its_syslog_priority(tmp_path, journal):
    # systemd hands the service a stream and names it in JOURNAL_STREAM (device:inode);
    # a stream redirected elsewhere (a file, a pipe to jq) must stay plain JSON.
    out = tmp_path / "stdout"
    with out.open("w") as stream:
        status = os.fstat(stream.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}" if journal else "0:1"}
        script = "log.debug('hidden'); log.info('started'); log.warning('slow'); log.error('broken')\n"
        subprocess.run(
            [sys.executable, "-c", PRELUDE + script, "json", "10", "10"],
            stdout=stream,
            env=env,
            check=True,
            timeout=60,
        )
    lines = out.read_text().splitlines()
    if journal:
        assert [line[:3] for line in lines] == ["<6>", "<4>", "<3>"]
        lines = [line[3:] for line in lines]
    assert [orjson.loads(line)["event"] for line in lines] == ["started", "slow", "broken"]
