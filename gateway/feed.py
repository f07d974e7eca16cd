"""The event feed: every row of ``order_events`` in commit order, paged by id (``GET /v1/events``).

Ids come from a bigserial, and ids of concurrent transactions can commit out of order: a
reader that has seen 8 and asks for ``id > 8`` would never see a 7 committed a moment later.
Every writer of ``order_events`` first takes ``pg_advisory_xact_lock(0x6F6D7366)``
(``gateway.db.EVENTS_LOCK``), held until its commit, so one transaction draws and
commits its ids before the next draws any: id order is commit order, and ``id > after``
skips nothing. The webhook sender reads the same way.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from gateway.models import iso_ms


async def read(pool: asyncpg.Pool, after: int, limit: int) -> list[asyncpg.Record]:
    return await pool.fetch(
        """SELECT id, type, order_id, seq, (extract(epoch FROM at) * 1000)::bigint AS at_ms,
                  data::text AS data
           FROM order_events WHERE id > $1 ORDER BY id LIMIT $2""",
        after, limit,
    )


def item(row: asyncpg.Record) -> dict[str, Any]:
    """The public event; ``data`` goes out as PostgreSQL stored it, never parsed."""
    return {"id": row["id"], "type": row["type"], "order_id": row["order_id"], "seq": row["seq"],
            "at": iso_ms(row["at_ms"]), "data": orjson.Fragment(row["data"])}


