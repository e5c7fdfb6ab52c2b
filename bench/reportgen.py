"""Synthetic Puppet 7 run reports (report_format 12) for the ingest benchmark.

The shape follows a real agent's report (shared/samples/puppet/agent-changes.json):
compact JSON, UTF-8, nanosecond times with the agent's offset, Ruby-style floats.
About 10% of the resources changed with one successful event each; the rest are
unchanged with no events. The built-in Schedule and Filebucket resources are part
of the count, as they are in every real report.

``make_report`` builds one finished body. For load generation, build a pool with
``make_template`` once and call ``BodyTemplate.render`` per request: it only swaps
two fixed-width placeholders, so every request still carries a unique
``transaction_uuid`` (reportd de-duplicates on certname + transaction_uuid).

Run ``python bench/reportgen.py --resources 50`` to print one report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import time
import uuid
from dataclasses import dataclass

PUPPET_VERSION = "7.23.0"
CERTNAME_FORMAT = "node-{:05d}.bench.example.test"
# Same width as real values, so a rendered body has the template's length.
HOST_PLACEHOLDER = "node-?????.bench.example.test"
UUID_PLACEHOLDER = "????????-????-4???-????-????????????"
assert len(HOST_PLACEHOLDER) == len(CERTNAME_FORMAT.format(0))
assert len(UUID_PLACEHOLDER) == len(str(uuid.UUID(int=0)))

CODE_DIR = "/etc/puppetlabs/code/environments/production"
SCHEDULES = ("puppet", "hourly", "daily", "weekly", "monthly", "never")
# Mostly UTC, as on servers, with a few agents on local time.
OFFSETS = (0, 0, 0, 0, 60, 330, -300)

# (class, resource types it manages): the class decides manifest path, tags and
# containment path, as in a roles-and-profiles code base.
CLASSES = (
    ("profile::base", ("File", "Package", "Exec")),
    ("profile::base::ssh", ("File", "Package", "Service")),
    ("profile::base::ntp", ("File", "Package", "Service")),
    ("profile::base::users", ("File", "Exec")),
    ("profile::base::sysctl", ("File", "Exec")),
    ("profile::monitoring::node_exporter", ("File", "Package", "Service")),
    ("profile::logging::rsyslog", ("File", "Package", "Service")),
    ("profile::app::nginx", ("File", "Package", "Service", "Exec")),
    ("profile::app::worker", ("File", "Service", "Exec", "Notify")),
    ("ssh::server::config", ("File",)),
    ("nginx::resource::server", ("File", "Exec")),
    ("postgresql::client", ("Package", "File")),
    ("motd", ("File", "Notify")),
)
FILE_DIRS = (
    "/etc/ssh/sshd_config.d",
    "/etc/sudoers.d",
    "/etc/security/limits.d",
    "/etc/sysctl.d",
    "/etc/logrotate.d",
    "/etc/rsyslog.d",
    "/etc/nginx/sites-available",
    "/etc/nginx/conf.d",
    "/etc/systemd/system",
    "/var/lib/node_exporter",
    "/opt/app/config",
    "/var/lib/app/shared",
    "/usr/local/sbin",
)
FILE_WORDS = (
    "hardening",
    "admins",
    "nofile",
    "net-tuning",
    "app-worker",
    "forward",
    "app.example.test",
    "upstreams",
    "settings",
    "backups",
    "puppet-last-run",
    "tls-ciphers",
)
PACKAGES = (
    "openssh-server",
    "chrony",
    "rsyslog",
    "nginx-full",
    "postgresql-client-15",
    "prometheus-node-exporter",
    "ca-certificates",
    "curl",
    "git",
    "jq",
    "htop",
    "logrotate",
    "unattended-upgrades",
    "python3-venv",
)
SERVICES = ("ssh", "chrony", "rsyslog", "nginx", "prometheus-node-exporter", "app-worker")
PROVIDERS = {"File": "posix", "Package": "apt", "Service": "systemd", "Exec": "posix"}
EXECS = (
    "systemd-daemon-reload",
    "apply-sysctl",
    "refresh-ca-certificates",
    "rotate-app-logs",
    "nginx-reload",
    "create-cache-dir",
)


@dataclass(frozen=True)
class _Clock:
    """An agent's clock: nanosecond times printed in its local offset."""

    start_ns: int
    offset: dt.timezone

    def at(self, elapsed_ns: int) -> str:
        seconds, ns = divmod(self.start_ns + elapsed_ns, 1_000_000_000)
        iso = dt.datetime.fromtimestamp(seconds, self.offset).isoformat(timespec="seconds")
        return f"{iso[:19]}.{ns:09d}{iso[19:]}"


