"""Inventory through the API: set and adjust on hand, the ledger, conservation, restock mid-sale, auth.

Every change of on hand is one ``inventory_movements`` row; after the writer catches up the
ledger sum per SKU and warehouse equals ``inventory.on_hand`` in PostgreSQL and on hand in
Redis, and on hand = available + reserved everywhere.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from typing import Any

import pytest

from gateway import keys
from tests.conftest import as_user, auth, order_body

OPS = auth("k-ops")


def view(warehouses: dict[str, tuple[int, int]], sku: str = "SKU-1") -> dict[str, Any]:
    """The expected inventory view from ``{warehouse: (on_hand, reserved)}``."""
    whs = {w: {"on_hand": h, "reserved": r, "available": h - r} for w, (h, r) in warehouses.items()}
    return {
        "sku": sku, "warehouses": whs,
        "on_hand": sum(w["on_hand"] for w in whs.values()),
        "reserved": sum(w["reserved"] for w in whs.values()),
        "available": sum(w["available"] for w in whs.values()),
    }


COUNTS = ("sku", "warehouses", "on_hand", "reserved", "available")


def counts(answer: dict[str, Any]) -> dict[str, Any]:
    """The stock part of an inventory answer (it may carry more, such as ``sell_out_eta``)."""
    assert "sell_out_eta" in answer, answer
    return {k: answer[k] for k in COUNTS if k in answer}


async def put_stock(gw, sku: str, warehouses: dict[str, int], headers=OPS):
    return await gw.client.put(f"/v1/inventory/{sku}", json={"warehouses": warehouses}, headers=headers)


async def adjust(gw, sku: str, warehouse: str, delta: int, reason: str = "receipt", headers=OPS):
    return await gw.client.post(f"/v1/inventory/{sku}/adjust",
                                json={"warehouse": warehouse, "delta": delta, "reason": reason}, headers=headers)


async def order(gw, order_id: str, sku: str = "SKU-1", qty: int = 1) -> dict[str, Any]:
    resp = await gw.post("/v1/orders", order_body(order_id, items=[{"sku": sku, "qty": qty}]))
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def pay_and_ship(gw, order_id: str) -> None:
    paid = await gw.client.post(f"/v1/orders/{order_id}/payment", json={"payment_id": f"pay-{order_id}", "amount": 0},
                                headers=auth("k-pay"))
    assert paid.status == 200, await paid.text()
    shipped = await gw.client.post(f"/v1/orders/{order_id}/ship", json={}, headers=OPS)
    assert shipped.status == 200, await shipped.text()
    assert (await shipped.json())["status"] == "shipped"


async def ledger(pg, sku: str = "SKU-1") -> list[tuple]:
    rows = await pg.fetch("SELECT warehouse, delta, on_hand_after, reason, order_id FROM inventory_movements "
                          "WHERE sku = $1 ORDER BY id", sku)
    return [tuple(r) for r in rows]


async def pg_on_hand(pg, sku: str = "SKU-1") -> dict[str, int]:
    return dict(await pg.fetch("SELECT warehouse, on_hand FROM inventory WHERE sku = $1", sku))


async def redis_snapshot(redis, sku: str = "SKU-1") -> dict[bytes, bytes]:
    return await redis.hgetall(keys.stock(sku))


def conserved(stock: dict[str, Any]) -> None:
    for w in stock["warehouses"].values():
        assert w["on_hand"] == w["available"] + w["reserved"], stock
        assert w["available"] >= 0 and w["reserved"] >= 0 and w["on_hand"] >= 0, stock
    assert stock["on_hand"] == stock["available"] + stock["reserved"], stock


async def books_balance(gw, pg, sku: str = "SKU-1") -> dict[str, Any]:
    """After the writer catches up: ledger sum = PostgreSQL on hand = Redis on hand, per warehouse,
    and each row's on_hand_after is the running sum of its warehouse's deltas."""
    await gw.caught_up()
    stock = await gw.stock(sku)
    conserved(stock)
    running: dict[str, int] = defaultdict(int)
    for wh, delta, after, _, _ in await ledger(pg, sku):
        assert delta != 0
        running[wh] += delta
        assert after == running[wh] >= 0, (wh, delta, after, running[wh])
    redis_on_hand = {w: v["on_hand"] for w, v in stock["warehouses"].items() if v["on_hand"] or w in running}
    assert dict(running) == await pg_on_hand(pg, sku) == redis_on_hand
    return stock


# --- PUT /v1/inventory/{sku} ---------------------------------------------------------------

async def test_put_sets_on_hand_per_warehouse_and_answer_matches_get(gw, pg):
    resp = await put_stock(gw, "SKU-1", {"W1": 100, "W2": 5})
    assert resp.status == 200
    expected = view({"W1": (100, 0), "W2": (5, 0)})
    assert counts(await resp.json()) == expected
    assert counts(await gw.stock("SKU-1")) == expected
    await books_balance(gw, pg)
    assert await ledger(pg) == [("W1", 100, 100, "set", None), ("W2", 5, 5, "set", None)]
    assert await pg_on_hand(pg) == {"W1": 100, "W2": 5}


async def test_put_writes_one_ledger_row_per_changed_warehouse_with_the_delta(gw, pg):
    await gw.set_stock("SKU-1", {"W1": 100, "W2": 5})
    answer = await gw.set_stock("SKU-1", {"W1": 80, "W2": 5, "W3": 7})
    assert counts(answer) == view({"W1": (80, 0), "W2": (5, 0), "W3": (7, 0)})
    await books_balance(gw, pg)
    assert await ledger(pg) == [("W1", 100, 100, "set", None), ("W2", 5, 5, "set", None),
                                ("W1", -20, 80, "set", None), ("W3", 7, 7, "set", None)]
    assert await pg_on_hand(pg) == {"W1": 80, "W2": 5, "W3": 7}


async def test_put_of_the_same_on_hand_again_writes_no_ledger_row(gw, pg):
    first = await gw.set_stock("SKU-1", {"W1": 100, "W2": 5})
    again = await gw.set_stock("SKU-1", {"W1": 100, "W2": 5})
    assert counts(again) == counts(first)
    await books_balance(gw, pg)
    assert len(await ledger(pg)) == 2
    await gw.set_stock("SKU-1", {"W2": 5})
    await gw.caught_up()
    assert len(await ledger(pg)) == 2
    assert await pg_on_hand(pg) == {"W1": 100, "W2": 5}


async def test_put_leaves_warehouses_it_does_not_name_alone(gw, pg):
    await gw.set_stock("SKU-1", {"W1": 10, "W2": 5})
    answer = await gw.set_stock("SKU-1", {"W2": 0})
    assert counts(answer) == view({"W1": (10, 0), "W2": (0, 0)})
    await books_balance(gw, pg)
    assert (await ledger(pg))[-1] == ("W2", -5, 0, "set", None)


async def test_put_keeps_reserved_and_changes_only_available(gw, pg):
    await gw.set_stock("SKU-1", {"W1": 10})
    await order(gw, "o-1", qty=4)
    answer = await gw.set_stock("SKU-1", {"W1": 6})
    assert counts(answer) == view({"W1": (6, 4)})
    stock = await books_balance(gw, pg)
    assert counts(stock) == counts(answer)
    assert (await ledger(pg))[-1] == ("W1", -4, 6, "set", None)


@pytest.mark.parametrize("body", [{"warehouses": {"W1": -1}}, {"warehouses": {}}, {"warehouses": {"W1": 1.5}},
                                  {"warehouses": {"W1": 5}, "reason": "x"}, {"W1": 5}],
                         ids=["negative", "empty", "fraction", "unknown_field", "not_wrapped"])
async def test_put_with_invalid_body_is_422_and_changes_nothing(gw, pg, redis, body):
    await gw.set_stock("SKU-1", {"W1": 3})
    before = await redis_snapshot(redis)
    resp = await gw.client.put("/v1/inventory/SKU-1", json=body, headers=OPS)
    assert resp.status == 422, await resp.text()
    assert await redis_snapshot(redis) == before
    await gw.caught_up()
    assert len(await ledger(pg)) == 1


async def test_put_below_reserved_is_409_below_reserved_and_changes_nothing(gw, pg, redis):
    await gw.set_stock("SKU-1", {"W1": 10})
    await order(gw, "o-1", qty=4)
    before = await redis_snapshot(redis)
    resp = await put_stock(gw, "SKU-1", {"W1": 3})
    assert resp.status == 409
    problem = await resp.json()
    assert problem["code"] == "below_reserved"
    assert problem["warehouse"] == "W1" and problem["reserved"] == 4
    assert await redis_snapshot(redis) == before
    assert counts(await books_balance(gw, pg)) == view({"W1": (10, 4)})
    assert await ledger(pg) == [("W1", 10, 10, "set", None)]


async def test_multi_warehouse_put_with_only_the_second_below_reserved_changes_neither(gw, pg, redis):
    await gw.set_stock("SKU-1", {"W1": 0, "W2": 10})
    await order(gw, "o-1", qty=3)  # only W2 has stock: reserved there
    assert counts(await gw.stock("SKU-1")) == view({"W1": (0, 0), "W2": (10, 3)})
    before = await redis_snapshot(redis)
    resp = await put_stock(gw, "SKU-1", {"W1": 50, "W2": 2})
    assert resp.status == 409
    problem = await resp.json()
    assert problem["code"] == "below_reserved"
    assert problem["warehouse"] == "W2" and problem["reserved"] == 3
    assert await redis_snapshot(redis) == before
    assert counts(await books_balance(gw, pg)) == view({"W1": (0, 0), "W2": (10, 3)})
    assert await ledger(pg) == [("W2", 10, 10, "set", None)]
    assert await pg_on_hand(pg) == {"W2": 10}


async def test_put_down_to_exactly_reserved_is_allowed_and_leaves_nothing_available(gw, pg):
    await gw.set_stock("SKU-1", {"W1": 10})
    await order(gw, "o-1", qty=4)
    assert counts(await gw.set_stock("SKU-1", {"W1": 4})) == view({"W1": (4, 4)})
    resp = await gw.post("/v1/orders", order_body("o-2"))
    assert resp.status == 409 and (await resp.json())["code"] == "insufficient_stock"
    await books_balance(gw, pg)


# --- POST /v1/inventory/{sku}/adjust ---------------------------------------------------------

async def test_adjust_writes_one_ledger_row_with_its_reason(gw, pg):
    await gw.set_stock("SKU-1", {"W1": 10})
    steps = [("receipt", 25, 35), ("damage", -3, 32), ("correction", -2, 30), ("return", 1, 31)]
    for reason, delta, after in steps:
        resp = await adjust(gw, "SKU-1", "W1", delta, reason)
        assert resp.status == 200, await resp.text()
        assert counts(await resp.json()) == view({"W1": (after, 0)})
    await books_balance(gw, pg)
    assert await ledger(pg) == [("W1", 10, 10, "set", None)] + [
        ("W1", delta, after, reason, None) for reason, delta, after in steps]
    assert await pg_on_hand(pg) == {"W1": 31}


async def test_adjust_of_a_new_sku_and_warehouse_creates_its_stock(gw, pg):
    resp = await adjust(gw, "NEW-SKU", "W9", 12, "receipt")
    assert resp.status == 200
    assert counts(await resp.json()) == view({"W9": (12, 0)}, sku="NEW-SKU")
    await books_balance(gw, pg, "NEW-SKU")
    assert await ledger(pg, "NEW-SKU") == [("W9", 12, 12, "receipt", None)]
    assert (await order(gw, "o-1", sku="NEW-SKU", qty=2))["allocations"] == [
        {"sku": "NEW-SKU", "warehouse": "W9", "qty": 2}]


async def test_adjust_keeps_reserved_units_and_moves_available(gw, pg):
    await gw.set_stock("SKU-1", {"W1": 10})
    await order(gw, "o-1", qty=4)
    resp = await adjust(gw, "SKU-1", "W1", -6, "damage")  # down to exactly the reserved units
    assert resp.status == 200
    assert counts(await resp.json()) == view({"W1": (4, 4)})
    resp = await adjust(gw, "SKU-1", "W1", 5, "receipt")
    assert counts(await resp.json()) == view({"W1": (9, 4)})
    await books_balance(gw, pg)


async def test_adjust_below_reserved_is_409_naming_warehouse_and_reserved_and_changes_nothing(gw, pg, redis):
    await gw.set_stock("SKU-1", {"W1": 10, "W2": 3})
    await order(gw, "o-1", qty=4)
    assert counts(await gw.stock("SKU-1")) == view({"W1": (10, 4), "W2": (3, 0)})
    before = await redis_snapshot(redis)
    resp = await adjust(gw, "SKU-1", "W1", -7, "damage")
    assert resp.status == 409
    problem = await resp.json()
    assert problem["code"] == "below_reserved"
    assert problem["warehouse"] == "W1" and problem["reserved"] == 4
    assert resp.content_type == "application/problem+json"
    assert await redis_snapshot(redis) == before
    assert counts(await books_balance(gw, pg)) == view({"W1": (10, 4), "W2": (3, 0)})
    assert [r[3] for r in await ledger(pg)] == ["set", "set"]


async def test_adjust_delta_zero_is_422_and_writes_nothing(gw, pg, redis):
    await gw.set_stock("SKU-1", {"W1": 10})
    before = await redis_snapshot(redis)
    resp = await adjust(gw, "SKU-1", "W1", 0, "correction")
    assert resp.status == 422
    assert await redis_snapshot(redis) == before
    await books_balance(gw, pg)
    assert len(await ledger(pg)) == 1


@pytest.mark.parametrize("body", [
    {"warehouse": "W1", "delta": 1}, {"warehouse": "W1", "delta": 1, "reason": ""},
    {"warehouse": "W1", "delta": 1, "reason": "Bad Reason"}, {"warehouse": "W 1", "delta": 1, "reason": "receipt"},
    {"warehouse": "W1", "delta": 1.5, "reason": "receipt"}, {"warehouse": "W1", "delta": "1", "reason": "receipt"},
    {"warehouse": "W1", "delta": 1, "reason": "receipt", "note": "x"},
], ids=["no_reason", "empty_reason", "reason_with_spaces", "bad_warehouse", "fraction", "string_delta",
        "unknown_field"])
async def test_adjust_with_invalid_body_is_422_and_writes_nothing(gw, pg, redis, body):
    await gw.set_stock("SKU-1", {"W1": 10})
    before = await redis_snapshot(redis)
    resp = await gw.client.post("/v1/inventory/SKU-1/adjust", json=body, headers=OPS)
    assert resp.status == 422, await resp.text()
    assert await redis_snapshot(redis) == before
    await gw.caught_up()
    assert len(await ledger(pg)) == 1


async def test_on_hand_never_goes_negative(gw, pg, redis):
    await gw.set_stock("SKU-1", {"W1": 3})
    before = await redis_snapshot(redis)
    resp = await adjust(gw, "SKU-1", "W1", -4, "damage")
    assert resp.status == 409
    problem = await resp.json()
    assert problem["code"] == "below_reserved" and problem["warehouse"] == "W1" and problem["reserved"] == 0
    unknown = await adjust(gw, "SKU-1", "W-NONE", -1, "damage")
    assert unknown.status == 409
    assert (await unknown.json())["code"] == "below_reserved"
    assert (await put_stock(gw, "SKU-1", {"W1": -1})).status == 422
    assert await redis_snapshot(redis) == before
    assert counts(await books_balance(gw, pg)) == view({"W1": (3, 0)})
    assert len(await ledger(pg)) == 1


async def test_concurrent_adjusts_all_apply_and_chain_on_hand_after(gw, pg):
    await gw.set_stock("SKU-1", {"W1": 0})
    answers = await asyncio.gather(*(adjust(gw, "SKU-1", "W1", 1, "receipt") for _ in range(50)))
    assert [r.status for r in answers] == [200] * 50
    assert counts(await books_balance(gw, pg)) == view({"W1": (50, 0)})
    rows = await ledger(pg)
    assert [r[2] for r in rows] == list(range(1, 51))  # one row each, in the order they applied


async def test_write_off_racing_buyers_never_leaves_on_hand_below_reserved(gw, pg):
    await gw.set_stock("SKU-1", {"W1": 20})

    async def buy(i: int) -> int:
        resp = await gw.post("/v1/orders", order_body(f"o-{i}", f"u-{i}"), as_user(f"u-{i}"))
        return resp.status

    write_off, *statuses = await asyncio.gather(adjust(gw, "SKU-1", "W1", -10, "damage"),
                                                *(buy(i) for i in range(30)))
    accepted = statuses.count(201)
    assert statuses.count(409) == 30 - accepted
    if write_off.status == 200:
        on_hand = 10
    else:  # refused only because more than 10 units were already reserved
        assert write_off.status == 409
        problem = await write_off.json()
        assert problem["code"] == "below_reserved" and problem["reserved"] > 10
        on_hand = 20
    stock = await books_balance(gw, pg)
    assert counts(stock) == view({"W1": (on_hand, on_hand)})  # 30 buyers for at most 20 units: sold out
    assert accepted == on_hand
    assert await pg.fetchval("SELECT count(*) FROM orders") == accepted


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/inventory/bad%20sku", None),
    ("PUT", "/v1/inventory/bad%20sku", {"warehouses": {"W1": 1}}),
    ("POST", "/v1/inventory/bad%20sku/adjust", {"warehouse": "W1", "delta": 1, "reason": "receipt"}),
], ids=["get", "put", "adjust"])
async def test_malformed_sku_in_the_path_is_422(gw, pg, method, path, body):
    resp = await gw.client.request(method, path, json=body, headers=OPS)
    assert resp.status == 422
    assert (await resp.json())["code"] == "invalid_sku"
    await gw.caught_up()
    assert await pg.fetchval("SELECT count(*) FROM inventory_movements") == 0


# --- conservation with orders ---------------------------------------------------------------

async def test_conservation_holds_across_reserve_ship_and_cancel(gw, pg):
    initial = {"W1": 5, "W2": 8}
    await gw.set_stock("SKU-1", initial)
    orders = {}
    for i, qty in enumerate([3, 4, 2, 3, 1]):  # 13 units of 13: some orders split across warehouses
        orders[f"o-{i}"] = (await order(gw, f"o-{i}", qty=qty))["allocations"]
    stock = await books_balance(gw, pg)
    assert stock["available"] == 0 and stock["reserved"] == 13 and stock["on_hand"] == 13

    shipped, cancelled = ["o-0", "o-1", "o-4"], ["o-2"]
    for oid in shipped:
        await pay_and_ship(gw, oid)
    cancel = await gw.client.post("/v1/orders/o-2/cancel", json={"reason": "ops"}, headers=OPS)
    assert cancel.status == 200
    paid_only = await gw.client.post("/v1/orders/o-3/payment", json={"payment_id": "pay-o-3", "amount": 0},
                                     headers=auth("k-pay"))
    assert paid_only.status == 200  # paid, not shipped: still holds its units

    out, held = Counter(), Counter()
    for oid, allocs in orders.items():
        for a in allocs:
            if oid in shipped:
                out[a["warehouse"]] += a["qty"]
            elif oid not in cancelled:
                held[a["warehouse"]] += a["qty"]
    expected = view({w: (initial[w] - out[w], held[w]) for w in initial})
    stock = await books_balance(gw, pg)
    assert counts(stock) == expected

    rows = await ledger(pg)
    shipments = [r for r in rows if r[3] == "shipment"]
    assert {(r[0], r[4]) for r in shipments} == {(a["warehouse"], oid) for oid in shipped for a in orders[oid]}
    assert all(r[1] < 0 for r in shipments)
    assert -sum(r[1] for r in shipments) == sum(out.values())
    assert {r[3] for r in rows} == {"set", "shipment"}  # reserving, cancelling and paying move no on hand

    held_in_pg = dict(await pg.fetch(
        "SELECT a.warehouse, sum(a.qty) FROM allocations a JOIN orders o USING (order_id) "
        "WHERE o.status IN ('pending_payment', 'paid') GROUP BY a.warehouse"))
    assert held_in_pg == {w: n for w, n in held.items() if n}
    assert {w: v["reserved"] for w, v in stock["warehouses"].items() if v["reserved"]} == held_in_pg


async def test_adjust_after_shipping_keeps_the_books_balanced(gw, pg):
    await gw.set_stock("SKU-1", {"W1": 10})
    await order(gw, "o-1", qty=4)
    await pay_and_ship(gw, "o-1")
    await order(gw, "o-2", qty=2)
    assert (await adjust(gw, "SKU-1", "W1", -4, "damage")).status == 200  # 6 on hand, 2 reserved
    refused = await adjust(gw, "SKU-1", "W1", -1, "damage")
    assert refused.status == 409 and (await refused.json())["reserved"] == 2
    stock = await books_balance(gw, pg)
    assert counts(stock) == view({"W1": (2, 2)})
    assert await ledger(pg) == [("W1", 10, 10, "set", None), ("W1", -4, 6, "shipment", "o-1"),
                                ("W1", -4, 2, "damage", None)]


# --- restock during a live flash sale ----------------------------------------------------------

async def test_restock_during_flash_sale_sells_exactly_the_new_units(gw, pg):
    await gw.set_stock("HOT", {"W1": 50})

    async def buy(order_id: str, user: str) -> tuple[int, dict]:
        resp = await gw.post("/v1/orders", order_body(order_id, user, [{"sku": "HOT", "qty": 1}]), as_user(user))
        return resp.status, await resp.json()

    first = await asyncio.gather(*(buy(f"w1-{i}", f"u1-{i}") for i in range(200)))
    assert Counter(s for s, _ in first) == {201: 50, 409: 150}
    assert {b["code"] for s, b in first if s == 409} == {"insufficient_stock"}
    assert counts(await gw.stock("HOT")) == view({"W1": (50, 50)}, sku="HOT")

    # The second wave arrives while the restock is in flight. A buyer refused before the restock
    # has answered tries again (a fresh order id, as a buyer pressing "buy" again would); each
    # buyer's last try starts after the restock answered, so all 30 new units meet buyers.
    restocked = asyncio.Event()
    tries = Counter()

    async def restock():
        resp = await adjust(gw, "HOT", "W1", 30, "receipt")
        restocked.set()
        return resp

    async def buyer(i: int) -> tuple[int, dict]:
        while True:
            after_restock = restocked.is_set()
            status, body = await buy(f"w2-{i}-{tries[i]}", f"u2-{i}")
            tries[i] += 1
            if status != 409 or after_restock:
                return status, body
            assert body["code"] == "insufficient_stock", body

    restock_resp, *second = await asyncio.gather(restock(), *(buyer(i) for i in range(200)))
    assert restock_resp.status == 200
    during = await restock_resp.json()
    assert during["on_hand"] == 80 and during["warehouses"]["W1"]["on_hand"] == 80
    conserved(during)
    assert Counter(s for s, _ in second) == {201: 30, 409: 170}
    assert {b["code"] for s, b in second if s == 409} == {"insufficient_stock"}
    accepted = {b["order_id"] for s, b in first + second if s == 201}
    assert len(accepted) == 80

    stock = await books_balance(gw, pg, "HOT")
    assert counts(stock) == view({"W1": (80, 80)}, sku="HOT")
    assert {r["order_id"] for r in await pg.fetch("SELECT order_id FROM orders")} == accepted
    assert await pg.fetchval("SELECT sum(qty) FROM allocations WHERE sku = 'HOT'") == 80
    assert await pg.fetchval("SELECT sum(delta) FROM inventory_movements WHERE sku = 'HOT'") == 80
    assert await ledger(pg, "HOT") == [("W1", 50, 50, "set", None), ("W1", 30, 80, "receipt", None)]
    assert await pg_on_hand(pg, "HOT") == {"W1": 80}


# --- inactive warehouses --------------------------------------------------------------------

async def put_warehouse(gw, wid: str, **body: Any) -> None:
    resp = await gw.client.put(f"/v1/warehouses/{wid}", json=body, headers=OPS)
    assert resp.status in (200, 201), await resp.text()


async def test_inactive_warehouse_is_listed_but_its_units_are_not_available(gw):
    await put_stock(gw, "SKU-1", {"W1": 7, "W2": 5})
    await order(gw, "o-1", qty=2)  # both priority 100: W1 first by id
    await put_warehouse(gw, "W1", active=False)
    stock = await gw.stock("SKU-1")
    assert stock["warehouses"] == {"W1": {"on_hand": 7, "reserved": 2, "available": 5, "active": False},
                                   "W2": {"on_hand": 5, "reserved": 0, "available": 5}}
    assert (stock["on_hand"], stock["reserved"], stock["available"]) == (12, 2, 5)
    # the plan and the reserve script offer exactly that
    plan = await gw.client.post("/v1/allocations/plan", json={"items": [{"sku": "SKU-1", "qty": 6}]}, headers=OPS)
    assert (await plan.json())["unfilled"] == [{"sku": "SKU-1", "qty": 1}]
    short = await gw.post("/v1/orders", order_body("o-2", items=[{"sku": "SKU-1", "qty": 6}]))
    assert short.status == 409 and (await short.json())["missing"] == 1
    # set and adjust answer the same view
    put = await put_stock(gw, "SKU-1", {"W2": 6})
    assert counts(await put.json()) == counts(await gw.stock("SKU-1"))
    assert (await put.json())["available"] == 6
    adjusted = await (await adjust(gw, "SKU-1", "W1", 1)).json()
    assert adjusted["available"] == 6 and adjusted["warehouses"]["W1"]["active"] is False
    await put_warehouse(gw, "W1", active=True)
    back = await gw.stock("SKU-1")
    assert back["available"] == 12 and "active" not in back["warehouses"]["W1"]


# --- auth ------------------------------------------------------------------------------------

CALLS = [
    ("GET", "/v1/inventory/SKU-1", None),
    ("PUT", "/v1/inventory/SKU-1", {"warehouses": {"W1": 99}}),
    ("POST", "/v1/inventory/SKU-1/adjust", {"warehouse": "W1", "delta": 9, "reason": "receipt"}),
]
REFUSED = {"storefront_web": auth("k-web"), "storefront_app": auth("k-app"), "payments": auth("k-pay"),
           "user": as_user("u-1")}
ALLOWED = {"ops": auth("k-ops"), "admin": auth("k-admin")}


@pytest.mark.parametrize(("method", "path", "body"), CALLS, ids=["get", "put", "adjust"])
@pytest.mark.parametrize("who", list(REFUSED))
async def test_storefront_payments_and_user_callers_get_403_on_inventory_and_change_nothing(
        gw, pg, redis, method, path, body, who):
    await gw.set_stock("SKU-1", {"W1": 10})
    before = await redis_snapshot(redis)
    resp = await gw.client.request(method, path, json=body, headers=REFUSED[who])
    assert resp.status == 403
    assert (await resp.json())["code"] == "forbidden"
    assert await redis_snapshot(redis) == before
    await gw.caught_up()
    assert len(await ledger(pg)) == 1


@pytest.mark.parametrize(("method", "path", "body"), CALLS, ids=["get", "put", "adjust"])
@pytest.mark.parametrize("who", list(ALLOWED))
async def test_ops_and_admin_may_read_set_and_adjust_inventory(gw, pg, method, path, body, who):
    await gw.set_stock("SKU-1", {"W1": 10})
    resp = await gw.client.request(method, path, json=body, headers=ALLOWED[who])
    assert resp.status == 200, await resp.text()
    expected_on_hand = {"GET": 10, "PUT": 99, "POST": 19}[method]
    assert counts(await resp.json()) == view({"W1": (expected_on_hand, 0)})
    await books_balance(gw, pg)


async def test_inventory_without_credentials_is_401(gw):
    for method, path, body in CALLS:
        resp = await gw.client.request(method, path, json=body)
        assert resp.status == 401, (method, path)
