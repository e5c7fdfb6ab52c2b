"""The ``metrics`` processor: ``/metrics`` for Prometheus (spec/metrics.md).

Per-node gauges under puppet-prometheus_reporter's names and labels, so
existing dashboards and alerts keep working, for every node and wire format,
plus reportd's own node series and the daemon's counters.

A scrape of many nodes must be cheap and must not hold up ingest, yet
prometheus-client (which does all the formatting here) takes about 6 us per
sample. So each node's samples are rendered once per change, in a worker
process (in the background while ingest leaves time, else at the next
scrape), and kept per metric family; a scrape streams the kept blocks under
each family's header, and renders only staleness, which moves with the clock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import math
import multiprocessing
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from reportd import (
    VIEW_REPORTS,
    PluginContext,
    Processor,
    Report,
    Setting,
    api_error,
    as_duration,
    as_list,
    as_networks,
    as_str,
    change_kind,
    hookimpl,
    require_permission,
)

NAME = "metrics"
RENDER_CHUNK = 8  # without a worker: nodes rendered between two turns of the event loop
RENDER_INTERVAL = 1.0  # seconds between background passes over changed nodes
STORE_COUNT_EVERY = 60.0
BUSY_RATE = 400  # reports/s above which background rendering waits for the scrape
WORKER_BATCH = 500  # nodes per call to the render worker
STREAM_CHUNK = 500  # nodes per piece of a scrape's response
QUEUE_GAUGES = f"{NAME}.queue_gauges"  # key of the queue gauges in the plugin state
log = structlog.get_logger("reportd_plugins.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CATEGORIES = ("resources", "time", "changes", "events")
PUPPET_STATES = ("failed", "changed", "unchanged")
CATALOG_STATES = ("not_used", "explicitly_requested", "on_failure")
# reportd_node_status: the run statuses of node-status.md, "changed" split by its kind.
NODE_STATES = ("failed", "noop_pending", "noop", "corrective", "intentional", "unchanged")

# Family name -> help. Categories map to puppet_report_<category>.
FAMILIES: dict[str, str] = {
    "puppet_report_resources": "Resources of the node's last run, by Puppet's metric label.",
    "puppet_report_time": "Seconds the node's last run spent, by Puppet's metric label.",
    "puppet_report_changes": "Changes of the node's last run.",
    "puppet_report_events": "Events of the node's last run, by status.",
    "puppet_report": "UNIX time reportd received the node's last report.",
    "puppet_transaction_completed": "1 if the node's last run completed its transaction.",
    "puppet_cache_catalog_status": "The node's last run's cached catalog status (one-hot).",
    "puppet_status": "The node's last run's Puppet status (one-hot).",
    "reportd_node_run_timestamp_seconds": "UNIX time the node's last run ended, by the agent's clock.",
    "reportd_node_status": "The node's status by reportd's derivation (node-status.md), one-hot.",
    "reportd_node_stale": "1 if the node sent nothing for longer than its expected interval.",
}
NODE_LABELS = ["environment", "host"]


def _metric_label(key: str) -> str:
    # Puppet::Util::Metric#labelize: "failed_to_restart" -> "Failed to restart"
    return key.replace("_", " ").capitalize()


def as_categories(value: str) -> tuple[str, ...]:
    categories = as_list(value)
    unknown = sorted(set(categories) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"unknown category {unknown[0]!r} (known: {', '.join(CATEGORIES)})")
    return categories


@hookimpl
def reportd_declare_settings():
    return {
        NAME: {
            "categories": Setting(", ".join(CATEGORIES), as_categories, "metric categories per node"),
            "stale_ttl": Setting("7d", as_duration, "drop a node's series after this silence"),
            "token": Setting("", as_str, "a bearer token that may scrape (else view_reports is needed)"),
            "allow_networks": Setting("", as_networks, "if set, only these addresses may scrape"),
        }
    }


@hookimpl
def reportd_register_processors():
    return [MetricsProcessor]


@dataclass
class NodeSeries:
    """What /metrics shows of one node, and its samples rendered by prometheus-client."""

    certname: str
    environment: str
    run_time: float
    received_at: float
    run_end: float
    status: str
    change_kind: str | None
    transaction_completed: bool
    cached_catalog_status: str | None
    metrics: Mapping[str, Mapping[str, float]]
    stale_after: float
    rendered: dict[str, bytes] = field(default_factory=dict)

    def families(self, categories: Sequence[str]) -> Iterator[Metric]:
        labels = [self.environment, self.certname]
        for category in categories:
            family = GaugeMetricFamily(f"puppet_report_{category}", "", labels=[*NODE_LABELS, "name"])
            for key, value in self.metrics.get(category, {}).items():
                family.add_metric([*labels, _metric_label(key)], float(value))
            yield family
        yield _gauge("puppet_report", labels, self.received_at)
        yield _gauge("puppet_transaction_completed", labels, float(self.transaction_completed))
        yield _one_hot("puppet_cache_catalog_status", labels, CATALOG_STATES, self.cached_catalog_status)
        puppet_status = self.status if self.status in ("failed", "changed") else "unchanged"
        yield _one_hot("puppet_status", labels, PUPPET_STATES, puppet_status)
        yield _gauge("reportd_node_run_timestamp_seconds", labels, self.run_end)
        state = self.change_kind if self.status == "changed" else self.status
        yield _one_hot("reportd_node_status", labels, NODE_STATES, state)

    def render(self, categories: Sequence[str]) -> None:
        self.rendered = render_blocks(list(self.families(categories)))

    def payload(self) -> tuple:
        """What the render worker needs of this node (small, picklable)."""
        return (self.certname, self.environment, self.run_time, self.received_at, self.run_end,
                self.status, self.change_kind, self.transaction_completed, self.cached_catalog_status,
                self.metrics, self.stale_after)  # fmt: skip


def render_payloads(payloads: list[tuple], categories: Sequence[str]) -> list[dict[str, bytes]]:
    """Runs in the render worker process: each node's blocks, in order."""
    rendered = []
    for payload in payloads:
        node = NodeSeries(*payload)
        node.render(categories)
        rendered.append(node.rendered)
    return rendered