def _class_ref(name: str) -> str:
    return "::".join(part.capitalize() for part in name.split("::"))


def _class_tags(name: str) -> list[str]:
    # Puppet tags a resource with the declaring class's name and each segment of it.
    return [name, *name.split("::")]


def _manifest(cls: str) -> str:
    module, *rest = cls.split("::")
    return f"{CODE_DIR}/modules/{module}/manifests/{'/'.join(rest) or 'init'}.pp"


def _float(rng: random.Random, low: float, high: float) -> float:
    # Agents report timers to the nanosecond.
    return round(rng.uniform(low, high), 9)


def _sha(rng: random.Random) -> str:
    return f"{{sha256}}{rng.getrandbits(256):064x}"


def _nth(names: tuple[str, ...], index: int, separator: str) -> str:
    name = names[index % len(names)]
    return name if index < len(names) else f"{name}{separator}{index}"


def _title(rng: random.Random, rtype: str, index: int) -> str:
    if rtype == "File":
        return f"{rng.choice(FILE_DIRS)}/{index:03d}-{rng.choice(FILE_WORDS)}.conf"
    if rtype == "Package":
        return _nth(PACKAGES, index, "-extra")
    if rtype == "Service":
        return _nth(SERVICES, index, "@")
    if rtype == "Exec":
        return _nth(EXECS, index, "-")
    return f"deployment notice {index}"


def _event(rng: random.Random, rtype: str, title: str, when: str) -> tuple[dict, str]:
    if rtype == "File":
        before, after = _sha(rng), _sha(rng)
        prop, name = "content", "content_changed"
        message = f"content changed '{before}' to '{after}'"
    elif rtype == "Package":
        before, after = "2.4.1-1+deb12u1", "2.4.1-1+deb12u2"
        prop, name = "ensure", "ensure_changed"
        message = f"ensure changed '{before}' to '{after}'"
    elif rtype == "Service":
        before, after = "stopped", "running"
        prop, name = "ensure", "service_started"
        message = "ensure changed 'stopped' to 'running'"
    elif rtype == "Exec":
        before, after = "notrun", ["0"]
        prop, name = "returns", "executed_command"
        message = "executed successfully"
    else:
        before, after = "absent", f"{title}: release 2026.11.3 rolled out ✓"
        prop, name = "message", "message_changed"
        message = f"defined 'message' as '{after}'"
    event = {
        "audited": False,
        "property": prop,
        "previous_value": before,
        "desired_value": after,
        "historical_value": None,
        "message": message,
        "name": name,
        "status": "success",
        "time": when,
        "redacted": None,
        "corrective_change": False,
    }
    return event, message


def _log(level: str, message: str, source: str, tags: list[str], when: str, file=None, line=None):
    return {
        "level": level,
        "message": message,
        "source": source,
        "tags": tags,
        "time": when,
        "file": file,
        "line": line,
    }


def _metric(name: str, label: str, values: list) -> dict:
    return {"name": name, "label": label, "values": values}


def _status(ref, rtype, title, *, file, line, provider, containment, tags, evaluation_time, when, events):
    changed = bool(events)
    return {
        "title": title,
        "file": file,
        "line": line,
        "resource": ref,
        "resource_type": rtype,
        "provider_used": provider,
        "containment_path": containment,
        "evaluation_time": evaluation_time,
        "tags": tags,
        "time": when,
        "failed": False,
        "failed_to_restart": False,
        "changed": changed,
        "out_of_sync": changed,
        "skipped": False,
        "change_count": len(events),
        "out_of_sync_count": len(events),
        "events": events,
        "corrective_change": False,
    }


