"""Bulk import: up to 500 orders, each validated and atomic on its own, answered in order."""

from __future__ import annotations

from tests.conftest import as_user, auth, order_body


async def test_mixed_batch_answers_each_order_as_a_single_submit_would(gw, pg):
    await gw.set_stock("SKU-1", {"W1": 3})
    orders = [
        order_body("b-1"),
        order_body("b-2", items=[{"sku": "SKU-1", "qty": 0}]),         # invalid
        order_body("b-3", items=[{"sku": "SKU-1", "qty": 5}]),         # short
        order_body("b-1"),                                              # duplicate, same payload
        order_body("b-1", items=[{"sku": "SKU-1", "qty": 2}]),         # duplicate, other payload
        {"order_id": "b-6", "bogus": True},                             # unknown field
        order_body("b-7", items=[{"sku": "SKU-1", "qty": 2}]),
        [1, 2],                                                         # not an object
    ]
    resp = await gw.client.post("/v1/orders/batch", json={"orders": orders}, headers=auth("k-web"))
    assert resp.status == 200
    results = (await resp.json())["results"]
    assert [(r["order_id"], r["status"]) for r in results] == [
        ("b-1", 201), ("b-2", 422), ("b-3", 409), ("b-1", 200), ("b-1", 409), ("b-6", 422), ("b-7", 201),
        (None, 422)]
    assert results[2]["body"]["code"] == "insufficient_stock"
    assert results[4]["body"]["code"] == "idempotency_mismatch"
    assert results[3]["body"] == results[0]["body"]
    assert (await gw.stock("SKU-1"))["available"] == 0
    await gw.caught_up()
    assert {r["order_id"] for r in await pg.fetch("SELECT order_id FROM orders")} == {"b-1", "b-7"}


async def test_storefront_batch_refuses_other_channels_per_order(gw):
    await gw.set_stock("SKU-1", {"W1": 5})
    orders = [order_body("c-1"), {**order_body("c-2"), "channel": "app"}]
    results = (await (await gw.client.post("/v1/orders/batch", json={"orders": orders},
                                           headers=auth("k-web"))).json())["results"]
    assert [r["status"] for r in results] == [201, 403]
    assert (await gw.stock("SKU-1"))["reserved"] == 1


async def test_batch_limits_and_roles(gw):
    too_many = {"orders": [order_body(f"x-{i}") for i in range(501)]}
    resp = await gw.client.post("/v1/orders/batch", json=too_many, headers=auth("k-ops"))
    assert resp.status == 422
    assert (await gw.client.post("/v1/orders/batch", json={"orders": []}, headers=auth("k-ops"))).status == 422
    user = await gw.client.post("/v1/orders/batch", json={"orders": [order_body("u-1")]}, headers=as_user("u-1"))
    assert user.status == 403
    pay = await gw.client.post("/v1/orders/batch", json={"orders": [order_body("u-1")]}, headers=auth("k-pay"))
    assert pay.status == 403


async def test_five_hundred_orders_in_one_batch(gw, pg):
    await gw.set_stock("SKU-1", {"W1": 450})
    orders = [order_body(f"m-{i}", f"u-{i}") for i in range(500)]
    results = (await (await gw.client.post("/v1/orders/batch", json={"orders": orders},
                                           headers=auth("k-ops"))).json())["results"]
    assert [r["order_id"] for r in results] == [f"m-{i}" for i in range(500)]
    assert sum(r["status"] == 201 for r in results) == 450
    assert sum(r["status"] == 409 for r in results) == 50
    await gw.caught_up()
    assert await pg.fetchval("SELECT count(*) FROM orders") == 450
