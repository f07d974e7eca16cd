"""The order state machine through the API: every action from every status, table-driven."""

from __future__ import annotations

import pytest

from gateway import lifecycle
from gateway.web import appkeys as K
from tests.conftest import as_user, auth, order_body

ENDPOINT = {"pay": "payment", "cancel": "cancel", "ship": "ship", "complete": "complete",
            "refund": "refund", "refund_confirm": "refund-confirm"}
BODY = {"pay": {"payment_id": "pay-1", "amount": 500}, "cancel": {"reason": "ops"}, "ship": {},
        "complete": {}, "refund": {}, "refund_confirm": {}}
KEY = {"pay": "k-pay", "cancel": "k-ops", "ship": "k-ops", "complete": "k-ops", "refund": "k-pay",
       "refund_confirm": "k-pay"}
PATH_TO = {
    "pending_payment": [], "paid": ["pay"], "shipped": ["pay", "ship"],
    "completed": ["pay", "ship", "complete"], "cancelled": ["cancel"], "refunding": ["pay", "refund"],
    "refunded": ["pay", "refund", "refund_confirm"],
}


async def act(gw, order_id, action, body=None, key=None):
    return await gw.client.post(f"/v1/orders/{order_id}/{ENDPOINT[action]}",
                                json=BODY[action] if body is None else body, headers=auth(key or KEY[action]))


async def new_order(gw, order_id):
    """Two units at 250 each: a total of 500, matching BODY["pay"]."""
    resp = await gw.post("/v1/orders", order_body(order_id, items=[{"sku": "SKU-1", "qty": 2, "unit_price": 250}]))
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def order_in(gw, order_id, status):
    await new_order(gw, order_id)
    for step in PATH_TO[status]:
        resp = await act(gw, order_id, step)
        assert resp.status == 200, (step, await resp.text())
    return order_id


def units(view):
    """The stock figures of an inventory view, without the forecast that moves with the clock."""
    return {k: view[k] for k in ("warehouses", "on_hand", "reserved", "available")}


def conserved(stock):
    for w in stock["warehouses"].values():
        assert w["on_hand"] == w["available"] + w["reserved"]
        assert w["available"] >= 0 and w["reserved"] >= 0


CASES = [(status, action) for status in PATH_TO for action in ENDPOINT]


@pytest.mark.parametrize(("status", "action"), CASES, ids=[f"{s}-{a}" for s, a in CASES])
async def test_every_action_from_every_status(gw, pg, status, action):
    await gw.set_stock("SKU-1", {"W1": 10})
    order_id = await order_in(gw, "o-1", status)
    before = units(await gw.stock("SKU-1"))
    resp = await act(gw, order_id, action)
    body = await resp.json()
    after = units(await gw.stock("SKU-1"))
    conserved(after)
    rule = lifecycle.transition(action, status)
    await gw.caught_up()
    events = await pg.fetchval("SELECT count(*) FROM order_events WHERE order_id = $1", order_id)
    if rule is not None:
        assert resp.status == 200, body
        assert body["status"] == rule.target
        assert events == 1 + len(PATH_TO[status]) + 1
        if rule.stock == "release":
            assert after["available"] == before["available"] + 2
            assert after["reserved"] == before["reserved"] - 2
        elif rule.stock == "ship":
            assert after["on_hand"] == before["on_hand"] - 2
            assert after["reserved"] == before["reserved"] - 2
            assert after["available"] == before["available"]
        else:
            assert after == before
    elif status in lifecycle.DONE[action]:
        assert resp.status == 200, body
        assert body["status"] == status
        assert after == before
        assert events == 1 + len(PATH_TO[status])
    else:
        assert resp.status == 409, body
        assert body["code"] == "illegal_transition"
        assert body["order_status"] == status and body["status"] == 409
        assert after == before
        assert events == 1 + len(PATH_TO[status])
    assert await pg.fetchval("SELECT status FROM orders WHERE order_id = $1", order_id) == (
        rule.target if rule else status)


async def test_events_are_numbered_in_order_and_recorded_once(gw, pg):
    await gw.set_stock("SKU-1", {"W1": 10})
    await order_in(gw, "o-1", "refunded")
    await gw.caught_up()
    rows = await pg.fetch("SELECT seq, type FROM order_events WHERE order_id = 'o-1' ORDER BY id")
    assert [tuple(r) for r in rows] == [(1, "order.accepted"), (2, "order.paid"), (3, "order.refunding"),
                                        (4, "order.refunded")]


async def test_payment_is_idempotent_by_payment_id(gw, pg):
    await gw.set_stock("SKU-1", {"W1": 10})
    await new_order(gw, "o-1")
    first = await act(gw, "o-1", "pay")
    again = await act(gw, "o-1", "pay")
    assert first.status == again.status == 200
    assert await first.json() == await again.json()
    other = await act(gw, "o-1", "pay", {"payment_id": "pay-2", "amount": 500})
    assert other.status == 409
    assert (await other.json())["code"] == "payment_conflict"
    await gw.caught_up()
    assert await pg.fetchval("SELECT count(*) FROM order_events WHERE type = 'order.paid'") == 1
    assert await pg.fetchval("SELECT payment_id FROM orders WHERE order_id = 'o-1'") == "pay-1"


