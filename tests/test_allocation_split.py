"""Orders split across warehouses in preference order, all lines or none."""

from __future__ import annotations

from tests.conftest import auth, order_body


async def put_warehouse(gw, wid, **body):
    resp = await gw.client.put(f"/v1/warehouses/{wid}", json=body, headers=auth("k-ops"))
    assert resp.status in (200, 201), await resp.text()
    return resp


async def test_line_split_across_warehouses_by_priority(gw, pg):
    await put_warehouse(gw, "WA", priority=2)
    await put_warehouse(gw, "WB", priority=1)
    await gw.set_stock("A", {"WA": 5, "WB": 3})
    await gw.set_stock("B", {"WA": 4})
    resp = await gw.post("/v1/orders", order_body("split-1", items=[{"sku": "A", "qty": 6}, {"sku": "B", "qty": 2}]))
    assert resp.status == 201
    order = await resp.json()
    assert order["allocations"] == [
        {"sku": "A", "warehouse": "WB", "qty": 3},
        {"sku": "A", "warehouse": "WA", "qty": 3},
        {"sku": "B", "warehouse": "WA", "qty": 2},
    ]
    a = await gw.stock("A")
    assert a["warehouses"]["WB"] == {"on_hand": 3, "reserved": 3, "available": 0}
    assert a["warehouses"]["WA"] == {"on_hand": 5, "reserved": 3, "available": 2}
    await gw.caught_up()
    rows = await pg.fetch("SELECT sku, warehouse, qty FROM allocations WHERE order_id = 'split-1' ORDER BY sku, qty DESC, warehouse")
    assert [tuple(r) for r in rows] == [("A", "WA", 3), ("A", "WB", 3), ("B", "WA", 2)]


async def test_short_line_rejects_whole_order_and_takes_nothing(make_gateway, redis, pg):
    gw = await make_gateway(run_writer=False)  # the stream only grows: its length shows every append
    await gw.set_stock("A", {"W1": 5, "W2": 5})
    await gw.set_stock("B", {"W1": 1, "W2": 1})
    before_len = await gw.stream_length()
    resp = await gw.post("/v1/orders", order_body("short-1", items=[{"sku": "A", "qty": 7}, {"sku": "B", "qty": 3}]))
    assert resp.status == 409
    problem = await resp.json()
    assert problem["code"] == "insufficient_stock"
    assert problem["sku"] == "B" and problem["missing"] == 1
    assert (await gw.stock("A"))["available"] == 10
    assert (await gw.stock("B"))["available"] == 2
    assert await gw.stream_length() == before_len
    got = await gw.client.get("/v1/orders/short-1", headers=auth("k-ops"))
    assert got.status == 404


async def test_inactive_warehouse_is_never_allocated(gw):
    await put_warehouse(gw, "W1", priority=1, active=False)
    await put_warehouse(gw, "W2", priority=2)
    await gw.set_stock("A", {"W1": 100, "W2": 1})
    ok = await gw.post("/v1/orders", order_body("ia-1", items=[{"sku": "A", "qty": 1}]))
    assert (await ok.json())["allocations"] == [{"sku": "A", "warehouse": "W2", "qty": 1}]
    short = await gw.post("/v1/orders", order_body("ia-2", items=[{"sku": "A", "qty": 1}]))
    assert short.status == 409
    assert (await gw.stock("A"))["warehouses"]["W1"]["available"] == 100


async def test_warehouse_put_creates_then_updates(gw):
    first = await put_warehouse(gw, "WX", region="east", priority=3)
    assert first.status == 201
    assert await first.json() == {"warehouse_id": "WX", "region": "east", "priority": 3, "active": True}
    second = await put_warehouse(gw, "WX", region="west", priority=4)
    assert second.status == 200
    assert (await second.json())["region"] == "west"


async def test_order_is_readable_right_after_201_and_after_writer(gw):
    await gw.set_stock("A", {"W1": 2})
    created = await (await gw.post("/v1/orders", order_body("read-1", items=[{"sku": "A", "qty": 2}]))).json()
    # a read adds what happened since the submit (none of it yet) to the submit's answer
    since = {"total": None, "payment_id": None, "cancel_reason": None, "shipment": None, "refund": None}
    got = await gw.client.get("/v1/orders/read-1", headers=auth("k-ops"))
    assert await got.json() == {**created, **since}
    await gw.caught_up()
    await gw.expire_record("read-1")
    from_pg = await (await gw.client.get("/v1/orders/read-1", headers=auth("k-ops"))).json()
    assert from_pg == {**created, **since}
