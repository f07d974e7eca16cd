"""Rebuilding Redis from PostgreSQL after Redis lost its data (``python -m gateway rebuild-redis``).

Everything the scripts read comes back from one PostgreSQL snapshot: warehouses, sales with
their sold and per-user units, stock, the records of open and recent orders with the expiry
set, and the writers' group. The ready marker is deleted first and set last, so no script
sells from a half-built state (they answer 503 ``not_ready`` meanwhile). Every key it writes
is deleted first, so a second run, or one over a stale snapshot (``force``), leaves exactly
what PostgreSQL says.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway import keys, spans
from gateway.models import decode_order
from gateway.ops.reconcile import HOLDING, PG_STOCK
from gateway.orders import ORDER_SELECT, record_of
from gateway.sales import SaleIn, rules
from gateway.soldout import restocked
from gateway.wire import encode_warehouse, parse_alloc, reserved_field

log = logging.getLogger(__name__)
BATCH = 1000  # commands per pipeline, rows per cursor fetch
COUNTER_LIFE_MS = 7 * 86400 * 1000  # a per-user counter outlives its sale by this, as in reserve.lua
Progress = Callable[[str, int, int], None]  # (step, done, total)

WAREHOUSES = """
    SELECT warehouse_id, priority, coalesce(region, '') AS region, active FROM warehouses
    UNION
    SELECT warehouse, 100, '', true FROM inventory
    WHERE warehouse NOT IN (SELECT warehouse_id FROM warehouses)"""

# Units a buyer still holds: cancel and expiry gave theirs back, and so did a refund of an
# order that never shipped (lifecycle.py: refund and cancel from paid release the stock).
SALE_UNITS = """
    SELECT o.sale_id, o.user_id, sum(i.qty) AS units
    FROM orders o JOIN order_items i USING (order_id)
    WHERE o.sale_id IS NOT NULL AND o.status <> 'cancelled'
      AND NOT (o.status IN ('refunding', 'refunded') AND NOT EXISTS (
          SELECT 1 FROM order_events e WHERE e.order_id = o.order_id AND e.type = 'order.shipped'))
    GROUP BY o.sale_id, o.user_id"""

# Open orders, and recent ones so a replay of their id still answers 200/409, never reserves again.
ORDERS = ORDER_SELECT + """
    WHERE o.status = ANY($1::text[]) OR o.created_at > now() - $2 * interval '1 second'"""


class Refused(Exception):
    """The rebuild did not start (Redis in service) or stopped before writing (events not yet written)."""


async def in_service(redis: aioredis.Redis, layout: keys.Partitions = keys.SINGLE) -> bool:
    """True when a partition's marker is set and it holds warehouses, sales, orders or stock."""
    for p in layout.all():
        if not await redis.exists(keys.ready(p)):
            continue
        if await redis.exists(keys.warehouses(p), keys.sales(p), keys.expiry(p)):
            return True
        async for _ in redis.scan_iter(match=keys.stock_pattern(p), count=BATCH):
            return True
    return False


