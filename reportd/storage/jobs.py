"""The jobs part of the storage interface (see :mod:`reportd.storage`)."""

from __future__ import annotations


class JobStorage:
    """What the jobs feature needs from a database; both backends implement it."""
