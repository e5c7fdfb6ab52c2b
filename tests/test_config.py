"""The INI file: defaults, value parsing, sections, TLS files, stale rules, plugin sections."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from reportd.config import load_config, load_config_string, validate_plugin_sections
from reportd.settings import ConfigError, Setting, as_duration, as_positive_int, as_size


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    config = load_config(None)
    assert config.source == "<defaults>"
    assert config.listen == ("127.0.0.1", 8141)
    assert config.processors == ("store", "metrics")
    assert config.data_dir == tmp_path / "xdg" / "reportd"
    assert config.database_url == f"sqlite:///{tmp_path / 'xdg' / 'reportd' / 'reportd.sqlite3'}"
    assert config.anonymous_networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert config.anonymous_permissions == frozenset({"upload_config_reports", "view_reports"})
    assert config.trusted_forwarders == frozenset()
    assert config.max_body_size == 8 * 1024 * 1024
    assert (config.body_memory, config.parse_workers, config.report_cache) == (128 * 1024**2, 2, 32 * 1024**2)
    assert config.max_attempts == 10
    assert config.retry_initial == 5.0
    assert config.retry_max == 3600.0
    assert config.dedup_window == 14 * 86400.0
    assert config.stale.default == 7200.0
    assert config.sqlite_synchronous == "full"
    assert config.tls_enabled is False
    assert config.tls_cert is None and config.tls_key is None and config.tls_ca is None
    assert config.plugin_sections == {}


def test_state_directory_wins_over_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path / 'state'}:{tmp_path / 'other'}")
    assert load_config_string("").data_dir == tmp_path / "state"


def test_empty_reportd_section_gives_the_same_defaults():
    assert load_config_string("[reportd]\n").listen == ("127.0.0.1", 8141)
    assert load_config_string("[reportd]\n").processors == ("store", "metrics")


def test_values_from_a_file(tmp_path):
    path = tmp_path / "reportd.ini"
    path.write_text(
        "[reportd]\n"
        "listen = [::1]:9000\n"
        f"data_dir = {tmp_path / 'data'}\n"
        "processors = store,\n  recorder\n"
        "anonymous_networks =\n"
        "anonymous_permissions = view_reports\n"
        "trusted_forwarders = puppetserver.example.test, proxy.example.test\n"
        "max_attempts = 3\n"
        "log_level = DEBUG\n"
        "; a comment\n# another\n"
    )
    config = load_config(path)
    assert config.source == str(path)
    assert config.listen == ("::1", 9000)
    assert config.data_dir == tmp_path / "data"
    assert config.database_url == f"sqlite:///{tmp_path / 'data' / 'reportd.sqlite3'}"
    assert config.processors == ("store", "recorder")
    assert config.anonymous_networks == ()
    assert config.anonymous_permissions == frozenset({"view_reports"})
    assert config.trusted_forwarders == frozenset({"puppetserver.example.test", "proxy.example.test"})
    assert config.max_attempts == 3
    assert config.log_level == "debug"


def test_unreadable_file_names_it(tmp_path):
    missing = tmp_path / "nope.ini"
    with pytest.raises(ConfigError, match=rf"^{missing}: cannot read"):
        load_config(missing)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("14d", 1209600.0), ("1w", 604800.0),
     ("250ms", 0.25), ("1.5h", 5400.0), ("90", 90.0), (" 10 s ", 10.0)],
)  # fmt: skip
def test_durations(text, seconds):
    assert as_duration(text) == pytest.approx(seconds)
    assert load_config_string(f"[reportd]\nretry_max = {text}\n").retry_max == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [("64MiB", 64 * 1024**2), ("512k", 512 * 1024), ("512KiB", 512 * 1024), ("1g", 1024**3),
     ("2GB", 2 * 1024**3), ("100", 100), ("100b", 100), ("3 mb", 3 * 1024**2)],
)  # fmt: skip
def test_sizes(text, size):
    assert as_size(text) == size
    assert load_config_string(f"[reportd]\nmax_body_size = {text}\n").max_body_size == size


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_body_size", "lots"), ("max_body_size", "1.5MiB"), ("retry_initial", "soon"),
     ("retry_max", "5 minutes"), ("max_attempts", "0"), ("max_attempts", "many"),
     ("listen", "8141"), ("listen", "localhost:http"), ("log_level", "verbose"),
     ("sqlite_synchronous", "off"), ("anonymous_networks", "10.0.0.0/33"),
     ("anonymous_permissions", "view_reports, rule_the_world")],
)  # fmt: skip
def test_bad_values_name_file_section_and_key(key, value):
    with pytest.raises(ConfigError) as caught:
        load_config_string(f"[reportd]\n{key} = {value}\n", source="/etc/reportd.ini")
    assert str(caught.value).startswith(f"/etc/reportd.ini: [reportd] {key}: ")


def test_unknown_key_is_an_error():
    with pytest.raises(
        ConfigError, match=r"^x\.ini: \[reportd\] listn: unknown key \(did you mean listen\?\)$"
    ):
        load_config_string("[reportd]\nlistn = 127.0.0.1:1\n", source="x.ini")


def test_keys_are_case_sensitive():
    with pytest.raises(ConfigError, match=r"\[reportd\] Listen: unknown key"):
        load_config_string("[reportd]\nListen = 127.0.0.1:1\n")


def test_unknown_section_is_an_error():
    with pytest.raises(
        ConfigError, match=r"^x\.ini: \[reportdd\]: unknown section \(did you mean reportd\?\)$"
    ):
        load_config_string("[reportdd]\nlisten = 127.0.0.1:1\n", source="x.ini")


def test_syntax_errors_name_the_file():
    with pytest.raises(ConfigError, match=r"^x\.ini: "):
        load_config_string("listen = 127.0.0.1:1\n", source="x.ini")
    with pytest.raises(ConfigError, match=r"^x\.ini: "):
        load_config_string("[reportd]\nlisten = a:1\nlisten = b:2\n", source="x.ini")


def test_bad_database_url():
    with pytest.raises(ConfigError, match=r"\[reportd\] database: expected"):
        load_config_string("[reportd]\ndatabase = mysql://db/reportd\n")
    config = load_config_string("[reportd]\ndatabase = sqlite:////var/lib/x.db\n")
    assert config.database_url == "sqlite:////var/lib/x.db"


def _pem_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    paths = tuple(tmp_path / name for name in ("cert.pem", "key.pem", "ca.pem"))
    for path in paths:
        path.write_text("placeholder\n")
    return paths  # type: ignore[return-value]


def test_tls_files(tmp_path):
    cert, key, ca = _pem_files(tmp_path)
    config = load_config_string(f"[reportd]\ntls_cert = {cert}\ntls_key = {key}\ntls_ca = {ca}\n")
    assert config.tls_enabled
    assert (config.tls_cert, config.tls_key, config.tls_ca) == (cert, key, ca)


def test_tls_cert_without_key(tmp_path):
    cert, _, _ = _pem_files(tmp_path)
    with pytest.raises(ConfigError, match=r"^t\.ini: \[reportd\] tls_key: tls_cert and tls_key go together"):
        load_config_string(f"[reportd]\ntls_cert = {cert}\n", source="t.ini")


def test_tls_key_without_cert(tmp_path):
    _, key, _ = _pem_files(tmp_path)
    with pytest.raises(ConfigError, match=r"tls_cert and tls_key go together"):
        load_config_string(f"[reportd]\ntls_key = {key}\n")


def test_tls_ca_without_cert(tmp_path):
    _, _, ca = _pem_files(tmp_path)
    with pytest.raises(ConfigError, match=r"\[reportd\] tls_ca: needs tls_cert and tls_key"):
        load_config_string(f"[reportd]\ntls_ca = {ca}\n")


@pytest.mark.parametrize("missing", ["tls_cert", "tls_key", "tls_ca"])
def test_missing_tls_file(tmp_path, missing):
    cert, key, ca = _pem_files(tmp_path)
    files = {"tls_cert": cert, "tls_key": key, "tls_ca": ca}
    files[missing].unlink()
    text = "[reportd]\n" + "".join(f"{k} = {v}\n" for k, v in files.items())
    with pytest.raises(
        ConfigError, match=rf"^t\.ini: \[reportd\] {missing}: no such file: {files[missing]}$"
    ):
        load_config_string(text, source="t.ini")


def test_stale_rules():
    config = load_config_string(
        "[reportd]\nstale_after = 3h\n"
        "[stale_after]\n"
        "*.lab.example.test = 30m\n"
        "db?.example.test = 1d\n"
        "environment:production = 1h\n"
        "environment:Dev = 45m\n"
    )
    stale = config.stale
    assert stale.default == 3 * 3600
    # globs first, then the environment, then the default
    assert stale.interval("web1.lab.example.test", "production") == 1800
    assert stale.interval("db1.example.test", None) == 86400
    assert stale.interval("db10.example.test", "production") == 3600
    assert stale.interval("web1.example.test", "production") == 3600
    assert stale.interval("web1.example.test", "Dev") == 2700
    # environment names and globs are case-sensitive
    assert stale.interval("web1.example.test", "dev") == 3 * 3600
    assert stale.interval("WEB1.LAB.EXAMPLE.TEST", None) == 3 * 3600
    assert stale.interval("web1.example.test", None) == 3 * 3600


def test_stale_default_only():
    assert load_config_string("").stale.interval("any.example.test", "production") == 7200
    assert load_config_string("[reportd]\nstale_after = 10m\n").stale.interval("a", "b") == 600


def test_stale_bad_duration_names_the_key():
    with pytest.raises(ConfigError, match=r"^s\.ini: \[stale_after\] environment:production: expected"):
        load_config_string("[stale_after]\nenvironment:production = often\n", source="s.ini")


def test_with_overrides_ignores_none(tmp_path):
    config = load_config_string("[reportd]\nlisten = 127.0.0.1:1\n")
    changed = config.with_overrides(data_dir=tmp_path, listen=None)
    assert changed.data_dir == tmp_path
    assert changed.listen == ("127.0.0.1", 1)


DECLARED = {
    "mine": {
        "url": Setting("http://localhost", str.strip, "where to"),
        "batch": Setting("10", as_positive_int, "how many"),
    },
    "other": {"interval": Setting("1m", as_duration, "")},
}


def test_plugin_sections_parsed_with_defaults():
    config = load_config_string("[plugin:mine]\nbatch = 5\n", source="p.ini")
    assert config.plugin_sections == {"mine": {"batch": "5"}}
    settings = validate_plugin_sections(config, DECLARED)
    assert settings == {"mine": {"url": "http://localhost", "batch": 5}, "other": {"interval": 60.0}}


def test_plugin_section_unknown_key():
    config = load_config_string("[plugin:mine]\nbatch = 5\nurll = http://x\n", source="p.ini")
    with pytest.raises(
        ConfigError, match=r"^p\.ini: \[plugin:mine\] urll: unknown key \(did you mean url\?\)$"
    ):
        validate_plugin_sections(config, DECLARED)


def test_plugin_section_bad_value():
    config = load_config_string("[plugin:mine]\nbatch = 0\n", source="p.ini")
    with pytest.raises(
        ConfigError, match=r"^p\.ini: \[plugin:mine\] batch: expected an integer of at least 1"
    ):
        validate_plugin_sections(config, DECLARED)


def test_plugin_section_nobody_declares():
    config = load_config_string("[plugin:nope]\nx = 1\n", source="p.ini")
    with pytest.raises(ConfigError, match=r"^p\.ini: \[plugin:nope\]: no loaded plugin has this section$"):
        validate_plugin_sections(config, DECLARED)


def test_default_section_is_an_unknown_section():
    # configparser's [DEFAULT] would otherwise be ignored without a [reportd] section,
    # applied with one, and leak its keys into [stale_after] and every [plugin:NAME].
    for text in ("[DEFAULT]\nlisten = 10.0.0.1:1\n", "[DEFAULT]\nlisten = 10.0.0.1:1\n[reportd]\n"):
        with pytest.raises(ConfigError, match=r"^d\.ini: \[DEFAULT\]: unknown section$"):
            load_config_string(text, source="d.ini")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("sqlite:////var/lib/reportd/reportd.sqlite3", "sqlite:////var/lib/reportd/reportd.sqlite3"),
        ("postgresql://reportd@db/reportd", "postgresql://reportd@db/reportd"),
        (
            "postgresql://reportd:s3cr%40t@db:5432/reportd?sslmode=require",
            "postgresql://reportd:***@db:5432/reportd?sslmode=require",
        ),
        ("postgres://reportd:a:b@c@db/reportd", "postgres://reportd:***@db/reportd"),
        (
            "postgresql://db/reportd?user=r&PASSWORD=x&sslpassword=y",
            "postgresql://db/reportd?user=r&PASSWORD=***&sslpassword=***",
        ),
    ],
)
def test_database_urls_are_shown_without_passwords(url, shown):
    from reportd.config import redacted_url

    assert redacted_url(url) == shown


def test_every_problem_is_reported_at_once():
    text = (
        "[reportd]\nprocesors = store\nlisten = 127.0.0.1:99999\nbase_url = reportd.example.com\n"
        "max_body_size = lots\n[stale_after]\n*.example.com = soon\n[reportdd]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config_string(text, source="r.ini")
    assert caught.value.problems == [
        "r.ini: [reportdd]: unknown section (did you mean reportd?)",
        "r.ini: [reportd] procesors: unknown key (did you mean processors?)",
        "r.ini: [reportd] listen: expected HOST:PORT with a port from 0 to 65535, got '127.0.0.1:99999'",
        "r.ini: [reportd] max_body_size: expected a size like 64MiB or 512KiB, got 'lots'",
        "r.ini: [reportd] base_url: expected an http:// or https:// URL with a host, got 'reportd.example.com'",
        "r.ini: [stale_after] *.example.com: expected a duration like 30s, 5m, 2h or 14d, got 'soon'",
    ]
    assert str(caught.value) == "\n".join(caught.value.problems)


@pytest.mark.parametrize("value", ["http://", "ftp://x", "https://x:99999", "x:8080"])
def test_urls_need_a_scheme_and_a_host(value):
    with pytest.raises(ConfigError, match=r"\[reportd\] base_url: "):
        load_config_string(f"[reportd]\nbase_url = {value}\n")
