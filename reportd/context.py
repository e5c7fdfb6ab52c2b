"""What a plugin is given: the configuration, its settings and the storage."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reportd.config import Config
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

    def plugin_settings(self, name: str) -> Mapping[str, Any]:
        """The parsed ``[plugin:NAME]`` section, defaults filled in."""
        return self.settings.get(name, {})


def _new_telemetry() -> Telemetry:
    from reportd.telemetry import Telemetry

    return Telemetry()
