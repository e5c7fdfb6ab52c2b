"""Build the plugin manager: built-ins, installed entry points, plugin_paths files."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from reportd import hookspecs
from reportd.settings import ConfigError

BUILTIN_PLUGINS = (
    "reportd_plugins.store",
    "reportd_plugins.puppetdb",
    "reportd_plugins.metrics",
    "reportd_plugins.command",
    "reportd_plugins.email",
)
ENTRY_POINT_GROUP = "reportd"


def get_plugin_manager(
    *,
    load_entrypoints: bool = True,
    blocked: Iterable[str] = (),
    plugin_paths: Iterable[str | Path] = (),
    plugins: Iterable[object] = (),
) -> pluggy.PluginManager:
    """A fresh manager with the built-ins, installed plugins and the extra ``plugins``.

    ``blocked`` names (built-in module names or entry-point names) are never
    imported. Nothing is global: every call builds a new manager.
    """
    pm = pluggy.PluginManager("reportd")
    pm.add_hookspecs(hookspecs)
    for name in blocked:  # before loading, so blocked plugins are never imported
        pm.set_blocked(name)
    for dotted in BUILTIN_PLUGINS:
        if not pm.is_blocked(dotted):
            pm.register(importlib.import_module(dotted), name=dotted)
    if load_entrypoints:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for directory in plugin_paths:
        for module in _load_directory(Path(directory)):
            if not pm.is_blocked(module.__name__):
                pm.register(module, name=module.__name__)
    for plugin in plugins:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as error:
        raise ConfigError(f"plugin {error.plugin!r}: {error}") from None
    return pm


def known_plugin_names(pm: pluggy.PluginManager, plugin_paths: Iterable[str | Path]) -> set[str]:
    """Every name ``disabled_plugins`` may name: built-ins, installed entry points, plugin_paths files."""
    names = set(BUILTIN_PLUGINS)
    names.update(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    for directory in plugin_paths:
        if Path(directory).is_dir():
            names.update(f"reportd_local_{path.stem}" for path in Path(directory).glob("*.py"))
    names.update(name for name, plugin in pm.list_name_plugin() if plugin is not None)
    return names


def _load_directory(directory: Path) -> list[Any]:
    if not directory.is_dir():
        raise ConfigError(f"plugin_paths: {directory}: not a directory")
    modules = []
    for path in sorted(directory.glob("*.py")):
        name = f"reportd_local_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            raise ConfigError(f"plugin_paths: {path}: {type(error).__name__}: {error}") from None
        module.__reportd_source__ = str(path)  # type: ignore[attr-defined]
        modules.append(module)
    return modules


@dataclass(frozen=True)
class PluginInfo:
    name: str
    source: str
    version: str | None
    hooks: tuple[str, ...]
    processors: tuple[str, ...]


def list_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """What is loaded, from where, with which hooks: for ``reportd plugins``."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist = dists.get(id(plugin))
        source = getattr(plugin, "__reportd_source__", None)
        if source is None:
            source = f"entry point ({dist.project_name})" if dist else _module_source(plugin)
        hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()))
        processors = tuple(
            cls.name
            for hook in pm.get_hookcallers(plugin) or ()
            if hook.name == "reportd_register_processors"
            for cls in plugin.reportd_register_processors() or ()  # type: ignore[attr-defined]
        )
        infos.append(PluginInfo(name, source, dist.version if dist else None, hooks, processors))
    return infos


def _module_source(plugin: object) -> str:
    try:
        return inspect.getfile(plugin)  # type: ignore[arg-type]
    except TypeError:
        return type(plugin).__name__


def declared_settings(pm: pluggy.PluginManager) -> dict[str, dict[str, Any]]:
    declared: dict[str, dict[str, Any]] = {}
    for result in pm.hook.reportd_declare_settings():
        for section, settings in (result or {}).items():
            if section in declared:
                raise ConfigError(f"[plugin:{section}] is declared by two plugins")
            declared[section] = dict(settings)
    return declared


def processor_classes(pm: pluggy.PluginManager) -> dict[str, type]:
    classes: dict[str, type] = {}
    for result in pm.hook.reportd_register_processors():
        for cls in result or ():
            if not cls.name:
                raise ConfigError(f"processor class {cls.__qualname__} has no name")
            if cls.name in classes:
                raise ConfigError(f"two plugins register a processor named {cls.name!r}")
            classes[cls.name] = cls
    return classes
