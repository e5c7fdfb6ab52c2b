"""Load reportd's INI file into a frozen :class:`Config`.

Precedence: command-line flags > ``REPORTD_CONFIG`` (which file) > the INI
file > the defaults declared in :data:`CORE_SETTINGS`. With no file at all the
defaults run: SQLite in the data directory, listening on 127.0.0.1:8141.
"""

from __future__ import annotations

import configparser
import fnmatch
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from reportd.permissions import PERMISSIONS
from reportd.settings import (
    ConfigError,
    Setting,
    as_bool,
    as_duration,
    as_list,
    as_listen,
    as_networks,
    as_path,
    as_positive_int,
    as_size,
    as_str,
    as_url,
    did_you_mean,
    one_of,
    parse_section,
)

CORE_SECTION = "reportd"
STALE_SECTION = "stale_after"
PLUGIN_PREFIX = "plugin:"


def _permissions(value: str) -> frozenset[str]:
    names = frozenset(as_list(value))
    unknown = sorted(names - PERMISSIONS)
    if unknown:
        raise ValueError(f"unknown permission {unknown[0]!r} (known: {', '.join(sorted(PERMISSIONS))})")
    return names


def _positive_duration(value: str) -> float:
    seconds = as_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration above 0, got {value!r}")
    return seconds


def _positive_size(value: str) -> int:
    size = as_size(value)
    if size < 1:
        raise ValueError(f"expected a size of at least 1 byte, got {value!r}")
    return size


CORE_SETTINGS: dict[str, Setting] = {
    "listen": Setting("127.0.0.1:8141", as_listen, "address and port to listen on"),
    "data_dir": Setting("", as_path, "where the SQLite database lives"),
    "database": Setting("", as_str, "empty: SQLite in data_dir"),
    "sqlite_synchronous": Setting("full", one_of("full", "normal"), "fsync every commit"),
    "auto_migrate": Setting("true", as_bool, "apply pending schema migrations at start"),
    "processors": Setting("store, metrics", as_list, "enabled processors, in order"),
    "plugin_paths": Setting("", as_list, "directories of plugin modules"),
    "disabled_plugins": Setting("", as_list, "plugins not to load"),
    "max_body_size": Setting("8MiB", as_size, "largest accepted request body"),
    "body_memory": Setting("128MiB", as_size, "request bodies held in memory at once"),
    "parse_workers": Setting("2", as_positive_int, "large bodies parsed at once, off the event loop"),
    "report_cache": Setting("32MiB", as_size, "parsed reports kept for processors (by body size)"),
    "log_level": Setting("info", one_of("debug", "info", "warning", "error"), ""),
    "log_format": Setting("auto", one_of("auto", "json", "console"), ""),
    "tls_cert": Setting("", as_path, "server certificate (PEM)"),
    "tls_key": Setting("", as_path, "server private key (PEM)"),
    "tls_ca": Setting("", as_path, "CA bundle that signs client certificates"),
    "trusted_forwarders": Setting("", as_list, "certnames that may report for any node"),
    "anonymous_networks": Setting("127.0.0.0/8, ::1/128", as_networks, ""),
    "anonymous_permissions": Setting("upload_config_reports, view_reports", _permissions, ""),
    "max_attempts": Setting("10", as_positive_int, "deliveries before dead letter"),
    "retry_initial": Setting("5s", as_duration, "first retry delay"),
    "retry_max": Setting("1h", as_duration, "longest retry delay"),
    "processor_timeout": Setting("60s", as_duration, "longest a processor may take a batch"),
    "shutdown_timeout": Setting("30s", as_duration, "how long a stop waits for work in flight"),
    "dedup_window": Setting("14d", as_duration, "how long duplicates are recognised"),
    "stale_after": Setting("2h", as_duration, "a node is stale after this silence"),
    "base_url": Setting("", as_url, "reportd's public URL, for absolute URLs in answers"),
    "job_timeout": Setting("1h", as_duration, "timeout of a deploy that names none"),
    "node_names_from_san": Setting("false", as_bool, "a node certificate's DNS SANs are its names too"),
    "tls_crl": Setting("", as_path, "CRL (PEM) of tls_ca, re-read when it changes"),
    "trusted_proxies": Setting("", as_networks, "peers whose Host and X-Forwarded-* name reportd"),
    "header_timeout": Setting("10s", _positive_duration, "longest a request head may take to arrive"),
    "body_timeout_base": Setting("10s", _positive_duration, "grace before min_body_rate applies"),
    "min_body_rate": Setting("64KiB", _positive_size, "slowest accepted request body, per second"),
    "max_connections": Setting("1000", as_positive_int, "open client connections at most"),
}


