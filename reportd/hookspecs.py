"""Hook specifications: the reportd plugin API.

A plugin is a module (or any object) with functions decorated by
``reportd.hookimpl`` and named after the hooks below. reportd finds plugins in
three places: its built-ins (``reportd_plugins.*``), installed packages that
declare an entry point in the ``reportd`` group, and ``*.py`` files in the
``[reportd] plugin_paths`` directories. Hooks may be implemented by any subset
of plugins; pluggy calls the implementations last-registered first.

Hooks documented as "may return an awaitable" can be ``async def``; reportd
awaits the result. All others must be plain functions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click
    from aiohttp import web

    from reportd.context import PluginContext
    from reportd.jobs import JobRun
    from reportd.processor import Processor
    from reportd.settings import Setting

hookspec = pluggy.HookspecMarker("reportd")
hookimpl = pluggy.HookimplMarker("reportd")


@hookspec
def reportd_declare_settings() -> Mapping[str, Mapping[str, Setting]] | None:
    """Declare the INI sections this plugin reads, so reportd can validate them.

    Called when the configuration is checked, at ``reportd serve`` and
    ``reportd check-config``, before anything starts. Return
    ``{"NAME": {"key": Setting(default, parser, help)}}`` for each
    ``[plugin:NAME]`` section the plugin owns. reportd rejects undeclared keys
    and values the parser refuses (with file, section and key), and hands the
    parsed values to the plugin as ``context.plugin_settings("NAME")``. A
    ``[plugin:NAME]`` section that no plugin declares is an error. Must not
    return an awaitable.
    """


@hookspec
def reportd_register_processors() -> Iterable[type[Processor]] | None:
    """Return the :class:`reportd.Processor` classes this plugin provides.

    Called once at start-up. Each class's ``name`` is what sysadmins list in
    ``[reportd] processors``; only listed processors are instantiated (with a
    :class:`reportd.PluginContext`) and receive reports. Two processors with
    the same name are an error. Must not return an awaitable.
    """


@hookspec
def reportd_add_routes(app: web.Application, context: PluginContext) -> None:
    """Add HTTP routes to the daemon's application.

    Called once while the application is built, before it serves. Use
    ``app.router.add_get(...)`` and friends; authenticate with
    ``await reportd.require_permission(request, "view_reports")``. Must not
    return an awaitable.

    :param app: the aiohttp application.
    :param context: the plugin context (configuration, storage, settings).
    """


@hookspec
def reportd_startup(context: PluginContext) -> Awaitable[None] | None:
    """Called once when the daemon starts, after storage opened, before it listens.

    Open what the plugin needs for its whole life here (background tasks,
    connection pools). May return an awaitable. An exception aborts start-up.

    :param context: the plugin context (configuration, storage, settings).
    """


@hookspec
def reportd_shutdown(context: PluginContext) -> Awaitable[None] | None:
    """Called once at shutdown, after the listener closed and deliveries stopped.

    Release what :func:`reportd_startup` opened. May return an awaitable.
    Exceptions are logged and do not stop other plugins' shutdown.

    :param context: the plugin context (configuration, storage, settings).
    """


@hookspec(firstresult=True)
def reportd_start_job_run(context: PluginContext, job: JobRun, certname: str) -> Awaitable[None] | None:
    """Start Puppet on one node of a job (``POST /orchestrator/v1/command/deploy``).

    Called once per node of a deployed job, never for more than the job's
    ``concurrency`` nodes in flight (a node is in flight from this call until
    its report arrives, its run fails to start, or the job's timeout): with
    ``concurrency`` 10 and 100 nodes, the 11th call comes when a first node
    has reported. The run must carry the job's id so its report comes back to
    the job: ``puppet agent --onetime --no-daemonize --job_id {job.name}``
    (plus ``--noop`` when ``job.noop``, ``--environment`` when
    ``job.environment`` is set). Jobs created by a report (``puppet agent -t
    --job_id 81`` run by hand) and runs resumed after a restart of nodes already
    ``running`` are not started again.

    The first implementation that returns something other than None takes the
    node (pluggy ``firstresult``; last registered is asked first). Return None
    to decline: with no taker the node waits, ``ready``, for a report
    started some other way. To take it, return an awaitable (an ``async def``
    implementation always takes the node). reportd then marks the node
    ``running`` (event ``node_running``) and awaits it as a task of its own:
    finish when your part is over (the command exited, the run was queued);
    raise :class:`reportd.JobRunError` (or any exception) when the run
    could not start or failed without a report: the node becomes ``errored``
    with the exception's message, unless its report settled it first. Once
    the node's report has arrived its state is the report's, whatever the
    awaitable does. The task is cancelled at shutdown (clean up, e.g. kill your
    subprocess); the node then stays ``running`` until its report or the job's
    timeout. Must not block the event loop.

    :param context: the plugin context (configuration, storage, settings).
    :param job: the job (:class:`reportd.JobRun`): id, environment, noop,
        concurrency, timeout and deadline, owner, options as requested.
    :param certname: the node to run Puppet on.
    """


@hookspec
def reportd_register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``reportd`` command line (like datasette's ``register_commands``).

    Called when a command line names a command that is not built in, and for
    ``reportd --help``: after the top-level options (``--config``,
    ``--data-dir``) are parsed, since they decide which plugins load. Add
    commands with ``@cli.command()`` / ``@cli.group()`` or
    ``cli.add_command(...)``; each becomes ``reportd NAME``. A built-in command
    of the same name wins. Inside a command, ``reportd.plugin_context(ctx)``
    (with ``ctx = click.get_current_context()``) returns a
    :class:`reportd.PluginContext` with the configuration, every plugin's parsed
    settings and an **unopened** storage: ``await context.storage.open()`` and
    close it when done; ``reportd.run_with_context(job)`` does that around
    ``await job(context)``. Must not return an awaitable.

    :param cli: a :class:`click.Group` collecting this plugin's commands.
    """