def _compact(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    # Thousands of nodes share a few dozen metric names: one copy of each. A report's
    # metrics are finite numbers already (ingest refuses any other).
    return {sys.intern(c): {sys.intern(k): v for k, v in values.items()} for c, values in metrics.items()}


def _compact_stored(metrics: Any) -> dict[str, dict[str, float]]:
    """:func:`_compact` of a stored summary's metrics, finite numbers only: a store written
    before ingest refused NaN may still hold one (as null), and one such value must not
    fail every scrape."""
    if not isinstance(metrics, Mapping):
        return {}
    return _compact(
        {
            category: {
                key: value
                for key, value in values.items()
                if type(value) in (int, float) and math.isfinite(value)
            }
            for category, values in metrics.items()
            if isinstance(values, Mapping)
        }
    )


def _gauge(name: str, labels: list[str], value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, "", labels=NODE_LABELS)
    family.add_metric(labels, value)
    return family


def _one_hot(name: str, labels: list[str], states: Sequence[str], current: str | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, "", labels=[*NODE_LABELS, "state"])
    for state in states:
        family.add_metric([*labels, state], float(state == current))
    return family


class _Families:
    """The one method prometheus-client's exposition asks of a registry."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def render_blocks(families: list[Metric]) -> dict[str, bytes]:
    """Each family's sample lines, rendered by prometheus-client, without its header."""
    text = generate_latest(_Families(families))
    blocks = {}
    for chunk in text.split(b"# HELP ")[1:]:
        name, _, rest = chunk.partition(b" ")
        blocks[name.decode()] = rest.split(b"\n", 2)[2]  # drop the rest of HELP and the TYPE line
    return blocks


def family_headers() -> dict[str, bytes]:
    families = [GaugeMetricFamily(name, help_text) for name, help_text in FAMILIES.items()]
    text = generate_latest(_Families(families))
    return {
        name: b"# HELP " + chunk for name, chunk in zip(FAMILIES, text.split(b"# HELP ")[1:], strict=True)
    }


class NodeTable:
    """The latest series of every node; shared by the processor and the /metrics route."""

    def __init__(self, context: PluginContext) -> None:
        settings = context.plugin_settings(NAME)
        self.categories: tuple[str, ...] = settings["categories"]
        self.stale_ttl: float = settings["stale_ttl"]
        self.stale_rules = context.config.stale
        self.nodes: dict[str, NodeSeries] = {}
        self.dirty: set[str] = set()
        self.headers = family_headers()
        # prometheus-client formats ~6 us per sample: a worker process does it, so
        # the daemon's event loop and GIL stay free for ingest.
        self.worker: concurrent.futures.ProcessPoolExecutor | None = None
        self.updates = 0  # reports since the renderer last looked

    def update(self, series: NodeSeries) -> None:
        current = self.nodes.get(series.certname)
        if current is not None and series.run_time < current.run_time:
            # A late, older report: the node was heard from, its figures stay.
            current.received_at = max(current.received_at, series.received_at)
        else:
            if current is not None:
                series.received_at = max(series.received_at, current.received_at)
            self.nodes[series.certname] = series
        self.dirty.add(series.certname)
        self.updates += 1

    def series_of(self, report: Report) -> NodeSeries:
        environment = report.environment or ""
        return NodeSeries(
            certname=report.certname,
            environment=environment,
            run_time=report.run_time.timestamp(),
            received_at=report.received_at.timestamp(),
            run_end=report.run_time.timestamp(),
            status=report.status,
            change_kind=change_kind(report, report.status),
            transaction_completed=report.transaction_completed,
            cached_catalog_status=report.cached_catalog_status,
            metrics=_compact(report.metrics),
            stale_after=self.stale_rules.interval(report.certname, report.environment),
        )

    async def render_dirty(self) -> None:
        """Render every changed node: in the worker process when there is one."""
        dirty = [self.nodes[c] for c in self.dirty if c in self.nodes]
        self.dirty.clear()
        if self.worker is None:
            for start in range(0, len(dirty), RENDER_CHUNK):
                for node in dirty[start : start + RENDER_CHUNK]:
                    node.render(self.categories)
                await asyncio.sleep(0)
            return
        for start in range(0, len(dirty), WORKER_BATCH):
            batch = dirty[start : start + WORKER_BATCH]
            payloads = [node.payload() for node in batch]
            try:
                rendered = await self._render(payloads)
            except Exception:
                self.dirty.update(node.certname for node in batch)  # rendered on the next pass
                raise
            for node, blocks in zip(batch, rendered, strict=True):
                node.rendered = blocks
                if self.nodes.get(node.certname) is not node:
                    self.dirty.add(node.certname)  # a newer report arrived meanwhile

    async def _render(self, payloads: list[tuple]) -> list[dict[str, bytes]]:
        loop = asyncio.get_running_loop()
        assert self.worker is not None
        try:
            return await loop.run_in_executor(self.worker, render_payloads, payloads, self.categories)
        except concurrent.futures.process.BrokenProcessPool:
            # The renderer process died (killed, out of memory): a new one, and this batch again.
            log.warning("metrics_renderer_restarted")
            self.worker.shutdown(wait=False)
            self.worker = render_worker()
            return await loop.run_in_executor(self.worker, render_payloads, payloads, self.categories)

    async def chunks(self, now: float) -> AsyncIterator[bytes]:
        """A scrape's per-node part, family by family, rendering changed nodes on the way.

        Nodes are rendered here, not as reports arrive: a node that reported ten
        times since the last scrape is rendered once. Rendering and joining go in
        small slices with the event loop turning in between, so ingest goes on.
        """
        for certname in [c for c, n in self.nodes.items() if now - n.received_at > self.stale_ttl]:
            del self.nodes[certname]
        await self.render_dirty()
        nodes = list(self.nodes.values())
        for name, header in self.headers.items():
            category = name.removeprefix("puppet_report_")
            if category in CATEGORIES and category not in self.categories:
                continue
            yield header
            if name == "reportd_node_stale":
                # Staleness moves with the clock, not with reports: rendered at each scrape.
                for start in range(0, len(nodes), STREAM_CHUNK):
                    family = GaugeMetricFamily(name, "", labels=NODE_LABELS)
                    for node in nodes[start : start + STREAM_CHUNK]:
                        stale = now - node.received_at > node.stale_after
                        family.add_metric([node.environment, node.certname], float(stale))
                    yield render_blocks([family]).get(name, b"")
                    await asyncio.sleep(0)
                continue
            for start in range(0, len(nodes), STREAM_CHUNK):
                yield b"".join(node.rendered.get(name, b"") for node in nodes[start : start + STREAM_CHUNK])

    async def rebuild(self, context: PluginContext) -> None:
        """After a restart: the store's latest status of every node, not an empty page."""
        after = None
        while True:
            rows = await context.storage.list_nodes(environment=None, status=None, limit=1000, after=after)
            for row in rows:
                summary = row.summary
                self.nodes[row.certname] = NodeSeries(
                    certname=row.certname,
                    environment=row.environment or "",
                    run_time=row.run_time,
                    received_at=row.last_received_at,
                    run_end=row.run_time,
                    status=row.status,
                    change_kind=row.change_kind,
                    transaction_completed=summary.get("transaction_completed", True),
                    cached_catalog_status=summary.get("cached_catalog_status"),
                    metrics=_compact_stored(summary.get("metrics")),
                    stale_after=self.stale_rules.interval(row.certname, row.environment),
                )
                self.dirty.add(row.certname)
            if len(rows) < 1000:
                return
            after = rows[-1].certname


def render_worker() -> concurrent.futures.ProcessPoolExecutor:
    context = multiprocessing.get_context("spawn")
    return concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context)


