"""How commands print: tables with a header, JSON lines for scripts, progress on a terminal.

Every listing command prints a table whose first line names the columns, or
with ``--json`` one JSON object per line; an empty listing says so on stderr,
so that stdout stays empty for scripts. Long commands show a progress bar on
stderr when it is a terminal and nothing otherwise. Plugin commands use the same
helpers (``reportd.output``), so that every command looks alike.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import click
import orjson


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, empty: str) -> None:
    """Rows under their column names, aligned; ``empty`` (on stderr) when there is none."""
    if not rows:
        click.echo(empty, err=True)
        return
    cells = [[str("-" if cell is None else cell) for cell in row] for row in rows]
    widths = [max(len(header), *(len(row[i]) for row in cells)) for i, header in enumerate(headers)]
    for line in (list(headers), *cells):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def echo_json_lines(items: Iterable[Mapping[str, Any]]) -> None:
    """One compact JSON object per line (``--json``)."""
    for item in items:
        click.echo(orjson.dumps(item).decode())


class Progress(Protocol):
    def update(self, steps: int) -> None: ...


class _Silent:
    def update(self, steps: int) -> None:
        pass


@contextlib.contextmanager
def progress(length: int | None, label: str) -> Iterator[Progress]:
    """A bar with counts and rate on stderr when it is a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        yield _Silent()
        return
    bar: Any
    with click.progressbar(
        length=length, label=label, file=sys.stderr, show_pos=True, show_eta=length is not None
    ) as bar:
        yield bar


def iso_time(timestamp: float | None) -> str:
    """A UNIX time as ISO 8601 UTC to the second, ``-`` for none (table cells)."""
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
