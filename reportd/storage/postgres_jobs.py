"""Postgres implementation of :class:`reportd.storage.jobs.JobStorage`."""

from __future__ import annotations

from reportd.storage.jobs import JobStorage

# Appended to the backend's MIGRATIONS list (its schema version 3).
MIGRATION = "SELECT 1"


class PostgresJobs(JobStorage):
    """Mixed into the Postgres storage class; uses its connection helpers."""
