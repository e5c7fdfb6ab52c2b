"""The storage written once for both SQL backends, apart from the ingest path's statements.

Reading the store (reports, nodes), expiring it, the spool's administration
(queue figures, dead letters, retries, expiry, Chef's run starts) and the API
tokens: each operation is steps of :mod:`reportd.storage.sql`, which the
backends run. What stays in each backend is the hot path (spooling a report,
claiming and finishing deliveries, storing a batch of reports), tuned to its
database: SQLite's group commit, PostgreSQL's batched ``unnest`` statements.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from reportd.auth import TokenRecord
from reportd.storage import DeadLetter, DeliveryState, NodeRow, QueueStats, ReportQuery, StoredReport
from reportd.storage.rows import NODE_COLUMNS, REPORT_COLUMNS, node, stored_report, token_entry, token_record
from reportd.storage.sql import Query, SQLOperations, Steps, count, marks, row, rows, single, value

#: Values per ``IN (...)`` list: well under SQLite's limit on a statement's parameters.
IN_LIST = 500
_REPORT_COLUMNS_OF_R = ", ".join(f"r.{c.strip()}" for c in REPORT_COLUMNS.split(","))


def chunked(values: Sequence[Any], size: int = IN_LIST) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def where(conditions: Iterable[tuple[str, Any]]) -> tuple[str, list[Any]]:
    """``WHERE a = ? AND ...`` of the conditions whose value is given (not None)."""
    clauses, params = [], []
    for clause, given in conditions:
        if given is not None:
            clauses.append(clause)
            params.append(given)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


class SQLStoreOperations(SQLOperations):
    """The store's, the spool administration's and the tokens' operations, for both backends."""

    # -- spool administration ------------------------------------------------------
    async def queue_stats(self) -> dict[str, QueueStats]:
        found = await self._run_steps(lambda: single(_QUEUE_STATS), write=False)
        return {p: QueueStats(pending, dead, oldest) for p, pending, dead, oldest in found}

    async def dead_letters(self, processor: str | None, limit: int) -> list[DeadLetter]:
        filters, params = where([("d.state = ?", "dead"), ("d.processor = ?", processor)])
        select = rows(
            "SELECT d.processor, d.report_id, i.certname, d.attempts, d.last_error"
            f" FROM deliveries d JOIN inbox i ON i.id = d.report_id {filters}"
            " ORDER BY d.report_id LIMIT ?",
            *params,
            limit,
        )
        return [DeadLetter(*r) for r in await self._run_steps(lambda: single(select), write=False)]

    async def delivery_states(self, keys: Sequence[tuple[str, int]]) -> list[DeliveryState]:
        return await self._run_steps(lambda: _delivery_states(keys), write=False)

    async def retry(self, processor: str | None, report_ids: Sequence[int] | None, now: float) -> int:
        return await self._run_steps(lambda: _retry(processor, report_ids, float(now)), write=True)

    async def expire_spool(self, before: float, batch: int) -> int:
        return await self._run_steps(lambda: _expire_spool(float(before), batch), write=True)

    async def count_expired_spool(self, before: float) -> int:
        select = value("SELECT count(*) FROM inbox WHERE received_at < ? AND body IS NULL", float(before))
        return await self._run_steps(lambda: single(select), write=False)

    async def record_run_start(
        self, format: str, certname: str, run_id: str, started_at: float | None, now: float
    ) -> bool:
        insert = count(
            "INSERT INTO run_starts (format, certname, run_id, started_at, received_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            format, certname, run_id, started_at, float(now),
        )  # fmt: skip
        return await self._run_steps(lambda: single(insert), write=True) == 1

    async def run_started(self, format: str, certname: str, run_id: str) -> bool:
        select = row(
            "SELECT 1 FROM run_starts WHERE format = ? AND certname = ? AND run_id = ?",
            format,
            certname,
            run_id,
        )
        return await self._run_steps(lambda: single(select), write=False) is not None

    # -- the store -------------------------------------------------------------------
    async def query_reports(self, query: ReportQuery) -> list[StoredReport]:
        return await self._run_steps(lambda: _query_reports(query), write=False)

    async def get_report(self, report_id: int) -> StoredReport | None:
        return await self._run_steps(lambda: _get_report(report_id), write=False)

    async def list_nodes(
        self, *, environment: str | None, status: str | None, limit: int, after: str | None
    ) -> list[NodeRow]:
        filters, params = where(
            [("environment = ?", environment), ("status = ?", status), ("certname > ?", after)]
        )
        select = rows(f"SELECT {NODE_COLUMNS} FROM nodes {filters} ORDER BY certname LIMIT ?", *params, limit)
        return [node(r) for r in await self._run_steps(lambda: single(select), write=False)]

    async def get_node(self, certname: str) -> NodeRow | None:
        select = row(f"SELECT {NODE_COLUMNS} FROM nodes WHERE certname = ?", certname)
        found = await self._run_steps(lambda: single(select), write=False)
        return node(found) if found else None

    async def expire_reports(self, before: float, batch: int) -> int:
        # Short transactions that take no lock ingest waits on: new reports and their
        # inbox rows are never the old rows locked here, and rows another instance is
        # expiring are skipped (PostgreSQL), not waited for.
        deleted = await self._run_steps(lambda: _expire_report_batch(float(before), batch), write=True)
        forget = count(
            "DELETE FROM nodes WHERE certname IN (SELECT certname FROM nodes"
            " WHERE last_received_at < ? LIMIT ?{skip_locked})",
            float(before),
            batch,
        )
        await self._run_steps(lambda: single(forget), write=True)
        return deleted

    async def count_reports(self, before: float | None = None) -> int:
        filters, params = where([("run_time < ?", None if before is None else float(before))])
        select = value(f"SELECT count(*) FROM reports {filters}", *params)
        return await self._run_steps(lambda: single(select), write=False)

    # -- tokens ------------------------------------------------------------------------
    async def create_token(
        self,
        name: str,
        token_hash: str,
        permissions: Iterable[str],
        now: float,
        expires_at: float | None = None,
    ) -> None:
        insert = count(
            "INSERT INTO tokens (name, token_hash, permissions, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            name, token_hash, ",".join(sorted(permissions)), float(now), expires_at,
        )  # fmt: skip
        if await self._run_steps(lambda: single(insert), write=True) != 1:
            raise KeyError(name)

    async def find_token(self, token_hash: str) -> TokenRecord | None:
        select = row("SELECT name, permissions, expires_at FROM tokens WHERE token_hash = ?", token_hash)
        found = await self._run_steps(lambda: single(select), write=False)
        return token_record(*found) if found else None

    async def list_tokens(self) -> list[dict[str, Any]]:
        select = rows("SELECT name, permissions, created_at, expires_at FROM tokens ORDER BY name")
        return [token_entry(*r) for r in await self._run_steps(lambda: single(select), write=False)]

    async def revoke_token(self, name: str) -> bool:
        delete = count("DELETE FROM tokens WHERE name = ?", name)
        return await self._run_steps(lambda: single(delete), write=True) > 0


