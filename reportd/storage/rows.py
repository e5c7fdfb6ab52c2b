"""What the SQL backends share: the columns of the store's tables, the rule that
moves a node forward, and the mapping between rows and :mod:`reportd.storage` records.

The SQL dialect (placeholders, transactions, I/O) stays in each backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from reportd.auth import TokenRecord
from reportd.storage import NodeRow, StoredReport

REPORT_COLUMNS = (
    "id, certname, environment, status, change_kind, noop, format, origin, transaction_uuid,"
    " job_id, configuration_version, run_time, start_time, end_time, received_at, summary,"
    " organization, organization_id, location_id"
)
NODE_COLUMNS = "certname, environment, status, change_kind, report_id, run_time, last_received_at, summary"

# Only a newer run (by the agent's run time; the spool id breaks ties) moves a
# node's latest status; the condition is evaluated per column in one statement,
# so concurrent upserts for one node (several instances) cannot go backwards.
_NEWER = (
    "(excluded.run_time > nodes.run_time OR"
    " (excluded.run_time = nodes.run_time AND excluded.report_id > nodes.report_id))"
)
NEWER_RUN_SET = ", ".join(
    f"{column} = CASE WHEN {_NEWER} THEN excluded.{column} ELSE nodes.{column} END"
    for column in ("environment", "status", "change_kind", "summary", "report_id", "run_time")
)


def report_row(r: StoredReport) -> tuple:
    """The ``reports`` row of ``r``, in :data:`REPORT_COLUMNS` order."""
    return (
        r.id, r.certname, r.environment, r.status, r.change_kind, bool(r.noop), r.format, r.origin,
        r.transaction_uuid, r.job_id, r.configuration_version, r.run_time, r.start_time, r.end_time,
        r.received_at, orjson.dumps(r.summary), r.organization, r.organization_id, r.location_id,
    )  # fmt: skip


def node_row(row: tuple) -> tuple:
    """The ``nodes`` row, in :data:`NODE_COLUMNS` order, that a :func:`report_row` proposes."""
    return (row[1], row[2], row[3], row[4], row[0], row[11], row[14], row[15])


def stored_report(found: Sequence[Any], envelope: Any = None, body: bytes = b"") -> StoredReport:
    row = tuple(found)
    # id .. origin, noop as a bool, .. received_at, summary decoded, organization .. location_id
    values = [*row[:5], bool(row[5]), *row[6:15], orjson.loads(row[15]), *row[16:19], envelope or {}, body]
    return StoredReport(*values)


def node(found: Sequence[Any]) -> NodeRow:
    row = tuple(found)
    return NodeRow(*[*row[:7], orjson.loads(row[7])])


def token_record(name: str, permissions: str, expires_at: float | None) -> TokenRecord:
    return TokenRecord(name, frozenset(filter(None, permissions.split(","))), expires_at)


def token_entry(name: str, permissions: str, created_at: float, expires_at: float | None) -> dict[str, Any]:
    """One token as ``list_tokens`` shows it (never its hash)."""
    return {
        "name": name,
        "permissions": sorted(filter(None, permissions.split(","))),
        "created_at": created_at,
        "expires_at": expires_at,
    }
