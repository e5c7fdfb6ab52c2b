"""The ``reportd`` command: check-config, plugins, token, send, reports, queue, global options."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from reportd.appkeys import STORAGE
from reportd.auth import hash_token
from reportd.cli import cli
from tests.support import LOCAL_PLUGINS, PUPPET, ROOT, SAMPLE_CERTNAME, ini_for, sample

STORE_PLUGIN = ROOT / "plugins" / "store.py"


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


@pytest.fixture
def ini(tmp_path):
    """Write an INI (the test defaults plus ``extra``) and return its path."""

    def write(extra: str = "", *, processors: str = "store", plugins: str = "", name: str = "r.ini") -> Path:
        path = tmp_path / name
        path.write_text(ini_for(tmp_path, extra, processors=processors, plugins=plugins))
        return path

    return write


def wait_for(check, within: float = 15.0, interval: float = 0.1):
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        time.sleep(interval)


# -- check-config --------------------------------------------------------------


def test_check_config_ok(ini, tmp_path):
    path = ini(processors="store, recorder")
    result = run("-c", str(path), "check-config")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{path}: OK (processors: store, recorder)\n"
        f"database: sqlite:///{tmp_path / 'reportd.sqlite3'}, schema version 0, 5 migrations to apply"
        " at start (auto_migrate)\n"
    )


def test_check_config_reports_every_problem_with_a_suggestion(tmp_path):
    path = tmp_path / "r.ini"
    path.write_text(
        "[reportd]\nprocesors = store\nlisten = 127.0.0.1:99999\nprocessors = store, puppetdb\n"
        "disabled_plugins = reportd_plugins.nope\n[plugin:puppetdb]\nurls = puppetdb:8080\n"
    )
    result = run("-c", str(path), "check-config")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: {path}: [reportd] procesors: unknown key (did you mean processors?)",
        f"Error: {path}: [reportd] listen: expected HOST:PORT with a port from 0 to 65535, got '127.0.0.1:99999'",
        f"Error: {path}: [plugin:puppetdb] urls: expected an http:// or https:// URL with a host,"
        " got 'puppetdb:8080'",
        f"Error: {path}: [reportd] disabled_plugins: no plugin named 'reportd_plugins.nope'"
        " (did you mean reportd_plugins.store?) (see `reportd plugins`)",
        "4 problems",
    ]
    path.write_text(
        f"[reportd]\ndata_dir = {tmp_path}\nprocessors = store, puppetdb\n"
        "disabled_plugins = reportd_plugins.nope\n[plugin:puppetdb]\nurls = puppetdb:8080\n"
    )
    result = run("-c", str(path), "check-config")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: {path}: [plugin:puppetdb] urls: expected an http:// or https:// URL with a host,"
        " got 'puppetdb:8080'",
        f"Error: {path}: [reportd] disabled_plugins: no plugin named 'reportd_plugins.nope'"
        " (did you mean reportd_plugins.store?) (see `reportd plugins`)",
        "2 problems",
    ]


def test_check_config_names_mistakes_of_every_stage_in_one_run(tmp_path):
    path = tmp_path / "five.ini"
    path.write_text(
        "[reportd]\nstale_afer = 2h\nlisten = 127.0.0.1:99999\ntls_cert = /nope.pem\ntls_key = /nope.key\n"
        "processors = store, nope\n[plugin:stor]\nx = 1\n[plugin:store]\nretention_dayz = 3\n"
    )
    result = run("-c", str(path), "check-config")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: {path}: [reportd] stale_afer: unknown key (did you mean stale_after?)",
        f"Error: {path}: [reportd] listen: expected HOST:PORT with a port from 0 to 65535, got '127.0.0.1:99999'",
        f"Error: {path}: [reportd] tls_cert: no such file: /nope.pem",
        f"Error: {path}: [reportd] tls_key: no such file: /nope.key",
        f"Error: {path}: [plugin:stor]: no loaded plugin has this section (did you mean store?)",
        f"Error: {path}: [plugin:store] retention_dayz: unknown key (did you mean retention_days?)",
        f"Error: {path}: [reportd] processors: no processor named 'nope' (loaded: metrics, puppetdb, store)",
        "7 problems",
    ]


def test_check_config_finds_what_serve_would_fail_on(tmp_path):
    import trustme

    ca = trustme.CA()
    ca.issue_cert("a.example.test").cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    ca.issue_cert("b.example.test").private_key_pem.write_to_path(tmp_path / "key.pem")
    path = tmp_path / "r.ini"
    path.write_text(
        f"[reportd]\ndata_dir = /proc/reportd-here\ntls_cert = {tmp_path / 'cert.pem'}\n"
        f"tls_key = {tmp_path / 'key.pem'}\n"
    )
    result = run("-c", str(path), "check-config")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == f"Error: {path}: [reportd] TLS: tls_key is not the private key of tls_cert"
    assert lines[1].startswith(
        f"Error: {path}: [reportd] data_dir: /proc/reportd-here cannot be created in /proc: "
    )
    assert lines[2] == "2 problems"


@pytest.mark.parametrize(
    ("database", "cause"),
    [
        (
            "postgresql://postgres@127.0.0.1:5432/reportd_no_such_db",
            'database "reportd_no_such_db" does not exist',
        ),
        ("postgresql://postgres@127.0.0.1:1/test", "Connect call failed ('127.0.0.1', 1)"),
        (
            "postgresql://reportd_no_such_role@127.0.0.1:5432/test",
            'role "reportd_no_such_role" does not exist',
        ),
        ("postgresql://postgres:secret@127.0.0.1:5432/test?sslmode=require", "rejected SSL upgrade"),
    ],
)
def test_a_wrong_database_is_one_line_everywhere(tmp_path, database, cause):
    path = tmp_path / "r.ini"
    path.write_text(f"[reportd]\ndatabase = {database}\ndata_dir = {tmp_path}\n")
    shown = database.replace(":secret@", ":***@")
    checked = run("-c", str(path), "check-config")
    assert checked.exit_code == 1
    assert checked.stderr.startswith(f"Error: {path}: [reportd] database: cannot open {shown}: ")
    assert cause in checked.stderr and checked.stderr.count("\n") == 1
    for command in (["db", "status"], ["serve", "--listen", "127.0.0.1:0"]):
        result = subprocess.run(
            [sys.executable, "-m", "reportd", "-c", str(path), *command],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith(f"Error: cannot connect to PostgreSQL ({shown}): "), result.stderr
        assert cause in result.stderr and "Traceback" not in result.stderr and "secret" not in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "r.ini"
    path.write_text("[reportd]\ndatabase = postgresql://postgres@127.0.0.1:1/test\n")
    result = subprocess.run(
        [sys.executable, "-m", "reportd", "--debug", "-c", str(path), "db", "status"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "StorageUnavailable" in result.stderr


def test_check_config_unknown_key(ini):
    path = ini("colour = blue\n")
    result = run("-c", str(path), "check-config")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"Error: {path}: [reportd] colour: unknown key" in result.stderr


def test_check_config_bad_value(ini):
    path = ini("max_body_size = lots\n")
    result = run("-c", str(path), "check-config")
    assert result.exit_code == 1
    assert f"{path}: [reportd] max_body_size: expected a size" in result.stderr
    assert "'lots'" in result.stderr


def test_check_config_unknown_plugin_section(ini):
    path = ini(plugins="[plugin:nope]\nurl = http://x\n")
    result = run("-c", str(path), "check-config")
    assert result.exit_code == 1
    assert f"{path}: [plugin:nope]: no loaded plugin has this section" in result.stderr


def test_check_config_unknown_plugin_key(ini):
    path = ini(plugins="[plugin:store]\nretention_dayz = 3\n")
    result = run("-c", str(path), "check-config")
    assert result.exit_code == 1
    assert f"{path}: [plugin:store] retention_dayz: unknown key" in result.stderr


def test_check_config_unknown_processor(ini):
    path = ini(processors="store, nope")
    result = run("-c", str(path), "check-config")
    assert result.exit_code == 1
    assert f"{path}: [reportd] processors: no processor named 'nope'" in result.stderr
    # the message lists what is loaded
    assert "store" in result.stderr.split("loaded:")[1] and "recorder" in result.stderr


def test_check_config_processor_of_a_disabled_plugin(ini):
    path = ini("disabled_plugins = reportd_local_testprocs\n", processors="store, recorder")
    result = run("-c", str(path), "check-config")
    assert result.exit_code == 1
    # the disabled plugin is not imported: its section is now one nobody declares
    assert f"{path}: [plugin:testprocs]: no loaded plugin has this section" in result.stderr


def test_check_config_missing_plugin_path(tmp_path):
    path = tmp_path / "r.ini"
    path.write_text(f"[reportd]\nplugin_paths = {tmp_path / 'nowhere'}\n")
    result = run("-c", str(path), "check-config")
    assert result.exit_code == 1
    assert f"plugin_paths: {tmp_path / 'nowhere'}: not a directory" in result.stderr


def test_check_config_missing_file(tmp_path):
    result = run("-c", str(tmp_path / "absent.ini"), "check-config")
    assert result.exit_code == 1
    assert f"{tmp_path / 'absent.ini'}: cannot read" in result.stderr


# -- plugins -------------------------------------------------------------------


def test_plugins_lists_builtin_and_local(ini):
    result = run("-c", str(ini(processors="store, flaky")), "plugins")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    store = lines.index(f"reportd_plugins.store  ({STORE_PLUGIN})")
    assert lines[store + 1] == "  processors: store"
    assert (
        lines[store + 2]
        == "  hooks: reportd_add_routes, reportd_declare_settings, reportd_register_commands,"
        " reportd_register_processors"
    )  # the store's `reports` command is the store plugin's own
    local = lines.index(f"reportd_local_testprocs  ({LOCAL_PLUGINS / 'testprocs.py'})")
    assert lines[local + 1] == (
        "  processors: recorder (disabled), flaky, broken (disabled), slow (disabled), unready (disabled),"
        " picky (disabled)"
    )
    assert lines[local + 2] == "  hooks: reportd_declare_settings, reportd_register_processors"


def test_plugins_leaves_out_disabled(ini):
    result = run("-c", str(ini("disabled_plugins = reportd_local_testprocs\n")), "plugins")
    assert result.exit_code == 0, result.output
    assert "reportd_plugins.store" in result.stdout
    assert "testprocs" not in result.stdout


# -- token ---------------------------------------------------------------------


def test_token_lifecycle(ini):
    path = str(ini())
    created = run("-c", path, "token", "create", "grafana", "-p", "view_reports")
    assert created.exit_code == 0, created.output
    assert created.stderr == ""
    assert re.fullmatch(r"rpd_[A-Za-z0-9_-]{40,}\n", created.stdout), created.stdout
    secret = created.stdout.strip()

    second = run(
        "-c", path, "token", "create", "uploader", "-p", "upload_config_reports", "-p", "view_reports"
    )
    assert second.exit_code == 0, second.output
    assert second.stdout.strip() != secret

    listed = run("-c", path, "token", "list")
    assert listed.exit_code == 0, listed.output
    header, *lines = listed.stdout.splitlines()
    assert header.split() == ["NAME", "CREATED", "EXPIRES", "PERMISSIONS"]
    assert len(lines) == 2
    assert lines[0].split()[0] == "grafana" and lines[0].split()[2:] == ["never", "view_reports"]
    assert lines[1].split()[0] == "uploader"
    assert lines[1].split()[-1] == "upload_config_reports,view_reports"
    as_json = [orjson.loads(line) for line in run("-c", path, "token", "list", "--json").stdout.splitlines()]
    assert [(t["name"], t["permissions"], t["expires_at"], t["expired"]) for t in as_json] == [
        ("grafana", ["view_reports"], None, False),
        ("uploader", ["upload_config_reports", "view_reports"], None, False),
    ]
    assert secret not in listed.stdout and "rpd_" not in listed.stdout

    again = run("-c", path, "token", "create", "grafana", "-p", "admin")
    assert again.exit_code == 1
    assert "a token named 'grafana' exists" in again.stderr
    assert "rpd_" not in again.stdout

    revoked = run("-c", path, "token", "revoke", "grafana")
    assert revoked.exit_code == 0, revoked.output
    assert revoked.stdout == "revoked grafana\n"
    assert [line.split()[0] for line in run("-c", path, "token", "list").stdout.splitlines()[1:]] == [
        "uploader"
    ]

    twice = run("-c", path, "token", "revoke", "grafana")
    assert twice.exit_code == 1
    assert "no token named 'grafana'" in twice.stderr


def test_token_needs_a_known_permission(ini):
    path = str(ini())
    assert run("-c", path, "token", "create", "x").exit_code == 2
    bad = run("-c", path, "token", "create", "x", "-p", "root")
    assert bad.exit_code == 2
    assert "root" in bad.stderr
    empty = run("-c", path, "token", "list")
    assert (empty.stdout, empty.stderr) == ("", "no tokens (reportd token create NAME -p ...)\n")


async def test_cli_token_works_against_the_app(ini, make_app, aiohttp_client):
    path = str(ini())
    client = await aiohttp_client(make_app("anonymous_networks =\n"))
    created = await asyncio.to_thread(run, "-c", path, "token", "create", "api", "-p", "view_reports")
    secret = created.stdout.strip()
    response = await client.get("/api/v1/reports", headers={"Authorization": f"Bearer {secret}"})
    assert response.status == 200
    assert (await response.json())["items"] == []
    response = await client.get("/api/v1/reports", headers={"Authorization": f"Bearer {secret}x"})
    assert response.status == 403


async def test_an_expired_token_is_refused(ini, make_app, aiohttp_client):
    path = str(ini())
    client = await aiohttp_client(make_app("anonymous_networks =\n"))
    for bad in ("soon", "0s"):
        refused = await asyncio.to_thread(
            run, "-c", path, "token", "create", "x", "-p", "admin", "--expires", bad
        )
        assert refused.exit_code == 2 and "--expires" in refused.stderr
    forever = (
        await asyncio.to_thread(run, "-c", path, "token", "create", "forever", "-p", "view_reports")
    ).stdout
    created = await asyncio.to_thread(
        run, "-c", path, "token", "create", "brief", "-p", "view_reports", "--expires", "2s"
    )
    assert created.exit_code == 0, created.output
    expires_at = time.time() + 2  # at the latest
    brief = created.stdout.strip()

    async def status(secret: str) -> int:
        response = await client.get("/api/v1/reports", headers={"Authorization": f"Bearer {secret.strip()}"})
        return response.status

    assert await status(brief) == 200  # and now cached for 5 s
    listed = (await asyncio.to_thread(run, "-c", path, "token", "list")).stdout.splitlines()[1:]
    assert [line.split()[2] for line in listed] == [listed[0].split()[2], "never"]
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at)) >= listed[0].split()[2]
    await asyncio.sleep(max(0.0, expires_at - time.time()) + 0.1)
    # within the 5 s cache of the lookup: the expiry applies on time regardless
    assert await status(brief) == 403
    assert await status(forever) == 200
    listed = (await asyncio.to_thread(run, "-c", path, "token", "list")).stdout.splitlines()[1:]
    assert listed[0].split()[0] == "brief" and listed[0].split()[3] == "(expired)"
    assert listed[0].split()[-1] == "view_reports"


async def test_a_stored_expiry_is_refused_on_every_api(make_app, aiohttp_client):
    client = await aiohttp_client(make_app("anonymous_networks =\n"))
    storage = client.app[STORAGE]
    everything = ["admin"]
    await storage.create_token("past", hash_token("rpd_past"), everything, time.time() - 60, time.time() - 1)
    await storage.create_token(
        "future", hash_token("rpd_future"), everything, time.time(), time.time() + 3600
    )
    schedules = "/api/v1/reports/schedules?paginate=true&page=1&page_size=20"
    for path in ("/api/v1/reports", "/orchestrator/v1/jobs", schedules, "/metrics"):
        past = await client.get(path, headers={"X-Authentication": "rpd_past"})
        future = await client.get(path, headers={"X-Authentication": "rpd_future"})
        assert (past.status, future.status) == (403, 200), path
    response = await client.put(
        f"/puppet/v3/report/{SAMPLE_CERTNAME}?environment=production",
        data=sample("agent-changes.json"),
        headers={"Content-Type": "application/json", "Authorization": "Bearer rpd_past"},
    )
    assert response.status == 403


# -- send, reports -------------------------------------------------------------


@pytest.fixture
def daemon(daemon_factory, tmp_path):
    return daemon_factory(ini_for(tmp_path)).start()


def _reports(config: Path, *args: str) -> list[str]:
    """The listing's rows (its header checked), or its JSON lines."""
    result = run("-c", str(config), "reports", *args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    if "--json" in args or not lines:
        return lines
    assert lines[0].split() == ["ID", "RUN", "TIME", "STATUS", "ENVIRONMENT", "CERTNAME"]
    return lines[1:]


def test_send_and_show(daemon, tmp_path):
    config = daemon.config_path
    json_file, yaml_file = PUPPET / "agent-changes.json", PUPPET / "http-processor-failure.yaml"
    sent = run("send", str(json_file), str(yaml_file), "--url", daemon.url)
    assert sent.exit_code == 0, sent.output
    assert sent.stdout.splitlines() == [f'{json_file}: 200 ["store"]', f'{yaml_file}: 200 ["store"]']
    gz_files = [PUPPET / "agent-noop.json", PUPPET / "agent-catalog-failure.json"]
    sent = run("send", "--gzip", *map(str, gz_files), "--url", daemon.url + "/")
    assert sent.exit_code == 0, sent.output
    assert sent.stdout.count(': 200 ["store"]') == 2

    lines = wait_for(lambda: (lines := _reports(config)) and len(lines) == 4 and lines)
    assert all(line.endswith(f" {SAMPLE_CERTNAME}") for line in lines)
    # newest run first, each with its own status and environment
    statuses = [line.split()[2] for line in lines]
    assert statuses == ["failed", "failed", "noop_pending", "changed"]
    assert all(line.split()[3] == "production" for line in lines)

    log = daemon.log_path.read_text()
    accepted = [orjson.loads(line) for line in log.splitlines() if '"report_accepted"' in line]
    ids = {event["transaction_uuid"]: event["report_id"] for event in accepted}
    assert len(ids) == 4
    # the PUT path for JSON, /reports/upload for YAML: the stored envelopes say so
    for name, uuid, content_type, path_certname in [
        ("agent-changes.json", "3e230e53-402f-4e33-bffa-4dcbd3e4f65e", "application/json", SAMPLE_CERTNAME),
        ("http-processor-failure.yaml", "edd685cf-de74-45ec-be8c-12d2bb874e2d", "application/x-yaml", None),
        ("agent-noop.json", "5d8686ce-6404-4964-abc2-317f01ac94d7", "application/json", SAMPLE_CERTNAME),
        ("agent-catalog-failure.json", "183ec990-c27e-4078-aa04-b6847d9a5b34", "application/json", SAMPLE_CERTNAME),
    ]:  # fmt: skip
        report_id = str(ids[uuid])
        raw = run("-c", str(config), "reports", "show", report_id, "--raw")
        assert raw.exit_code == 0, raw.output
        assert raw.stdout_bytes == sample(name), name

        shown = run("-c", str(config), "reports", "show", report_id)
        assert shown.exit_code == 0, shown.output
        normalized = orjson.loads(shown.stdout)
        assert normalized["certname"] == SAMPLE_CERTNAME
        assert normalized["transaction_uuid"] == uuid
        assert normalized["id"] == int(report_id)
        assert normalized["envelope"]["content_type"] == content_type
        assert normalized["envelope"]["path_certname"] == path_certname

    # (columns are as wide as the rows shown need)
    assert [line.split() for line in _reports(config, "--status", "changed")] == [lines[3].split()]
    assert [line.split() for line in _reports(config, "--limit", "1")] == [lines[0].split()]
    assert _reports(config, "--certname", "nobody.example.test") == []
    nobody = run("-c", str(config), "reports", "--certname", "nobody.example.test", "--status", "failed")
    assert (nobody.stdout, nobody.stderr) == (
        "",
        "no reports with certname nobody.example.test, status failed\n",
    )
    bogus = run("-c", str(config), "reports", "--status", "bogus")
    assert bogus.exit_code == 2 and "'bogus' is not one of 'failed', 'noop_pending'" in bogus.stderr
    as_json = [orjson.loads(line) for line in _reports(config, "--json", "--status", "noop_pending")]
    assert [(r["certname"], r["status"], r["environment"]) for r in as_json] == [
        (SAMPLE_CERTNAME, "noop_pending", "production")
    ]
    # a run's time is when it ended: 17:23:08.51 plus its 1.04 s total
    assert as_json[0]["run_time"] == "2026-11-23T17:23:09Z"

    missing = run("-c", str(config), "reports", "show", "999999")
    assert missing.exit_code == 1
    assert "no report 999999" in missing.stderr


def test_send_failures(daemon, tmp_path):
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(b"\x00\x01 this is no report {")
    result = run("send", str(garbage), "--url", daemon.url)
    assert result.exit_code == 1
    assert f"{garbage}: not JSON or YAML" in result.stderr

    not_a_report = tmp_path / "bad.json"
    not_a_report.write_bytes(b'{"host": "lab-agent.example.test", "report_format": 12}')
    result = run("send", str(not_a_report), "--url", daemon.url)
    assert result.exit_code == 1
    assert f"{not_a_report}: 400 " in result.stderr
    assert "time: required" in result.stderr

    # one bad file does not stop the others
    result = run("send", str(garbage), str(PUPPET / "agent-changes.json"), "--url", daemon.url)
    assert result.exit_code == 1
    assert result.stdout == f'{PUPPET / "agent-changes.json"}: 200 ["store"]\n'

    result = run("send", str(PUPPET / "agent-changes.json"), "--url", "http://127.0.0.1:1")
    assert result.exit_code == 1
    assert "refused" in result.stderr.lower()
    assert f"{PUPPET / 'agent-changes.json'}: cannot reach http://127.0.0.1:1: " in result.stderr

    hostless = tmp_path / "hostless.json"
    hostless.write_bytes(orjson.dumps({**orjson.loads(sample("agent-changes.json")), "host": None}))
    result = run("send", str(hostless), "--url", daemon.url)
    assert result.exit_code == 1
    assert result.stderr == (
        f"{hostless}: the report names no host (a Puppet report's certname): nothing to send it as\n"
    )


def test_send_json_that_is_not_an_object(daemon, tmp_path):
    # Valid JSON, but not a report object: reported like any bad file, and the
    # next file is still sent.
    array = tmp_path / "array.json"
    array.write_bytes(b"[1, 2, 3]")
    result = run("send", str(array), str(PUPPET / "agent-noop.json"), "--url", daemon.url)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), result.exception
    assert str(array) in result.stderr
    assert result.stdout == f'{PUPPET / "agent-noop.json"}: 200 ["store"]\n'


