"""Typed INI settings: the parsers and the declaration a plugin makes of its section.

The core's ``[reportd]`` section and every ``[plugin:NAME]`` section are
validated the same way: each key is declared with a :class:`Setting`, an
undeclared key is an error, and a value that does not parse is an error that
names the file, the section and the key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A configuration problem; the message names the file, section and key."""


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
    """``HOST:PORT`` or ``[V6]:PORT``."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        value = value.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return parse


def parse_section(
    declared: Mapping[str, Setting], values: Mapping[str, str], *, source: str, section: str
) -> dict[str, Any]:
    """Parse one section's values against its declaration, defaults filled in."""
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise ConfigError(f"{source}: [{section}] {unknown[0]}: unknown key")
    parsed = {}
    for key, setting in declared.items():
        raw = values.get(key, setting.default)
        try:
            parsed[key] = setting.parse(raw)
        except ValueError as error:
            raise ConfigError(f"{source}: [{section}] {key}: {error}") from None
    return parsed
