"""What the plugin API tests share: an app built with a given plugin registered."""

from __future__ import annotations

from reportd.app import create_app
from reportd.config import load_config_string
from reportd.plugin_manager import get_plugin_manager
from tests.support import ini_for


def build(tmp_path, plugin, extra: str = "", processors: str = "store, counting"):
    config = load_config_string(ini_for(tmp_path, extra, processors=processors), source="t.ini")
    pm = get_plugin_manager(load_entrypoints=False, plugin_paths=config.plugin_paths, plugins=[plugin])
    return create_app(config, pm)
