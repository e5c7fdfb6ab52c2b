"""Every key of the aiohttp application's state, typed: ``app[STORAGE]`` is a :class:`Storage`.

Only keys live here, so that any module can import them without importing what
they hold (the types are imported for the type checker alone).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from reportd.auth import Authenticator
    from reportd.config import Config
    from reportd.connections import ConnectionGuard
    from reportd.context import PluginContext
    from reportd.parsing import ByteBudget, ReportParser
    from reportd.pipeline import Pipeline
    from reportd.storage import Storage
    from reportd.telemetry import Telemetry

CONFIG: web.AppKey[Config] = web.AppKey("config")
STORAGE: web.AppKey[Storage] = web.AppKey("storage")
CONTEXT: web.AppKey[PluginContext] = web.AppKey("context")
PIPELINE: web.AppKey[Pipeline] = web.AppKey("pipeline")
AUTHENTICATOR: web.AppKey[Authenticator] = web.AppKey("authenticator")
TELEMETRY: web.AppKey[Telemetry] = web.AppKey("telemetry")
PARSER: web.AppKey[ReportParser] = web.AppKey("parser")
BODY_BUDGET: web.AppKey[ByteBudget] = web.AppKey("body_budget")
CONNECTIONS: web.AppKey[ConnectionGuard] = web.AppKey("connections")
