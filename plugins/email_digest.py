"""The digest of one schedule's period: what happened on its hosts, as text and HTML.

Built from the store (``query_reports`` for the period's runs, ``list_nodes`` for
the hosts a glob matches); a failed host's failing resources and messages come
from its latest failed report's body, which the store keeps beside the summary.
"""

from __future__ import annotations

import asyncio
import fnmatch
import html
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from zoneinfo import ZoneInfo

from reportd import CHANGED, FAILED, NOOP_PENDING, ReportError, ReportQuery, Schedule, Storage, rebuild_report

from .email_periods import ONCE, Period

PAGE = 1000
MAX_FAILED_RESOURCES = 20
MAX_MESSAGES = 10
ERROR_LEVELS = ("err", "crit", "alert", "emerg")
GLOB_CHARACTERS = frozenset("*?[")
KIND_WORDS = {ONCE: "one-off"}


@dataclass(frozen=True)
class Failure:
    resource: str | None  # None: a message of the run, not of one resource
    message: str


@dataclass
class HostSummary:
    certname: str
    environment: str | None
    runs: int = 0
    failed: int = 0
    changed: int = 0
    noop_pending: int = 0
    last_status: str = ""
    last_run_time: float = 0.0
    last_failed_report: int | None = None
    failures: list[Failure] = field(default_factory=list)
    failure_details_missing: bool = False

    @property
    def category(self) -> str:
        if self.failed:
            return "failed"
        if self.changed:
            return "changed"
        if self.noop_pending:
            return "noop pending"
        return "unchanged"


@dataclass(frozen=True)
class StaleHost:
    certname: str
    last_seen: float | None  # the node's last report, any time; None: never seen


@dataclass
class Digest:
    schedule: Schedule
    period: Period
    hosts: list[HostSummary]  # failed first, then by certname
    stale: list[StaleHost]

    def count(self, category: str) -> int:
        return sum(1 for h in self.hosts if h.category == category)

    @property
    def has_failures(self) -> bool:
        return any(h.failed for h in self.hosts)

    @property
    def listed_hosts(self) -> list[HostSummary]:
        """What the mail shows: every host, or for a ``failures`` schedule the failed ones."""
        if self.schedule.type == "failures":
            return [h for h in self.hosts if h.failed]
        return self.hosts

    @property
    def subject(self) -> str:
        kind = KIND_WORDS.get(self.schedule.schedule, self.schedule.schedule)
        counts = [f"{self.count('failed')} failed", f"{self.count('changed')} changed"]
        if pending := self.count("noop pending"):
            counts.append(f"{pending} noop pending")
        counts += [f"{self.count('unchanged')} unchanged", f"{len(self.stale)} stale"]
        return f"[reportd] {kind} report {self.period.label} ({self.schedule.timezone}): {', '.join(counts)}"


def matches(certname: str, environment: str | None, schedule: Schedule) -> bool:
    if schedule.services is not None and environment not in schedule.services:
        return False
    return any(fnmatch.fnmatchcase(certname, pattern) for pattern in schedule.hosts)


async def build_digest(storage: Storage, schedule: Schedule, period: Period) -> Digest:
    since, until = period.start.timestamp(), period.end.timestamp()
    hosts: dict[str, HostSummary] = {}
    # Only certnames, no globs: read those hosts' runs alone, not every host's.
    literal = not any(GLOB_CHARACTERS & set(pattern) for pattern in schedule.hosts)
    for certname in dict.fromkeys(schedule.hosts) if literal else [None]:
        after = None
        while True:  # newest run first, so a host's first row is its last run
            query = ReportQuery(certname=certname, since=since, until=until, limit=PAGE, after=after)
            rows = await storage.query_reports(query)
            for row in rows:
                if matches(row.certname, row.environment, schedule):
                    _count(hosts, row)
            if len(rows) < PAGE:
                break
            after = (rows[-1].run_time, rows[-1].id)
    for host in hosts.values():
        if host.last_failed_report is not None:
            await _add_failures(storage, host)
    stale = await _stale_hosts(storage, schedule, set(hosts))
    ordered = sorted(hosts.values(), key=lambda h: (not h.failed, h.certname))
    return Digest(schedule, period, ordered, stale)


