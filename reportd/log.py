"""structlog setup: JSON lines when not on a terminal, key=value on one; floods of warnings held back."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import IO, Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError

# Each kind of warning or error (see RateLimiter) is written at most this often...
BURST = 10
# ...per this many seconds; what is held back is counted in one line when the interval ends.
INTERVAL = 10.0
SUMMARY_EVENT = "log_messages_suppressed"
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


def configure_logging(
    level: str = "info", fmt: str = "auto", *, burst: int = BURST, interval: float = INTERVAL
) -> None:
    """Route structlog and the stdlib (aiohttp's and asyncio's loggers) through one stdout handler."""
    if fmt == "auto":
        fmt = "console" if sys.stdout.isatty() else "json"
    limiter = RateLimiter(burst=burst, interval=interval)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            # Before the costly processors: a flood of one event costs little to drop.
            limiter.drop_held_back,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=LineWriter,
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    global _handler
    handler = _handler = RateLimitedHandler(sys.stdout, limiter, syslog_prefix=stream_is_journal(sys.stdout))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # A stdlib record's exc_info is a (type, value, traceback) tuple, which the JSON
            # renderer would write as reprs ("<traceback object at 0x...>"): render it as
            # text here, as the structlog chain above does for structlog's own events.
            foreign_pre_chain=[
                *shared,
                structlog.processors.StackInfoRenderer(),
                structlog.processors.format_exc_info,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestsAsWarnings) for f in server.filters):
        server.addFilter(MalformedRequestsAsWarnings())


def report_suppressed_logs() -> None:
    """Write the summary line of every kind of message whose interval has ended."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, RateLimitedHandler):
            handler.limiter.report()


@dataclass
class _Window:
    started: float
    passed: int = 0
    suppressed: int = 0