def _build(certname: str, transaction_uuid: str, n_resources: int, rng: random.Random) -> dict:
    offset = dt.timezone(dt.timedelta(minutes=rng.choice(OFFSETS)))
    clock = _Clock(time.time_ns() - rng.randrange(3600 * 10**9), offset)
    elapsed = rng.randrange(300_000_000, 600_000_000)
    config_version = clock.start_ns // 10**9 - rng.randrange(600)

    def tick(low: int = 20_000, high: int = 900_000) -> str:
        nonlocal elapsed
        elapsed += rng.randrange(low, high)
        return clock.at(elapsed)

    logs = [
        _log("info", "Using environment 'production'", "Puppet", ["info"], tick()),
        _log("info", "Retrieving pluginfacts", "Puppet", ["info"], tick()),
        _log("info", "Retrieving plugin", "Puppet", ["info"], tick(10**7, 10**8)),
        _log("info", "Loading facts", "Puppet", ["info"], tick(10**7, 10**8)),
        _log("info", f"Caching catalog for {certname}", "Puppet", ["info"], tick(10**8, 3 * 10**8)),
        _log("info", f"Applying configuration version '{config_version}'", "Puppet", ["info"], tick()),
    ]

    builtins = [("Schedule", name) for name in SCHEDULES] + [("Filebucket", "puppet")]
    if n_resources < 2 * len(builtins):
        builtins = []
    n_managed = n_resources - len(builtins)
    n_changed = min(n_managed, max(1, round(n_resources / 10)))
    changed_at = set(rng.sample(range(n_managed), n_changed))

    statuses: dict[str, dict] = {}
    type_time: dict[str, float] = {}
    counters: dict[str, int] = {}
    for position in range(n_managed):
        cls, types = rng.choice(CLASSES)
        rtype = rng.choice(types)
        counters[rtype] = counters.get(rtype, 0) + 1
        title = _title(rng, rtype, counters[rtype] - 1)
        ref = f"{rtype}[{title}]"
        changed = position in changed_at
        manifest, line = _manifest(cls), rng.randrange(8, 240)
        tags = [rtype.lower(), *_class_tags(cls), "class"]
        evaluation_time = _float(rng, 0.002, 0.09) if changed else _float(rng, 2e-5, 0.004)
        type_time[rtype.lower()] = type_time.get(rtype.lower(), 0.0) + evaluation_time
        when = tick()
        # Included classes are contained by the stage, not by the class including them.
        containment = ["Stage[main]", _class_ref(cls), ref]
        events = []
        if changed:
            event, message = _event(rng, rtype, title, tick(50_000, 2_000_000))
            events.append(event)
            source = "/" + "/".join(containment) + "/" + event["property"]
            logs.append(_log("notice", message, source, ["notice", *tags], event["time"], manifest, line))
        statuses[ref] = _status(
            ref,
            rtype,
            title,
            file=manifest,
            line=line,
            provider=PROVIDERS.get(rtype),
            containment=containment,
            tags=tags,
            evaluation_time=evaluation_time,
            when=when,
            events=events,
        )
    for rtype, title in builtins:
        ref = f"{rtype}[{title}]"
        evaluation_time = _float(rng, 2e-5, 6e-5)
        type_time[rtype.lower()] = type_time.get(rtype.lower(), 0.0) + evaluation_time
        statuses[ref] = _status(
            ref,
            rtype,
            title,
            file=None,
            line=None,
            provider=None,
            containment=[ref],
            tags=[rtype.lower(), title],
            evaluation_time=evaluation_time,
            when=tick(),
            events=[],
        )

    application = round(sum(type_time.values()) + _float(rng, 0.01, 0.05), 9)
    logs.append(
        _log(
            "info",
            "Creating state file /opt/puppetlabs/puppet/cache/state/state.yaml",
            "Puppet",
            ["info"],
            tick(),
        )
    )
    logs.append(_log("notice", f"Applied catalog in {application:.2f} seconds", "Puppet", ["notice"], tick()))
    phases = {
        "startup_time": _float(rng, 0.25, 0.45),
        "node_retrieval": _float(rng, 0.03, 0.12),
        "plugin_sync": _float(rng, 0.1, 0.6),
        "fact_generation": _float(rng, 0.2, 1.5),
        "convert_catalog": _float(rng, 0.01, 0.2),
        "config_retrieval": _float(rng, 0.3, 3.0),
        "transaction_evaluation": round(application - _float(rng, 0.001, 0.005), 9),
        "catalog_application": application,
    }
    time_values = [[t, t.capitalize(), round(v, 9)] for t, v in type_time.items()]
    time_values += [[k, k.replace("_", " ").capitalize(), v] for k, v in phases.items()]
    time_values.append(["total", "Total", round(sum(phases.values()) + sum(type_time.values()), 9)])

    return {
        "host": certname,
        "time": clock.at(0),
        "configuration_version": config_version,
        "transaction_uuid": transaction_uuid,
        "report_format": 12,
        "puppet_version": PUPPET_VERSION,
        "status": "changed" if n_changed else "unchanged",
        "transaction_completed": True,
        "noop": False,
        "noop_pending": False,
        "environment": "production",
        "logs": logs,
        "metrics": {
            "resources": _metric(
                "resources",
                "Resources",
                [
                    ["total", "Total", n_resources],
                    ["skipped", "Skipped", 0],
                    ["failed", "Failed", 0],
                    ["failed_to_restart", "Failed to restart", 0],
                    ["restarted", "Restarted", 0],
                    ["changed", "Changed", n_changed],
                    ["out_of_sync", "Out of sync", n_changed],
                    ["scheduled", "Scheduled", 0],
                    ["corrective_change", "Corrective change", 0],
                ],
            ),
            "time": _metric("time", "Time", time_values),
            "changes": _metric("changes", "Changes", [["total", "Total", n_changed]]),
            "events": _metric(
                "events",
                "Events",
                [
                    ["total", "Total", n_changed],
                    ["failure", "Failure", 0],
                    ["success", "Success", n_changed],
                ],
            ),
        },
        "resource_statuses": statuses,
        "corrective_change": False,
        "catalog_uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "cached_catalog_status": "not_used",
    }


