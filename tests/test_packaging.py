"""The shipped files: the commented INI, the systemd unit, sd_notify readiness."""

from __future__ import annotations

import configparser
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from reportd.config import CORE_SETTINGS, load_config
from reportd.plugin_manager import declared_settings, get_plugin_manager
from tests.support import ROOT, ini_for

INI = ROOT / "etc" / "reportd.ini"
UNIT = ROOT / "systemd" / "reportd.service"


def shipped_ini() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",), comment_prefixes=(";", "#"))
    parser.optionxform = str
    parser.read(INI)
    return parser


def test_ini_lists_every_core_key_with_its_default():
    core = shipped_ini()["reportd"]
    assert set(core) == set(CORE_SETTINGS)
    for key, setting in CORE_SETTINGS.items():
        if key != "data_dir":  # the packaged path, where the default is "derive one"
            assert core[key] == setting.default, key
    text = INI.read_text()
    for key in CORE_SETTINGS:
        before = text.split(f"\n{key} =", 1)[0].rsplit("\n", 1)[-1]
        assert before.startswith(";") or before == "", f"{key} has no comment above it"


def test_ini_lists_every_builtin_plugin_key_with_its_default():
    parser = shipped_ini()
    for name, settings in declared_settings(get_plugin_manager(load_entrypoints=False)).items():
        section = parser[f"plugin:{name}"]
        assert {k: section[k] for k in section} == {k: s.default for k, s in settings.items()}


def test_check_config_accepts_the_shipped_ini():
    result = subprocess.run(
        [sys.executable, "-m", "reportd", "--config", str(INI), "check-config"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert load_config(INI).listen == ("127.0.0.1", 8141)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_unit_verifies(tmp_path):
    reportd = Path(sys.executable).with_name("reportd")
    assert reportd.exists(), "the reportd console script is installed beside the interpreter"
    unit = tmp_path / "reportd.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/reportd", str(reportd)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "reportd.service" not in result.stderr, result.stderr


def test_unit_is_notify_with_check_config_and_hardening():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(UNIT)
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStartPre"].endswith("check-config")
    assert service["Restart"] == "on-failure"
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "StateDirectory": "reportd",
    }.items():
        assert service[key] == value


def test_daemon_notifies_systemd_when_listening_and_when_stopping(daemon_factory, tmp_path, monkeypatch):
    address = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.settimeout(20)
        monkeypatch.setenv("NOTIFY_SOCKET", str(address))
        daemon = daemon_factory(ini_for(tmp_path / "data")).start()
        assert sock.recv(256) == b"READY=1"
        assert b'"event": "listening"' in daemon.log_path.read_bytes()
        assert daemon.stop() == 0
        assert sock.recv(256) == b"STOPPING=1"


def test_wheel_ships_the_builtin_plugins_as_reportd_plugins(tmp_path):
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("reportd-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"reportd_plugins/__init__.py", "reportd_plugins/store.py", "reportd/storage/sqlite.py"} <= names
    assert "reportd/openapi.json" in names  # served at /api/openapi.json
    assert not any(name.startswith(("plugins/", "tests/", "bench/")) for name in names)
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    probe = subprocess.run(
        [sys.executable, "-I", "-c",
         f"import sys; sys.path.insert(0, {str(target)!r}); import reportd_plugins, reportd_plugins.store;"
         " print(reportd_plugins.__file__); print(reportd_plugins.__doc__.splitlines()[0])"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    path, first_line = probe.stdout.splitlines()
    assert path == str(target / "reportd_plugins" / "__init__.py")
    assert first_line.startswith("reportd's built-in plugins")
