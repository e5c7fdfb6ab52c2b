"""structlog setup: JSON lines when not on a terminal, key=value on one; floods of warnings held back."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import structlog

# Each kind of warning or error (see similarity_key) is written at most this often...
BURST = 10
# ...per this many seconds; what is held back is counted in one line when the interval ends.
INTERVAL = 10.0
SUMMARY_EVENT = "log_messages_suppressed"


def configure_logging(
    level: str = "info", fmt: str = "auto", *, burst: int = BURST, interval: float = INTERVAL
) -> None:
    """Route structlog and the stdlib (aiohttp's and asyncio's loggers) through one stdout handler."""
    if fmt == "auto":
        fmt = "console" if sys.stdout.isatty() else "json"
    shared = [
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
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = RateLimitedHandler(sys.stdout, burst=burst, interval=interval)
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


def report_suppressed_logs() -> None:
    """Write the summary line of every kind of message whose interval has ended."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, RateLimitedHandler):
            handler.report_suppressed()


def similarity_key(record: logging.LogRecord) -> tuple[Any, ...]:
    """What makes two records "the same message" for rate limiting.

    A structlog event: its logger, level, event name and its ``message`` field if
    it has one (the event loop's errors, whose message says what failed). A stdlib
    record (aiohttp, asyncio): its logger, level and format string before its
    arguments are filled in, so "Error handling request from %s" is one kind
    whatever the address.
    """
    msg = record.msg
    if isinstance(msg, dict):  # structlog's event dict, through ProcessorFormatter.wrap_for_formatter
        message = msg.get("message")
        return (record.name, record.levelno, msg.get("event"), message if isinstance(message, str) else None)
    return (record.name, record.levelno, str(msg), None)


@dataclass
class _Window:
    started: float
    passed: int = 0
    suppressed: int = 0


class RateLimitedHandler(logging.StreamHandler):
    """A stream handler that writes each kind of warning or error ``burst`` times per ``interval``.

    One misbehaving client, or the event loop failing the same way in a tight loop,
    otherwise writes thousands of identical lines a second: measured, 157 MB of
    "socket.accept() out of system resource" in 31 s. Records below WARNING pass
    untouched (``report_accepted`` is one line per report, on purpose). A held-back
    kind gets one ``log_messages_suppressed`` line, with the count, when its interval
    ends: on its next record, from :func:`report_suppressed_logs`, or at exit.
    """

    def __init__(
        self,
        stream: IO[str],
        *,
        burst: int = BURST,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(stream)
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self._windows: dict[tuple[Any, ...], _Window] = {}
        # Not Handler.lock: the summaries are written through the logging machinery,
        # which takes that one.
        self._windows_lock = threading.Lock()

    def handle(self, record: logging.LogRecord) -> logging.LogRecord | bool:
        if record.levelno < logging.WARNING or _is_summary(record):
            return super().handle(record)
        key = similarity_key(record)
        now = self.clock()
        ended = None
        with self._windows_lock:
            window = self._windows.get(key)
            if window is None or now - window.started >= self.interval:
                if window is not None and window.suppressed:
                    ended = (key, window.suppressed)
                window = self._windows[key] = _Window(now)
            window.passed += 1
            allowed = window.passed <= self.burst
            if not allowed:
                window.suppressed += 1
        if ended is not None:
            self._write_summary(*ended)
        return super().handle(record) if allowed else False

    def report_suppressed(self) -> None:
        """Summaries of the kinds whose interval has ended; forgets those windows."""
        now = self.clock()
        with self._windows_lock:
            ended = [
                (key, window.suppressed)
                for key, window in self._windows.items()
                if now - window.started >= self.interval
            ]
            for key, _ in ended:
                del self._windows[key]
        for key, suppressed in ended:
            if suppressed:
                self._write_summary(key, suppressed)

    def close(self) -> None:
        # logging.shutdown() closes handlers at exit: the last counts are not lost.
        with self._windows_lock:
            pending = [(key, w.suppressed) for key, w in self._windows.items() if w.suppressed]
            self._windows.clear()
        for key, suppressed in pending:
            self._write_summary(key, suppressed)
        super().close()

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


def _is_summary(record: logging.LogRecord) -> bool:
    return isinstance(record.msg, dict) and record.msg.get("event") == SUMMARY_EVENT