# -- queue ---------------------------------------------------------------------


def _queue(config: Path) -> str:
    result = run("-c", str(config), "queue")
    assert result.exit_code == 0, result.output
    return result.stdout


def _dead_count(output: str, processor: str) -> int:
    assert output.splitlines()[0].split() == ["PROCESSOR", "PENDING", "DEAD", "OLDEST", "PENDING"]
    for line in output.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == processor:
            return int(fields[2])
    raise AssertionError(f"no {processor} line in {output!r}")


def _dead_letter_events(log_path: Path, report_id: int) -> list[dict]:
    events = [orjson.loads(line) for line in log_path.read_bytes().splitlines() if line.startswith(b"{")]
    return [
        e for e in events if e.get("event") == "processor_dead_letter" and e.get("report_id") == report_id
    ]


def test_queue_and_retry(daemon_factory, tmp_path):
    daemon = daemon_factory(ini_for(tmp_path, "max_attempts = 2\n", processors="store, broken")).start()
    config = daemon.config_path
    sent = run("send", str(PUPPET / "agent-changes.json"), "--url", daemon.url)
    assert sent.exit_code == 0, sent.output
    assert sent.stdout.endswith(': 200 ["store","broken"]\n')
    report_id = orjson.loads(
        next(line for line in daemon.log_path.read_text().splitlines() if '"report_accepted"' in line)
    )["report_id"]

    output = wait_for(lambda: (out := _queue(config)) and _dead_count(out, "broken") == 1 and out)
    header, *rows = output.splitlines()
    assert header.split() == ["PROCESSOR", "PENDING", "DEAD", "OLDEST", "PENDING"]
    assert rows[0].split() == ["broken", "0", "1", "-"]
    assert (
        f"  broken report {report_id} ({SAMPLE_CERTNAME}), 2 attempts: RuntimeError: broken processor"
        in output.splitlines()
    )
    wait_for(lambda: _dead_count(_queue(config), "store") == 0 and _reports(config))
    assert len(_dead_letter_events(daemon.log_path, report_id)) == 1

    retried = run("-c", str(config), "queue", "retry")
    # it waits for the daemon's next attempt, which fails again: it says so, and exits 1
    assert retried.exit_code == 1, retried.output
    assert retried.stdout == (
        "1 deliveries queued again\n"
        f"broken report {report_id}: failed again: RuntimeError: broken processor\n"
    )

    # attempted again, dead again
    events = wait_for(lambda: len(e := _dead_letter_events(daemon.log_path, report_id)) == 2 and e)
    assert [e["attempt"] for e in events] == [2, 2]
    assert all(e["processor"] == "broken" and e["error"] == "RuntimeError: broken processor" for e in events)
    output = wait_for(lambda: (out := _queue(config)) and _dead_count(out, "broken") == 1 and out)
    assert output.splitlines()[1].split() == ["broken", "0", "1", "-"]
    # the store delivered it once and only once
    assert len(_reports(config)) == 1

    # nothing dead for this processor, or no such report: nothing to retry, and it says so
    nothing = run("-c", str(config), "queue", "retry", "--processor", "store")
    assert (nothing.stdout, nothing.stderr) == ("0 deliveries queued again\n", "no dead letters of store\n")
    unknown = run("-c", str(config), "queue", "retry", "--processor", "nope")
    assert (
        unknown.exit_code == 2 and "no processor named 'nope' (known: store, broken, jobs)" in unknown.stderr
    )
    as_json = [orjson.loads(line) for line in run("-c", str(config), "queue", "--json").stdout.splitlines()]
    assert {q["processor"]: (q["pending"], q["dead"]) for q in as_json} == {"broken": (0, 1), "store": (0, 0)}
    assert run("-c", str(config), "queue", "retry", str(report_id + 100)).stdout == (
        "0 deliveries queued again\n"
    )
    assert daemon.stop() == 0