async def test_payment_amount_must_equal_the_order_total(gw):
    await gw.set_stock("SKU-1", {"W1": 10})
    await new_order(gw, "o-1")
    wrong = await act(gw, "o-1", "pay", {"payment_id": "pay-1", "amount": 499})
    assert wrong.status == 409
    problem = await wrong.json()
    assert problem["code"] == "amount_mismatch" and problem["total"] == 500
    got = await gw.client.get("/v1/orders/o-1", headers=auth("k-ops"))
    assert (await got.json())["status"] == "pending_payment"


async def test_owner_cancels_pending_order_and_stock_returns(gw):
    await gw.set_stock("SKU-1", {"W1": 10})
    await gw.post("/v1/orders", order_body("o-1", "u-7", [{"sku": "SKU-1", "qty": 3}]), as_user("u-7"))
    assert (await gw.stock("SKU-1"))["available"] == 7
    resp = await gw.client.post("/v1/orders/o-1/cancel", json={"reason": "customer"}, headers=as_user("u-7"))
    assert resp.status == 200
    assert (await resp.json())["status"] == "cancelled"
    assert (await gw.stock("SKU-1"))["available"] == 10


async def test_owner_may_not_cancel_once_paid_and_others_see_nothing(gw):
    await gw.set_stock("SKU-1", {"W1": 10})
    await gw.post("/v1/orders", order_body("o-1", "u-7"), as_user("u-7"))
    stranger = await gw.client.post("/v1/orders/o-1/cancel", json={"reason": "customer"}, headers=as_user("u-8"))
    assert stranger.status == 404
    as_ops_reason = await gw.client.post("/v1/orders/o-1/cancel", json={"reason": "ops"}, headers=as_user("u-7"))
    assert as_ops_reason.status == 403
    assert (await act(gw, "o-1", "pay", {"payment_id": "p", "amount": 0})).status == 200
    late = await gw.client.post("/v1/orders/o-1/cancel", json={"reason": "customer"}, headers=as_user("u-7"))
    assert late.status == 409
    assert (await late.json())["order_status"] == "paid"


@pytest.mark.parametrize(("action", "key"), [("pay", "k-ops"), ("pay", "k-web"), ("ship", "k-web"),
                                             ("refund", "k-app"), ("complete", "k-web")])
async def test_transitions_need_the_right_service_role(gw, action, key):
    await gw.set_stock("SKU-1", {"W1": 10})
    await new_order(gw, "o-1")
    resp = await act(gw, "o-1", action, key=key)
    assert resp.status == 403


async def test_unknown_order_is_404(gw):
    resp = await act(gw, "nope", "ship")
    assert resp.status == 404
    resp = await act(gw, "bad id!", "ship")
    assert resp.status == 404


async def test_ship_writes_shipment_ledger_rows(gw, pg):
    await gw.set_stock("SKU-1", {"W1": 1, "W2": 1, "W3": 1})  # two units: no single warehouse, a split
    await order_in(gw, "o-1", "shipped")
    stock = await gw.stock("SKU-1")
    assert stock["on_hand"] == 1 and stock["reserved"] == 0
    await gw.caught_up()
    rows = await pg.fetch("SELECT warehouse, delta, reason, order_id FROM inventory_movements "
                          "WHERE reason = 'shipment' ORDER BY warehouse")
    assert [tuple(r) for r in rows] == [("W1", -1, "shipment", "o-1"), ("W2", -1, "shipment", "o-1")]
    on_hand = dict(await pg.fetch("SELECT warehouse, on_hand FROM inventory WHERE sku = 'SKU-1'"))
    assert on_hand == {"W1": 0, "W2": 0, "W3": 1}


async def test_a_payment_and_a_refund_written_in_one_batch_keep_the_payment_id(make_gateway, pg):
    """The writer keeps one status row per order and batch: the newest change must not drop what
    an older one set (found by tests/test_model.py: a refunded order lost its payment_id)."""
    gw = await make_gateway(run_writer=False)  # every change waits in the stream: one batch
    await gw.set_stock("SKU-1", {"W1": 5})
    assert (await gw.post("/v1/orders", order_body("one-batch", items=[{"sku": "SKU-1", "qty": 1}]))).status == 201
    pay = auth("k-pay")
    assert (await gw.post("/v1/orders/one-batch/payment", {"payment_id": "pay-77", "amount": 0}, pay)).status == 200
    assert (await gw.post("/v1/orders/one-batch/refund", {}, pay)).status == 200
    assert (await gw.post("/v1/orders/one-batch/refund-confirm", {}, pay)).status == 200
    gw.app[K.WRITER].start()
    await gw.caught_up()
    row = await pg.fetchrow("SELECT status, payment_id, last_seq FROM orders WHERE order_id = 'one-batch'")
    assert dict(row) == {"status": "refunded", "payment_id": "pay-77", "last_seq": 4}
