"""Low-stock and sold-out events in the feed, the sell-out forecast, and /v1/stats."""

from __future__ import annotations

import datetime as dt

import orjson

from gateway.ops.audit import verify
from tests.conftest import auth, order_body


async def buy(gw, order_id, qty, sku="SKU-1"):
    resp = await gw.post("/v1/orders", order_body(order_id, items=[{"sku": sku, "qty": qty}]))
    assert resp.status == 201, await resp.text()


async def inventory_events(gw):
    await gw.caught_up()
    events = (await (await gw.client.get("/v1/events?limit=1000", headers=auth("k-ops"))).json())["events"]
    return [(e["type"], e["data"]["available"], e["order_id"]) for e in events if e["type"].startswith("inventory.")]


async def test_low_stock_and_sold_out_are_announced_once_per_change(gw, pg):
    await gw.set_stock("SKU-1", {"W1": 12})
    await buy(gw, "o-1", 1)
    assert await inventory_events(gw) == []
    await buy(gw, "o-2", 1)
    assert await inventory_events(gw) == [("inventory.low_stock", 10, None)]
    await buy(gw, "o-3", 4)
    assert await inventory_events(gw) == [("inventory.low_stock", 10, None)]
    await buy(gw, "o-4", 6)
    assert await inventory_events(gw) == [("inventory.low_stock", 10, None), ("inventory.sold_out", 0, None)]
    await gw.set_stock("SKU-1", {"W1": 62})  # 50 more: recovered, nothing to announce
    await buy(gw, "o-5", 39)
    assert len(await inventory_events(gw)) == 2
    await buy(gw, "o-6", 2)
    assert [t for t, _, _ in await inventory_events(gw)] == [
        "inventory.low_stock", "inventory.sold_out", "inventory.low_stock"]
    checked, broken = await verify(pg)
    assert broken is None and checked == 6 + 3


def count(events, kind):
    return sum(t == f"inventory.{kind}" for t, _, _ in events)


async def test_a_restock_that_stays_low_announces_nothing(gw):
    """Low stock is announced once until the SKU recovers above the threshold (default 10)."""
    await gw.set_stock("SKU-1", {"W1": 20})
    await buy(gw, "o-1", 12)  # 8 left
    assert await inventory_events(gw) == [("inventory.low_stock", 8, None)]
    await gw.set_stock("SKU-1", {"W1": 21})  # 9 left
    await buy(gw, "o-2", 9)
    assert await inventory_events(gw) == [("inventory.low_stock", 8, None), ("inventory.sold_out", 0, None)]
    await gw.set_stock("SKU-1", {"W1": 26})  # 5 left after selling out: still low
    events = await inventory_events(gw)
    assert count(events, "low_stock") == 1 and len(events) == 2
    await buy(gw, "o-3", 5)  # and gone again, never having recovered: nothing new
    assert len(await inventory_events(gw)) == 2
    await gw.set_stock("SKU-1", {"W1": 50})  # 24 left: recovered
    await buy(gw, "o-4", 14)  # 10 left
    assert count(await inventory_events(gw), "low_stock") == 2


async def test_units_given_back_near_sell_out_announce_nothing(gw):
    """Reservations cancelled or expiring after a sell-out do not make the alerts flap."""
    await gw.set_stock("SKU-1", {"W1": 12})
    await buy(gw, "o-1", 4)
    assert count(await inventory_events(gw), "low_stock") == 1
    await buy(gw, "o-2", 8)
    assert [t for t, _, _ in await inventory_events(gw)] == ["inventory.low_stock", "inventory.sold_out"]
    cancel = await gw.client.post("/v1/orders/o-1/cancel", json={"reason": "ops"}, headers=auth("k-ops"))
    assert cancel.status == 200
    await buy(gw, "o-3", 1)  # 3 left: low, as announced
    assert len(await inventory_events(gw)) == 2
    await buy(gw, "o-4", 3)  # sold out again, as announced
    assert len(await inventory_events(gw)) == 2


