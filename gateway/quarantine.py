"""The quarantine: stream entries the writer set aside, listed and replayed after a fix.

The writer puts an entry here when PostgreSQL refuses it for its data or it cannot be read
(gateway/writer.py), so the stream goes on. A replay writes each open entry as the writer
would, oldest first (an order before its status changes), under the writer's lock; an
entry refused again stays, with its new error.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from gateway.writer import DATA_FAULTS, OrderNotWrittenYet, Rows, describe, unpack


async def open_entries(pool: asyncpg.Pool, limit: int = 1000) -> list[dict[str, Any]]:
    """Entries not replayed yet, oldest first; the fields shown as text (bytes it cannot show as U+FFFD)."""
    rows = await pool.fetch(
        """SELECT id, stream_id, type, order_id, entry, error, quarantined_at FROM quarantine
           WHERE replayed_at IS NULL ORDER BY id LIMIT $1""", limit)
    return [{"id": r["id"], "stream_id": r["stream_id"], "type": r["type"], "order_id": r["order_id"],
             "error": r["error"], "quarantined_at": r["quarantined_at"].isoformat(),
             "fields": {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                        for k, v in unpack(r["entry"]).items()}}
            for r in rows]


async def count(pool: asyncpg.Pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM quarantine WHERE replayed_at IS NULL")


async def replay(pool: asyncpg.Pool, ids: list[int] | None = None) -> dict[str, Any]:
    """Write the open entries (or those of ``ids``) again; returns what was written and what not."""
    rows = await pool.fetch(
        """SELECT id, stream_id, entry FROM quarantine
           WHERE replayed_at IS NULL AND ($1::bigint[] IS NULL OR id = ANY($1::bigint[])) ORDER BY id""", ids)
    replayed, refused = [], []
    for r in rows:
        batch = Rows()
        batch.read(r["stream_id"], unpack(r["entry"]))
        error = batch.held[0][4] if batch.held else None
        if error is None:
            try:
                async with pool.acquire() as conn, conn.transaction():
                    await batch.insert(conn)
                    await conn.execute("UPDATE quarantine SET replayed_at = now() WHERE id = $1", r["id"])
            except (*DATA_FAULTS, OrderNotWrittenYet) as exc:
                error = describe(exc)
        if error is None:
            replayed.append({"id": r["id"], "stream_id": r["stream_id"]})
        else:
            await pool.execute("UPDATE quarantine SET error = $2 WHERE id = $1", r["id"], error)
            refused.append({"id": r["id"], "stream_id": r["stream_id"], "error": error})
    return {"replayed": replayed, "refused": refused}