async def rebuild(
    redis: aioredis.Redis, pool: asyncpg.Pool, *, idempotency_ttl: int, progress: Progress | None = None,
    force: bool = False, layout: keys.Partitions = keys.SINGLE,
) -> dict[str, Any]:
    """Restore Redis from PostgreSQL and set the ready marker; returns counts of what was restored.

    Raises ``Refused`` without changing anything when Redis is in service (unless ``force``),
    and after deleting the marker when an events stream still holds entries: PostgreSQL lacks
    them, so a rebuild would drop them; once the writers drained them, run again.
    ``conservation`` lists pairs where PostgreSQL reserves more than it has on hand; their
    availability is set to 0.
    """
    if not force and await in_service(redis, layout):
        raise Refused("Redis is in service (ready marker set, state present); --force replaces its state")
    # the partitions of this layout, and one partition's keys left from before OMS_PARTITIONS was set
    every = list(dict.fromkeys([*layout.all(), keys.ONE]))
    for p in every:  # nothing sells from here until the end
        await redis.delete(keys.ready(p))
    await restocked(redis)  # nor is refused as sold out by a process's memory
    unwritten = sum([await redis.xlen(keys.events(p)) for p in every])
    if unwritten:
        raise Refused(f"{unwritten} event(s) in Redis are not in PostgreSQL yet; orders answer 503 now, "
                      "so the writers (a running gateway) drain them: run again once they have")
    await _clear(redis, every)
    report = progress or (lambda step, done, total: None)
    counts: dict[str, Any] = {}
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        counts["warehouses"] = await _warehouses(redis, conn, layout)
        report("warehouses", counts["warehouses"], counts["warehouses"])
        counts["sales"], counts["sale_users"] = await _sales(redis, conn, report, layout)
        counts["stock"], counts["conservation"] = await _stock(redis, conn, report, layout)
        counts["orders"], counts["pending"] = await _orders(redis, conn, report, idempotency_ttl, layout)
    for p in layout.all():
        try:  # the stream is empty (checked above), so "$" loses nothing
            await redis.xgroup_create(keys.events(p), keys.WRITER_GROUP, id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
    for p in layout.all():
        await redis.set(keys.ready(p), layout.mark)
    await restocked(redis)
    return counts


class _Pipe:
    """Commands sent in pipelines of ``BATCH``, with progress after each round trip."""

    def __init__(self, redis: aioredis.Redis, report: Progress, step: str, total: int) -> None:
        self.pipe = redis.pipeline(transaction=False)
        self.report, self.step, self.total, self.done = report, step, total, 0
        report(step, 0, total)

    async def row_done(self) -> None:
        self.done += 1
        if len(self.pipe) >= BATCH:
            await self.flush()

    async def flush(self) -> None:
        await self.pipe.execute()
        self.report(self.step, self.done, self.total)


async def _rows(conn: asyncpg.Connection, sql: str, *args: Any) -> tuple[int, Any]:
    """(row count, server-side cursor) of a query, in the rebuild's snapshot."""
    total = await conn.fetchval(f"SELECT count(*) FROM ({sql}) q", *args)
    return total, conn.cursor(sql, *args, prefetch=BATCH)


async def _clear(redis: aioredis.Redis, partitions: list[str]) -> None:
    """Delete every key the rebuild writes, so none that PostgreSQL no longer knows lingers
    (one partition at a time: a Cluster's UNLINK takes keys of one slot)."""
    for p in partitions:
        doomed: list[Any] = [keys.warehouses(p), keys.sales(p), keys.expiry(p), keys.holds(p), keys.remote(p)]
        for kind in ("stock", "order", "sale", "sale_user", "holders", "locator", "hold"):
            async for key in redis.scan_iter(match=keys.pattern(kind, p), count=BATCH):
                doomed.append(key)
                if len(doomed) >= BATCH:
                    await redis.unlink(*doomed)
                    doomed = []
        if doomed:
            await redis.unlink(*doomed)


async def _warehouses(redis: aioredis.Redis, conn: asyncpg.Connection, layout: keys.Partitions) -> int:
    rows = await conn.fetch(WAREHOUSES)
    for p in layout.all():  # every partition keeps the table
        pipe = redis.pipeline(transaction=True)
        if rows:
            pipe.hset(keys.warehouses(p), mapping={
                r["warehouse_id"]: encode_warehouse(r["priority"], r["region"], r["active"]) for r in rows})
        pipe.incr(keys.wh_version(p))  # every process reloads its cache on the next reserve
        await pipe.execute()
    return len(rows)


async def _sales(redis: aioredis.Redis, conn: asyncpg.Connection, report: Progress,
                 layout: keys.Partitions) -> tuple[int, int]:
    """Per-user counters first (they sum to each sale's ``sold``), then the sale hashes; (sales, counters)."""
    defs = {r["sale_id"]: msgspec.json.decode(r["definition"], type=SaleIn)
            for r in await conn.fetch("SELECT sale_id, definition::text AS definition FROM sales")}
    sales = {sale_id: rules(sale) for sale_id, sale in defs.items()}
    sold: dict[tuple[str, str], int] = {}  # (sale, partition): a hot SKU's sale counts per bucket
    users = 0
    total, rows = await _rows(conn, SALE_UNITS)
    out = _Pipe(redis, report, "sale counters", total)
    async for r in rows:
        sale_id, units = r["sale_id"], r["units"]
        if sale_id in sales:
            p = layout.target(defs[sale_id].skus, r["user_id"])  # where the user's orders in it go
            key = keys.sale_user(sale_id, r["user_id"], p)
            out.pipe.hset(key, "units", units)
            out.pipe.pexpireat(key, int(sales[sale_id]["e"]) + COUNTER_LIFE_MS)
            sold[(sale_id, p)] = sold.get((sale_id, p), 0) + units
            users += 1
        await out.row_done()
    await out.flush()
    out = _Pipe(redis, report, "sales", len(sales))
    for sale_id, fields in sales.items():
        for p in layout.places(defs[sale_id].skus[0]):
            out.pipe.hset(keys.sale(sale_id, p), mapping={**fields, "sold": sold.get((sale_id, p), 0)})
            out.pipe.sadd(keys.sales(p), sale_id)
        await out.row_done()
    for p in layout.all():
        out.pipe.incr(keys.sale_version(p))
    await out.flush()
    return len(sales), users


async def _stock(redis: aioredis.Redis, conn: asyncpg.Connection, report: Progress,
                 layout: keys.Partitions) -> tuple[int, list[dict[str, Any]]]:
    """Every (sku, warehouse): reserved from open orders, the rest of on hand available."""
    broken = []
    total, rows = await _rows(conn, PG_STOCK, list(HOLDING))
    out = _Pipe(redis, report, "stock", total)
    async for r in rows:
        sku, wh, on_hand, reserved = r["sku"], r["warehouse"], r["on_hand"], r["reserved"]
        if on_hand < reserved:
            log.warning("conservation broken in PostgreSQL: %s in %s has %d on hand but %d reserved; "
                        "available set to 0", sku, wh, on_hand, reserved)
            broken.append({"sku": sku, "warehouse": wh, "on_hand": on_hand, "reserved": reserved})
        out.pipe.hset(keys.stock(sku, layout.places(sku)[0]), mapping={wh: max(on_hand - reserved, 0), reserved_field(wh): reserved})
        await out.row_done()
    await out.flush()
    return total, broken


async def _orders(
    redis: aioredis.Redis, conn: asyncpg.Connection, report: Progress, record_ttl: int, layout: keys.Partitions,
) -> tuple[int, int]:
    """Order records as ``orders.record_of`` builds them, TTLs as the scripts set; (orders, pending)."""
    pending, now_ms = 0, int(time.time() * 1000)
    total, rows = await _rows(conn, ORDERS, list(HOLDING), record_ttl)
    out = _Pipe(redis, report, "orders", total)
    async for r in rows:
        order = decode_order(r["payload"].encode())
        items = order.items
        # each line where the gateway put it: one partition, or an order over several (gateway/spans.py)
        parts = spans.parts_of(layout, [item.sku for item in items], order.user_id)
        where = {j: q for q, idx in parts.items() for j in idx}
        p = next(iter(parts))
        key = keys.order(r["order_id"], p)
        record = record_of(r)
        if len(parts) > 1:
            record["x"] = ",".join(list(parts)[1:])
        out.pipe.hset(key, mapping=record)
        groups = parse_alloc(record["a"])
        if r["status"] in HOLDING:  # _stock put a hot SKU's reserved units in its first bucket
            for j, (item, takes) in enumerate(zip(items, groups, strict=True)):
                first = layout.places(item.sku)[0]
                for wh, qty in takes if first != where[j] else ():
                    out.pipe.hincrby(keys.stock(item.sku, first), reserved_field(wh), -qty)
                    out.pipe.hincrby(keys.stock(item.sku, where[j]), reserved_field(wh), qty)
        ttl = record_ttl
        if r["status"] == "pending_payment":  # reserve.lua: the record outlives its reservation
            ttl = max(record_ttl, math.ceil((r["until_ms"] - r["created_ms"]) / 1000) + 3600)
            out.pipe.zadd(keys.expiry(p), {r["order_id"]: r["until_ms"]})
            pending += 1
        out.pipe.expire(key, ttl)
        if layout.count > 1:  # reserve.lua: where lifecycle calls find it
            out.pipe.set(keys.locator(r["order_id"], layout.home(r["order_id"])), p, ex=ttl)
        state = "held" if r["status"] in HOLDING else "shipped" if "sh" in record else "released"
        for q, idx in list(parts.items())[1:]:  # hold.lua's record of each part elsewhere
            hold = keys.hold(r["order_id"], q)
            alloc = ";".join(",".join(f"{wh}={qty}" for wh, qty in groups[j]) for j in idx)
            out.pipe.hset(hold, mapping={"p": record["p"], "a": alloc, "s": state, "m": p, "k": "1"})
            if state != "held":  # a held part's record lives as long as its units are held
                out.pipe.expire(hold, ttl)
        for j, item in enumerate(items):  # reserve.lua and hold.lua: the SKU's holders
            out.pipe.zadd(keys.holders(item.sku, where[j]), {r["order_id"]: now_ms + ttl * 1000})
        await out.row_done()
    await out.flush()
    return total, pending
