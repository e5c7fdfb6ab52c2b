"""Administration: the plugins, the delivery queue, the database schema, API tokens."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import click

from reportd.auth import PERMISSIONS, hash_token, new_token
from reportd.cli.common import Problems, config_of, plugin_manager, with_storage
from reportd.config import redacted_url
from reportd.output import echo_json_lines, echo_table, iso_time, progress
from reportd.settings import ConfigError, as_duration
from reportd.storage import Storage, open_storage


@click.command(short_help="List the loaded plugins.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List loaded plugins, where they come from, their hooks and processors."""
    from reportd.plugin_manager import list_plugins

    config = config_of(ctx)
    infos = list_plugins(plugin_manager(config))
    if as_json:
        echo_json_lines(
            {"name": i.name, "version": i.version, "source": i.source, "hooks": list(i.hooks),
             "processors": {p: p in config.processors for p in i.processors}}
            for i in infos
        )  # fmt: skip
        return
    for info in infos:
        version = f" {info.version}" if info.version else ""
        click.echo(f"{info.name}{version}  ({info.source})")
        if info.processors:
            enabled = [f"{p}{'' if p in config.processors else ' (disabled)'}" for p in info.processors]
            click.echo(f"  processors: {', '.join(enabled)}")
        click.echo(f"  hooks: {', '.join(info.hooks)}")


