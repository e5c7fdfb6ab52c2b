"""The ``reportd`` command."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import click
import orjson

from reportd import __version__
from reportd.auth import PERMISSIONS, hash_token, new_token
from reportd.config import Config, load_config, load_config_checked, redacted_url
from reportd.output import echo_json_lines, echo_table, progress
from reportd.settings import ConfigError, as_duration, as_listen
from reportd.status import RUN_STATUSES
from reportd.storage import Storage, open_storage

T = TypeVar("T")


def _load(ctx: click.Context) -> Config:
    return _load_config(ctx.obj["config_path"], ctx.obj["data_dir"])


def _plugin_manager(config: Config):
    from reportd.plugin_manager import get_plugin_manager

    try:
        return get_plugin_manager(blocked=config.disabled_plugins, plugin_paths=config.plugin_paths)
    except ConfigError as error:
        raise Problems(error.problems) from None


def _with_storage(config: Config, job: Callable[[Storage], Awaitable[T]]) -> T:
    async def run() -> T:
        storage = open_storage(
            config.database_url, synchronous=config.sqlite_synchronous, auto_migrate=config.auto_migrate
        )
        await storage.open()
        try:
            return await job(storage)
        finally:
            await storage.close()

    from reportd.storage import SchemaError

    try:
        return asyncio.run(run())
    except SchemaError as error:
        raise click.ClickException(str(error)) from None


_PLUGIN_COMMANDS = "reportd.plugin_commands"


class PluginCommands(click.Group):
    """The built-in commands, then those plugins add (``reportd_register_commands``).

    Which plugins load depends on the configuration (plugin_paths,
    disabled_plugins), known only once the top-level options are parsed: so
    plugin commands are collected on first need, from this group's parameters.
    """

    def _plugin_commands(self, ctx: click.Context) -> click.Group:
        group = ctx.meta.get(_PLUGIN_COMMANDS)
        if group is None:
            config = _load_config(ctx.params.get("config_path"), ctx.params.get("data_dir"))
            group = click.Group()
            _plugin_manager(config).hook.reportd_register_commands(cli=group)
            ctx.meta[_PLUGIN_COMMANDS] = group
        return group

    def list_commands(self, ctx: click.Context) -> list[str]:
        try:
            extra = self._plugin_commands(ctx).list_commands(ctx)
        except click.ClickException:  # a broken configuration: --help still lists the built-ins
            extra = []
        return sorted({*super().list_commands(ctx), *extra})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self._plugin_commands(ctx).get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context):
        """Run the command; an operational error (a file, the database, the network, TLS)
        ends it with one ``Error:`` line and exit status 1, a traceback only with --debug."""
        from reportd.preflight import describe
        from reportd.storage import SchemaError, unavailable_errors

        try:
            return super().invoke(ctx)
        except (*unavailable_errors(), ssl.SSLError, SchemaError, ConfigError) as error:
            if ctx.params.get("debug"):
                raise
            if isinstance(error, ConfigError):
                raise Problems(error.problems) from None
            raise click.ClickException(describe(error)) from None


def _load_config(config_path: Path | None, data_dir: Path | None) -> Config:
    try:
        return load_config(config_path).with_overrides(data_dir=data_dir)
    except ConfigError as error:
        raise Problems(error.problems) from None


class Problems(click.ClickException):
    """Several problems, each on a line of its own, as ``Error: ...`` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

    def show(self, file=None) -> None:
        for problem in self.problems:
            click.echo(f"Error: {problem}", err=True)
        if len(self.problems) > 1:
            click.echo(f"{len(self.problems)} problems", err=True)


def plugin_context(ctx: click.Context):
    """For plugin commands: a :class:`reportd.PluginContext` with an unopened storage."""
    from reportd.app import prepare
    from reportd.context import PluginContext

    config = _load(ctx)
    try:
        settings = prepare(config, _plugin_manager(config)).settings
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    storage = open_storage(
        config.database_url, synchronous=config.sqlite_synchronous, auto_migrate=config.auto_migrate
    )
    return PluginContext(config, storage, settings, config.processors)


@click.group(cls=PluginCommands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reportd")
@click.option(
    "-c",
    "--config",
    "config_path",
    envvar="REPORTD_CONFIG",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    is_eager=True,  # before --help, which lists the commands of the plugins this file loads
    help="INI file (default: $REPORTD_CONFIG, else the embedded defaults).",
)
@click.option(
    "--data-dir",
    "data_dir",
    envvar="REPORTD_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    is_eager=True,
    help="Overrides [reportd] data_dir, for every command.",
)
@click.option("--debug", is_flag=True, help="Show the traceback of an error instead of one line.")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, data_dir: Path | None, debug: bool) -> None:
    """reportd: receive configuration-management run reports and process them."""
    ctx.obj = {"config_path": config_path, "data_dir": data_dir, "debug": debug}


