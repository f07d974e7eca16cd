"""Sales: windows, per-user limits, channels, TTL and prices, live on every process at once.

PostgreSQL keeps each sale's definition; Redis keeps the rules the reserve script checks
(so a change applies to the very next batch everywhere) and the live ``sold`` count. Each
process also caches definitions to fill in server-side prices before an order is encoded;
reserve replies carry the sale version, so a stale cache reloads within one batch, and the
script re-checks every price against Redis.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
import orjson
import redis.asyncio as aioredis
from msgspec import Meta, Struct

from gateway import keys
from gateway.errors import Invalid, PriceMismatch, SaleNotActive
from gateway.inventory import active_ids, sellable, stock_hashes
from gateway.models import Channel, Currency, Money, OrderIn, Sku, iso_ms, sane_time


class SaleIn(Struct, forbid_unknown_fields=True, omit_defaults=True):
    skus: Annotated[list[Sku], Meta(min_length=1, max_length=1000)]
    starts_at: dt.datetime
    ends_at: dt.datetime
    per_user_limit: Annotated[int, Meta(ge=1, le=1_000_000)]
    channels: Annotated[list[Channel], Meta(min_length=1, max_length=5)] | None = None
    reservation_ttl: Annotated[int, Meta(ge=1, le=7 * 86400)] | None = None
    strategy: Literal["priority", "region", "max_stock"] | None = None
    prices: dict[Sku, Money] | None = None
    currency: Currency | None = None


def _ms(t: dt.datetime) -> int:
    return int(sane_time(t, "starts_at and ends_at").timestamp() * 1000)


def rules(sale: SaleIn) -> dict[str, str]:
    """The hash fields the reserve script reads (see lua/reserve.lua)."""
    fields = {
        "s": str(_ms(sale.starts_at)), "e": str(_ms(sale.ends_at)), "l": str(sale.per_user_limit),
        "ch": "," + ",".join(sale.channels) + "," if sale.channels else "",
        "ttl": str(sale.reservation_ttl * 1000) if sale.reservation_ttl else "",
        "def": msgspec.json.encode(sale).decode(),
    }
    fields.update({f"k:{sku}": "1" for sku in sale.skus})
    fields.update({f"$:{sku}": str(price) for sku, price in (sale.prices or {}).items()})
    return fields


async def put_sale(pool: asyncpg.Pool, redis: aioredis.Redis, sale_id: str, sale: SaleIn,
                   layout: keys.Partitions = keys.SINGLE) -> bool:
    """Store in PostgreSQL, then publish the rules to Redis; returns True when created.

    The sale's keys live in the partition of its SKUs (gateway/keys.py), which must share one
    and keep it: its live counts cannot move between partitions.
    """
    places = layout.places(sale.skus[0])
    if any(layout.places(sku) != places for sku in sale.skus):
        raise Invalid("a sale's skus must share their inventory partition (or the same buckets, "
                      "for hot SKUs)", code="sale_spans_partitions")
    found = await sale_partitions(redis, sale_id, layout)
    if found and found != set(places):
        raise Invalid(f"sale {sale_id!r} lives in partitions {sorted(found)}; its skus may not move it",
                      code="sale_moves_partition")
    if _ms(sale.ends_at) <= _ms(sale.starts_at):
        raise Invalid("ends_at must be after starts_at", code="invalid_window")
    if sale.prices and not set(sale.prices) <= set(sale.skus):
        raise Invalid("prices may only name the sale's skus", code="invalid_prices")
    if len(set(sale.skus)) != len(sale.skus):
        raise Invalid("skus must be unique", code="duplicate_sku")
    created = await pool.fetchval(
        """INSERT INTO sales (sale_id, definition, updated_at) VALUES ($1, $2::jsonb, now())
           ON CONFLICT (sale_id) DO UPDATE SET definition = excluded.definition, updated_at = now()
           RETURNING (xmax = 0)""",
        sale_id, msgspec.json.encode(sale).decode(),
    )
    fields = rules(sale)
    for p in places:  # a hot SKU's sale is in each of its buckets, each counting what it sold
        key = keys.sale(sale_id, p)
        stale = [f for f in await redis.hkeys(key) if f.decode() not in fields and f != b"sold"]
        pipe = redis.pipeline(transaction=True)
        if stale:
            pipe.hdel(key, *stale)
        pipe.hset(key, mapping=fields)
        pipe.sadd(keys.sales(p), sale_id)
        pipe.incr(keys.sale_version(p))
        await pipe.execute()
    for other in layout.all():  # every partition's version moves, so every reserve reply shows it
        if other not in places:
            await redis.incr(keys.sale_version(other))
    return bool(created)


async def sale_partitions(redis: aioredis.Redis, sale_id: str, layout: keys.Partitions) -> set[str]:
    """The partitions whose sales set lists the sale."""
    pipe = redis.pipeline(transaction=False)
    for p in layout.all():
        pipe.sismember(keys.sales(p), sale_id)
    return {p for p, there in zip(layout.all(), await pipe.execute(), strict=True) if there}


async def sale_view(redis: aioredis.Redis, sale_id: str,
                    layout: keys.Partitions = keys.SINGLE) -> dict[str, Any] | None:
    """The sale as defined, with live ``sold`` units and ``remaining`` availability of its SKUs."""
    (view,) = await sale_views(redis, [sale_id], layout)
    return view


async def sale_views(redis: aioredis.Redis, sale_ids: list[str],
                     layout: keys.Partitions = keys.SINGLE) -> list[dict[str, Any] | None]:
    """``sale_view`` of each sale (None for one Redis does not hold), in two round trips for all
    (with several partitions each sale is looked for in every one)."""
    pipe = redis.pipeline(transaction=False)
    for sale_id in sale_ids:
        for p in layout.all():
            pipe.hmget(keys.sale(sale_id, p), "def", "sold")
    found = await pipe.execute()
    n = layout.count
    raws = []
    for i in range(len(sale_ids)):  # the definition, and the units sold summed over its buckets
        there = [r for r in found[i * n:(i + 1) * n] if r[0] is not None]
        raws.append([there[0][0], sum(int(r[1] or 0) for r in there)] if there else [None, None])
    sales = [None if raw[0] is None else msgspec.json.decode(raw[0], type=SaleIn) for raw in raws]
    skus = sorted({sku for sale in sales if sale is not None for sku in sale.skus})
    (table,), stocks = await stock_hashes(redis, skus, layout, [("hgetall", (keys.warehouses(layout.all()[0]),))])
    active = active_ids(table)  # what a sale can still sell: inactive warehouses sell nothing
    left = {sku: sellable(stock, active) for sku, stock in zip(skus, stocks, strict=True)}
    views: list[dict[str, Any] | None] = []
    for sale_id, raw, sale in zip(sale_ids, raws, sales, strict=True):
        if sale is None:
            views.append(None)
            continue
        view = orjson.loads(raw[0])
        view.update(sale_id=sale_id, starts_at=iso_ms(_ms(sale.starts_at)), ends_at=iso_ms(_ms(sale.ends_at)),
                    sold=int(raw[1] or 0), remaining=sum(left[sku] for sku in sale.skus))
        views.append(view)
    return views


class SaleCache:
    """Sale definitions per process, for prices; reloaded when a reserve reply shows a new version."""

    def __init__(self, redis: aioredis.Redis, layout: keys.Partitions = keys.SINGLE) -> None:
        self.redis = redis
        self.layout = layout
        self.versions: dict[str, int] = {}
        self.by_id: dict[str, SaleIn] = {}

    @property
    def version(self) -> int:
        """The version of the first partition's sales (the only one with one partition)."""
        return self.versions.get(self.layout.all()[0], -1)

    async def load(self) -> None:
        """Read every partition's sales and sale version (a change bumps them all)."""
        pipe = self.redis.pipeline(transaction=False)
        for p in self.layout.all():
            pipe.get(keys.sale_version(p))
            pipe.smembers(keys.sales(p))
        replies = await pipe.execute()
        versions, sets = replies[::2], replies[1::2]
        ids = [(s.decode(), p) for p, members in zip(self.layout.all(), sets, strict=True) for s in members]
        pipe = self.redis.pipeline(transaction=False)
        for sale_id, p in ids:
            pipe.hget(keys.sale(sale_id, p), "def")
        defs = await pipe.execute()
        self.by_id = {i: msgspec.json.decode(d, type=SaleIn) for (i, _), d in zip(ids, defs, strict=True) if d}
        self.versions = {p: int(v or 0) for p, v in zip(self.layout.all(), versions, strict=True)}

    async def refresh(self, version: int, p: str = keys.ONE) -> None:
        """Reload before the batch is answered, so a client's next order sees the change; ``version``
        is partition ``p``'s, from a reserve reply."""
        if version != self.versions.get(p, -1):
            await self.load()

    async def apply_prices(self, order: OrderIn) -> OrderIn:
        """Fill each line's price (and the currency) from the order's sale; 409 when the client's differ."""
        if order.sale_id is None:
            return order
        sale = self.by_id.get(order.sale_id)
        if sale is None:
            await self.load()  # a sale created moments ago on another process
            sale = self.by_id.get(order.sale_id)
        if sale is None:
            raise SaleNotActive(f"no sale {order.sale_id!r}")
        if sale.currency:
            if order.currency not in (None, sale.currency):
                raise PriceMismatch(f"the sale is priced in {sale.currency}", currency=sale.currency)
            order.currency = sale.currency
        for item in order.items:
            price = (sale.prices or {}).get(item.sku)
            if price is None:
                continue
            if item.unit_price not in (None, price):
                raise PriceMismatch(f"{item.sku} costs {price} in this sale", sku=item.sku, unit_price=price)
            item.unit_price = price
        return order