def _dumps(report: dict) -> bytes:
    # The stdlib encoder prints floats as Ruby does (4.058e-05); orjson would not.
    return json.dumps(report, ensure_ascii=False, separators=(",", ":")).encode()


def make_report(certname: str, n_resources: int, rng: random.Random) -> bytes:
    """One complete report body for ``certname`` with ``n_resources`` resource statuses."""
    transaction_uuid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return _dumps(_build(certname, transaction_uuid, n_resources, rng))


class BodyTemplate:
    """A report body with placeholders for the certname and the transaction UUID."""

    __slots__ = ("body",)

    def __init__(self, body: bytes) -> None:
        self.body = body

    def render(self, certname: bytes, transaction_uuid: bytes) -> bytes:
        return self.body.replace(HOST_PLACEHOLDER.encode(), certname).replace(
            UUID_PLACEHOLDER.encode(), transaction_uuid
        )


def make_template(n_resources: int, rng: random.Random) -> BodyTemplate:
    return BodyTemplate(_dumps(_build(HOST_PLACEHOLDER, UUID_PLACEHOLDER, n_resources, rng)))


def certname(index: int) -> str:
    return CERTNAME_FORMAT.format(index % 100_000)


def main() -> None:
    parser = argparse.ArgumentParser(description="Print one synthetic Puppet report (JSON).")
    parser.add_argument("--resources", type=int, default=50)
    parser.add_argument("--certname", default=certname(1))
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    body = make_report(args.certname, args.resources, random.Random(args.seed))
    sys.stdout.buffer.write(body + b"\n")
    print(f"{len(body)} bytes, {args.resources} resources", file=sys.stderr)


if __name__ == "__main__":
    main()