@cli.command(short_help="Run the daemon in the foreground.")
@click.option("--listen", help="HOST:PORT to listen on (overrides [reportd] listen, default 127.0.0.1:8141).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the SQLite store lives (overrides [reportd] data_dir, as the global --data-dir does).",
)
@click.pass_context
def serve(ctx: click.Context, listen: str | None, data_dir: Path | None) -> None:
    """Run the daemon in the foreground until SIGTERM or SIGINT; logs go to stdout."""
    from reportd.log import configure_logging
    from reportd.serve import serve as run_server

    config = _load(ctx)
    try:
        config = config.with_overrides(listen=as_listen(listen) if listen else None, data_dir=data_dir)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--listen") from None
    configure_logging(config.log_level, config.log_format)
    pm = _plugin_manager(config)
    from reportd.storage import unavailable_errors

    try:
        asyncio.run(run_server(config, pm))
    except (ConfigError, RuntimeError, *unavailable_errors()) as error:
        raise click.ClickException(str(error)) from None


@cli.command("check-config", short_help="Check the configuration and what serve needs.")
@click.pass_context
def check_config(ctx: click.Context) -> None:
    """Check the configuration and everything serve needs at start: the plugins'
    sections, the data directory, the database and its schema, the TLS files.
    Every problem is reported, one line each; exit status 1 if there is any."""
    from reportd.app import prepare
    from reportd.preflight import storage_check, tls_check

    config, problems = load_config_checked(ctx.obj["config_path"])
    if config is None:
        raise Problems(problems)
    if ctx.obj["data_dir"] is not None:
        config = config.with_overrides(data_dir=ctx.obj["data_dir"])
    try:
        prepare(config, _plugin_manager(config))
    except Problems as error:  # plugin_paths that do not load
        problems += error.problems
    except ConfigError as error:
        problems += error.problems
    problems += tls_check(config)
    storage_problems, schema = asyncio.run(storage_check(config))
    problems += storage_problems
    if problems:
        raise Problems(problems)
    click.echo(f"{config.source}: OK (processors: {', '.join(config.processors) or 'none'})")
    click.echo(f"database: {redacted_url(config.database_url)}, {schema}")


@cli.command(short_help="List the loaded plugins.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List loaded plugins, where they come from, their hooks and processors."""
    from reportd.plugin_manager import list_plugins

    config = _load(ctx)
    infos = list_plugins(_plugin_manager(config))
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


@cli.command(short_help="Send saved reports to reportd as real clients do.")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--url", required=True, help="reportd's base URL, e.g. https://reportd:8141")
@click.option(
    "--format", "fmt", type=click.Choice(["puppet", "foreman", "chef"]), default="puppet", show_default=True
)
@click.option("--environment", default=None, help="puppet: for reports that name none")
@click.option("--node", help="chef reporting bodies: the node name (the body has none)")
@click.option("--org", default="default", show_default=True, help="chef reporting: the organization")
@click.option("--token", envvar="REPORTD_TOKEN", help="API token (default: $REPORTD_TOKEN)")
@click.option("--cacert", type=click.Path(exists=True, dir_okay=False), help="CA to verify reportd")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False), help="client certificate")
@click.option("--key", type=click.Path(exists=True, dir_okay=False), help="client private key")
@click.option("--gzip", "compress", is_flag=True, help="send bodies gzip-compressed")
def send(files, url, fmt, environment, node, org, token, cacert, cert, key, compress) -> None:
    """Submit saved reports to a running reportd, as the real clients would.

    puppet: JSON is PUT as an agent does, YAML is POSTed as the http report
    processor does. foreman: POST /api/config_reports. chef: a data collector
    message goes to /data-collector/v0/, a reporting end-of-run body to
    /organizations/ORG/reports/nodes/NODE/runs/RUN_ID.
    """
    context = ssl.create_default_context(cafile=cacert) if url.startswith("https") else None
    if context is not None and cert:
        context.load_cert_chain(cert, key)
    failures = 0
    with progress(len(files) if len(files) > 1 else 0, "sending") as bar:
        for name in files:
            failures += not _send_one(name, url, fmt, environment, node, org, token, context, compress)
            bar.update(1)
    if failures:
        sys.exit(1)


