"""What every command shares: the configuration, the plugins, the storage, one-line errors."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click

from reportd.config import Config, load_config
from reportd.context import PluginContext
from reportd.plugin_manager import get_plugin_manager
from reportd.settings import ConfigError
from reportd.storage import SchemaError, Storage, open_storage, unavailable_errors

T = TypeVar("T")


def _explained() -> tuple[type[Exception], ...]:
    """Failures a command explains in one line (the traceback only with --debug)."""
    return (*unavailable_errors(), ssl.SSLError, SchemaError, ConfigError)


def config_of(ctx: click.Context) -> Config:
    return load_config_or_exit(ctx.obj["config_path"], ctx.obj["data_dir"])


def plugin_manager(config: Config):
    try:
        return get_plugin_manager(blocked=config.disabled_plugins, plugin_paths=config.plugin_paths)
    except ConfigError as error:
        raise Problems(error.problems) from None


def open_configured_storage(config: Config) -> Storage:
    return open_storage(
        config.database_url, synchronous=config.sqlite_synchronous, auto_migrate=config.auto_migrate
    )


def with_storage(config: Config, job: Callable[[Storage], Awaitable[T]]) -> T:
    """``await job(storage)`` with the configured storage open, then closed."""
    storage = open_configured_storage(config)
    return _while_open(storage, lambda: job(storage))


def _while_open(storage: Storage, job: Callable[[], Awaitable[T]]) -> T:
    async def run() -> T:
        await storage.open()
        try:
            return await job()
        finally:
            await storage.close()

    try:
        return asyncio.run(run())
    except SchemaError as error:  # an out-of-date database, auto_migrate off
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
            config = load_config_or_exit(ctx.params.get("config_path"), ctx.params.get("data_dir"))
            group = click.Group()
            plugin_manager(config).hook.reportd_register_commands(cli=group)
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

        try:
            return super().invoke(ctx)
        except _explained() as error:
            if ctx.params.get("debug"):
                raise
            if isinstance(error, ConfigError):
                raise Problems(error.problems) from None
            raise click.ClickException(describe(error)) from None


def load_config_or_exit(config_path: Path | None, data_dir: Path | None) -> Config:
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


def plugin_context(ctx: click.Context) -> PluginContext:
    """For plugin commands: a :class:`reportd.PluginContext` with an unopened storage."""
    from reportd.app import prepare

    config = config_of(ctx)
    try:
        settings = prepare(config, plugin_manager(config)).settings
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    return PluginContext(config, open_configured_storage(config), settings, config.processors)


def run_with_context(job: Callable[..., Awaitable[T]]) -> T:
    """For plugin commands: ``await job(context)`` with the context's storage open, then closed."""
    context = plugin_context(click.get_current_context())
    return _while_open(context.storage, lambda: job(context))