class RateLimiter:
    """Lets each kind of warning or error through ``burst`` times per ``interval``.

    One misbehaving client, or the event loop failing the same way in a tight loop,
    otherwise writes thousands of identical lines a second: measured, 111 MB of
    "socket.accept() out of system resource" in 30 s. Below WARNING nothing is held
    back (``report_accepted`` is one line per report, on purpose). A held-back kind
    gets one ``log_messages_suppressed`` line, with the count, when its interval
    ends: on its next message, from :func:`report_suppressed_logs`, or at exit.

    A kind is a logger, a level, and for a structlog event its name and its
    ``message`` field if it has one (the event loop's errors, whose message says
    what failed); for a stdlib record (aiohttp, asyncio) its format string before
    its arguments are filled in, so "Error handling request from %s" is one kind
    whatever the address.
    """

    def __init__(self, *, burst: int, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self._windows: dict[tuple[Any, ...], _Window] = {}
        # Records come from the SQLite writer's thread too.
        self._lock = threading.Lock()

    def allow(self, key: tuple[Any, ...]) -> bool:
        now = self.clock()
        ended = 0
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window.started >= self.interval:
                if window is not None:
                    ended = window.suppressed
                window = self._windows[key] = _Window(now)
            window.passed += 1
            allowed = window.passed <= self.burst
            if not allowed:
                window.suppressed += 1
        if ended:
            self._write_summary(key, ended)
        return allowed

    def drop_held_back(
        self, logger: logging.Logger, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """structlog processor: drops an event of a kind that is being held back."""
        level = _LEVELS.get(method_name, logging.INFO)
        event = event_dict.get("event")
        if level < logging.WARNING or event == SUMMARY_EVENT:
            return event_dict
        message = event_dict.get("message")
        key = (logger.name, level, event, message if isinstance(message, str) else None)
        if not self.allow(key):
            raise structlog.DropEvent
        return event_dict

    def report(self, *, everything: bool = False) -> None:
        """Summaries of the kinds whose interval has ended (``everything``: of all); forgets them."""
        now = self.clock()
        with self._lock:
            ended = [
                (key, window.suppressed)
                for key, window in self._windows.items()
                if everything or now - window.started >= self.interval
            ]
            for key, _ in ended:
                del self._windows[key]
        for key, suppressed in ended:
            if suppressed:
                self._write_summary(key, suppressed)

    def _write_summary(self, key: tuple[Any, ...], suppressed: int) -> None:
        name, level, similar_to, message = key
        fields: dict[str, Any] = {"similar_to": similar_to}
        if message is not None:
            fields["similar_message"] = message
        # Through structlog, so the line is rendered like any other event.
        structlog.get_logger(name).log(
            level,
            SUMMARY_EVENT,
            message=f"suppressed {suppressed} similar messages",
            suppressed=suppressed,
            seconds=self.interval,
            **fields,
        )


class MalformedRequestsAsWarnings(logging.Filter):
    """aiohttp's "Error handling request" for a request its parser refused: a warning
    naming what was wrong, without the traceback.

    A client that sends garbage (a bad header byte, an oversized line) is answered 400;
    the parser's stack says nothing about it, and an error with a traceback reads as
    reportd's own fault. Other errors keep their level and traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            if isinstance(record.args, tuple):
                detail = str(error.message or error).strip().splitlines()
                record.msg = f"{record.msg}: %s"
                record.args = (*record.args, detail[0] if detail else type(error).__name__)
            record.exc_info = record.exc_text = None
        return True


class LineWriter:
    """structlog's logger: writes an event rendered by the chain to the log's one handler.

    Not through a stdlib logger: its record, caller lookup and handler chain cost more
    than the event itself, and ingest writes one line per report. Levels are still
    the stdlib's (``filter_by_level`` asks :meth:`isEnabledFor`), and lines from
    stdlib loggers (aiohttp, asyncio) go to the same handler, under the same lock.
    """

    def __init__(self, name: str | None = None, *args: Any) -> None:
        self.name = name or "root"
        self._levels = logging.getLogger(name)

    @property
    def disabled(self) -> bool:
        return self._levels.disabled

    def isEnabledFor(self, level: int) -> bool:
        return self._levels.isEnabledFor(level)

    def getEffectiveLevel(self) -> int:
        return self._levels.getEffectiveLevel()

    def _write(self, levelno: int, line: str) -> None:
        handler = _handler
        if handler is None:
            sys.stderr.write(line + "\n")
        else:
            handler.write_line(levelno, line)

    def debug(self, line: str) -> None:
        self._write(logging.DEBUG, line)

    def info(self, line: str) -> None:
        self._write(logging.INFO, line)

    def warning(self, line: str) -> None:
        self._write(logging.WARNING, line)

    warn = warning

    def error(self, line: str) -> None:
        self._write(logging.ERROR, line)

    exception = error

    def critical(self, line: str) -> None:
        self._write(logging.CRITICAL, line)

    fatal = critical

    def msg(self, line: str) -> None:
        self._write(logging.INFO, line)


_handler: RateLimitedHandler | None = None


class RateLimitedHandler(logging.StreamHandler):
    """A stream handler whose stdlib records go through a :class:`RateLimiter`.

    structlog's events were limited in its processor chain already (their
    ``record.msg`` is the event dict).
    """

    def __init__(self, stream: IO[str], limiter: RateLimiter, *, syslog_prefix: bool = False) -> None:
        super().__init__(stream)
        self.limiter = limiter
        self.syslog_prefix = syslog_prefix

    def format(self, record: logging.LogRecord) -> str:
        return self._prefixed(record.levelno, super().format(record))

    def _prefixed(self, levelno: int, text: str) -> str:
        if self.syslog_prefix:
            # journald reads a leading <N> as the line's priority (SyslogLevelPrefix=, on by
            # default) and drops it from the message: `journalctl -p err` then finds errors.
            return f"<{syslog_priority(levelno)}>{text}"
        return text

    def write_line(self, levelno: int, text: str) -> None:
        """Write a line rendered already (a structlog event), as :meth:`emit` writes a record's."""
        line = self._prefixed(levelno, text) + self.terminator
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            try:
                self.stream.write(line)
                self.flush()
            except RecursionError:
                raise
            except Exception:
                self.handleError(None)  # type: ignore[arg-type]

    def handle(self, record: logging.LogRecord) -> bool:
        limited = record.levelno >= logging.WARNING and not isinstance(record.msg, dict)
        if limited and not self.limiter.allow((record.name, record.levelno, str(record.msg), None)):
            return False
        return super().handle(record)

    def close(self) -> None:
        # logging.shutdown() closes handlers at exit: the last counts are not lost.
        self.limiter.report(everything=True)
        super().close()


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level: err 3, warning 4, info 6, debug 7."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def stream_is_journal(stream: IO[str]) -> bool:
    """Whether ``stream`` is the journal's own stream (systemd sets JOURNAL_STREAM to its
    device:inode), not a file or pipe it was redirected to."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{status.st_dev}:{status.st_ino}"
