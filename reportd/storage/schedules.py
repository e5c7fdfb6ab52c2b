"""The schedules part of the storage interface (see :mod:`reportd.storage`)."""

from __future__ import annotations


class ScheduleStorage:
    """What the schedules feature needs from a database; both backends implement it."""
