"""The daemon's own counters and histograms, in one Prometheus registry per application.

Ingest and the dispatcher record here; the ``metrics`` plugin serves the
registry at ``/metrics``. Nothing is global: tests get a fresh registry
with every application.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, ProcessCollector

from reportd.version import __version__

# A counter's *_created series doubles what every scrape carries and no dashboard
# reads it (the exposition format 0.0.4 has no other way to drop it: process-wide).
prometheus_client.disable_created_metrics()

# Seconds from the first byte of a request to its durable commit.
INGEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SIZE_BUCKETS = (1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DELIVERY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0)


REJECTION_REASONS = ("auth", "size", "encoding", "timeout", "parse", "validation", "unavailable")


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, _resident_memory_bytes, ...
        Info("reportd_build", "The running reportd.", registry=self.registry).info({"version": __version__})
        self.received = Counter(
            "reportd_reports_received",
            "Reports received, by wire format and outcome (accepted or duplicate).",
            ["format", "outcome"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "reportd_rejected",
            "Requests refused, by reason (auth, size, encoding, timeout, parse, validation, unavailable).",
            ["reason"],
            registry=self.registry,
        )
        for reason in REJECTION_REASONS:  # a series from the start, so that rate() sees the first one
            self.rejected.labels(reason)
        self.ingest_seconds = Histogram(
            "reportd_ingest_duration_seconds",
            "From receiving a report to its durable commit.",
            buckets=INGEST_BUCKETS,
            registry=self.registry,
        )
        self.report_bytes = Histogram(
            "reportd_report_bytes",
            "Size of accepted report bodies (after gzip decompression).",
            buckets=SIZE_BUCKETS,
            registry=self.registry,
        )
        self.processor_failures = Counter(
            "reportd_processor_failures",
            "Failed deliveries to a processor (each is retried or dead-lettered).",
            ["processor"],
            registry=self.registry,
        )
        self.processor_seconds = Histogram(
            "reportd_processor_duration_seconds",
            "Time a processor took for one batch of reports.",
            ["processor"],
            buckets=DELIVERY_BUCKETS,
            registry=self.registry,
        )