@click.group(invoke_without_command=True, short_help="Deliveries per processor; retry dead ones.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def queue(ctx: click.Context, as_json: bool) -> None:
    """Pending and dead deliveries per processor, and the dead letters; `queue retry`
    makes dead ones pending again."""
    if ctx.invoked_subcommand is not None:
        return
    config = config_of(ctx)

    async def job(storage: Storage) -> tuple[dict, list]:
        return await storage.queue_stats(), await storage.dead_letters(None, 50)

    stats, dead = with_storage(config, job)
    now = time.time()
    rows = []
    for name in sorted(set(stats) | set(config.processors)):
        entry = stats.get(name)
        oldest = None
        if entry and entry.oldest_pending_at is not None:
            oldest = round(now - entry.oldest_pending_at)
        rows.append((name, entry.pending if entry else 0, entry.dead if entry else 0, oldest))
    if as_json:
        echo_json_lines(
            {"processor": name, "pending": pending, "dead": dead_count, "oldest_pending_seconds": oldest}
            for name, pending, dead_count, oldest in rows
        )
        return
    echo_table(
        ("PROCESSOR", "PENDING", "DEAD", "OLDEST PENDING"),
        [(name, pending, dead_count, "-" if oldest is None else f"{oldest}s") for name, pending, dead_count,
         oldest in rows],
        empty="no processors",
    )  # fmt: skip
    if dead:
        click.echo("\ndead letters:")
        for letter in dead:
            click.echo(
                f"  {letter.processor} report {letter.report_id} ({letter.certname}),"
                f" {letter.attempts} attempts: {letter.error}"
            )


@queue.command("retry", short_help="Make dead deliveries pending again.")
@click.option("--processor", help="Only this processor's dead letters.")
@click.option(
    "--wait",
    "wait_seconds",
    default="15s",
    show_default=True,
    help="How long to wait for the daemon's next attempt at each (0: do not wait).",
)
@click.argument("report_ids", nargs=-1, type=int)
@click.pass_context
def queue_retry(
    ctx: click.Context, processor: str | None, wait_seconds: str, report_ids: tuple[int, ...]
) -> None:
    """Make dead deliveries pending again (all, or the report ids given), then say how
    the daemon's next attempt went: delivered, or failed again (exit status 1)."""
    from reportd.jobs.tracker import NAME as JOBS_CONSUMER
    from reportd.settings import as_duration

    try:
        wait = as_duration(wait_seconds)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--wait") from None
    config = config_of(ctx)
    known = [*config.processors, JOBS_CONSUMER]
    if processor is not None and processor not in known:
        raise click.BadParameter(
            f"no processor named {processor!r} (known: {', '.join(known)})", param_hint="--processor"
        )
    ids = list(report_ids) or None

    async def job(storage: Storage) -> tuple[int, list]:
        letters = [
            (d.processor, d.report_id)
            for d in await storage.dead_letters(processor, 1_000_000)
            if ids is None or d.report_id in ids
        ]
        count = await storage.retry(processor, ids, time.time())
        if not count or not wait:
            return count, []
        deadline = time.monotonic() + wait
        with progress(len(letters), "waiting for the daemon's attempts") as bar:
            attempted = 0
            while True:
                states = await storage.delivery_states(letters)
                unattempted = [s for s in states if s.state == "pending" and s.attempts == 0]
                bar.update(len(letters) - len(unattempted) - attempted)
                attempted = len(letters) - len(unattempted)
                if not unattempted or time.monotonic() >= deadline:
                    return count, states
                await asyncio.sleep(0.2)

    count, states = with_storage(config, job)
    if not count:
        which = f" of {processor}" if processor else ""
        click.echo(f"no dead letters{which}{' among reports ' + ', '.join(map(str, ids)) if ids else ''}",
                   err=True)  # fmt: skip
    click.echo(f"{count} deliveries queued again")
    failed = [s for s in states if s.attempts > 0 or s.state == "dead"]
    waiting = [s for s in states if s.state == "pending" and s.attempts == 0]
    for state in failed:
        click.echo(f"{state.processor} report {state.report_id}: failed again: {state.last_error}")
    if waiting:
        click.echo(f"{len(waiting)} not attempted yet: the daemon delivers them when it runs")
    if failed:
        sys.exit(1)


@click.command(short_help="Apply retention now.")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted, delete nothing.")
@click.pass_context
def expire(ctx: click.Context, dry_run: bool) -> None:
    """Apply retention now: reports older than [plugin:store] retention_days, and
    delivered spool entries older than [reportd] dedup_window."""
    from reportd.app import prepare

    config = config_of(ctx)
    try:
        settings = prepare(config, plugin_manager(config)).settings
    except ConfigError as error:
        raise Problems(error.problems) from None
    # The store's own settings, defaults filled in; without the store plugin there are no reports to expire.
    store = settings.get("store")

    async def job(storage: Storage) -> tuple[int, int]:
        now = time.time()
        cutoff, spool_cutoff = (
            now - (store["retention_days"] * 86400 if store else 0),
            now - config.dedup_window,
        )
        old_reports = await storage.count_reports(before=cutoff) if store else 0
        old_spool = await storage.count_expired_spool(spool_cutoff)
        if dry_run:
            return old_reports, old_spool
        reports = 0
        if store:
            batch = store["expire_batch"]
            reports = await _delete("reports", old_reports, lambda: storage.expire_reports(cutoff, batch))
        spool = await _delete("spool entries", old_spool, lambda: storage.expire_spool(spool_cutoff, 1000))
        return reports, spool

    reports_deleted, spool_deleted = with_storage(config, job)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {reports_deleted} reports and {spool_deleted} spool entries")


async def _delete(label: str, total: int, batch: Callable[[], Awaitable[int]]) -> int:
    """Run ``batch`` until it deletes nothing, with a progress bar of ``total``."""
    deleted = 0
    with progress(total, f"deleting {label}") as bar:
        while done := await batch():
            deleted += done
            bar.update(done)
    return deleted


def _row_count(path: Path) -> int:
    """Rows in every table of a SQLite file (0 when it cannot be read: the copy says why)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return sum(conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in tables)
    except sqlite3.Error:
        return 0


@click.group(short_help="Database schema: status, upgrade, move to PostgreSQL.")
def db() -> None:
    """The database schema: its status, upgrading it, and copying a SQLite store into PostgreSQL."""


@db.command("status", short_help="The schema version, and what is pending.")
@click.pass_context
def db_status(ctx: click.Context) -> None:
    """Show the schema version the database has and the one this reportd needs."""
    config = config_of(ctx)
    status = asyncio.run(open_storage(config.database_url).schema_status())
    click.echo(f"database: {redacted_url(config.database_url)}")
    click.echo(f"schema version: {status.current} (this reportd: {status.latest})")
    if status.current > status.latest:
        raise click.ClickException("the schema is newer than this reportd: upgrade reportd")
    if status.pending:
        click.echo(f"pending migrations: {', '.join(map(str, status.pending))} (run `reportd db upgrade`)")
    else:
        click.echo("up to date")


@db.command("upgrade", short_help="Apply the pending schema migrations.")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply the pending schema migrations; concurrent upgrades apply each once."""
    from reportd.storage import SchemaError

    config = config_of(ctx)
    storage = open_storage(config.database_url)
    try:
        before = asyncio.run(storage.schema_status())
        applied = asyncio.run(storage.upgrade())
    except SchemaError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"database: {redacted_url(config.database_url)}")
    if applied:
        click.echo(
            f"schema version {before.current} -> {applied[-1]}: applied {', '.join(map(str, applied))}"
        )
    else:
        click.echo(f"schema version {before.current}: up to date, nothing to do")


