"""The configuration reference (docs/configuration.md), made from the annotated INI file
and checked against the settings the core and the built-in plugins declare, so that
neither the INI file nor the reference can drift from the code.

    python -m reportd.reference etc/reportd.ini > docs/configuration.md
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path

from reportd.settings import Setting

_SECTION = re.compile(r"^\[([^\]]+)\]\s*$")
_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


def parse_annotated(text: str) -> dict[str, list[tuple[str, str, str]]]:
    """Each section's keys, in order: (key, value, the comment above it)."""
    sections: dict[str, list[tuple[str, str, str]]] = {}
    section = None
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if match := _SECTION.match(stripped):
            section, comment = match.group(1), []
            sections[section] = []
        elif stripped.startswith(";"):
            comment.append(stripped.lstrip(";").strip())
        elif section is not None and (match := _KEY.match(stripped)):
            sections[section].append((match.group(1), match.group(2).strip(), " ".join(comment).strip()))
            comment = []
        elif not stripped:
            comment = [] if section is None else comment
    return sections


def drift(text: str, declared: Mapping[str, Mapping[str, Setting]]) -> list[str]:
    """How the annotated file and the declarations disagree (empty: they agree).

    ``declared`` maps section names (``reportd``, ``plugin:store``) to settings.
    A key must appear with its default and a comment; no key may be undeclared.
    """
    annotated = parse_annotated(text)
    problems = []
    for section, settings in declared.items():
        keys = {key: (value, comment) for key, value, comment in annotated.get(section, [])}
        for key, setting in settings.items():
            if key not in keys:
                problems.append(f"[{section}] {key}: missing")
            elif keys[key][0] != setting.default and not _same_path_default(key, keys[key][0], setting):
                problems.append(f"[{section}] {key}: {keys[key][0]!r} is not the default {setting.default!r}")
            elif not keys[key][1]:
                problems.append(f"[{section}] {key}: no comment says what it does")
        problems += [f"[{section}] {key}: not a setting" for key in keys if key not in settings]
    return problems


def _same_path_default(key: str, value: str, setting: Setting) -> bool:
    # data_dir's default is computed ($STATE_DIRECTORY, XDG); the file shows the packaged one.
    return key == "data_dir" and setting.default == ""


def markdown(text: str) -> str:
    """docs/configuration.md from the annotated file."""
    lines = [
        "# Configuration reference",
        "",
        "reportd reads one INI file (`--config`, else `$REPORTD_CONFIG`). Every key is shown",
        "with its default; a key left out takes it. Unknown sections and keys are errors that",
        "`reportd check-config` names, with the closest known key. Durations: `30s`, `5m`,",
        "`2h`, `14d` (a bare number is seconds). Sizes: `512KiB`, `64MiB`. Lists: comma-separated.",
        "",
        "This page is made from [`etc/reportd.ini`](../etc/reportd.ini) by",
        "`python -m reportd.reference etc/reportd.ini > docs/configuration.md`; a test checks",
        "that both list exactly the settings the code declares, with their defaults.",
    ]
    for section, keys in parse_annotated(text).items():
        lines += ["", f"## `[{section}]`", "", "| key | default | what it does |", "|---|---|---|"]
        for key, value, comment in keys:
            shown = f"`{value}`" if value else "(empty)"
            lines.append(f"| `{key}` | {shown} | {comment.replace('|', '&#124;')} |")
        if section == "reportd":
            lines += ["", *_STALE_AFTER]
    return "\n".join(lines) + "\n"


_STALE_AFTER = [
    "## `[stale_after]`",
    "",
    "Per-node expected intervals, each a certname glob or `environment:NAME` = a duration; the",
    "first matching glob wins, then the environment, then `[reportd] stale_after`:",
    "",
    "```ini",
    "[stale_after]",
    "*.batch.example.com = 1d",
    "environment:development = 12h",
    "```",
]


if __name__ == "__main__":
    sys.stdout.write(markdown(Path(sys.argv[1]).read_text()))
