"""The annotated INI file and docs/configuration.md list exactly the settings the code declares."""

from __future__ import annotations

from reportd.config import CORE_SETTINGS
from reportd.plugin_manager import declared_settings, get_plugin_manager
from reportd.reference import drift, markdown
from reportd.settings import Setting, as_str
from tests.support import ROOT

INI = (ROOT / "etc" / "reportd.ini").read_text()


def declared() -> dict:
    plugins = declared_settings(get_plugin_manager(load_entrypoints=False))
    return {"reportd": CORE_SETTINGS, **{f"plugin:{name}": settings for name, settings in plugins.items()}}


def test_the_ini_file_shows_every_setting_with_its_default_and_a_comment():
    assert drift(INI, declared()) == []


def test_drift_is_found():
    sections = declared()
    sections["plugin:store"] = {**sections["plugin:store"], "new_key": Setting("1", as_str, "")}
    changed_default = {**sections["reportd"], "listen": Setting("0.0.0.0:1", as_str, "")}
    assert drift(INI, {**sections, "reportd": changed_default}) == [
        "[reportd] listen: '127.0.0.1:8141' is not the default '0.0.0.0:1'",
        "[plugin:store] new_key: missing",
    ]
    original = declared()
    without = {**original, "reportd": {k: v for k, v in original["reportd"].items() if k != "listen"}}
    assert drift(INI, without) == ["[reportd] listen: not a setting"]


def test_the_configuration_reference_is_made_from_the_ini_file():
    assert (ROOT / "docs" / "configuration.md").read_text() == markdown(INI), (
        "run: python -m reportd.reference etc/reportd.ini > docs/configuration.md"
    )
