"""Monthly partitions of ``orders`` and ``order_events`` (migration 008): made ahead of time.

A row whose month has no partition lands in ``<table>_default`` and is never refused; the
writer calls ``ensure`` as it starts and hourly, so the current month and the next ones
exist before their first row. ``oms_month_partition()`` (SQL) is the one maker, and moves
rows that fell into the default partition meanwhile.
"""

from __future__ import annotations

import datetime as dt

import asyncpg

from gateway.db import EVENTS_LOCK

TABLES = (("orders", "created_at"), ("order_events", "at"))
MONTHS_AHEAD = 2


def months(today: dt.date, ahead: int = MONTHS_AHEAD) -> list[dt.date]:
    """The first day of ``today``'s month and of the ``ahead`` months after it."""
    first = today.replace(day=1)
    out = []
    for _ in range(ahead + 1):
        out.append(first)
        first = (first + dt.timedelta(days=32)).replace(day=1)
    return out


def name(table: str, month: dt.date) -> str:
    return f"{table}_{month:%Y_%m}"


async def ensure(pool: asyncpg.Pool, today: dt.date | None = None, ahead: int = MONTHS_AHEAD) -> list[str]:
    """Make the missing partitions of this month and the ``ahead`` next ones; returns their names.

    Under the writers' lock: attaching takes the default partition's strongest lock, and a
    writer transaction holding it on one table while waiting on the other would deadlock.
    """
    wanted = [(table, col, m) for m in months(today or dt.datetime.now(dt.UTC).date(), ahead)
              for table, col in TABLES]
    async with pool.acquire() as conn:
        present = {r["relname"] for r in await conn.fetch(
            """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'public' AND c.relname = ANY($1::text[])""", [name(t, m) for t, _, m in wanted])}
        missing = [(t, col, m) for t, col, m in wanted if name(t, m) not in present]
        if missing:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_LOCK)
                for table, col, month in missing:
                    await conn.execute("SELECT oms_month_partition($1, $2, $3)", table, col, month)
    return [name(t, m) for t, _, m in missing]


async def listing(conn: asyncpg.Connection) -> list[dict[str, object]]:
    """Every partition of the partitioned tables: its table, bounds and estimated rows."""
    rows = await conn.fetch(
        """SELECT p.relname AS parent, c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bounds,
                  greatest(c.reltuples, 0)::bigint AS rows_estimate
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
           WHERE p.oid = ANY(ARRAY(SELECT to_regclass('public.' || t) FROM unnest($1::text[]) AS t))
           ORDER BY p.relname, c.relname""",
        [t for t, _ in TABLES])
    return [dict(r) for r in rows]