_QUEUE_STATS = rows(
    "WITH s AS (SELECT processor,"
    " count(*) FILTER (WHERE state = 'pending') AS pending,"
    " count(*) FILTER (WHERE state = 'dead') AS dead,"
    " min(report_id) FILTER (WHERE state = 'pending') AS oldest"
    " FROM deliveries GROUP BY processor)"
    " SELECT s.processor, s.pending, s.dead, i.received_at"
    " FROM s LEFT JOIN inbox i ON i.id = s.oldest"
)


def _delivery_states(keys: Sequence[tuple[str, int]]) -> Steps:
    found: list[DeliveryState] = []
    for part in chunked(keys, IN_LIST // 2):
        pairs = " OR ".join("(processor = ? AND report_id = ?)" for _ in part)
        selected = yield rows(
            f"SELECT processor, report_id, state, attempts, last_error FROM deliveries WHERE {pairs}",
            *(item for key in part for item in (key[0], int(key[1]))),
        )
        found.extend(DeliveryState(*r) for r in selected)
    return found


def _retry(processor: str | None, report_ids: Sequence[int] | None, now: float) -> Steps:
    filters, params = where([("state = ?", "dead"), ("processor = ?", processor)])
    update = (
        "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, lease_until = NULL"
        f" {filters}"
    )
    if report_ids is None:
        return (yield count(update, now, *params))
    retried = 0
    for part in chunked(list(report_ids)):
        retried += yield count(f"{update} AND report_id IN ({marks(part)})", now, *params, *part)
    return retried


def _expire_spool(before: float, batch: int) -> Steps:
    yield count(
        "DELETE FROM run_starts WHERE (format, certname, run_id) IN (SELECT format, certname, run_id"
        " FROM run_starts WHERE received_at < ? LIMIT ?{skip_locked})",
        before,
        batch,
    )
    return (
        yield count(
            "DELETE FROM inbox WHERE id IN (SELECT id FROM inbox WHERE received_at < ?"
            " AND body IS NULL LIMIT ?{skip_locked})",
            before,
            batch,
        )
    )


def _query_reports(query: ReportQuery) -> Steps:
    conditions: list[tuple[str, Any]] = [
        (f"{column} = ?", getattr(query, column))
        for column in ("certname", "status", "environment", "organization", "organization_id", "location_id")
    ]
    conditions += [
        ("run_time >= ?", None if query.since is None else float(query.since)),
        ("run_time < ?", None if query.until is None else float(query.until)),
    ]
    filters, params = where(conditions)
    if query.after is not None:
        run_time, report_id = float(query.after[0]), int(query.after[1])
        keyset = "(run_time < ? OR (run_time = ? AND id < ?))"
        filters = f"{filters} AND {keyset}" if filters else f"WHERE {keyset}"
        params += [run_time, run_time, report_id]
    found = yield rows(
        f"SELECT {REPORT_COLUMNS} FROM reports {filters} ORDER BY run_time DESC, id DESC LIMIT ?",
        *params,
        query.limit,
    )
    return [stored_report(r) for r in found]


def _get_report(report_id: int) -> Steps:
    found = yield row(
        f"SELECT {_REPORT_COLUMNS_OF_R}, i.envelope, i.body FROM reports r JOIN inbox i ON i.id = r.id"
        " WHERE r.id = ? AND i.body IS NOT NULL",
        report_id,
    )
    if found is None:
        return None
    return stored_report(found[:-2], orjson.loads(found[-2]), zlib.decompress(found[-1]))


def _expire_report_batch(before: float, batch: int) -> Steps:
    found = yield rows(
        "SELECT id FROM reports WHERE run_time < ? ORDER BY run_time, id LIMIT ?{skip_locked}", before, batch
    )
    ids = sorted(r[0] for r in found)
    # Lock order as in finish (PostgreSQL): inbox rows, then the rows that reference them.
    for part in chunked(ids):
        yield Query(
            f"SELECT 1 FROM inbox WHERE id IN ({marks(part)}) ORDER BY id{{for_update}}",
            part,
            postgres_only=True,
        )
    for part in chunked(ids):
        yield count(f"DELETE FROM reports WHERE id IN ({marks(part)})", *part)
        yield count(
            f"UPDATE inbox SET body = NULL WHERE id IN ({marks(part)}) AND body IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.report_id = inbox.id)",
            *part,
        )
    return len(ids)
