"""Low stock, sold out, and the sell-out forecast.

Alerts: after each batch the writer looks at the availability (in active warehouses, the
only ones that sell) of the SKUs the batch touched and emits ``inventory.low_stock`` (at or below the threshold) or
``inventory.sold_out`` (nothing available) when a SKU gets worse than anything announced
since it was last above the threshold. Redis remembers the worst state announced, so a SKU
that stays low, or is restocked or given units back without recovering, is not announced
again (no flapping between low and sold out as reservations expire near a sell-out) until
it recovers above the threshold.
Delivery is at least once: the event id is derived from the batch, so a re-delivered batch
repeats nothing, while two writers seeing the same change may both announce it.

Forecast: the sales rate over a sliding window comes from PostgreSQL (orders accepted and
not cancelled), so it costs the hot path nothing; ``sell_out_eta`` is when the available
units run out at that rate.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, NamedTuple

import asyncpg
import redis.asyncio as aioredis

from gateway import keys
from gateway.chain import canonical
from gateway.inventory import active_ids, sellable
from gateway.models import iso_ms

SEVERITY = {"ok": 0, "low_stock": 1, "sold_out": 2}


async def alerts(
    redis: aioredis.Redis, p: str, skus: list[str], threshold: int, batch_id: str, at_ms: int
) -> tuple[list[tuple[Any, ...]], dict[str, str]]:
    """Event rows to append and the states to remember once they are committed, for SKUs of
    partition ``p`` (those of a batch from its stream)."""
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.warehouses(p))
    for sku in skus:
        pipe.hgetall(keys.stock(sku, p))
        pipe.get(keys.stock_state(sku, p))
    table, *replies = await pipe.execute()
    active = active_ids(table)  # units in an inactive warehouse sell nothing: they do not count
    events, states = [], {}
    for sku, raw, before in zip(skus, replies[::2], replies[1::2], strict=True):
        left = sellable(raw, active)
        state = "sold_out" if left == 0 else "low_stock" if left <= threshold else "ok"
        worst = before.decode() if before else "ok"  # announced since it was last above the threshold
        if state == worst or 0 < SEVERITY[state] < SEVERITY[worst]:
            continue
        states[sku] = state
        if state != "ok":
            data = canonical({"sku": sku, "available": left, "threshold": threshold}).decode()
            events.append((f"{batch_id}:{sku}:{state}", None, None, f"inventory.{state}", at_ms, data))
    return events, states


async def remember(redis: aioredis.Redis, p: str, states: dict[str, str]) -> None:
    if states:
        await redis.mset({keys.stock_state(sku, p): state for sku, state in states.items()})


async def forecast(pool: asyncpg.Pool, sku: str, available_now: int, window_s: int) -> dict[str, Any]:
    """Units per minute over the window (or since the first sale in it) and the sell-out time."""
    row = await pool.fetchrow(
        """SELECT coalesce(sum(i.qty), 0) AS units, min(o.created_at) AS first, now() AS now
           FROM order_items i JOIN orders o ON o.order_id = i.order_id
           WHERE i.sku = $1 AND o.status <> 'cancelled'
             AND o.created_at > now() - $2 * interval '1 second'""",
        sku, window_s,
    )
    units, first, now = row["units"], row["first"], row["now"]
    if not units or first is None:
        return {"sales_per_minute": 0.0, "sell_out_eta": None}
    span = max((now - first).total_seconds(), 1.0)
    rate = units / span
    eta = None
    if available_now > 0:
        at = now + dt.timedelta(seconds=available_now / rate)
        eta = iso_ms(int(at.timestamp() * 1000))
    return {"sales_per_minute": round(rate * 60, 3), "sell_out_eta": eta}


class Hot(NamedTuple):
    sku: str
    units: int
    per_second: float


async def hot(pool: asyncpg.Pool, window_s: int, limit: int) -> list[Hot]:
    """The ``limit`` best-selling SKUs of the window, with their rate as ``forecast`` reckons it."""
    rows = await pool.fetch(
        """SELECT i.sku, sum(i.qty) AS units, extract(epoch FROM now() - min(o.created_at))::float8 AS span
           FROM order_items i JOIN orders o ON o.order_id = i.order_id
           WHERE o.status <> 'cancelled' AND o.created_at > now() - $1 * interval '1 second'
           GROUP BY i.sku ORDER BY units DESC, i.sku LIMIT $2""",
        window_s, limit,
    )
    return [Hot(r["sku"], r["units"], r["units"] / max(r["span"], 1.0)) for r in rows]