def _table(context: PluginContext) -> NodeTable:
    """The daemon's one table, shared by the processor and the route."""
    table = context.state.get(NAME)
    if table is None:
        table = context.state[NAME] = NodeTable(context)
    return table


class MetricsProcessor(Processor):
    name = NAME
    batch_size = 500

    async def start(self) -> None:
        self.table = _table(self.context)
        self.table.worker = render_worker()
        await self.table.rebuild(self.context)
        self.renderer = asyncio.create_task(self._render_forever(), name="metrics-render")

    async def _render_forever(self) -> None:
        # Between scrapes, so that a scrape finds almost every node rendered; but
        # only with time to spare: a saturated daemon leaves the work to the scrape.
        while True:
            await asyncio.sleep(RENDER_INTERVAL)
            updates, self.table.updates = self.table.updates, 0
            if updates > BUSY_RATE * RENDER_INTERVAL or not self.table.dirty:
                continue
            try:
                await self.table.render_dirty()
            except Exception:
                log.exception("metrics_render_failed")

    async def close(self) -> None:
        self.renderer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.renderer
        worker, self.table.worker = self.table.worker, None
        if worker is not None:
            await asyncio.to_thread(worker.shutdown, wait=True, cancel_futures=True)

    async def process_batch(self, reports: Sequence[Report]) -> None:
        for report in reports:
            self.table.update(self.table.series_of(report))


