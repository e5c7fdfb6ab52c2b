"""The plugin API: documented hooks, each tested; discovery; the example plugin installed for real."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys

import aiohttp
import orjson
import pytest
from aiohttp import web

import reportd
from reportd import Processor, Setting, hookimpl, hookspecs
from reportd.app import create_app
from reportd.config import load_config_string
from reportd.plugin_manager import get_plugin_manager, list_plugins
from reportd.settings import ConfigError, as_int
from reportd.web import json_response
from tests.support import ROOT, SAMPLE_CERTNAME, ini_for, sample, wait_until
from tests.support.plugins import build

HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("reportd_"))
EXAMPLE = ROOT / "examples" / "reportd-hello"
PUT = f"/puppet/v3/report/{SAMPLE_CERTNAME}?environment=production"


def test_every_hook_is_documented_with_each_parameter():
    assert HOOKS, "no hooks found"
    for name in HOOKS:
        spec = getattr(hookspecs, name)
        doc = inspect.getdoc(spec) or ""
        assert len(doc.splitlines()) >= 3, f"{name} needs a real docstring"
        assert "awaitable" in doc, f"{name} must say whether it may return an awaitable"
        for parameter in inspect.signature(spec).parameters:
            assert f":param {parameter}:" in doc, f"{name} does not document {parameter}"


def test_every_hook_has_a_test():
    tests = {name for name, _ in inspect.getmembers(sys.modules[__name__], inspect.isfunction)}
    assert [h for h in HOOKS if f"test_hook_{h}" not in tests] == []


class Recording:
    """A plugin implementing every hook, recording the order of calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def reportd_declare_settings(self):
        self.calls.append("declare_settings")
        return {"recording": {"limit": Setting("5", as_int, "a number")}}

    @hookimpl
    def reportd_register_processors(self):
        self.calls.append("register_processors")
        plugin = self

        class Counting(Processor):
            name = "counting"

            async def start(self):
                plugin.calls.append("processor_start")

            async def process(self, report):
                plugin.calls.append(
                    f"process:{report.certname}:{self.context.plugin_settings('recording')['limit']}"
                )

            async def close(self):
                plugin.calls.append("processor_close")

        return [Counting]

    @hookimpl
    def reportd_add_routes(self, app, context):
        self.calls.append("add_routes")

        async def hello(request):
            return json_response({"processors": list(context.processors)})

        app.router.add_get("/recording", hello)

    @hookimpl
    async def reportd_startup(self, context):
        self.calls.append("startup")

    @hookimpl
    def reportd_shutdown(self, context):
        self.calls.append("shutdown")


async def test_hook_order_through_a_real_app(aiohttp_client, tmp_path):
    plugin = Recording()
    client = await aiohttp_client(build(tmp_path, plugin))
    assert plugin.calls[:3] == ["declare_settings", "register_processors", "add_routes"]
    assert "startup" in plugin.calls
    response = await client.put(
        PUT, data=sample("agent-changes.json"), headers={"Content-Type": "application/json"}
    )
    assert await response.json() == ["store", "counting"]
    await wait_until(lambda: _has(plugin, f"process:{SAMPLE_CERTNAME}:5"))
    await client.close()
    calls = plugin.calls
    assert (
        calls.index("startup") < calls.index("processor_start") < calls.index(f"process:{SAMPLE_CERTNAME}:5")
    )
    assert calls[-2:] == ["processor_close", "shutdown"]


async def _has(plugin, call):
    return call in plugin.calls


def test_hook_reportd_declare_settings(tmp_path):
    plugin = Recording()
    app = build(tmp_path, plugin, processors="counting")
    assert app is not None
    bad = ini_for(tmp_path, processors="counting") + "[plugin:recording]\nlimit = many\n"
    config = load_config_string(bad, source="t.ini")
    pm = get_plugin_manager(load_entrypoints=False, plugin_paths=config.plugin_paths, plugins=[Recording()])
    with pytest.raises(ConfigError, match=r"t.ini: \[plugin:recording\] limit: expected an integer"):
        create_app(config, pm)
    unknown = ini_for(tmp_path, processors="counting") + "[plugin:recording]\nlimt = 3\n"
    config = load_config_string(unknown, source="t.ini")
    with pytest.raises(ConfigError, match=r"\[plugin:recording\] limt: unknown key"):
        create_app(config, get_plugin_manager(load_entrypoints=False, plugin_paths=config.plugin_paths,
                                              plugins=[Recording()]))  # fmt: skip


