"""Warehouses and stock: the per-process warehouse cache and the stock operations.

Each process keeps the warehouse table in memory to compute preference orders without a
round trip. Every reserve call names the version it planned with; the script refuses a
stale one, and the process reloads and plans again, so no order is refused for stock in a
warehouse this process has not heard of yet.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from allocator import Warehouse, plan, preference
from gateway import buckets, keys
from gateway.errors import BelowReserved, NotReady
from gateway.models import WarehouseIn
from gateway.scripts import Scripts
from gateway.soldout import restocked
from gateway.wire import RESERVED_PREFIX, Stock, decode_warehouse, encode_warehouse


def _decode_warehouse(wid: str, raw: str) -> Warehouse:
    return Warehouse(wid, *decode_warehouse(raw))


class WarehouseCache:
    """The warehouse table per process, for preference lists.

    Every partition keeps the table and its version alike (gateway/keys.py); this reads them
    all, so each reserve call names the version of its own partition, and a warehouse one
    partition registered (lua/stock.lua) is known before the others have it.
    """

    def __init__(self, redis: aioredis.Redis, layout: keys.Partitions = keys.SINGLE) -> None:
        self.redis = redis
        self.layout = layout
        self.versions: dict[str, int] = {}
        self.by_id: dict[str, Warehouse] = {}
        self._orders: dict[tuple[str, str | None], tuple[str, ...]] = {}

    @property
    def version(self) -> int:
        """The version of the first partition's table (the only one with one partition)."""
        return self.versions.get(self.layout.all()[0], -1)

    async def load(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for p in self.layout.all():
            pipe.get(keys.wh_version(p))
            pipe.hgetall(keys.warehouses(p))
        replies = await pipe.execute()
        by_id: dict[str, Warehouse] = {}
        for table in replies[1::2]:
            for w, v in table.items():
                by_id.setdefault(w.decode(), _decode_warehouse(w.decode(), v.decode()))
        self.by_id = by_id
        self._orders = {}
        self.versions = {p: int(v or 0) for p, v in zip(self.layout.all(), replies[::2], strict=True)}

    def order(self, strategy: str, region: str | None) -> tuple[str, ...]:
        """The preference order for a strategy and ship-to region, computed once per table version."""
        key = (strategy, region if strategy == "region" else None)
        found = self._orders.get(key)
        if found is None:
            found = self._orders[key] = preference(self.by_id.values(), strategy, region)
        return found

def active_ids(table: dict[bytes, bytes]) -> frozenset[str]:
    """The warehouses allocation may take from, from the warehouses hash: those marked active.
    One the hash does not list is in no preference order, so it counts as inactive too."""
    return frozenset(w.decode() for w, v in table.items() if _decode_warehouse(w.decode(), v.decode()).active)


def sellable(raw: dict[bytes, bytes], active: Collection[str]) -> int:
    """Units of a stock hash an order could get now: available in active warehouses."""
    return sum(int(v) for f, v in raw.items() if not f.startswith(RESERVED_PREFIX.encode()) and f.decode() in active)


def stock_view(sku: str, raw: dict[bytes, bytes], active: Collection[str]) -> dict[str, Any]:
    """``GET /v1/inventory/{sku}`` from the stock hash (``<wh>`` available, ``r:<wh>`` reserved).

    ``available`` counts active warehouses only, as the reserve script and the allocation
    plan do; an inactive warehouse is still listed, with ``"active": false``, and its units
    count in ``on_hand`` and ``reserved``.
    """
    fields = {k.decode(): int(v) for k, v in raw.items()}
    warehouses: dict[str, dict[str, Any]] = {}
    for field, available in sorted(fields.items()):
        if field.startswith(RESERVED_PREFIX):
            continue
        reserved = fields.get(RESERVED_PREFIX + field, 0)
        warehouses[field] = {"on_hand": available + reserved, "reserved": reserved, "available": available}
        if field not in active:
            warehouses[field]["active"] = False
    return {
        "sku": sku,
        "warehouses": warehouses,
        "on_hand": sum(w["on_hand"] for w in warehouses.values()),
        "reserved": sum(w["reserved"] for w in warehouses.values()),
        "available": sum(w["available"] for wid, w in warehouses.items() if wid in active),
    }


async def stock_hashes(redis: aioredis.Redis, skus: list[str], layout: keys.Partitions,
                       first: Collection[tuple[str, Any]] = ()) -> tuple[list[Any], list[dict[bytes, bytes]]]:
    """The replies of ``first`` (command, args) and each SKU's stock hash, a hot SKU's buckets
    summed field by field, in one round trip."""
    pipe = redis.pipeline(transaction=False)
    for command, args in first:
        getattr(pipe, command)(*args)
    for sku in skus:
        for p in layout.places(sku):
            pipe.hgetall(keys.stock(sku, p))
    replies = await pipe.execute()
    head, rest = replies[:len(first)], iter(replies[len(first):])
    merged = []
    for sku in skus:
        total: dict[bytes, int] = {}
        for _ in layout.places(sku):
            for field, value in next(rest).items():
                total[field] = total.get(field, 0) + int(value)
        merged.append({f: str(v).encode() for f, v in total.items()})
    return head, merged


async def stock_views(redis: aioredis.Redis, skus: list[str],
                      layout: keys.Partitions = keys.SINGLE) -> list[dict[str, Any]]:
    """``stock_view`` of each SKU, read with the warehouse table in one round trip."""
    (table,), raws = await stock_hashes(redis, skus, layout, [("hgetall", (keys.warehouses(layout.all()[0]),))])
    active = active_ids(table)
    return [stock_view(sku, raw, active) for sku, raw in zip(skus, raws, strict=True)]


async def change_stock(
    scripts: Scripts, cache: WarehouseCache, sku: str, mode: str, reason: str, values: dict[str, int]
) -> dict[str, Any]:
    """Set (``mode="set"``) or adjust (``"add"``) on hand; 409 below_reserved changes nothing.

    A hot SKU's change lands in its first bucket, set so the buckets' sum is what was asked
    (the ledger records that sum), and is then spread over the buckets (gateway/buckets.py).
    """
    p, *others = cache.layout.places(sku)
    beyond = await buckets.gather(scripts, cache.layout, sku) if others else {}
    args: list[Any] = [sku, mode, reason]
    for wh, value in values.items():
        held = beyond.get(wh, 0)  # on hand in the other buckets: reserved there, not movable
        args += [wh, value - held if mode == "set" else value, held]
    ks = [keys.stock(sku, p), keys.events(p), keys.warehouses(p), keys.wh_version(p), keys.ready(p)]
    reply = await scripts.call("stock", ks, args)
    if int(reply[0]) == Stock.NOT_READY:
        raise NotReady()
    if int(reply[0]) == Stock.BELOW_RESERVED:
        wh, reserved, target = reply[1].decode(), int(reply[2]), int(reply[3])
        raise BelowReserved(
            f"{sku} in {wh}: on hand {target} would be below the {reserved} reserved unit(s)",
            warehouse=wh, reserved=reserved,
        )
    await restocked(scripts.redis, sku)
    flat, table = reply[1], reply[2]
    if any(wh not in cache.by_id for wh in values):
        await register(scripts.redis, cache, p, dict(zip(table[::2], table[1::2], strict=True)))
    if others:
        await buckets.spread(scripts, cache.layout, sku)
        (view,) = await stock_views(scripts.redis, [sku], cache.layout)
        return view
    active = active_ids(dict(zip(table[::2], table[1::2], strict=True)))
    return stock_view(sku, dict(zip(flat[::2], flat[1::2], strict=True)), active)


async def put_warehouse(
    pool: asyncpg.Pool, redis: aioredis.Redis, cache: WarehouseCache, wid: str, w: WarehouseIn
) -> tuple[bool, dict[str, Any]]:
    """Upsert in PostgreSQL (the record), then publish to Redis; returns (created, view)."""
    created = await pool.fetchval(
        """INSERT INTO warehouses (warehouse_id, region, priority, active, updated_at)
           VALUES ($1, $2, $3, $4, now())
           ON CONFLICT (warehouse_id) DO UPDATE
             SET region = excluded.region, priority = excluded.priority,
                 active = excluded.active, updated_at = now()
           RETURNING (xmax = 0)""",
        wid, w.region, w.priority, w.active,
    )
    for p in cache.layout.all():  # one transaction per partition: a Cluster's spans one slot
        pipe = redis.pipeline(transaction=True)
        pipe.hset(keys.warehouses(p), wid, encode_warehouse(w.priority, w.region, w.active))
        pipe.incr(keys.wh_version(p))
        await pipe.execute()
    # an activated warehouse brings units of every SKU; sent once the table is in place (and
    # outside the transaction: a Cluster's pipeline refuses PUBLISH, which names no key)
    await redis.publish(keys.RESTOCK, "*")
    await cache.load()
    return created, {"warehouse_id": wid, "region": w.region, "priority": w.priority, "active": w.active}


async def register(redis: aioredis.Redis, cache: WarehouseCache, source: str, table: dict[bytes, bytes]) -> None:
    """Give the other partitions the warehouses partition ``source`` registered on a stock change
    (lua/stock.lua), each where it is missing, then reload the cache."""
    for p in cache.layout.all():
        if p == source:
            continue
        pipe = redis.pipeline(transaction=True)
        for wid, raw in table.items():
            pipe.hsetnx(keys.warehouses(p), wid, raw)
        pipe.incr(keys.wh_version(p))
        await pipe.execute()
    await cache.load()


async def plan_allocation(
    redis: aioredis.Redis, cache: WarehouseCache, items: list[tuple[str, int]], strategy: str,
    region: str | None,
) -> dict[str, Any]:
    """What the reserve script would allocate now, reserving nothing (``POST /v1/allocations/plan``).

    Lines that cannot be filled are listed in ``unfilled`` with the missing units; the rest
    are planned together, so with nothing unfilled this is exactly what an order gets.
    """
    pref = cache.order(strategy, region)
    rows: list[list[bytes | None]] = [[] for _ in items]
    if pref:  # a hot SKU's buckets together: an order's bucket pulls from the others
        _, hashes = await stock_hashes(redis, [sku for sku, _ in items], cache.layout)
        rows = [[raw.get(wh.encode()) for wh in pref] for raw in hashes]
    fillable, unfilled = [], []
    for (sku, qty), row in zip(items, rows, strict=True):
        cands = [(wh, int(v or 0)) for wh, v in zip(pref, row, strict=True)]
        missing = qty - sum(a for _, a in cands)
        if missing > 0:
            unfilled.append({"sku": sku, "qty": missing})
        else:
            fillable.append((sku, qty, cands))
    planned, _ = plan([q for _, q, _ in fillable], [c for _, _, c in fillable], strategy == "max_stock")
    allocations = [{"sku": sku, "warehouse": wh, "qty": take}
                   for (sku, _, _), takes in zip(fillable, planned or [], strict=True) for wh, take in takes]
    return {"allocations": allocations, "unfilled": unfilled}