# -- global options ------------------------------------------------------------


def test_data_dir_option_overrides_the_ini(ini, tmp_path):
    path = str(ini())
    other = tmp_path / "elsewhere"
    created = run("-c", path, "--data-dir", str(other), "token", "create", "moved", "-p", "admin")
    assert created.exit_code == 0, created.output
    assert (other / "reportd.sqlite3").is_file()
    assert not (tmp_path / "reportd.sqlite3").exists()
    assert (
        run("-c", path, "--data-dir", str(other), "token", "list").stdout.splitlines()[1].split()[0]
        == "moved"
    )
    assert run("-c", path, "token", "list").stdout == ""
    # and from the environment
    listed = run("-c", path, "token", "list", env={"REPORTD_DATA_DIR": str(other)})
    assert listed.stdout.splitlines()[1].split()[0] == "moved"


def test_reportd_config_environment_fallback(ini, tmp_path):
    good = ini(processors="store, recorder")
    result = run("check-config", env={"REPORTD_CONFIG": str(good)})
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"{good}: OK (processors: store, recorder)"

    bad = ini("colour = blue\n", name="bad.ini")
    result = run("check-config", env={"REPORTD_CONFIG": str(bad)})
    assert result.exit_code == 1
    assert f"{bad}: [reportd] colour: unknown key" in result.stderr

    # -c wins over the environment
    result = run("-c", str(good), "check-config", env={"REPORTD_CONFIG": str(bad)})
    assert result.exit_code == 0, result.output

    # the environment's file is the one the commands use
    created = run("token", "create", "via-env", "-p", "view_reports", env={"REPORTD_CONFIG": str(good)})
    assert created.exit_code == 0, created.output
    assert (tmp_path / "reportd.sqlite3").is_file()
    assert run("-c", str(good), "token", "list").stdout.splitlines()[1].split()[0] == "via-env"