def test_hook_reportd_register_processors(tmp_path):
    with pytest.raises(ConfigError, match="no processor named 'nope'"):
        build(tmp_path, Recording(), processors="store, nope")

    class Twice(Recording):
        @hookimpl
        def reportd_declare_settings(self):
            return None

    with pytest.raises(ConfigError, match="two plugins register a processor named 'counting'"):
        config = load_config_string(ini_for(tmp_path), source="t.ini")
        pm = get_plugin_manager(
            load_entrypoints=False, plugin_paths=config.plugin_paths, plugins=[Recording(), Twice()]
        )
        create_app(config, pm)


async def test_hook_reportd_add_routes(aiohttp_client, tmp_path):
    client = await aiohttp_client(build(tmp_path, Recording()))
    assert await (await client.get("/recording")).json() == {"processors": ["store", "counting"]}


async def test_hook_reportd_startup(tmp_path):
    class FailingStartup:
        @hookimpl
        def reportd_startup(self, context):
            raise RuntimeError("cannot start")

    config = load_config_string(ini_for(tmp_path), source="t.ini")
    pm = get_plugin_manager(
        load_entrypoints=False, plugin_paths=config.plugin_paths, plugins=[FailingStartup()]
    )
    runner = web.AppRunner(create_app(config, pm))
    with pytest.raises(RuntimeError, match="cannot start"):
        await runner.setup()
    await runner.cleanup()


async def test_hook_reportd_shutdown(aiohttp_client, tmp_path):
    class FailingShutdown:
        @hookimpl
        def reportd_shutdown(self, context):
            raise RuntimeError("shutdown failure must not stop the others")

    plugin = Recording()
    config = load_config_string(ini_for(tmp_path, processors="counting"), source="t.ini")
    pm = get_plugin_manager(
        load_entrypoints=False, plugin_paths=config.plugin_paths, plugins=[plugin, FailingShutdown()]
    )
    client = await aiohttp_client(create_app(config, pm))
    await client.close()
    assert plugin.calls[-1] == "shutdown"


def test_plugin_paths_and_blocking(tmp_path):
    config = load_config_string(ini_for(tmp_path, processors="recorder"), source="t.ini")
    pm = get_plugin_manager(load_entrypoints=False, plugin_paths=config.plugin_paths)
    infos = {info.name: info for info in list_plugins(pm)}
    assert infos["reportd_plugins.store"].processors == ("store",)
    local = infos["reportd_local_testprocs"]
    assert local.source.endswith("tests/local_plugins/testprocs.py")
    assert set(local.processors) == {"recorder", "flaky", "broken", "slow", "unready", "picky"}
    blocked = get_plugin_manager(load_entrypoints=False, blocked=["reportd_plugins.store"])
    assert "reportd_plugins.store" not in {info.name for info in list_plugins(blocked)}
    assert "reportd_plugins.store" not in sys.modules or blocked.get_plugin("reportd_plugins.store") is None


def test_public_api_exports():
    for name in reportd.__all__:
        assert hasattr(reportd, name), name


async def test_example_plugin_installed_with_pip_runs_in_a_real_daemon(daemon_factory, tmp_path, monkeypatch):
    target = tmp_path / "site"
    # exactly how a site installs a plugin package (build isolation and all)
    installed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(EXAMPLE)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    monkeypatch.setenv("PYTHONPATH", str(target))
    ini = ini_for(tmp_path / "data", processors="store, hello") + "[plugin:hello]\ngreeting = bonjour\n"
    daemon = daemon_factory(ini).start()
    listing = daemon.cli("plugins")
    assert listing.returncode == 0
    assert "hello 0.1.0  (entry point (reportd-hello))" in listing.stdout
    async with aiohttp.ClientSession() as session:
        async with session.put(daemon.url + PUT, data=sample("agent-changes.json"),
                               headers={"Content-Type": "application/json"}) as response:  # fmt: skip
            assert await response.json() == ["store", "hello"]

        async def seen():
            async with session.get(daemon.url + "/hello/count") as response:
                return (await response.json())["seen"] == 1

        await wait_until(seen)
    assert daemon.stop() == 0
    assert '"greeting": "bonjour"' in daemon.log_path.read_text()


