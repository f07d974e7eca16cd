"""Which batched form writes a writer batch fastest, measured: the writer's own ``unnest``
INSERTs against COPY into temporary staging tables followed by ``INSERT ... SELECT ... ON
CONFLICT DO NOTHING`` (COPY alone cannot skip a re-delivered row, and the writer must).

Both forms write the same batches of new orders (orders, order_items, allocations) and the
same events with the same hash-chain code, each batch in one committed transaction, the two
forms alternating so that table growth and a warming PostgreSQL favour neither.

``python -m bench.writer_forms [--orders 2000] [--rounds 5]`` (embedded PostgreSQL in a
temporary directory, or ``OMS_DATABASE_URL``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from bench.rows import batch, ts
from gateway import db
from gateway.ops.embedded import EmbeddedPostgres
from gateway.writer import EVENTS_LOCK, Rows


async def unnest_form(conn: asyncpg.Connection, rows: Rows) -> None:
    async with conn.transaction():
        await rows.insert(conn)


async def copy_form(conn: asyncpg.Connection, rows: Rows) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_LOCK)
        await conn.execute(
            "CREATE TEMP TABLE s_orders (LIKE orders INCLUDING DEFAULTS) ON COMMIT DROP;"
            "CREATE TEMP TABLE s_items (LIKE order_items) ON COMMIT DROP;"
            "CREATE TEMP TABLE s_allocs (LIKE allocations) ON COMMIT DROP")
        await conn.copy_records_to_table(
            "s_orders", columns=["order_id", "user_id", "channel", "sale_id", "status", "ship_to", "currency",
                                 "payload", "reserved_until", "created_at", "updated_at"],
            records=[(o, u, ch, s, st, sh, cur, p, ts(ru), ts(c), ts(c))
                     for o, u, ch, s, st, sh, cur, p, ru, c in rows.orders])
        await conn.copy_records_to_table("s_items", records=rows.items)
        await conn.copy_records_to_table("s_allocs", records=rows.allocs)
        fresh = {r["order_id"] for r in await conn.fetch(
            "INSERT INTO orders SELECT * FROM s_orders s"
            " WHERE NOT EXISTS (SELECT 1 FROM orders x WHERE x.order_id = s.order_id) ON CONFLICT DO NOTHING"
            " RETURNING order_id")}
        await conn.execute(
            "INSERT INTO order_items SELECT * FROM s_items ON CONFLICT DO NOTHING;"
            "INSERT INTO allocations SELECT * FROM s_allocs ON CONFLICT DO NOTHING")
        await rows._append_events(conn, fresh)


async def measure(dsn: str, orders: int, rounds: int) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        await db.migrate(conn)
        times: dict[str, list[float]] = {"unnest": [], "copy": []}
        forms = {"unnest": unnest_form, "copy": copy_form}
        tag = f"wf{time.time_ns()}"
        for r in range(rounds + 1):  # round 0 warms both up and is not counted
            for name in (("unnest", "copy") if r % 2 else ("copy", "unnest")):
                rows = batch(f"{tag}-{name}-{r}", orders)
                start = time.perf_counter()
                await forms[name](conn, rows)
                if r:
                    times[name].append(time.perf_counter() - start)
        return {name: {"best_rows_per_s": orders / min(t), "median_rows_per_s": orders / sorted(t)[len(t) // 2]}
                for name, t in times.items()}
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.writer_forms", description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=2000, help="orders per batch (OMS_WRITER_BATCH's default)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="oms-forms-"))
    pg = None
    try:
        dsn = os.environ.get("OMS_DATABASE_URL")
        if not dsn:
            pg = EmbeddedPostgres(workdir / "pg", database="oms_forms")
            dsn = pg.start()
        result = uvloop.run(measure(dsn, args.orders, args.rounds))
    finally:
        if pg:
            pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    for name, r in result.items():
        print(f"{name:7} best {r['best_rows_per_s']:>9,.0f} orders/s   median {r['median_rows_per_s']:>9,.0f} orders/s")
    print(f"copy ÷ unnest (median): {result['copy']['median_rows_per_s'] / result['unnest']['median_rows_per_s']:.2f}")


if __name__ == "__main__":
    main()
