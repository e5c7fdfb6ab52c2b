"""The test suite's own layout: tests mirror the code, and share helpers only through tests.support."""

from __future__ import annotations

import ast

from tests.support import TESTS


def test_no_test_module_imports_another():
    offenders = []
    for path in sorted(TESTS.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            for module in modules:
                if module.startswith("tests.") and not module.startswith("tests.support"):
                    offenders.append(f"{path.relative_to(TESTS)}: {module}")
    assert offenders == []


def test_the_test_packages_mirror_the_code():
    packages = {p.name for p in TESTS.iterdir() if (p / "__init__.py").exists()}
    assert {"ingest", "formats", "storage", "jobs", "cli", "plugins", "support"} <= packages
    plugins = {p.name for p in (TESTS / "plugins").iterdir() if (p / "__init__.py").exists()}
    assert plugins == {"store", "metrics", "puppetdb", "email"}