def _count(hosts: dict[str, HostSummary], row) -> None:
    host = hosts.get(row.certname)
    if host is None:
        host = hosts[row.certname] = HostSummary(
            row.certname, row.environment, last_status=row.status, last_run_time=row.run_time
        )
    host.runs += 1
    host.failed += row.status == FAILED
    host.changed += row.status == CHANGED
    host.noop_pending += row.status == NOOP_PENDING
    if row.status == FAILED and host.last_failed_report is None:
        host.last_failed_report = row.id


async def _stale_hosts(storage: Storage, schedule: Schedule, reported: set[str]) -> list[StaleHost]:
    """Hosts the schedule names that sent nothing in the period: certnames it names
    literally (seen or not), and nodes the store knows that one of its globs matches."""
    last_seen: dict[str, float | None] = {}
    literal = [p for p in dict.fromkeys(schedule.hosts) if not GLOB_CHARACTERS & set(p)]
    if len(literal) < len(schedule.hosts):
        after = None
        while True:
            nodes = await storage.list_nodes(environment=None, status=None, limit=PAGE, after=after)
            for node in nodes:
                if node.certname not in reported and matches(node.certname, node.environment, schedule):
                    last_seen[node.certname] = node.last_received_at
            if len(nodes) < PAGE:
                break
            after = nodes[-1].certname
    for name in literal:
        if name in reported or name in last_seen:
            continue
        found = await storage.get_node(name)
        if found is None:
            last_seen[name] = None  # named, never heard of
        elif matches(found.certname, found.environment, schedule):
            last_seen[name] = found.last_received_at
    return [StaleHost(name, seen) for name, seen in sorted(last_seen.items())]


async def _add_failures(storage: Storage, host: HostSummary) -> None:
    assert host.last_failed_report is not None
    stored = await storage.get_report(host.last_failed_report)
    if stored is None:  # expired meanwhile
        host.failure_details_missing = True
        return
    try:
        # A report body may be megabytes of JSON: parsed off the event loop.
        report = await asyncio.to_thread(rebuild_report, stored.id, stored.envelope, stored.body)
    except ReportError:
        host.failure_details_missing = True
        return
    for resource in report.resource_statuses:
        if not (resource.failed or resource.failed_to_restart):
            continue
        messages = [e.message for e in resource.events if e.status == "failure" and e.message]
        messages += [
            log.message
            for log in report.logs
            if log.level in ERROR_LEVELS and resource.resource in log.source
        ]
        if resource.failed_to_restart and not messages:
            messages = ["failed to restart"]
        host.failures.append(Failure(resource.resource, "; ".join(dict.fromkeys(messages)) or "failed"))
        if len(host.failures) >= MAX_FAILED_RESOURCES:
            break
    named = {f.resource for f in host.failures}
    general = [
        log.message
        for log in report.logs
        if log.level in ERROR_LEVELS and not any(name and name in log.source for name in named)
    ]
    host.failures.extend(Failure(None, m) for m in list(dict.fromkeys(general))[:MAX_MESSAGES])
    if not host.failures:
        host.failures.append(Failure(None, "the run failed (no failed resource or error message reported)"))


def _local(timestamp: float | None, zone: ZoneInfo) -> str:
    if timestamp is None:
        return "never"
    return datetime.fromtimestamp(timestamp, UTC).astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def render_text(digest: Digest) -> str:
    zone = ZoneInfo(digest.schedule.timezone)
    s, p = digest.schedule, digest.period
    lines = [
        digest.subject.removeprefix("[reportd] "),
        "",
        f"Schedule: {s.name} ({s.id}), {s.type}",
        f"Period:   {_local(p.start.timestamp(), zone)} to {_local(p.end.timestamp(), zone)}",
        "",
    ]
    failed = [h for h in digest.listed_hosts if h.failed]
    if failed:
        lines.append("FAILED HOSTS")
        for host in failed:
            lines.append(f"* {host.certname}: {host.failed} of {host.runs} runs failed")
            lines.extend(f"    - {f.resource + ': ' if f.resource else ''}{f.message}" for f in host.failures)
            if host.failure_details_missing:
                lines.append("    - (the report is no longer stored: no details)")
        lines.append("")
    lines.append("HOSTS")
    header = f"{'host':<40} {'runs':>5} {'failed':>6} {'changed':>7} {'noop pending':>12}  last status, time"
    lines.append(header)
    for host in digest.listed_hosts:
        lines.append(
            f"{host.certname:<40} {host.runs:>5} {host.failed:>6} {host.changed:>7} {host.noop_pending:>12}"
            f"  {host.last_status}, {_local(host.last_run_time, zone)}"
        )
    if not digest.listed_hosts:
        lines.append("(no runs in this period)")
    if digest.schedule.type != "failures" and digest.stale:
        lines += ["", "STALE HOSTS (sent nothing in this period)"]
        lines += [f"* {h.certname} (last report: {_local(h.last_seen, zone)})" for h in digest.stale]
    return "\n".join(lines) + "\n"


