"""The event feed: every row of ``order_events`` in commit order, paged by id (``GET /v1/events``).

Ids come from a bigserial, and ids of concurrent transactions can commit out of order: a
reader that has seen 8 and asks for ``id > 8`` would never see a 7 committed a moment later.
Every writer of ``order_events`` first takes ``pg_advisory_xact_lock(0x6F6D7366)``
(``gateway.writer.EVENTS_LOCK``), held until its commit, so one transaction draws and
commits its ids before the next draws any: id order is commit order, and ``id > after``
skips nothing. The webhook sender reads the same way.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from gateway import appkeys as K
from gateway.edge import edge
from gateway.errors import Invalid
from gateway.models import iso_ms
from gateway.routes import json, principal

DIGITS = re.compile(r"[0-9]{1,19}")
PARAMS = {"after": (0, 0, 2**63 - 1), "limit": (100, 1, 1000)}  # name: (default, min, max)


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


def query_int(query: Any, name: str) -> int:
    """One integer parameter within its bounds; absent or empty (``?after=``) means the default."""
    default, lo, hi = PARAMS[name]
    values = query.getall(name, [])
    if not values or values == [""]:
        return default
    raw = values[0]
    if len(values) > 1 or not DIGITS.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise Invalid(f"{name} must be given once, as an integer in {lo}..{hi}", code=f"invalid_{name}")
    return int(raw)


async def list_events(request: web.Request) -> web.Response:
    principal(request).require("ops")
    unknown = sorted(set(request.query) - PARAMS.keys())
    if unknown:
        raise Invalid(f"Unknown query parameter(s): {', '.join(unknown)}", code="unknown_parameter")
    after, limit = query_int(request.query, "after"), query_int(request.query, "limit")
    rows = await read(request.app[K.PG], after, limit)
    return json({"events": [item(r) for r in rows], "next": rows[-1]["id"] if rows else after})


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/events", edge(list_events))
