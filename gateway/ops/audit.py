"""``python -m gateway audit verify``: walk the hash chain (gateway/chain.py) and report the
first event changed, removed or inserted by hand, and rows left without their order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import orjson

from gateway.chain import GENESIS, event_hash


async def verify(
    pool: asyncpg.Pool, batch: int = 5000, progress: Callable[[int, int], None] | None = None,
) -> tuple[int, dict[str, Any] | None]:
    """Walk the chain; returns (events checked, the first broken event or None).

    ``progress(checked, total)`` after each batch, for a bar: the walk hashes every event.
    """
    prev, last_id, checked = GENESIS, 0, 0
    async with pool.acquire() as conn:
        total = await conn.fetchval("SELECT count(*) FROM order_events") if progress else 0
        while True:
            if progress:
                progress(checked, total)
            rows = await conn.fetch(
                """SELECT id, stream_id, order_id, seq, type, data::text AS data, prev_hash, hash,
                          extract(epoch FROM at) * 1000 AS at_ms
                   FROM order_events WHERE id > $1 ORDER BY id LIMIT $2""",
                last_id, batch,
            )
            if not rows:
                return checked, await _missing_tail(conn) or await _orphan(conn)
            for r in rows:
                at_ms = int(r["at_ms"])  # written in whole ms: a fraction is a change by hand
                expected = event_hash(prev, r["stream_id"], r["order_id"] or "", r["seq"] or 0, r["type"], at_ms,
                                      orjson.loads(r["data"]))
                if r["prev_hash"] != prev or r["hash"] != expected or at_ms != r["at_ms"]:
                    return checked, {"id": r["id"], "order_id": r["order_id"], "seq": r["seq"],
                                     "type": r["type"], "stream_id": r["stream_id"]}
                prev, last_id, checked = r["hash"], r["id"], checked + 1


async def _orphan(conn: asyncpg.Connection) -> dict[str, Any] | None:
    """A line, allocation or event whose order row is gone (the tables have no foreign keys)."""
    row = await conn.fetchrow(
        """SELECT * FROM (
             SELECT 'order_items' AS t, order_id, NULL::bigint AS id FROM order_items
             UNION ALL SELECT 'allocations', order_id, NULL FROM allocations
             UNION ALL SELECT 'order_events', order_id, id FROM order_events WHERE order_id IS NOT NULL) x
           WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.order_id = x.order_id) LIMIT 1"""
    )
    if row is None:
        return None
    return {"id": row["id"], "order_id": row["order_id"], "seq": None,
            "type": f"{row['t']} row without its order", "stream_id": None}


async def _missing_tail(conn: asyncpg.Connection) -> dict[str, Any] | None:
    """An order whose newest events are gone: fewer events than its ``last_seq``."""
    row = await conn.fetchrow(
        """SELECT o.order_id, o.last_seq, max(e.id) AS id, coalesce(max(e.seq), 0) AS seq
           FROM orders o LEFT JOIN order_events e ON e.order_id = o.order_id
           GROUP BY o.order_id, o.last_seq HAVING coalesce(max(e.seq), 0) <> o.last_seq LIMIT 1"""
    )
    if row is None:
        return None
    return {"id": row["id"], "order_id": row["order_id"], "seq": row["seq"],
            "type": f"missing events {row['seq'] + 1}..{row['last_seq']}", "stream_id": None}
