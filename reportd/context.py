"""What a plugin is given: the configuration, its settings and the storage."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from reportd.parsing import rebuild_off_loop

T = TypeVar("T")

if TYPE_CHECKING:
    from reportd.config import Config
    from reportd.formats import Envelope
    from reportd.model import Report
    from reportd.parsing import ReportParser
    from reportd.storage import Storage
    from reportd.telemetry import Telemetry


@dataclass
class PluginContext:
    """Handed to processors, route hooks and lifecycle hooks.

    :ivar config: the daemon's :class:`reportd.config.Config`.
    :ivar storage: the open :class:`reportd.storage.Storage`.
    :ivar settings: each plugin section's parsed values, by plugin name.
    :ivar processors: names of the enabled processors, in order.
    :ivar telemetry: the daemon's Prometheus registry and counters
        (:class:`reportd.telemetry.Telemetry`); a plugin may register its own collectors.
    :ivar state: objects a plugin shares between its hooks and its processors for
        the life of the daemon, under the plugin's name (never module globals).
    """

    config: Config
    storage: Storage
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    processors: tuple[str, ...] = ()
    telemetry: Telemetry = field(default_factory=lambda: _new_telemetry())
    state: dict[str, Any] = field(default_factory=dict)
    parser: ReportParser = field(default_factory=lambda: _new_parser())

    async def parse_report(self, body: bytes, envelope: Envelope) -> Report:
        """A body parsed into a report, as at ingest (off the event loop when large)."""
        return await self.parser.parse(body, envelope)

    async def rebuild_report(self, report_id: int, envelope: Mapping[str, Any], body: bytes) -> Report:
        """A stored report parsed again from its body and envelope, with its id
        (off the event loop when large). Raises :class:`reportd.formats.ReportError`
        if the body no longer parses."""
        return await rebuild_off_loop(self.parser, report_id, envelope, body)

    async def run_large(self, size: int, function: Callable[[], T]) -> T:
        """``function()``, off the event loop when ``size`` (bytes of data it works on) is large."""
        return await self.parser.run(size, False, function)

    def plugin_settings(self, name: str) -> Mapping[str, Any]:
        """The parsed ``[plugin:NAME]`` section, defaults filled in."""
        return self.settings.get(name, {})


def _new_parser() -> ReportParser:
    from reportd.parsing import ReportParser

    return ReportParser(workers=1)


def _new_telemetry() -> Telemetry:
    from reportd.telemetry import Telemetry

    return Telemetry()
