"""The ``command`` trigger: start each node's run of a deployed job with a shell command.

``[plugin:command] command`` is a template run by ``/bin/sh`` once per node of a
job, with the job's concurrency (reportd's ``reportd_start_job_run`` hook)::

    [plugin:command]
    command = ssh {certname} sudo puppet agent --onetime --no-daemonize --job_id {job_id} {noop_flag}

The fields are ``{certname}``, ``{job_id}``, ``{environment}`` and ``{noop_flag}``
(``--noop`` or ``--no-noop``); each value is shell-quoted, so a certname cannot
inject anything. The command also gets ``REPORTD_JOB_ID``, ``REPORTD_CERTNAME``
and ``REPORTD_ENVIRONMENT`` in its environment. The node's state comes from its
report; a command that exits non-zero (or outlives ``timeout``, or the job's own
deadline) makes the node ``errored`` with the last lines of its output, unless
the report arrived first. With ``command`` empty (the default) the plugin starts
nothing and nodes wait for reports from runs started some other way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shlex
import signal
import string
import time

import structlog

from reportd import JobRun, JobRunError, Setting, as_duration, as_positive_int, hookimpl

NAME = "command"
FIELDS = ("certname", "job_id", "environment", "noop_flag")
# After the command exits, how long its output pipe may stay open (a daemon it left behind).
OUTPUT_GRACE = 1.0
# A line of output longer than this is cut: the tail goes into the node's details.
MAX_LINE = 1000
# After SIGKILL at shutdown, how long to wait for the process to be reaped.
KILL_GRACE = 5.0

log = structlog.get_logger("reportd_plugins.command")


def as_template(value: str) -> str:
    """A command template using only :data:`FIELDS`; empty means no trigger."""
    value = value.strip()
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError as error:
        raise ValueError(f"not a valid template: {error}") from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in FIELDS or spec or conversion:
            raise ValueError(f"unknown field {{{field}}} (known: {', '.join('{' + f + '}' for f in FIELDS)})")
    return value


@hookimpl
def reportd_declare_settings():
    return {
        NAME: {
            "command": Setting("", as_template, "command run per node of a job; empty: none"),
            "timeout": Setting("1h", as_duration, "longest one node's command may run"),
            "output_lines": Setting("20", as_positive_int, "lines of output kept when it fails"),
        }
    }


def render(template: str, job: JobRun, certname: str) -> str:
    return template.format(
        certname=shlex.quote(certname),
        job_id=shlex.quote(job.name),
        environment=shlex.quote(job.environment or ""),
        noop_flag="--noop" if job.noop else "--no-noop",
    )


@hookimpl
def reportd_start_job_run(context, job: JobRun, certname: str):
    settings = context.plugin_settings(NAME)
    if not settings.get("command"):
        return None
    return run_command(settings, job, certname)


async def run_command(settings, job: JobRun, certname: str) -> None:
    command = render(settings["command"], job, certname)
    timeout = settings["timeout"]
    if job.deadline is not None:
        timeout = max(0.1, min(timeout, job.deadline - time.time()))
    env = {
        **os.environ,
        "REPORTD_JOB_ID": job.name,
        "REPORTD_CERTNAME": certname,
        "REPORTD_ENVIRONMENT": job.environment or "",
    }
    started = time.monotonic()
    process = await asyncio.create_subprocess_shell(
        command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its own process group: a timeout kills ssh and all it started
    )
    log.info("job_command_started", job_id=job.id, certname=certname, pid=process.pid, command=command)
    tail: collections.deque[str] = collections.deque(maxlen=settings["output_lines"])
    reader = asyncio.create_task(_read_lines(process.stdout, tail))
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        _kill_group(process)
        await process.wait()
        await _finish_reading(reader)
        message = f"Error running puppet on {certname}: the command took longer than {timeout:g}s"
        log.warning("job_command_timed_out", job_id=job.id, certname=certname, timeout=timeout)
        raise JobRunError(_with_output(message, tail)) from None
    except asyncio.CancelledError:
        # Shutdown: kill the whole group and reap it, so nothing outlives reportd unseen.
        _kill_group(process)
        reader.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), KILL_GRACE)
        raise
    await _finish_reading(reader)
    seconds = round(time.monotonic() - started, 3)
    if process.returncode != 0:
        log.warning(
            "job_command_failed", job_id=job.id, certname=certname, status=process.returncode, seconds=seconds
        )
        message = f"Error running puppet on {certname}: the command exited with status {process.returncode}"
        raise JobRunError(_with_output(message, tail))
    log.info("job_command_finished", job_id=job.id, certname=certname, seconds=seconds)


async def _read_lines(stream: asyncio.StreamReader | None, tail: collections.deque[str]) -> None:
    """Keep the last lines of the output, each cut at :data:`MAX_LINE` characters.

    Read in chunks, not with ``readline``: a line over the stream's 64 KiB limit
    would make ``readline`` raise, the pipe would fill and the command would hang.
    """
    if stream is None:
        return
    pending = b""
    while chunk := await stream.read(65536):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            tail.append(_line(line))
        pending = pending[: MAX_LINE * 4]  # a line without end: keep its start only
    if pending:
        tail.append(_line(pending))


def _line(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").rstrip()[:MAX_LINE]


async def _finish_reading(reader: asyncio.Task) -> None:
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(reader, OUTPUT_GRACE)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _with_output(message: str, tail: collections.deque[str]) -> str:
    lines = [line for line in tail if line]
    return message + (":\n" + "\n".join(lines) if lines else " (no output)")
