"""The console's read side: the order view with what happened to it, the order's timeline, and
the lists of warehouses, sales, stock, the ledger, payments and refunds, each scoped to its roles."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import keys
from tests.conftest import as_user, auth, order_body

OPS, PAY, ADMIN, WEB, APP = auth("k-ops"), auth("k-pay"), auth("k-admin"), auth("k-web"), auth("k-app")
SKU = "L-1"


async def get(gw, path: str, headers: dict[str, str], **params: Any) -> tuple[int, Any]:
    resp = await gw.client.get(path, params={k.rstrip("_"): str(v) for k, v in params.items()}, headers=headers)
    return resp.status, await resp.json()


async def ok(gw, path: str, headers: dict[str, str] = OPS, **params: Any) -> Any:
    status, body = await get(gw, path, headers, **params)
    assert status == 200, body
    return body


async def step(gw, order_id: str, action: str, body: Any = None, headers: dict[str, str] = PAY) -> dict[str, Any]:
    resp = await gw.post(f"/v1/orders/{order_id}/{action}", body or {}, headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def priced(gw, order_id: str, user: str = "u-1", qty: int = 2, price: int = 250, channel: str = "web",
                 currency: str = "EUR") -> None:
    body = order_body(order_id, user, [{"sku": SKU, "qty": qty, "unit_price": price}], channel=channel,
                      currency=currency)
    resp = await gw.post("/v1/orders", body)
    assert resp.status == 201, await resp.text()


# ---- the order view --------------------------------------------------------------------------

async def test_order_view_shows_total_payment_shipment_and_refund_live_and_from_postgres(gw, redis):
    await gw.set_stock(SKU, {"W1": 10})
    await priced(gw, "v-1")
    fresh = await ok(gw, "/v1/orders/v-1")
    assert {k: fresh[k] for k in ("total", "payment_id", "cancel_reason", "shipment", "refund")} == {
        "total": 500, "payment_id": None, "cancel_reason": None, "shipment": None, "refund": None}
    paid = await step(gw, "v-1", "payment", {"payment_id": "pay-v1", "amount": 500})
    assert paid["payment_id"] == "pay-v1"
    shipped = await step(gw, "v-1", "ship", {"carrier": "DHL", "tracking": "T-9"}, OPS)
    assert shipped["shipment"] == {"carrier": "DHL", "tracking": "T-9"}
    refunding = await step(gw, "v-1", "refund", {"reason": "damaged", "amount": 200})
    assert refunding["refund"] == {"reason": "damaged", "amount": 200}
    live = await ok(gw, "/v1/orders/v-1")
    assert live == refunding
    await gw.caught_up()
    await redis.delete(keys.order("v-1"))  # past its record's TTL: PostgreSQL answers
    assert await ok(gw, "/v1/orders/v-1") == live
    # a transition restores the record from PostgreSQL, shipment and refund included
    done = await step(gw, "v-1", "refund-confirm")
    assert done["status"] == "refunded"
    assert {k: done[k] for k in ("payment_id", "shipment", "refund")} == {
        k: live[k] for k in ("payment_id", "shipment", "refund")}


async def test_order_view_names_the_cancel_reason_and_a_ship_without_details(gw):
    await gw.set_stock(SKU, {"W1": 10})
    await gw.post("/v1/orders", order_body("v-2", items=[{"sku": SKU, "qty": 1}]))
    cancelled = await step(gw, "v-2", "cancel", {"reason": "ops"}, OPS)
    assert cancelled["cancel_reason"] == "ops" and cancelled["total"] is None
    await gw.post("/v1/orders", order_body("v-3", items=[{"sku": SKU, "qty": 1}]))
    await step(gw, "v-3", "payment", {"payment_id": "p-3", "amount": 0})
    shipped = await step(gw, "v-3", "ship", None, OPS)
    assert shipped["shipment"] == {}  # shipped, with nothing said of how


async def test_submit_answer_stays_without_the_detail_fields(gw):
    await gw.set_stock(SKU, {"W1": 1})
    resp = await gw.post("/v1/orders", order_body("v-4", items=[{"sku": SKU, "qty": 1}]))
    assert "payment_id" not in await resp.json()


# ---- the order's timeline --------------------------------------------------------------------

async def test_order_events_are_the_timeline_by_seq(gw):
    await gw.set_stock(SKU, {"W1": 10})
    await priced(gw, "t-1")
    await step(gw, "t-1", "payment", {"payment_id": "pay-t1", "amount": 500})
    await step(gw, "t-1", "ship", {"carrier": "UPS"}, OPS)
    await gw.caught_up()
    body = await ok(gw, "/v1/orders/t-1/events")
    assert [(e["seq"], e["type"]) for e in body["events"]] == [
        (1, "order.accepted"), (2, "order.paid"), (3, "order.shipped")]
    assert body["events"][1]["data"] == {"payment_id": "pay-t1", "amount": 500}
    assert body["events"][2]["data"] == {"carrier": "UPS"}
    assert body["events"][0]["at"].endswith("Z")


@pytest.mark.parametrize(("headers", "status"), [
    pytest.param(as_user("u-1"), 200, id="owner"), pytest.param(as_user("u-2"), 404, id="other_user"),
    pytest.param(WEB, 200, id="storefront_of_its_channel"), pytest.param(APP, 404, id="storefront_of_another"),
    pytest.param(OPS, 200, id="ops"), pytest.param(PAY, 200, id="payments"), pytest.param(ADMIN, 200, id="admin"),
])
async def test_order_events_have_the_visibility_of_the_order(gw, headers, status):
    await gw.set_stock(SKU, {"W1": 1})
    await gw.post("/v1/orders", order_body("t-2", "u-1", [{"sku": SKU, "qty": 1}]))
    await gw.caught_up()
    got, body = await get(gw, "/v1/orders/t-2/events", headers)
    assert got == status, body
    assert got == 404 or len(body["events"]) == 1
    assert (await get(gw, "/v1/orders/nobody/events", headers))[0] == 404


async def test_events_of_an_order_not_written_yet_are_empty_not_404(make_gateway):
    gw = await make_gateway(run_writer=False)
    await gw.set_stock(SKU, {"W1": 1})
    await gw.post("/v1/orders", order_body("t-3", "u-1", [{"sku": SKU, "qty": 1}]))
    assert await ok(gw, "/v1/orders/t-3/events", as_user("u-1")) == {"events": []}
    assert (await get(gw, "/v1/orders/t-3/events", as_user("u-2")))[0] == 404


# ---- warehouses, sales, stock ----------------------------------------------------------------

FORBIDDEN_TO_OPS_LISTS = [pytest.param(h, id=n) for n, h in
                          (("payments", PAY), ("storefront", WEB), ("user", as_user("u-1")))]


@pytest.mark.parametrize("path", ["/v1/warehouses", "/v1/sales", "/v1/inventory", f"/v1/inventory/{SKU}/movements"])
@pytest.mark.parametrize("headers", FORBIDDEN_TO_OPS_LISTS)
async def test_ops_lists_refuse_other_roles(gw, path, headers):
    status, body = await get(gw, path, headers)
    assert (status, body["code"]) == (403, "forbidden")
    assert (await get(gw, path, ADMIN))[0] == 200


async def test_warehouses_by_priority_then_id_with_unconfigured_ones(gw):
    for wid, priority, region in (("W3", 1, "east"), ("W1", 2, None), ("W2", 1, "west")):
        body = {"priority": priority, "active": wid != "W1", **({"region": region} if region else {})}
        assert (await gw.client.put(f"/v1/warehouses/{wid}", json=body, headers=OPS)).status == 201
    await gw.set_stock(SKU, {"W9": 5})  # stock in a warehouse never configured
    body = await ok(gw, "/v1/warehouses")
    assert body == {"warehouses": [
        {"warehouse_id": "W2", "region": "west", "priority": 1, "active": True},
        {"warehouse_id": "W3", "region": "east", "priority": 1, "active": True},
        {"warehouse_id": "W1", "region": None, "priority": 2, "active": False},
        {"warehouse_id": "W9", "region": None, "priority": 100, "active": True},
    ]}


async def test_sales_latest_start_first_with_live_counts(gw):
    await gw.set_stock(SKU, {"W1": 10})
    await gw.set_stock("L-2", {"W1": 4})
    window = {"ends_at": "2199-01-01T00:00:00Z", "per_user_limit": 100}
    for sale_id, start, skus in (("s-b", "2026-01-01T00:00:00Z", [SKU]), ("s-a", "2026-01-01T00:00:00Z", ["L-2"]),
                                 ("s-c", "2026-06-01T00:00:00+02:00", [SKU, "L-2"])):
        resp = await gw.client.put(f"/v1/sales/{sale_id}", json={"skus": skus, "starts_at": start, **window},
                                   headers=OPS)
        assert resp.status == 201, await resp.text()
    resp = await gw.post("/v1/orders", order_body("sl-1", items=[{"sku": SKU, "qty": 3}], sale_id="s-b"))
    assert resp.status == 201, await resp.text()
    body = await ok(gw, "/v1/sales")
    assert [(s["sale_id"], s["sold"], s["remaining"]) for s in body["sales"]] == [
        ("s-c", 0, 11), ("s-a", 0, 4), ("s-b", 3, 7)]
    assert body["sales"][0]["starts_at"] == "2026-05-31T22:00:00.000Z"
    assert body["sales"][2] == await ok(gw, "/v1/sales/s-b")


async def test_inventory_list_pages_in_sku_order_with_a_prefix(gw):
    skus = [f"INV-{n:03d}" for n in range(7)] + ["OTHER_1"]
    for n, sku in enumerate(skus):
        await gw.set_stock(sku, {"W1": n + 1})
    await gw.caught_up()  # the list takes its SKUs from PostgreSQL
    seen, cursor = [], None
    while True:
        body = await ok(gw, "/v1/inventory", limit=3, prefix="INV-", **({"cursor": cursor} if cursor else {}))
        seen += [(v["sku"], v["on_hand"]) for v in body["skus"]]
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == [(sku, n + 1) for n, sku in enumerate(skus[:7])]
    whole = await ok(gw, "/v1/inventory")
    assert [v["sku"] for v in whole["skus"]] == sorted(skus) and whole["next"] is None
    view = whole["skus"][0]
    assert view["warehouses"] == {"W1": {"on_hand": 1, "reserved": 0, "available": 1}}
    assert view["sales_per_minute"] is None and view["sell_out_eta"] is None
    assert (await ok(gw, "/v1/inventory", prefix="INV_"))["skus"] == []  # "_" is no wildcard


# ---- the ledger ------------------------------------------------------------------------------

async def test_movements_newest_first_by_warehouse_and_time_with_a_cursor(gw, pg):
    await gw.set_stock(SKU, {"W1": 10, "W2": 5})
    for delta in (1, -2, 3):
        resp = await gw.post(f"/v1/inventory/{SKU}/adjust", {"warehouse": "W1", "delta": delta, "reason": "count"},
                             OPS)
        assert resp.status == 200, await resp.text()
    await gw.set_stock("L-9", {"W1": 1})
    await gw.caught_up()
    body = await ok(gw, f"/v1/inventory/{SKU}/movements", warehouse="W1", limit=2)
    assert [(m["delta"], m["on_hand_after"], m["reason"]) for m in body["movements"]] == [(3, 12, "count"),
                                                                                        (-2, 9, "count")]
    rest = await ok(gw, f"/v1/inventory/{SKU}/movements", warehouse="W1", limit=2, cursor=body["next"])
    assert [(m["delta"], m["on_hand_after"]) for m in rest["movements"]] == [(1, 11), (10, 10)]
    assert rest["next"] is None
    every = await ok(gw, f"/v1/inventory/{SKU}/movements")
    assert len(every["movements"]) == 5 and {m["warehouse"] for m in every["movements"]} == {"W1", "W2"}
    assert set(every["movements"][0]) == {"id", "warehouse", "delta", "on_hand_after", "reason", "order_id", "at"}
    newest = every["movements"][0]["at"]
    assert (await ok(gw, f"/v1/inventory/{SKU}/movements", to="2000-01-02T00:00:00Z"))["movements"] == []
    later = await ok(gw, f"/v1/inventory/{SKU}/movements", from_=newest)
    assert [m["at"] for m in later["movements"]] == [m["at"] for m in every["movements"] if m["at"] >= newest]


# ---- payments and refunds --------------------------------------------------------------------

async def money_workload(gw) -> None:
    """Five paid orders (three in EUR, two in CNY), two of them refunded (one confirmed)."""
    await gw.set_stock(SKU, {"W1": 100})
    for n, (currency, price) in enumerate((("EUR", 100), ("EUR", 250), ("CNY", 999), ("EUR", 5), ("CNY", 1))):
        await priced(gw, f"m-{n}", user=f"u-{n}", qty=2, price=price, currency=currency,
                     channel="web" if n % 2 else "app")
        await step(gw, f"m-{n}", "payment", {"payment_id": f"pay-{n}", "amount": 2 * price})
    await step(gw, "m-1", "refund", {"reason": "damaged", "amount": 100})
    await step(gw, "m-2", "cancel", {"reason": "ops"}, OPS)  # a paid order cancelled: refunding in full
    await step(gw, "m-2", "refund-confirm")
    await gw.caught_up()


async def test_payments_newest_first_with_totals_of_the_whole_period(gw):
    await money_workload(gw)
    first = await ok(gw, "/v1/payments", PAY, limit=2)
    assert [p["order_id"] for p in first["payments"]] == ["m-4", "m-3"]
    assert first["payments"][0] == {"order_id": "m-4", "payment_id": "pay-4", "amount": 2, "currency": "CNY",
                                    "at": first["payments"][0]["at"], "user_id": "u-4", "channel": "app"}
    assert first["totals"] == [{"currency": "CNY", "count": 2, "amount": 2000},
                               {"currency": "EUR", "count": 3, "amount": 710}]
    rest = await ok(gw, "/v1/payments", PAY, limit=2, cursor=first["next"])
    last = await ok(gw, "/v1/payments", PAY, limit=2, cursor=rest["next"])
    assert [p["order_id"] for p in rest["payments"] + last["payments"]] == ["m-2", "m-1", "m-0"]
    assert last["next"] is None and rest["totals"] == first["totals"]
    eur = await ok(gw, "/v1/payments", OPS, currency="EUR")
    assert [p["order_id"] for p in eur["payments"]] == ["m-3", "m-1", "m-0"]
    assert eur["totals"] == [{"currency": "EUR", "count": 3, "amount": 710}]
    none = await ok(gw, "/v1/payments", ADMIN, to="2001-01-01T00:00:00Z")
    assert none == {"payments": [], "totals": [], "next": None}
    since = await ok(gw, "/v1/payments", PAY, from_=first["payments"][0]["at"])
    assert since["payments"][0]["order_id"] == "m-4"


async def test_refunds_with_their_status_and_the_paid_amount_when_none_was_named(gw):
    await money_workload(gw)
    body = await ok(gw, "/v1/refunds", PAY)
    assert [{k: r[k] for k in ("order_id", "amount", "currency", "reason", "status")} for r in body["refunds"]] == [
        {"order_id": "m-2", "amount": 1998, "currency": "CNY", "reason": "ops", "status": "refunded"},
        {"order_id": "m-1", "amount": 100, "currency": "EUR", "reason": "damaged", "status": "refunding"},
    ]
    assert body["totals"] == [{"currency": "CNY", "count": 1, "amount": 1998},
                              {"currency": "EUR", "count": 1, "amount": 100}]
    assert (await ok(gw, "/v1/refunds", OPS, currency="EUR"))["totals"] == [
        {"currency": "EUR", "count": 1, "amount": 100}]


@pytest.mark.parametrize("path", ["/v1/payments", "/v1/refunds"])
@pytest.mark.parametrize(("headers", "status"), [
    pytest.param(PAY, 200, id="payments"), pytest.param(OPS, 200, id="ops"), pytest.param(ADMIN, 200, id="admin"),
    pytest.param(WEB, 403, id="storefront"), pytest.param(as_user("u-1"), 403, id="user"),
])
async def test_finance_lists_are_for_payments_ops_and_admin(gw, path, headers, status):
    assert (await get(gw, path, headers))[0] == status


# ---- refused input ---------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "query", "code"), [
    ("/v1/inventory", "limit=0", "invalid_limit"),
    ("/v1/inventory", "limit=201", "invalid_limit"),
    ("/v1/inventory", "prefix=%00", "invalid_prefix"),
    ("/v1/inventory", "prefix=A%0A", "invalid_prefix"),
    ("/v1/inventory", "prefix=A%25", "invalid_prefix"),
    ("/v1/inventory", "cursor=%00", "invalid_cursor"),
    ("/v1/inventory", "cursor=QQo=", "invalid_cursor"),  # "A\n"
    ("/v1/inventory", "cursor=", "invalid_cursor"),
    (f"/v1/inventory/{SKU}/movements", "warehouse=W1%0A", "invalid_warehouse"),
    (f"/v1/inventory/{SKU}/movements", "from=9999-01-01T00:00:00Z", "invalid_from"),
    (f"/v1/inventory/{SKU}/movements", "to=%00", "invalid_to"),
    (f"/v1/inventory/{SKU}/movements", "limit=99999999999999999999", "invalid_limit"),
    (f"/v1/inventory/{SKU}/movements", "cursor=MTIzfG8tMQ==", "invalid_cursor"),  # "123|o-1": no row id
    (f"/v1/inventory/{SKU}/movements", "cursor=MTIzfDk5OTk5OTk5OTk5OTk5OTk5OTk5", "invalid_cursor"),  # id > 2**63
    ("/v1/inventory/L%0A/movements", "", "invalid_sku"),
    ("/v1/payments", "currency=eur", "invalid_currency"),
    ("/v1/payments", "currency=EUR%0A", "invalid_currency"),
    ("/v1/payments", "from=0001-01-01T00:00:00%2B14:00", "invalid_from"),
    ("/v1/refunds", "to=yesterday", "invalid_to"),
    ("/v1/refunds", "cursor=%FF", "invalid_cursor"),
    ("/v1/refunds", "limit=-1", "invalid_limit"),
    ("/v1/payments", "curency=EUR", "unknown_parameter"),
    ("/v1/inventory", "sku=L-1", "unknown_parameter"),
    (f"/v1/inventory/{SKU}/movements", "warehouses=W1", "unknown_parameter"),
])
async def test_bad_list_parameters_are_422_with_their_code(gw, path, query, code):
    resp = await gw.client.get(f"{path}?{query}", headers=ADMIN)
    assert resp.status == 422, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == code
