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
    from aiohttp import web

    from reportd.context import PluginContext
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