def render_html(digest: Digest) -> str:
    zone = ZoneInfo(digest.schedule.timezone)
    s, p = digest.schedule, digest.period
    e = html.escape
    parts = [
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">',
        f"<title>{e(digest.subject)}</title></head><body>",
        f"<h1>{e(digest.subject.removeprefix('[reportd] '))}</h1>",
        f"<p>Schedule <b>{e(s.name)}</b> ({e(s.id)}), {e(s.type)}<br>",
        f"Period {e(_local(p.start.timestamp(), zone))} to {e(_local(p.end.timestamp(), zone))}</p>",
    ]
    failed = [h for h in digest.listed_hosts if h.failed]
    if failed:
        parts.append("<h2>Failed hosts</h2>")
        for host in failed:
            parts.append(f"<h3>{e(host.certname)}: {host.failed} of {host.runs} runs failed</h3><ul>")
            for f in host.failures:
                name = f"<code>{e(f.resource)}</code>: " if f.resource else ""
                parts.append(f"<li>{name}{e(f.message)}</li>")
            if host.failure_details_missing:
                parts.append("<li>(the report is no longer stored: no details)</li>")
            parts.append("</ul>")
    parts.append(
        '<h2>Hosts</h2><table border="1" cellpadding="4" cellspacing="0"><tr><th>host</th><th>runs</th>'
        "<th>failed</th><th>changed</th><th>noop pending</th><th>last status</th><th>last run</th></tr>"
    )
    for host in digest.listed_hosts:
        parts.append(
            f"<tr><td>{e(host.certname)}</td><td>{host.runs}</td><td>{host.failed}</td><td>{host.changed}</td>"
            f"<td>{host.noop_pending}</td><td>{e(host.last_status)}</td>"
            f"<td>{e(_local(host.last_run_time, zone))}</td></tr>"
        )
    parts.append("</table>")
    if not digest.listed_hosts:
        parts.append("<p>No runs in this period.</p>")
    if digest.schedule.type != "failures" and digest.stale:
        parts.append("<h2>Stale hosts (sent nothing in this period)</h2><ul>")
        parts += [
            f"<li>{e(h.certname)} (last report: {e(_local(h.last_seen, zone))})</li>" for h in digest.stale
        ]
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def message(digest: Digest, sender: str, now: float) -> EmailMessage:
    """The mail: ``multipart/alternative``, text first (the fallback), HTML last (preferred)."""
    mail = EmailMessage()
    mail["Subject"] = digest.subject
    mail["From"] = sender
    mail["To"] = ", ".join(digest.schedule.send_to)
    mail["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    # The same for every attempt and instance: a mail sent twice (a holder that died
    # between the server's answer and marking the period) can be recognised.
    # parseaddr: a from with a display name ("reportd <reportd@example.com>") is common
    domain = parseaddr(sender)[1].rpartition("@")[2] or "reportd"
    mail["Message-ID"] = f"<{digest.schedule.id}.{digest.period.start_us}@{domain}>"
    mail["X-Reportd-Schedule"] = digest.schedule.id
    mail["X-Reportd-Period"] = f"{digest.period.start.isoformat()}/{digest.period.end.isoformat()}"
    mail.set_content(render_text(digest))
    mail.add_alternative(render_html(digest), subtype="html")
    return mail