def test_plugin_guide_shows_the_example_plugin_verbatim():
    import ast
    import textwrap

    # read from the file: editable installs load reportd_plugins as a namespace package
    guide = ast.get_docstring(ast.parse((ROOT / "plugins" / "__init__.py").read_text()))
    block = guide.split("which the test suite installs with pip and runs in a real daemon)::\n\n", 1)[1]
    block = block.split("\nInstall it so reportd finds it", 1)[0]
    example = (EXAMPLE / "reportd_hello.py").read_text()
    code = example.split('"""\n\n', 1)[1]  # the example's own docstring is not in the guide
    assert textwrap.dedent(block).strip() == code.strip()


async def test_hook_reportd_start_job_run(aiohttp_client, tmp_path):
    from reportd.jobs import JobRunError

    calls = []

    class Trigger:
        @hookimpl
        def reportd_start_job_run(self, context, job, certname):
            calls.append((job.name, job.environment, job.noop, job.concurrency, certname))
            if certname.startswith("manual"):
                return None  # declined: the node waits for a report

            async def run():
                if certname.startswith("bad"):
                    raise JobRunError(f"cannot reach {certname}")

            return run()

    anonymous = "anonymous_permissions = upload_config_reports, view_reports, view_jobs, edit_jobs\n"
    client = await aiohttp_client(build(tmp_path, Trigger(), anonymous, processors="store"))
    nodes = ["bad.example.test", "manual.example.test", SAMPLE_CERTNAME]
    response = await client.post(
        "/orchestrator/v1/command/deploy",
        json={"environment": "production", "scope": {"nodes": nodes}, "noop": True, "concurrency": 5},
    )
    assert response.status == 202

    async def node_states():
        body = await (await client.get("/orchestrator/v1/jobs/1/nodes")).json()
        return {n["name"]: (n["state"], n["details"].get("message")) for n in body["items"]}

    async def started():
        states = await node_states()
        return states if states["bad.example.test"][0] == "errored" else None

    states = await wait_until(started)
    assert states["bad.example.test"] == ("errored", "cannot reach bad.example.test")
    assert states["manual.example.test"] == ("ready", None)
    assert states[SAMPLE_CERTNAME][0] == "running"
    assert sorted(calls) == sorted(("1", "production", True, 5, n) for n in nodes)
    body = orjson.loads(sample("agent-changes.json"))
    body["job_id"] = "1"
    response = await client.put(PUT, data=orjson.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status == 200

    async def reported():
        return (await node_states())[SAMPLE_CERTNAME][0] == "finished"

    await wait_until(reported)
    assert len(calls) == 3  # each node asked once


def test_hook_reportd_register_commands(tmp_path):
    from click.testing import CliRunner

    from reportd.cli import cli

    plugins = tmp_path / "cmd_plugins"
    plugins.mkdir()
    (plugins / "greeter.py").write_text(
        "import click\n"
        "from reportd import hookimpl\n"
        "from reportd.cli import plugin_context\n\n"
        "@hookimpl\n"
        "def reportd_register_commands(cli):\n"
        "    @cli.command()\n"
        "    def greet():\n"
        "        '''Say which processors are enabled.'''\n"
        "        context = plugin_context(click.get_current_context())\n"
        "        click.echo('hello ' + ','.join(context.processors))\n\n"
        "    @cli.command('plugins')\n"
        "    def shadow():\n"
        "        click.echo('the built-in wins')\n"
    )
    ini = tmp_path / "reportd.ini"
    ini.write_text(
        f"[reportd]\ndata_dir = {tmp_path / 'data'}\nprocessors = store\nplugin_paths = {plugins}\n"
    )
    runner = CliRunner()
    result = runner.invoke(cli, ["--config", str(ini), "greet"])
    assert (result.exit_code, result.output) == (0, "hello store\n")
    assert "greet" in runner.invoke(cli, ["--config", str(ini), "--help"]).output
    shadowed = runner.invoke(cli, ["--config", str(ini), "plugins"])
    assert "the built-in wins" not in shadowed.output and "reportd_local_greeter" in shadowed.output
    # without the plugin (no plugin_paths) the command does not exist
    plain = tmp_path / "plain.ini"
    plain.write_text(f"[reportd]\ndata_dir = {tmp_path / 'data'}\n")
    missing = runner.invoke(cli, ["--config", str(plain), "greet"])
    assert missing.exit_code == 2 and "No such command 'greet'" in missing.output
