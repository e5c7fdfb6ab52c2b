"""The ``reportd`` command: the root group here, the commands by concern.

:mod:`.serve` runs and checks the daemon, :mod:`.admin` administers it (plugins,
queue, expire, db, token), :mod:`.client` sends saved reports to it. Plugins add
their own commands with the ``reportd_register_commands`` hook (the store's
``reports``, the email plugin's ``schedules``); inside one,
:func:`plugin_context` or :func:`run_with_context` give them the configuration
and the storage.
"""

from __future__ import annotations

from pathlib import Path

import click

from reportd.cli import admin, client, serve
from reportd.cli.common import PluginCommands, plugin_context, run_with_context
from reportd.version import __version__

__all__ = ["cli", "plugin_context", "run_with_context"]


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


for command in (
    serve.serve,
    serve.check_config,
    admin.plugins,
    client.send,
    admin.queue,
    admin.expire,
    admin.db,
    admin.token,
):
    cli.add_command(command)
