"""Typed INI settings: the parsers and the declaration a plugin makes of its section.

The core's ``[reportd]`` section and every ``[plugin:NAME]`` section are
validated the same way: each key is declared with a :class:`Setting`, an
undeclared key is an error, and a value that does not parse is an error that
names the file, the section and the key.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """One or more configuration problems, each a line naming the file, section and key."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)

    @classmethod
    def collect(cls, *errors: ConfigError | None) -> ConfigError | None:
        """The problems of several checks as one error, or None when there were none."""
        problems = [p for error in errors if error is not None for p in error.problems]
        return cls(*problems) if problems else None


@dataclass(frozen=True)
class Setting:
    """One INI key: its default (as written in the INI), parser and help text."""

    default: str
    parse: Callable[[str], Any]
    help: str = ""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def as_str(value: str) -> str:
    return value.strip()


def as_int(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None


def as_positive_int(value: str) -> int:
    number = as_int(value)
    if number < 1:
        raise ValueError(f"expected an integer of at least 1, got {value!r}")
    return number


def as_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def as_duration(value: str) -> float:
    """``30s``, ``5m``, ``2h``, ``14d``; a bare number is seconds."""
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"expected a duration like 30s, 5m, 2h or 14d, got {value!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def as_size(value: str) -> int:
    """``64MiB``, ``512k``; a bare number is bytes."""
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"expected a size like 64MiB or 512KiB, got {value!r}")
    unit = (match.group(2) or "b")[0].lower()
    return int(match.group(1)) * _SIZE_UNITS[unit]


def as_list(value: str) -> tuple[str, ...]:
    """Comma- or newline-separated words; empty means an empty list."""
    return tuple(item.strip() for item in re.split(r"[,\n]", value) if item.strip())


def as_path(value: str) -> Path | None:
    value = value.strip()
    return Path(value).expanduser() if value else None


def as_networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in as_list(value))
    except ValueError as error:
        raise ValueError(str(error)) from None


def as_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``; port 0 picks a free one."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not host or len(port) > 5 or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT with a port from 0 to 65535, got {value!r}")
    return host.strip("[]"), int(port)


def as_url(value: str) -> str:
    """An http(s) URL with a host (a trailing slash dropped); empty stays empty."""
    value = value.strip().rstrip("/")
    if not value:
        return value
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {value!r}")
    try:
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError:
        raise ValueError(f"the port of {value!r} is out of range") from None
    return value


def as_urls(value: str) -> tuple[str, ...]:
    """Comma-separated :func:`as_url` values."""
    return tuple(as_url(item) for item in as_list(value))


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        value = value.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return parse


def parse_section(
    declared: Mapping[str, Setting],
    values: Mapping[str, str],
    *,
    source: str,
    section: str,
    problems: list[str] | None = None,
) -> dict[str, Any]:
    """Parse one section's values against its declaration, defaults filled in.

    Every unknown key (with the closest known one, when there is one) and every
    value its parser refuses is reported, all in one :class:`ConfigError`; or,
    given a ``problems`` list, added to it, the default standing in for a bad value.
    """
    found = [
        f"{source}: [{section}] {key}: unknown key{did_you_mean(key, declared)}"
        for key in sorted(set(values) - set(declared))
    ]
    parsed = {}
    for key, setting in declared.items():
        raw = values.get(key, setting.default)
        try:
            parsed[key] = setting.parse(raw)
        except ValueError as error:
            found.append(f"{source}: [{section}] {key}: {error}")
            parsed[key] = setting.parse(setting.default)
    if problems is not None:
        problems += found
    elif found:
        raise ConfigError(*found)
    return parsed


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest of ``known``, or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""
