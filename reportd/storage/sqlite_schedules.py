"""SQLite implementation of :class:`reportd.storage.schedules.ScheduleStorage`."""

from __future__ import annotations

from reportd.storage.schedules import ScheduleStorage

# Appended to the backend's MIGRATIONS list (its schema version 4).
MIGRATION = "SELECT 1"


class SQLiteSchedules(ScheduleStorage):
    """Mixed into the SQLite storage class; uses its connection helpers."""
