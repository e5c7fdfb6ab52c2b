"""A real Puppet 7 agent (Debian's puppet-agent) against a real reportd over mutual TLS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import free_port

SCRIPT = Path(__file__).with_name("check-real-agent.sh")


def test_real_puppet_agent_over_mutual_tls(tmp_path, puppet_agent):
    reportd = Path(sys.executable).with_name("reportd")
    result = subprocess.run(
        ["bash", str(SCRIPT)],
        env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "REPORTD": str(reportd), "HOME": str(tmp_path),
             "REPORTD_PORT": str(free_port()), "PUPPET": puppet_agent},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert (
        "stored, in arrival order: ['failed', 'changed', 'noop_pending', 'failed', 'changed', 'changed']"
        in result.stderr
    )
    assert "job 4711: finished, node agent01.example.test finished" in result.stderr
    assert "reportd accepted 6 reports over mutual TLS" in result.stderr
