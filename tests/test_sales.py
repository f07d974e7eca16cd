"""Sales: window, channels, per-user limit (given back on cancel), server prices, live counts.

The sale's SKUs share the group ``s11`` so that with several partitions (make test-cluster)
the sale lives in one (gateway/keys.py)."""

from __future__ import annotations

import asyncio
import datetime as dt

from gateway.web import appkeys as K
from tests.conftest import as_user, auth, order_body


def at(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat()


async def put_sale(gw, sale_id="s11", **overrides):
    body = {"skus": ["s11:HOT", "s11:WARM"], "starts_at": at(-60), "ends_at": at(3600), "per_user_limit": 2, **overrides}
    resp = await gw.client.put(f"/v1/sales/{sale_id}", json=body, headers=auth("k-ops"))
    assert resp.status in (200, 201), await resp.text()
    return resp


def sale_order(order_id, user="u-1", qty=1, sku="s11:HOT", **extra):
    return order_body(order_id, user, [{"sku": sku, "qty": qty}], sale_id="s11", **extra)


async def test_sale_put_creates_then_updates_and_get_shows_live_counts(gw):
    await gw.set_stock("s11:HOT", {"W1": 10})
    await gw.set_stock("s11:WARM", {"W1": 5})
    assert (await put_sale(gw)).status == 201
    assert (await put_sale(gw, per_user_limit=3)).status == 200
    assert (await gw.post("/v1/orders", sale_order("s-1", qty=3))).status == 201
    view = await (await gw.client.get("/v1/sales/s11", headers=auth("k-ops"))).json()
    assert view["per_user_limit"] == 3
    assert view["sold"] == 3 and view["remaining"] == 12
    assert (await gw.client.get("/v1/sales/nope", headers=auth("k-ops"))).status == 404
    assert (await gw.client.get("/v1/sales/s11", headers=auth("k-web"))).status == 403


async def test_remaining_counts_only_what_active_warehouses_can_sell(gw):
    await gw.set_stock("s11:HOT", {"W1": 10, "W2": 4})
    await gw.set_stock("s11:WARM", {"W2": 5})
    await put_sale(gw)
    resp = await gw.client.put("/v1/warehouses/W2", json={"active": False}, headers=auth("k-ops"))
    assert resp.status == 201
    view = await (await gw.client.get("/v1/sales/s11", headers=auth("k-ops"))).json()
    assert view["remaining"] == 10


async def test_orders_outside_the_window_are_refused(gw):
    await gw.set_stock("s11:HOT", {"W1": 10})
    await put_sale(gw, starts_at=at(600), ends_at=at(1200))
    early = await gw.post("/v1/orders", sale_order("w-1"))
    assert early.status == 409 and (await early.json())["code"] == "sale_not_active"
    await put_sale(gw, starts_at=at(-1200), ends_at=at(-600))
    late = await gw.post("/v1/orders", sale_order("w-1"))
    assert late.status == 409 and (await late.json())["code"] == "sale_not_active"
    assert (await gw.stock("s11:HOT"))["available"] == 10
    unknown = await gw.post("/v1/orders", order_body("w-2", items=[{"sku": "s11:HOT", "qty": 1}], sale_id="nope"))
    assert unknown.status == 409 and (await unknown.json())["code"] == "sale_not_active"


async def test_channel_and_sku_rules(gw):
    await gw.set_stock("s11:HOT", {"W1": 10})
    for sku in ("COLD", "s11:COLD", "ZZ-9"):  # the sale's group, and two others (one in its partition of 3)
        await gw.set_stock(sku, {"W1": 10})
    await put_sale(gw, channels=["app"])
    web = await gw.post("/v1/orders", sale_order("c-1"))
    assert web.status == 409 and (await web.json())["code"] == "channel_not_allowed"
    app = await gw.post("/v1/orders", {**sale_order("c-2"), "channel": "app"})
    assert app.status == 201
    for n, sku in enumerate(("COLD", "s11:COLD", "ZZ-9")):
        outside = await gw.post("/v1/orders", {**sale_order(f"c-3-{n}", sku=sku), "channel": "app"})
        assert outside.status == 409 and (await outside.json())["code"] == "sku_not_in_sale", sku
        assert (await gw.stock(sku))["available"] == 10


async def test_per_user_limit_across_orders_and_given_back_on_cancel(gw):
    await gw.set_stock("s11:HOT", {"W1": 10})
    await put_sale(gw)
    assert (await gw.post("/v1/orders", sale_order("l-1"))).status == 201
    assert (await gw.post("/v1/orders", sale_order("l-2"))).status == 201
    over = await gw.post("/v1/orders", sale_order("l-3"))
    assert over.status == 409
    problem = await over.json()
    assert problem["code"] == "limit_exceeded" and problem["held"] == 2 and problem["limit"] == 2
    assert (await gw.post("/v1/orders", sale_order("l-4", user="u-2", qty=2))).status == 201
    cancel = await gw.client.post("/v1/orders/l-1/cancel", json={"reason": "customer"}, headers=as_user("u-1"))
    assert cancel.status == 200
    assert (await gw.post("/v1/orders", sale_order("l-5"))).status == 201
    view = await (await gw.client.get("/v1/sales/s11", headers=auth("k-ops"))).json()
    assert view["sold"] == 4


async def test_concurrent_orders_of_one_user_never_exceed_the_limit(gw):
    await gw.set_stock("s11:HOT", {"W1": 100})
    await put_sale(gw, per_user_limit=3)
    resps = await asyncio.gather(*(gw.post("/v1/orders", sale_order(f"cc-{i}", qty=1 + i % 2)) for i in range(40)))
    accepted = [await r.json() for r in resps if r.status == 201]
    assert sum(o["items"][0]["qty"] for o in accepted) <= 3
    assert {(await r.json())["code"] for r in resps if r.status != 201} == {"limit_exceeded"}
    assert (await gw.stock("s11:HOT"))["reserved"] == sum(o["items"][0]["qty"] for o in accepted)


async def test_expiry_gives_the_limit_back_and_sale_ttl_overrides_default(make_gateway):
    gw = await make_gateway()  # default TTL 900 s; the sale says 1 s
    await gw.set_stock("s11:HOT", {"W1": 10})
    await put_sale(gw, per_user_limit=1, reservation_ttl=1)
    order = await (await gw.post("/v1/orders", sale_order("t-1"))).json()
    until = dt.datetime.fromisoformat(order["reserved_until"])
    created = dt.datetime.fromisoformat(order["created_at"])
    assert (until - created).total_seconds() == 1
    assert (await gw.post("/v1/orders", sale_order("t-2"))).status == 409
    await asyncio.sleep(max(0.0, until.timestamp() - dt.datetime.now(dt.UTC).timestamp() + 0.05))
    await asyncio.wait_for(gw.app[K.EXPIRER].wait_pass(), 5)
    assert (await gw.post("/v1/orders", sale_order("t-3"))).status == 201


async def test_server_fills_prices_and_refuses_others(gw):
    await gw.set_stock("s11:HOT", {"W1": 10})
    await put_sale(gw, prices={"s11:HOT": 1999}, currency="CNY")
    order = await (await gw.post("/v1/orders", sale_order("p-1"))).json()
    assert order["items"] == [{"sku": "s11:HOT", "qty": 1, "unit_price": 1999}]
    assert order["currency"] == "CNY"
    cheap = await gw.post("/v1/orders", order_body("p-2", items=[{"sku": "s11:HOT", "qty": 1, "unit_price": 1}],
                                                   sale_id="s11"))
    assert cheap.status == 409 and (await cheap.json())["code"] == "price_mismatch"
    usd = await gw.post("/v1/orders", sale_order("p-3", currency="USD"))
    assert usd.status == 409 and (await usd.json())["code"] == "price_mismatch"
    pay = await gw.client.post("/v1/orders/p-1/payment", json={"payment_id": "x", "amount": 1000},
                               headers=auth("k-pay"))
    assert pay.status == 409 and (await pay.json())["code"] == "amount_mismatch"
    pay = await gw.client.post("/v1/orders/p-1/payment", json={"payment_id": "x", "amount": 1999},
                               headers=auth("k-pay"))
    assert pay.status == 200


async def test_price_change_on_another_process_applies_to_the_next_order(make_gateway):
    one, two = await make_gateway(), await make_gateway()
    await one.set_stock("s11:HOT", {"W1": 10})
    await put_sale(one, prices={"s11:HOT": 100})
    first_body = await (await two.post("/v1/orders", sale_order("x-1"))).json()
    assert first_body.get("items", [{}])[0].get("unit_price") == 100, first_body
    await put_sale(one, prices={"s11:HOT": 120}, per_user_limit=5)
    first = await two.post("/v1/orders", sale_order("x-2"))
    # The script re-checks prices: a stale cache is refused, never sold at the old price.
    assert first.status in (201, 409)
    if first.status == 409:
        assert (await first.json())["code"] == "price_mismatch"
    again = await two.post("/v1/orders", sale_order("x-3"))
    assert again.status == 201
    assert (await again.json())["items"][0]["unit_price"] == 120


async def test_bad_sale_definitions_are_refused(gw):
    for body in ({"skus": [], "starts_at": at(0), "ends_at": at(60), "per_user_limit": 1},
                 {"skus": ["A"], "starts_at": at(60), "ends_at": at(0), "per_user_limit": 1},
                 {"skus": ["A"], "starts_at": at(0), "ends_at": at(60), "per_user_limit": 0},
                 {"skus": ["A"], "starts_at": at(0), "ends_at": at(60), "per_user_limit": 1, "prices": {"B": 1}},
                 {"skus": ["A", "A"], "starts_at": at(0), "ends_at": at(60), "per_user_limit": 1},
                 {"skus": ["A"], "starts_at": "2026-11-11T00:00:00", "ends_at": at(60), "per_user_limit": 1},
                 {"skus": ["A"], "starts_at": at(0), "ends_at": at(60), "per_user_limit": 1, "bogus": 1}):
        resp = await gw.client.put("/v1/sales/bad", json=body, headers=auth("k-ops"))
        assert resp.status == 422, (body, await resp.text())
    assert (await gw.client.get("/v1/sales/bad", headers=auth("k-ops"))).status == 404