def test_version():
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("reportd, version ")


def test_expire_on_an_empty_database(ini):
    result = run("-c", str(ini()), "expire")
    assert result.exit_code == 0, result.output
    assert result.stdout == "deleted 0 reports and 0 spool entries\n"


def test_expire_dry_run_says_what_would_go_and_deletes_nothing(ini, tmp_path):
    from reportd.storage import StoredReport, open_storage

    path = ini(plugins="[plugin:store]\nretention_days = 1\n")
    old, recent = time.time() - 3 * 86400, time.time() - 3600

    async def seed() -> None:
        storage = open_storage(f"sqlite:///{tmp_path / 'reportd.sqlite3'}")
        await storage.open()
        rows = [
            StoredReport(i, f"n{i}.example.test", "production", "unchanged", None, False, "puppet", "Puppet",
                         None, None, None, when, when, when, when, {})
            for i, when in ((1, old), (2, old), (3, recent))
        ]  # fmt: skip
        await storage.store_reports(rows)
        await storage.close()

    asyncio.run(seed())
    dry = run("-c", str(path), "expire", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.stdout == "would delete 2 reports and 0 spool entries\n"
    assert len(_reports(path)) == 3
    done = run("-c", str(path), "expire")
    assert done.stdout == "deleted 2 reports and 0 spool entries\n"
    assert [line.split()[-1] for line in _reports(path)] == ["n3.example.test"]
