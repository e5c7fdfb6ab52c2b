"""The real peers some tests need (PostgreSQL, a Puppet agent, a PuppetDB), looked for once per run.

A peer is looked for when the first test that needs it is set up (tests/conftest.py's
fixtures), so a run of other tests never waits for it. What was found, or why not, ends
the run as one line per kind (``summary_lines``): one for PostgreSQL, one for the real
Puppet peers.

- not found: its tests skip, and the summary line says how to provide it; with the
  peer's require variable set (``.ci/run`` sets them) they fail instead;
- named explicitly (an environment variable) or found, yet not working: its tests
  fail with the reason, never skip, since a typo or a broken server is not an absence.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest


@dataclass(frozen=True)
class Found:
    """What looking for a peer came to: ``where`` it is, or why it is ``missing`` or ``broken``."""

    where: str | None = None  # the DSN, URL or path the tests get
    how: str = ""  # how it was found, for the summary line
    missing: str | None = None
    broken: str | None = None


@dataclass
class Peer:
    name: str
    require_variable: str
    enable: str  # how to provide it, for skip reasons and the summary line
    found: Found | None = None
    used: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)

    def use(self, found: Found, nodeid: str) -> str:
        """The peer for the test ``nodeid``; else the test skips or fails, and is counted."""
        self.found = found
        if found.where is not None:
            self.used.add(nodeid)
            return found.where
        if found.broken is not None:
            self.failed.add(nodeid)
            pytest.fail(f"{self.name}: {found.broken}", pytrace=False)
        if os.environ.get(self.require_variable):
            self.failed.add(nodeid)
            pytest.fail(
                f"{self.name} is required ({self.require_variable} is set) but not available:"
                f" {found.missing}; {self.enable}",
                pytrace=False,
            )
        self.skipped.add(nodeid)
        pytest.skip(f"{self.name} not available: {found.missing}; {self.enable}")

    def summary(self) -> str | None:
        """What this peer was to this run, for its summary line; None if no test asked for it."""
        found = self.found
        if found is None:
            return None
        if found.where is not None:
            return f"{self.name}: {found.how}, used by {tests(len(self.used))}"
        if found.broken is not None:
            return f"{self.name}: BROKEN, {tests(len(self.failed))} failed: {found.broken}"
        if self.failed:
            return (
                f"{self.name}: REQUIRED but not available, {tests(len(self.failed))} failed: {found.missing}"
            )
        return (
            f"{self.name}: not available, {tests(len(self.skipped))} skipped ({found.missing}); {self.enable}"
        )


def tests(count: int) -> str:
    return f"{count} test" + ("" if count == 1 else "s")


# -- the real Puppet peers (tests/integration) --

PUPPETDB_URL_VARIABLE = "REPORTD_TEST_PUPPETDB_URL"
PEERS_REQUIRE_VARIABLE = "REPORTD_REQUIRE_PEERS"

PUPPET_AGENT = Peer(
    "puppet agent", PEERS_REQUIRE_VARIABLE, "to run it: apt-get install puppet-agent (Debian's Puppet 7)"
)
PUPPETDB = Peer(
    "PuppetDB",
    PEERS_REQUIRE_VARIABLE,
    f"to run it: tests/integration/puppetdb.sh start (as root: installs Debian's puppetdb, ~25 s),"
    f" or set {PUPPETDB_URL_VARIABLE} to one",
)


def find_puppet_agent() -> Found:
    path = shutil.which("puppet")
    if path is None:
        return Found(missing="no `puppet` on PATH")
    return Found(where=path, how=path)


def puppetdb_problem(url: str, timeout: float = 5.0) -> str | None:
    """Why the PuppetDB at ``url`` cannot take reports, or None if it is running."""
    status = f"{url.rstrip('/')}/status/v1/services/puppetdb-status"
    try:
        with urllib.request.urlopen(status, timeout=timeout) as response:
            state = json.loads(response.read()).get("state")
    except (OSError, ValueError, AttributeError) as exc:  # refused, HTTP error, not PuppetDB's JSON
        return f"{status}: {exc}"
    return None if state == "running" else f"{status}: state {state!r}, not 'running'"


def find_puppetdb(environ: Mapping[str, str] = os.environ) -> Found:
    """``REPORTD_TEST_PUPPETDB_URL`` if set, else where ``tests/integration/puppetdb.sh`` starts one."""
    explicit = environ.get(PUPPETDB_URL_VARIABLE)
    if explicit:
        problem = puppetdb_problem(explicit)
        if problem is not None:
            return Found(broken=f"{PUPPETDB_URL_VARIABLE}={explicit} does not answer: {problem}")
        return Found(where=explicit, how=f"{PUPPETDB_URL_VARIABLE}={explicit}")
    local = f"http://127.0.0.1:{environ.get('REPORTD_PUPPETDB_PORT') or 8080}"
    problem = puppetdb_problem(local)
    if problem is not None:
        return Found(missing=f"none running at {local}")
    return Found(where=local, how=f"the one running at {local}")
