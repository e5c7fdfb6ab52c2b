"""Schemathesis against a live ``reportd serve``, from reportd/openapi.json.

Every documented operation is sent examples, boundary values and generated
input (and invalid input, which must be refused), then chains of calls along
the document's links (deploy a job, then read and stop it; create a schedule,
then read, change and delete it...). Every answer must be a non-5xx that the
document allows: its status code, content type, headers and body schema. The
daemon's client has every permission, so each handler runs to its own checks.

The generation is deterministic (Hypothesis derandomized, no example
database): the same document and code send the same requests, here and in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests.support import ROOT, TESTS, ini_for

DOCUMENT = ROOT / "reportd" / "openapi.json"
HOOKS = TESTS / "support" / "schemathesis_hooks.py"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    # what the document says is invalid must be refused: its constraints are the handlers' own
    "negative_data_rejection",
)
# Per operation and phase; about 7,000 requests in all, 40-60 s on one core.
MAX_EXAMPLES = 20


def _operations() -> int:
    paths = json.loads(DOCUMENT.read_text())["paths"]
    return sum(len(methods) for methods in paths.values())


def test_every_answer_of_the_live_daemon_is_one_its_openapi_document_allows(daemon_factory, tmp_path):
    daemon = daemon_factory(
        ini_for(tmp_path / "data", "anonymous_permissions = admin\n", processors="store, metrics")
    ).start()
    report = tmp_path / "schemathesis.json"
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", str(DOCUMENT), "--url", daemon.url,
        "--checks", ",".join(CHECKS), "--max-examples", str(MAX_EXAMPLES), "--generation-deterministic",
        # credentials are not needed (anonymous_permissions) and would only be refused or ignored
        "--generation-with-security-parameters", "false",
        "--workers", "1", "--no-color", "--output-truncate", "false",
        "--report", "json", "--report-json-path", str(report),
    ]  # fmt: skip
    started = time.monotonic()
    # The file, not the served URL: Schemathesis skips the operation that serves the document it loaded
    # (test_openapi.py checks that the served document is this file).
    result = subprocess.run(
        command, cwd=tmp_path, env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-40_000:] + result.stderr[-5_000:]
    summary = json.loads(report.read_text())
    cases = summary["test_cases"]
    print(
        f"\nschemathesis: {cases['generated']} cases, {summary['operations']['tested']} operations, {seconds:.0f} s"
    )
    assert summary["operations"]["tested"] == _operations()
    assert all(phase["status"] == "success" for phase in summary["phases"].values()), summary["phases"]
    assert cases["generated"] > 5000
    assert cases["with_failures"] == cases["errored"] == 0
    log = daemon.log_path.read_text()
    assert '"request_failed"' not in log
    assert "Traceback" not in log
    assert '"path": "//api/config_reports"' in log  # the hook sent chef-handler-foreman's double slash
    assert daemon.stop() == 0
