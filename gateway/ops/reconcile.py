"""Reconciliation: Redis stock against PostgreSQL's inventory and open orders, and repair from PostgreSQL.

PostgreSQL trails Redis by what the writers have not written yet, so the two are compared at
a quiet moment: every events stream empty with nothing pending, and no event generated
between that check and the end of both reads (each stream's last generated id unchanged).
Every script that moves stock appends an event in the same atomic step, so an unchanged id
means neither store moved while it was read. Without such a moment within ``wait`` seconds
the comparison runs anyway and says ``lagging``; repair refuses to act on it.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from gateway import buckets, keys, quarantine
from gateway.errors import NotReady
from gateway.inventory import stock_hashes
from gateway.scripts import Scripts
from gateway.soldout import restocked
from gateway.wire import RESERVED_PREFIX, Repair

HOLDING = ("pending_payment", "paid")  # statuses whose allocations still hold stock
POLL = 0.05  # seconds between drain checks; the writers give no signal to wait on

Pair = tuple[str, str]  # (sku, warehouse)

# One statement, so one snapshot: on hand from the ledger-fed table, reserved from open orders;
# the full join also yields units allocated where no inventory row exists (a conservation break).
PG_STOCK = """
    WITH held AS (
        SELECT a.sku, a.warehouse, sum(a.qty) AS reserved
        FROM allocations a JOIN orders o USING (order_id)
        WHERE o.status = ANY($1::text[])
        GROUP BY a.sku, a.warehouse)
    SELECT sku, warehouse, coalesce(i.on_hand, 0) AS on_hand, coalesce(h.reserved, 0) AS reserved
    FROM inventory i FULL JOIN held h USING (sku, warehouse)"""


async def _quiet_mark(redis: aioredis.Redis, layout: keys.Partitions) -> list[Any] | None:
    """Each events stream's last generated id when all are drained, else None.

    A stream or writer group that does not exist yet holds nothing (its error reads as empty).
    Each partition is read in a transaction of its own (a Cluster's spans one slot).
    """
    replies = []
    for p in layout.all():
        pipe = redis.pipeline(transaction=True)
        pipe.xlen(keys.events(p))
        pipe.xpending(keys.events(p), keys.WRITER_GROUP)
        pipe.xinfo_stream(keys.events(p))
        replies += await pipe.execute(raise_on_error=False)
    mark = []
    for length, pending, info in zip(replies[::3], replies[1::3], replies[2::3], strict=True):
        if length or (not isinstance(pending, Exception) and pending["pending"]):
            return None
        mark.append(None if isinstance(info, Exception) else info["last-generated-id"])
    return mark


async def _postgres_stock(pool: asyncpg.Pool) -> dict[Pair, tuple[int, int]]:
    """(sku, warehouse) -> (on hand, reserved) in PostgreSQL."""
    rows = await pool.fetch(PG_STOCK, list(HOLDING))
    return {(r["sku"], r["warehouse"]): (r["on_hand"], r["reserved"]) for r in rows}


async def _redis_stock(redis: aioredis.Redis, layout: keys.Partitions) -> dict[Pair, tuple[int, int]]:
    """(sku, warehouse) -> (available, reserved) from every stock hash; a missing field is 0."""
    skus: set[str] = set()
    for p in layout.all():
        skus.update([keys.parse(k)[2][0] async for k in redis.scan_iter(match=keys.stock_pattern(p), count=1000)])
    _, hashes = await stock_hashes(redis, sorted(skus), layout)  # a hot SKU's buckets summed
    stock: dict[Pair, tuple[int, int]] = {}
    for sku, raw in zip(sorted(skus), hashes, strict=True):
        for field, value in raw.items():
            name = field.decode()
            wh = name.removeprefix(RESERVED_PREFIX)
            available, reserved = stock.get((sku, wh), (0, 0))
            stock[(sku, wh)] = (available, int(value)) if name.startswith(RESERVED_PREFIX) else (int(value), reserved)
    for p in layout.all() if layout.hot else ():  # units moving between buckets are in neither
        for _, _, sku, wh, units in await buckets.in_flight(redis, p):
            available, reserved = stock.get((sku, wh), (0, 0))
            stock[(sku, wh)] = (available + units, reserved)
    return stock


def _view(available: int, reserved: int) -> dict[str, int]:
    return {"on_hand": available + reserved, "reserved": reserved, "available": available}


async def reconcile(redis: aioredis.Redis, pool: asyncpg.Pool, wait: float = 5.0,
                    layout: keys.Partitions = keys.SINGLE) -> dict[str, Any]:
    """Compare every SKU and warehouse either store knows; ``lagging`` when no quiet moment came in ``wait`` s.

    ``ok`` is false on any drift or on a conservation violation in either store (Redis: a
    negative field; PostgreSQL: more reserved than on hand), and while stream entries wait
    in the quarantine (``quarantined`` names them and their orders): PostgreSQL lacks them. Redis stores no on hand, so
    on hand = available + reserved holds there by construction.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        mark = await _quiet_mark(redis, layout)
        late = loop.time() >= deadline
        if mark is not None or late:
            pg_side = await _postgres_stock(pool)
            redis_side = await _redis_stock(redis, layout)
            quiet = mark is not None and await _quiet_mark(redis, layout) == mark
            if quiet or late:
                break
        await asyncio.sleep(POLL)
    drift, conservation = [], []
    pairs = sorted(redis_side.keys() | pg_side.keys())
    for sku, wh in pairs:
        r = _view(*redis_side.get((sku, wh), (0, 0)))
        on_hand, held = pg_side.get((sku, wh), (0, 0))
        p = _view(on_hand - held, held)
        if r != p:
            drift.append({"sku": sku, "warehouse": wh, "redis": r, "postgres": p})
        if r["available"] < 0 or r["reserved"] < 0:
            conservation.append({"sku": sku, "warehouse": wh, "store": "redis", **r})
        if p["available"] < 0:
            conservation.append({"sku": sku, "warehouse": wh, "store": "postgres", **p})
    held = [{k: e[k] for k in ("id", "stream_id", "type", "order_id", "error")}
            for e in await quarantine.open_entries(pool)]
    return {"ok": not drift and not conservation and not held, "lagging": not quiet, "checked": len(pairs),
            "drift": drift, "conservation": conservation, "quarantined": held}


REPAIR_REFUSALS = {Repair.CHANGED_MEANWHILE: "changed_meanwhile", Repair.NEGATIVE_AVAILABLE: "postgres_negative_available"}


async def repair(redis: aioredis.Redis, pool: asyncpg.Pool, scripts: Scripts, wait: float = 5.0,
                 layout: keys.Partitions = keys.SINGLE) -> dict[str, Any]:
    """Rewrite every drifted warehouse in Redis from PostgreSQL, one atomic script call per SKU.

    A SKU is left alone, every drifted warehouse of it listed in ``refused`` with the
    reason, when the comparison was ``lagging`` (in-flight orders would look like drift and
    be undone), when its hash changed since it was read, or when PostgreSQL's numbers for
    it would make availability negative. ``ok`` is true when nothing was refused. A Redis
    without the ready marker lost more than stock: that is ``rebuild-redis``'s work.
    """
    if not all([await redis.exists(keys.ready(p)) for p in layout.all()]):
        raise NotReady("Redis lost its data: run `python -m gateway rebuild-redis`, not a repair")
    report = await reconcile(redis, pool, wait, layout)
    repaired, refused = [], []
    for sku, group in itertools.groupby(report["drift"], key=lambda d: d["sku"]):
        entries = list(group)
        # a quarantined order holds Redis stock that PostgreSQL does not know yet: replay it first
        reason = "lagging" if report["lagging"] else "quarantined" if report["quarantined"] else None
        if reason is None and len(layout.places(sku)) > 1:
            reason = "hot_sku"  # its buckets together drifted: set its stock instead
        if reason is None:
            args: list[Any] = []
            for d in entries:
                r, p = d["redis"], d["postgres"]
                args += [d["warehouse"], r["available"], r["reserved"], p["available"], p["reserved"]]
            reply = await scripts.call("repair", [keys.stock(sku, layout.of_sku(sku))], args)
            if int(reply[0]) == Repair.DONE:
                await restocked(redis, sku)
            reason = REPAIR_REFUSALS.get(int(reply[0]))
        if reason is None:
            repaired += [{"sku": sku, "warehouse": d["warehouse"], "before": d["redis"], "after": d["postgres"]}
                         for d in entries]
        else:
            refused += [{**d, "reason": reason} for d in entries]
    return {"ok": not refused, "lagging": report["lagging"], "repaired": repaired, "refused": refused}


