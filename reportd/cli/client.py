"""``reportd send``: saved reports sent to a running reportd, as the real clients send them."""

from __future__ import annotations

import gzip
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import click
import orjson

from reportd.output import progress


@click.command(short_help="Send saved reports to reportd as real clients do.")
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