@db.command("migrate-from-sqlite", short_help="Copy a SQLite store into PostgreSQL.")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "dsn", help="the PostgreSQL database (default: [reportd] database)")
@click.option("--replace", is_flag=True, help="empty the target's tables first if they hold data")
@click.pass_context
def db_migrate_from_sqlite(ctx: click.Context, path: Path, dsn: str | None, replace: bool) -> None:
    """Copy the SQLite store at PATH into PostgreSQL; stop the daemon using PATH first."""
    from reportd.storage.postgres import PostgresStorage
    from reportd.storage.sqlite_to_postgres import copy_sqlite_to_postgres

    config = config_of(ctx)
    dsn = dsn or config.database
    if not dsn.startswith(("postgresql://", "postgres://")):
        raise click.ClickException(
            "no PostgreSQL database: give --to postgresql://... or set [reportd] database"
        )
    copied: dict[str, int] = {}
    with progress(_row_count(path), "copying rows") as bar:

        def advance(table: str, rows: int) -> None:
            bar.update(rows - copied.get(table, 0))
            copied[table] = rows

        try:
            result = asyncio.run(copy_sqlite_to_postgres(path, PostgresStorage(dsn), replace=replace,
                                                         progress=advance))  # fmt: skip
        except RuntimeError as error:  # MigrationError, SchemaError
            raise click.ClickException(str(error)) from None
    click.echo(f"copied {path} (schema version {result.schema_version}) to {redacted_url(dsn)}:")
    for table in result.tables:
        click.echo(f"  {table.name}: {table.rows} rows")
    if result.upgraded:
        click.echo(f"then applied migrations {', '.join(map(str, result.upgraded))}")


@click.group(short_help="API tokens: create, list, revoke.")
def token() -> None:
    """API tokens: create, list, revoke."""


def _expiry(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """``--expires``: a duration as the INI writes them, in seconds."""
    if value is None:
        return None
    try:
        seconds = as_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error), param=param) from None
    if seconds <= 0:
        raise click.BadParameter(f"expected a duration longer than 0, got {value!r}", param=param)
    return seconds


@token.command("create", short_help="Create a token and print it, once.")
@click.argument("name")
@click.option(
    "--permission",
    "-p",
    "permissions",
    multiple=True,
    required=True,
    type=click.Choice(sorted(PERMISSIONS)),
    help="repeat for several",
)
@click.option(
    "--expires",
    metavar="DURATION",
    callback=_expiry,
    help="refused after this long (90d, 12h, 30m; default: never)",
)
@click.pass_context
def token_create(ctx: click.Context, name: str, permissions: tuple[str, ...], expires: float | None) -> None:
    """Create a token; prints it alone on stdout (it is not shown again)."""
    config = config_of(ctx)
    secret = new_token()
    now = time.time()
    expires_at = now + expires if expires is not None else None
    try:
        with_storage(config, lambda s: s.create_token(name, hash_token(secret), permissions, now, expires_at))
    except KeyError:
        raise click.ClickException(f"a token named {name!r} exists") from None
    click.echo(secret)


@token.command("list", short_help="List tokens (never their secrets).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def token_list(ctx: click.Context, as_json: bool) -> None:
    """List tokens: name, creation, expiry, permissions (never the secrets)."""
    config = config_of(ctx)
    now = time.time()
    entries = with_storage(config, lambda s: s.list_tokens())
    if as_json:
        echo_json_lines(
            {**entry, "created_at": iso_time(entry["created_at"]),
             "expires_at": iso_time(entry["expires_at"]) if entry["expires_at"] is not None else None,
             "expired": entry["expires_at"] is not None and entry["expires_at"] <= now}
            for entry in entries
        )  # fmt: skip
        return
    rows = []
    for entry in entries:
        expires_at = entry["expires_at"]
        if expires_at is None:
            expiry = "never"
        else:
            expiry = f"{iso_time(expires_at)}{' (expired)' if expires_at <= now else ''}"
        rows.append((entry["name"], iso_time(entry["created_at"]), expiry, ",".join(entry["permissions"])))
    echo_table(
        ("NAME", "CREATED", "EXPIRES", "PERMISSIONS"),
        rows,
        empty="no tokens (reportd token create NAME -p ...)",
    )


@token.command("revoke", short_help="Delete a token.")
@click.argument("name")
@click.pass_context
def token_revoke(ctx: click.Context, name: str) -> None:
    """Delete a token; running daemons stop accepting it within 5 seconds."""
    config = config_of(ctx)
    if not with_storage(config, lambda s: s.revoke_token(name)):
        raise click.ClickException(f"no token named {name!r}")
    click.echo(f"revoked {name}")