async def test_units_in_an_inactive_warehouse_neither_keep_a_sku_off_low_stock_nor_show_in_stats(gw):
    await gw.set_stock("SKU-1", {"W1": 6, "W2": 50})
    resp = await gw.client.put("/v1/warehouses/W2", json={"active": False}, headers=auth("k-ops"))
    assert resp.status == 201
    await buy(gw, "o-1", 1)
    assert await inventory_events(gw) == [("inventory.low_stock", 5, None)]
    await buy(gw, "o-2", 5)
    assert await inventory_events(gw) == [("inventory.low_stock", 5, None), ("inventory.sold_out", 0, None)]
    stats = await (await gw.client.get("/v1/stats", headers=auth("k-ops"))).json()
    (view,) = stats["skus"]
    assert view["available"] == 0 and view["warehouses"]["W2"]["active"] is False
    assert view["sell_out_eta"] is None


async def test_threshold_is_configurable(make_gateway):
    gw = await make_gateway(low_stock=0)
    await gw.set_stock("SKU-1", {"W1": 3})
    await buy(gw, "o-1", 2)
    assert await inventory_events(gw) == []
    await buy(gw, "o-2", 1)
    assert await inventory_events(gw) == [("inventory.sold_out", 0, None)]


async def insert_history(pg, sku: str, units_per_second: float, seconds: int) -> None:
    """Orders already written, one unit each, evenly spread over the last ``seconds``."""
    now = await pg.fetchval("SELECT now()")
    count = int(units_per_second * seconds)
    for i in range(count):
        at = now - dt.timedelta(seconds=seconds * (i + 0.5) / count)
        order_id = f"h-{sku}-{i}"
        payload = orjson.dumps(order_body(order_id, items=[{"sku": sku, "qty": 1}])).decode()
        await pg.execute(
            """INSERT INTO orders (order_id, user_id, channel, status, payload, created_at, updated_at)
               VALUES ($1, 'u', 'web', 'paid', $2::jsonb, $3, $3)""", order_id, payload, at)
        await pg.execute("INSERT INTO order_items (order_id, line_no, sku, qty) VALUES ($1, 0, $2, 1)",
                         order_id, sku)


async def test_steady_rate_gives_an_eta_within_twenty_percent(gw, pg):
    await gw.set_stock("SKU-1", {"W1": 90})
    await insert_history(pg, "SKU-1", 1.5, 120)  # 1.5 units/s for two minutes: 90 units last 60 s
    view = await gw.stock("SKU-1")
    assert abs(view["sales_per_minute"] - 90) <= 18
    eta = dt.datetime.fromisoformat(view["sell_out_eta"])
    seconds = (eta - dt.datetime.now(dt.UTC)).total_seconds()
    assert 48 <= seconds <= 72, seconds


async def test_no_sales_no_eta(gw):
    await gw.set_stock("SKU-1", {"W1": 5})
    view = await gw.stock("SKU-1")
    assert view["sell_out_eta"] is None and view["sales_per_minute"] == 0


async def test_stats_show_selling_skus_with_forecast(gw):
    await gw.set_stock("SKU-1", {"W1": 50})
    await gw.set_stock("SKU-2", {"W1": 50})
    for i in range(5):
        await buy(gw, f"s-{i}", 2)
    await buy(gw, "t-1", 1, sku="SKU-2")
    await gw.caught_up()
    resp = await gw.client.get("/v1/stats", headers=auth("k-ops"))
    assert resp.status == 200
    stats = await resp.json()
    assert [v["sku"] for v in stats["skus"]] == ["SKU-1", "SKU-2"]
    assert stats["skus"][0]["available"] == 40 and stats["skus"][0]["sell_out_eta"] is not None
    assert stats["orders_in_flight"] == 0 and stats["writer_pending"] == 0 and stats["writer_lag"] == 0
    assert (await gw.client.get("/v1/stats", headers=auth("k-web"))).status == 403
