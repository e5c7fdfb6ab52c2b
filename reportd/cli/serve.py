"""Running the daemon, and checking beforehand what it needs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from reportd.cli.common import Problems, config_of, plugin_manager
from reportd.config import load_config_checked, redacted_url
from reportd.settings import ConfigError, as_listen


@click.command(short_help="Run the daemon in the foreground.")
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
    from reportd.storage import unavailable_errors

    config = config_of(ctx)
    try:
        config = config.with_overrides(listen=as_listen(listen) if listen else None, data_dir=data_dir)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--listen") from None
    configure_logging(config.log_level, config.log_format)
    pm = plugin_manager(config)

    # What ends `serve` with one line rather than a traceback.
    stopped: tuple[type[Exception], ...] = (ConfigError, RuntimeError, *unavailable_errors())
    try:
        asyncio.run(run_server(config, pm))
    except stopped as error:
        raise click.ClickException(str(error)) from None


@click.command("check-config", short_help="Check the configuration and what serve needs.")
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
        prepare(config, plugin_manager(config))
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