@dataclass(frozen=True)
class StaleRules:
    """How long a node may be silent before it is stale (node-status.md)."""

    default: float = 7200.0
    by_environment: Mapping[str, float] = field(default_factory=dict)
    by_certname_glob: tuple[tuple[str, float], ...] = ()

    def interval(self, certname: str, environment: str | None) -> float:
        for pattern, seconds in self.by_certname_glob:
            if fnmatch.fnmatchcase(certname, pattern):
                return seconds
        if environment is not None and environment in self.by_environment:
            return self.by_environment[environment]
        return self.default


@dataclass(frozen=True)
class Config:
    """The parsed configuration; build it with :func:`load_config`."""

    listen: tuple[str, int]
    data_dir: Path
    database: str
    sqlite_synchronous: str
    auto_migrate: bool
    processors: tuple[str, ...]
    plugin_paths: tuple[str, ...]
    disabled_plugins: tuple[str, ...]
    max_body_size: int
    body_memory: int
    parse_workers: int
    report_cache: int
    log_level: str
    log_format: str
    tls_cert: Path | None
    tls_key: Path | None
    tls_ca: Path | None
    trusted_forwarders: frozenset[str]
    anonymous_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    anonymous_permissions: frozenset[str]
    max_attempts: int
    retry_initial: float
    retry_max: float
    processor_timeout: float
    shutdown_timeout: float
    dedup_window: float
    base_url: str
    job_timeout: float
    header_timeout: float
    body_timeout_base: float
    min_body_rate: int
    max_connections: int
    stale: StaleRules
    source: str = "<defaults>"
    plugin_sections: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    node_names_from_san: bool = False
    tls_crl: Path | None = None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.data_dir / 'reportd.sqlite3'}"

    def with_overrides(self, **changes: Any) -> Config:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def redacted_url(url: str) -> str:
    """``url`` with its password masked (in the user part, or asyncpg's ``password=`` and
    ``sslpassword=`` parameters), for output and logs."""
    parts = urllib.parse.urlsplit(url)
    netloc, query = parts.netloc, parts.query
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    query = _QUERY_PASSWORD.sub(r"\1***", query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # as written: unsplitting would drop the empty authority of sqlite:////path
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


_QUERY_PASSWORD = re.compile(r"(?i)((?:^|&)(?:ssl)?password=)[^&]*")


def default_data_dir() -> Path:
    # systemd's StateDirectory= sets STATE_DIRECTORY; elsewhere follow XDG.
    if state := os.environ.get("STATE_DIRECTORY"):
        return Path(state.split(":")[0])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "reportd"


def load_config(path: Path | str | None) -> Config:
    """Read ``path`` (None: embedded defaults) and return the validated core config."""
    config, problems = load_config_checked(path)
    if problems:
        raise ConfigError(*problems)
    assert config is not None
    return config


def load_config_checked(path: Path | str | None) -> tuple[Config | None, list[str]]:
    """The config and every problem of the file; where a value is wrong its default stands in,
    so that what comes after (plugins, TLS, the database) can still be checked in the same run.

    The config is None only when the file cannot be read or parsed at all.
    """
    if path is None:
        return _load(""), []
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        return None, [f"{path}: cannot read: {error.strerror}"]
    problems: list[str] = []
    return _load(text, source=str(path), problems=problems), problems


def load_config_string(text: str, *, source: str = "<string>") -> Config:
    problems: list[str] = []
    config = _load(text, source=source, problems=problems)
    if problems:
        raise ConfigError(*problems)
    assert config is not None
    return config


def _load(text: str, *, source: str = "<defaults>", problems: list[str] | None = None) -> Config | None:
    problems = [] if problems is None else problems
    parser = configparser.ConfigParser(
        interpolation=None,
        delimiters=("=",),
        comment_prefixes=(";", "#"),
        strict=True,
        # [DEFAULT] would leak into every section; make it an unknown section like any other.
        default_section="\x00none",
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive globs
    try:
        parser.read_string(text, source=source)
    except configparser.Error as error:
        problems.append(f"{source}: {error.message.splitlines()[0]}")
        return None

    plugin_sections: dict[str, dict[str, str]] = {}
    for name in parser.sections():
        if name.startswith(PLUGIN_PREFIX):
            plugin_sections[name[len(PLUGIN_PREFIX) :]] = dict(parser[name])
        elif name not in (CORE_SECTION, STALE_SECTION):
            known = (CORE_SECTION, STALE_SECTION)
            problems.append(f"{source}: [{name}]: unknown section{did_you_mean(name, known)}")

    core_values = dict(parser[CORE_SECTION]) if parser.has_section(CORE_SECTION) else {}
    stale_values = dict(parser[STALE_SECTION]) if parser.has_section(STALE_SECTION) else {}
    core = parse_section(CORE_SETTINGS, core_values, source=source, section=CORE_SECTION, problems=problems)
    core["data_dir"] = core["data_dir"] or default_data_dir()
    core["trusted_forwarders"] = frozenset(core["trusted_forwarders"])
    stale = _stale_rules(core.pop("stale_after"), stale_values, source, problems)
    if (core["tls_cert"] is None) != (core["tls_key"] is None):
        problems.append(f"{source}: [reportd] tls_key: tls_cert and tls_key go together")
    if core["tls_ca"] is not None and core["tls_cert"] is None:
        problems.append(f"{source}: [reportd] tls_ca: needs tls_cert and tls_key")
    if core["tls_crl"] is not None and core["tls_ca"] is None:
        problems.append(f"{source}: [reportd] tls_crl: needs tls_ca")
    for key in ("tls_cert", "tls_key", "tls_ca", "tls_crl"):
        if core[key] is not None and not core[key].is_file():
            problems.append(f"{source}: [reportd] {key}: no such file: {core[key]}")
    if any(key in problem for problem in problems for key in ("tls_cert", "tls_key", "tls_ca", "tls_crl")):
        core.update(tls_cert=None, tls_key=None, tls_ca=None, tls_crl=None)  # checked no further
    database = core["database"]
    if database and not database.startswith(("sqlite:///", "postgresql://", "postgres://")):
        problems.append(f"{source}: [reportd] database: expected sqlite:///PATH or postgresql://...")
        core["database"] = ""
    return Config(**core, stale=stale, source=source, plugin_sections=plugin_sections)


def _stale_rules(default: float, values: Mapping[str, str], source: str, problems: list[str]) -> StaleRules:
    by_environment: dict[str, float] = {}
    by_glob: list[tuple[str, float]] = []
    for key, value in values.items():
        try:
            seconds = as_duration(value)
        except ValueError as error:
            problems.append(f"{source}: [{STALE_SECTION}] {key}: {error}")
            continue
        if key.startswith("environment:"):
            by_environment[key.removeprefix("environment:")] = seconds
        else:
            by_glob.append((key, seconds))
    return StaleRules(default, by_environment, tuple(by_glob))


def validate_plugin_sections(
    config: Config, declared: Mapping[str, Mapping[str, Setting]]
) -> dict[str, dict[str, Any]]:
    """Parse every ``[plugin:NAME]`` section against what the plugins declared.

    A section no loaded plugin declares is an error (a typo, or a plugin that is
    not installed); a declared section absent from the file gets its defaults.
    """
    problems = [
        f"{config.source}: [{PLUGIN_PREFIX}{name}]: no loaded plugin has this section"
        f"{did_you_mean(name, declared)}"
        for name in config.plugin_sections
        if name not in declared
    ]
    parsed = {}
    for name, settings in declared.items():
        try:
            parsed[name] = parse_section(
                settings,
                config.plugin_sections.get(name, {}),
                source=config.source,
                section=PLUGIN_PREFIX + name,
            )
        except ConfigError as error:
            problems += error.problems
    if problems:
        raise ConfigError(*problems)
    return parsed