def _send_one(name, url, fmt, environment, node, org, token, context, compress) -> bool:
    """Send one file; prints the answer (stdout) or why it failed (stderr)."""
    body = Path(name).read_bytes()
    try:
        method, path, headers = _submission(fmt, body, environment=environment, node=node, org=org)
    except ValueError as error:
        click.echo(f"{name}: {error}", err=True)
        return False
    headers["Accept"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if compress:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    request = urllib.request.Request(url.rstrip("/") + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, context=context, timeout=60) as response:
            click.echo(f"{name}: {response.status} {response.read().decode(errors='replace')}")
            return True
    except urllib.error.HTTPError as error:
        click.echo(f"{name}: {error.code} {error.read().decode(errors='replace')}", err=True)
    except urllib.error.URLError as error:
        click.echo(f"{name}: cannot reach {url}: {error.reason}", err=True)
    return False


def _submission(
    fmt: str, body: bytes, *, environment: str | None, node: str | None, org: str
) -> tuple[str, str, dict[str, str]]:
    """Method, path and headers for one saved report; ValueError when it cannot be sent."""
    from reportd.formats import puppet

    if fmt == "puppet" and puppet.is_yaml("", body):
        return "POST", "/reports/upload", {"Content-Type": "application/x-yaml"}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ValueError(f"not JSON{' or YAML' if fmt == 'puppet' else ''}: {error}") from None
    if not isinstance(data, dict):
        raise ValueError("not a report object")
    if fmt == "puppet" and not (isinstance(data.get("host"), str) and data["host"]):
        raise ValueError("the report names no host (a Puppet report's certname): nothing to send it as")
    json_type = {"Content-Type": "application/json"}
    if fmt == "foreman":
        return "POST", "/api/config_reports", json_type
    if fmt == "chef":
        if "message_type" in data:
            return "POST", "/data-collector/v0/", json_type
        if not node:
            raise ValueError("a Chef reporting body names no node: give --node")
        run_id = urllib.parse.quote(str(data.get("run_id", "")), safe="")
        path = (
            f"/organizations/{urllib.parse.quote(org)}/reports/nodes/{urllib.parse.quote(node)}/runs/{run_id}"
        )
        return "POST", path, {**json_type, "X-Ops-Reporting-Protocol-Version": "0.1.0"}
    host = urllib.parse.quote(str(data.get("host", "")), safe="")
    env = urllib.parse.quote(environment or data.get("environment") or "production")
    return "PUT", f"/puppet/v3/report/{host}?environment={env}", json_type


def _iso(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@cli.group(invoke_without_command=True, short_help="List stored reports; show one.")
@click.option("--certname", help="Only this node's reports.")
@click.option("--status", type=click.Choice(RUN_STATUSES), help="Only runs of this status.")
@click.option("--environment", help="Only runs in this environment.")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="At most this many."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def reports(ctx: click.Context, certname, status, environment, limit, as_json) -> None:
    """List stored reports, newest run first; `reports show ID` shows one."""
    if ctx.invoked_subcommand is not None:
        return
    from reportd.storage import ReportQuery

    config = _load(ctx)
    query = ReportQuery(certname=certname, status=status, environment=environment, limit=limit)
    rows = _with_storage(config, lambda s: s.query_reports(query))
    if as_json:
        echo_json_lines(
            {"id": row.id, "certname": row.certname, "status": row.status, "environment": row.environment,
             "run_time": _iso(row.run_time), "summary": row.summary}
            for row in rows
        )  # fmt: skip
        return
    filters = ", ".join(f"{k} {v}" for k, v in (("certname", certname), ("status", status),
                                                 ("environment", environment)) if v)  # fmt: skip
    echo_table(
        ("ID", "RUN TIME", "STATUS", "ENVIRONMENT", "CERTNAME"),
        [(row.id, _iso(row.run_time), row.status, row.environment, row.certname) for row in rows],
        empty=f"no reports{' with ' + filters if filters else ''}",
    )


@reports.command("show", short_help="Show one stored report.")
@click.argument("report_id", type=int)
@click.option("--raw", is_flag=True, help="The body exactly as received.")
@click.pass_context
def reports_show(ctx: click.Context, report_id: int, raw: bool) -> None:
    """Show one stored report (normalized JSON, or the original body)."""
    from reportd.formats import Envelope, parse

    config = _load(ctx)
    row = _with_storage(config, lambda s: s.get_report(report_id))
    if row is None:
        raise click.ClickException(f"no report {report_id}")
    if raw:
        sys.stdout.buffer.write(row.body)
        return
    report = parse(row.body, Envelope.from_dict(dict(row.envelope)))
    report.id = row.id
    click.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())


@cli.group(invoke_without_command=True, short_help="Deliveries per processor; retry dead ones.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def queue(ctx: click.Context, as_json: bool) -> None:
    """Pending and dead deliveries per processor, and the dead letters; `queue retry`
    makes dead ones pending again."""
    if ctx.invoked_subcommand is not None:
        return
    config = _load(ctx)

    async def job(storage: Storage) -> tuple[dict, list]:
        return await storage.queue_stats(), await storage.dead_letters(None, 50)

    stats, dead = _with_storage(config, job)
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
    config = _load(ctx)
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

    count, states = _with_storage(config, job)
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


@cli.command(short_help="Apply retention now.")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted, delete nothing.")
@click.pass_context
def expire(ctx: click.Context, dry_run: bool) -> None:
    """Apply retention now: reports older than [plugin:store] retention_days, and
    delivered spool entries older than [reportd] dedup_window."""
    from reportd.app import prepare

    config = _load(ctx)
    try:
        settings = prepare(config, _plugin_manager(config)).settings
    except ConfigError as error:
        raise Problems(error.problems) from None
    store = settings.get("store", {"retention_days": 14, "expire_batch": 1000})

    async def job(storage: Storage) -> tuple[int, int]:
        now = time.time()
        cutoff, spool_cutoff = now - store["retention_days"] * 86400, now - config.dedup_window
        old_reports = await storage.count_reports(before=cutoff)
        old_spool = await storage.count_expired_spool(spool_cutoff)
        if dry_run:
            return old_reports, old_spool
        counts = []
        for label, total, batch in (
            ("reports", old_reports, lambda: storage.expire_reports(cutoff, store["expire_batch"])),
            ("spool entries", old_spool, lambda: storage.expire_spool(spool_cutoff, 1000)),
        ):
            deleted = 0
            with progress(total, f"deleting {label}") as bar:
                while done := await batch():
                    deleted += done
                    bar.update(done)
            counts.append(deleted)
        return counts[0], counts[1]

    reports_deleted, spool_deleted = _with_storage(config, job)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {reports_deleted} reports and {spool_deleted} spool entries")


def _row_count(path: Path) -> int:
    """Rows in every table of a SQLite file (0 when it cannot be read: the copy says why)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return sum(conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in tables)
    except sqlite3.Error:
        return 0


@cli.group(short_help="Database schema: status, upgrade, move to PostgreSQL.")
def db() -> None:
    """The database schema: its status, upgrading it, and copying a SQLite store into PostgreSQL."""


@db.command("status", short_help="The schema version, and what is pending.")
@click.pass_context
def db_status(ctx: click.Context) -> None:
    """Show the schema version the database has and the one this reportd needs."""
    config = _load(ctx)
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

    config = _load(ctx)
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

    config = _load(ctx)
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


@cli.group(short_help="API tokens: create, list, revoke.")
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
    config = _load(ctx)
    secret = new_token()
    now = time.time()
    expires_at = now + expires if expires is not None else None
    try:
        _with_storage(
            config, lambda s: s.create_token(name, hash_token(secret), permissions, now, expires_at)
        )
    except KeyError:
        raise click.ClickException(f"a token named {name!r} exists") from None
    click.echo(secret)


@token.command("list", short_help="List tokens (never their secrets).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def token_list(ctx: click.Context, as_json: bool) -> None:
    """List tokens: name, creation, expiry, permissions (never the secrets)."""
    config = _load(ctx)
    now = time.time()
    entries = _with_storage(config, lambda s: s.list_tokens())
    if as_json:
        echo_json_lines(
            {**entry, "created_at": _iso(entry["created_at"]),
             "expires_at": _iso(entry["expires_at"]) if entry["expires_at"] is not None else None,
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
            expiry = f"{_iso(expires_at)}{' (expired)' if expires_at <= now else ''}"
        rows.append((entry["name"], _iso(entry["created_at"]), expiry, ",".join(entry["permissions"])))
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
    config = _load(ctx)
    if not _with_storage(config, lambda s: s.revoke_token(name)):
        raise click.ClickException(f"no token named {name!r}")
    click.echo(f"revoked {name}")
