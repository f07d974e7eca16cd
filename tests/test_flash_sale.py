"""The flash sale in small: many buyers at once for few units; nothing oversold, nothing lost."""

from __future__ import annotations

import asyncio
from collections import Counter

from tests.conftest import as_user, order_body


async def test_thousand_buyers_hundred_units_exactly_hundred_sold(gw, pg):
    await gw.set_stock("HOT", {"W1": 60, "W2": 40})

    async def buy(i: int) -> tuple[int, dict]:
        body = order_body(f"fs-{i}", f"u-{i}", [{"sku": "HOT", "qty": 1}])
        resp = await gw.post("/v1/orders", body, as_user(f"u-{i}"))
        return resp.status, await resp.json()

    answers = await asyncio.gather(*(buy(i) for i in range(1000)))
    statuses = Counter(status for status, _ in answers)
    assert statuses == {201: 100, 409: 900}
    assert {b["code"] for s, b in answers if s == 409} == {"insufficient_stock"}
    accepted = {b["order_id"] for s, b in answers if s == 201}

    stock = await gw.stock("HOT")
    assert stock["available"] == 0
    assert stock["reserved"] == 100
    assert stock["warehouses"]["W1"] == {"on_hand": 60, "reserved": 60, "available": 0}

    await gw.caught_up()
    rows = await pg.fetch("SELECT order_id FROM orders")
    assert {r["order_id"] for r in rows} == accepted
    assert len(rows) == 100
    assert await pg.fetchval("SELECT count(*) FROM order_events WHERE type = 'order.accepted'") == 100
    per_wh = dict(await pg.fetch("SELECT warehouse, sum(qty) FROM allocations GROUP BY warehouse"))
    assert per_wh == {"W1": 60, "W2": 40}


async def test_multi_unit_orders_never_oversell(gw, pg):
    await gw.set_stock("HOT", {"W1": 7, "W2": 6})

    async def buy(i: int) -> int:
        qty = 1 + i % 3
        resp = await gw.post("/v1/orders", order_body(f"m-{i}", f"u-{i}", [{"sku": "HOT", "qty": qty}]),
                             as_user(f"u-{i}"))
        return qty if resp.status == 201 else 0

    sold = sum(await asyncio.gather(*(buy(i) for i in range(200))))
    stock = await gw.stock("HOT")
    assert sold == stock["reserved"] <= 13
    assert stock["available"] == 13 - sold >= 0
    assert all(w["available"] >= 0 for w in stock["warehouses"].values())
    await gw.caught_up()
    assert await pg.fetchval("SELECT coalesce(sum(qty), 0) FROM order_items") == sold