@hookimpl
def reportd_add_routes(app: web.Application, context: PluginContext):
    settings = context.plugin_settings(NAME)
    enabled = NAME in context.processors

    async def metrics(request: web.Request) -> web.StreamResponse:
        await _check_access(request, settings)
        now = time.time()
        await _refresh_queue_gauges(context, now)
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            # 10,000 nodes are ~48 MB of text, ~3 MB gzipped: Prometheus asks for it.
            response.enable_compression(web.ContentCoding.gzip)
        await response.prepare(request)
        if enabled:
            # Written piece by piece: tens of megabytes for 10,000 nodes, and ingest goes on.
            async for chunk in _table(context).chunks(now):
                await response.write(chunk)
                await asyncio.sleep(0)  # write() does not yield while the socket takes it all
        await response.write(generate_latest(context.telemetry.registry))
        await response.write_eof()
        return response

    app.router.add_get("/metrics", metrics)


async def _check_access(request: web.Request, settings: Mapping[str, Any]) -> None:
    networks = settings["allow_networks"]
    if networks:
        try:
            address = ip_address(request.remote or "")
        except ValueError:
            address = None
        if address is not None and address.version == 6 and address.ipv4_mapped:
            address = address.ipv4_mapped  # a dual-stack listener's IPv4 clients
        if address is None or not any(address in network for network in networks):
            raise api_error(403, "/metrics is not open to this address", {"allow_networks": "not in it"})
    # A scrape lists every node with its status, so it is a read like the store's API: view_reports
    # (anonymous_networks have it by default), or the scrape token when one is set.
    token = settings["token"]
    if token:
        presented = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if hmac.compare_digest(presented, f"Bearer {token}".encode()):
            return
    await require_permission(request, VIEW_REPORTS)


async def _refresh_queue_gauges(context: PluginContext, now: float) -> None:
    telemetry = context.telemetry
    gauges = context.state.get(QUEUE_GAUGES)
    if gauges is None:  # one set per daemon, in the daemon's own registry
        gauges = context.state[QUEUE_GAUGES] = QueueGauges(telemetry.registry)
    gauges.set(context.processors, await context.storage.queue_stats(), now)
    if now - gauges.counted_at > STORE_COUNT_EVERY:
        # count(*) walks the table: on a reader thread, and at most once a minute
        gauges.stored_reports = await context.storage.count_reports()
        gauges.counted_at = now


class QueueGauges:
    """Per-processor delivery state and the store's size, read from storage at scrape time."""

    def __init__(self, registry) -> None:
        self.values: dict[str, tuple[int, int, float]] = {}
        self.stored_reports = 0
        self.counted_at = 0.0
        registry.register(self)

    def set(self, processors: Sequence[str], stats: Mapping[str, Any], now: float) -> None:
        values: dict[str, tuple[int, int, float]] = dict.fromkeys(processors, (0, 0, 0.0))
        for name, entry in stats.items():
            age = now - entry.oldest_pending_at if entry.oldest_pending_at is not None else 0.0
            values[name] = (entry.pending, entry.dead, age)
        self.values = values

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "reportd_processor_queue_depth", "Deliveries waiting, per processor.", labels=["processor"]
        )
        oldest = GaugeMetricFamily(
            "reportd_processor_oldest_pending_seconds",
            "Age of the oldest waiting delivery, per processor.",
            labels=["processor"],
        )
        dead = GaugeMetricFamily(
            "reportd_processor_dead_letters", "Dead-lettered deliveries, per processor.", labels=["processor"]
        )
        for name, (pending, dead_count, age) in sorted(self.values.items()):
            depth.add_metric([name], pending)
            oldest.add_metric([name], age or 0.0)
            dead.add_metric([name], dead_count)
        stored = GaugeMetricFamily(
            "reportd_store_reports", "Reports kept by the store (counted at most once a minute)."
        )
        stored.add_metric([], self.stored_reports)
        yield from (depth, oldest, dead, stored)
