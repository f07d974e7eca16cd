"""Reservation expiry: unpaid orders give their stock back, and a late payment loses cleanly."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter

from gateway.web import appkeys as K
from tests.conftest import auth, order_body


async def until_due(order, margin: float = 0.05) -> None:
    """Wait out the reservation itself: expiry is about time passing, there is no event to await."""
    until = dt.datetime.fromisoformat(order["reserved_until"]).timestamp()
    await asyncio.sleep(max(0.0, until - time.time() + margin))


async def test_unpaid_order_expires_and_stock_returns(make_gateway, pg):
    gw = await make_gateway(reservation_ttl=1)
    await gw.set_stock("SKU-1", {"W1": 5})
    order = await (await gw.post("/v1/orders", order_body("e-1", items=[{"sku": "SKU-1", "qty": 3}]))).json()
    assert (await gw.stock("SKU-1"))["available"] == 2
    await until_due(order)
    await asyncio.wait_for(gw.app[K.EXPIRER].wait_pass(), 5)
    got = await (await gw.client.get("/v1/orders/e-1", headers=auth("k-ops"))).json()
    assert got["status"] == "cancelled"
    stock = await gw.stock("SKU-1")
    assert stock["available"] == 5 and stock["reserved"] == 0
    late = await gw.client.post("/v1/orders/e-1/payment", json={"payment_id": "p-1", "amount": 0},
                                headers=auth("k-pay"))
    assert late.status == 409
    assert (await late.json())["code"] == "reservation_expired"
    await gw.caught_up()
    row = await pg.fetchrow("SELECT status, cancel_reason FROM orders WHERE order_id = 'e-1'")
    assert tuple(row) == ("cancelled", "expired")
    types = [r["type"] for r in await pg.fetch("SELECT type FROM order_events WHERE order_id = 'e-1' ORDER BY id")]
    assert types == ["order.accepted", "order.cancelled"]


async def test_payment_after_deadline_expires_the_order_itself(make_gateway):
    gw = await make_gateway(reservation_ttl=1)
    await gw.app[K.EXPIRER].close()  # no expirer: the payment meets the stale reservation first
    await gw.set_stock("SKU-1", {"W1": 5})
    order = await (await gw.post("/v1/orders", order_body("e-1"))).json()
    await until_due(order)
    late = await gw.client.post("/v1/orders/e-1/payment", json={"payment_id": "p-1", "amount": 0},
                                headers=auth("k-pay"))
    assert late.status == 409
    assert (await late.json())["code"] == "reservation_expired"
    assert (await gw.stock("SKU-1"))["available"] == 5
    got = await (await gw.client.get("/v1/orders/e-1", headers=auth("k-ops"))).json()
    # the refused payment is nowhere: Redis once kept its id with the expired order, PostgreSQL never
    assert (got["status"], got["cancel_reason"], got["payment_id"]) == ("cancelled", "expired", None)


async def test_payment_racing_expiry_has_exactly_one_outcome(make_gateway, pg):
    gw = await make_gateway(reservation_ttl=1)
    await gw.set_stock("SKU-1", {"W1": 1000})
    rounds = 40
    orders = await asyncio.gather(*(gw.post("/v1/orders", order_body(f"r-{i}")) for i in range(rounds)))
    # Payments land from just before to just after the deadline while the expirer runs.
    await until_due(await orders[0].json(), margin=-0.08)

    async def pay(i: int) -> tuple[str, int, str]:
        await asyncio.sleep((i % 8) * 0.02)
        resp = await gw.client.post(f"/v1/orders/r-{i}/payment", json={"payment_id": f"p-{i}", "amount": 0},
                                    headers=auth("k-pay"))
        body = await resp.json()
        return f"r-{i}", resp.status, body.get("code") or body["status"]

    outcomes = await asyncio.gather(*(pay(i) for i in range(rounds)))
    await asyncio.wait_for(gw.app[K.EXPIRER].wait_pass(), 5)
    assert Counter(code for _, _, code in outcomes).keys() <= {"paid", "reservation_expired"}
    paid = {oid for oid, status, code in outcomes if status == 200}
    assert all(code == "paid" for oid, status, code in outcomes if status == 200)
    for oid, _, _ in outcomes:
        got = await (await gw.client.get(f"/v1/orders/{oid}", headers=auth("k-ops"))).json()
        assert got["status"] == ("paid" if oid in paid else "cancelled")
    stock = await gw.stock("SKU-1")
    assert stock["reserved"] == len(paid)
    assert stock["available"] == 1000 - len(paid)
    await gw.caught_up()
    counts = dict(await pg.fetch("SELECT type, count(*) FROM order_events GROUP BY type"))
    assert counts.get("order.paid", 0) == len(paid)
    assert counts.get("order.cancelled", 0) == rounds - len(paid)


async def test_many_expiries_in_one_pass(make_gateway):
    gw = await make_gateway(reservation_ttl=1)
    await gw.set_stock("SKU-1", {"W1": 700})
    resps = await asyncio.gather(*(gw.post("/v1/orders", order_body(f"m-{i}")) for i in range(600)))
    assert Counter(r.status for r in resps) == {201: 600}
    orders = [await r.json() for r in resps]
    await until_due(max(orders, key=lambda o: o["reserved_until"]))  # answers arrive in any order
    await asyncio.wait_for(gw.app[K.EXPIRER].wait_pass(), 10)
    stock = await gw.stock("SKU-1")
    assert stock["available"] == 700 and stock["reserved"] == 0
    assert gw.app[K.EXPIRER].expired == 600


async def test_expirer_reloads_its_script_after_a_script_flush(make_gateway, redis):
    """One owner of script calls: the expirer's transition calls reload on NOSCRIPT like the rest,
    instead of finding nothing expired and running its pass again at once."""
    gw = await make_gateway(reservation_ttl=1)
    await gw.set_stock("SKU-1", {"W1": 5})
    order = await (await gw.post("/v1/orders", order_body("e-flush", items=[{"sku": "SKU-1", "qty": 2}]))).json()
    await gw.app[K.EXPIRER].close()  # before the order is due: a pass of its own would expire it first
    await until_due(order)
    await redis.script_flush()
    assert await gw.app[K.EXPIRER].expire_due() == 1
    got = await (await gw.client.get("/v1/orders/e-flush", headers=auth("k-ops"))).json()
    assert got["status"] == "cancelled"
    assert (await gw.stock("SKU-1"))["available"] == 5
