"""Inventory partitions (``OMS_PARTITIONS``): SKU groups in slots of their own, every promise kept.

On one server the partitions are hash tags side by side; ``make test-cluster`` runs this file
on a 3-primary cluster too, where they sit on different primaries.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest

from gateway import keys
from gateway.config import ConfigError
from gateway.ops.rebuild import rebuild
from gateway.ops.reconcile import reconcile
from gateway.web import appkeys as K
from gateway.web.app import mark_ready
from tests.conftest import auth, order_body

N = 4
LAYOUT = keys.Partitions(N)


def groups(count: int) -> list[str]:
    """``count`` SKU groups in as many different partitions, none of them the first order id's home."""
    found: dict[str, str] = {}
    n = 0
    while len(found) < count:
        found.setdefault(LAYOUT.of_sku(f"g{n}:x"), f"g{n}")
        n += 1
    return list(found.values())


def away(order_id: str, group: str) -> bool:
    """Whether the order id's home (its locator's partition) is not the group's partition."""
    return LAYOUT.home(order_id) != LAYOUT.of_sku(group)


def order_id_for(group: str, *, home: bool, prefix: str = "o") -> str:
    """An order id whose home is (or is not) the partition of ``group``."""
    return next(f"{prefix}-{n}" for n in range(1000) if away(f"{prefix}-{n}", group) != home)


@pytest.fixture
async def pgw(make_gateway):
    return await make_gateway(partitions=N)


async def order(gw, order_id: str, sku: str, qty: int = 1, user: str = "u-1", **extra: Any):
    return await gw.post("/v1/orders", order_body(order_id, user, [{"sku": sku, "qty": qty}], **extra),
                         auth("k-web"))


async def test_each_group_sells_in_its_own_partition_and_the_writers_store_every_order(pgw, redis, pg):
    skus = [f"{g}:tv" for g in groups(N)]
    for sku in skus:
        await pgw.set_stock(sku, {"W1": 30})
    answers = await asyncio.gather(*(order(pgw, f"b-{s}-{n}", sku, user=f"u-{n}")
                                     for s, sku in enumerate(skus) for n in range(40)))
    accepted = [f"b-{s}-{n}" for s in range(N) for n in range(40) if answers[s * 40 + n].status == 201]
    assert sorted(r.status for r in answers) == [201] * (30 * N) + [409] * (10 * N)  # 30 each, none oversold
    for sku in skus:
        p = LAYOUT.of_sku(sku)
        assert (await pgw.stock(sku))["available"] == 0
        assert await redis.hget(keys.stock(sku, p), "r:W1") == b"30"  # reserved where its group lives
        assert not await redis.exists(keys.stock(sku, keys.ONE))
    await pgw.caught_up()
    rows = {r["order_id"] for r in await pg.fetch("SELECT order_id FROM orders")}
    assert rows == set(accepted)
    streams = [await redis.xlen(keys.events(p)) for p in LAYOUT.all()]
    assert streams == [0] * N  # every partition's writer drained its stream
    stats = await (await pgw.client.get("/v1/stats", headers=auth("k-ops"))).json()
    assert stats["stream_length"] == 0 and stats["writer_pending"] == 0


async def test_entries_with_the_same_id_in_two_partitions_streams_are_both_written(pgw, redis, pg):
    """Streams make their ids alone: two partitions give the same id in the same millisecond."""
    a, b = groups(2)
    for g in (a, b):
        await pgw.set_stock(f"{g}:x", {"W1": 5})
    await pgw.caught_up()
    entry_id = f"{int(time.time() * 1000) + 60_000}-7"  # later than any id either stream made
    for g in (a, b):
        await redis.xadd(keys.events(LAYOUT.of_sku(f"{g}:x")), {"t": "inventory.moved", "s": f"{g}:x", "w": "W1",
                                                                 "d": "1", "h": "6", "r": "count"}, id=entry_id)
    await pgw.caught_up()
    rows = await pg.fetch("SELECT sku, stream_id FROM inventory_movements WHERE reason = 'count' ORDER BY sku")
    assert sorted(r["sku"] for r in rows) == sorted([f"{a}:x", f"{b}:x"])  # neither taken for the other
    assert len({r["stream_id"] for r in rows}) == 2 and all(r["stream_id"].startswith(entry_id) for r in rows)
    assert [await pg.fetchval("SELECT on_hand FROM inventory WHERE sku = $1", f"{g}:x") for g in (a, b)] == [6, 6]


async def test_a_sale_order_naming_a_sku_of_another_partition_is_refused_and_takes_nothing(pgw):
    """Such a SKU cannot be in the sale, whose partition is its SKUs'."""
    a, b = groups(2)
    window = {"starts_at": "2020-01-01T00:00:00Z", "ends_at": "2190-01-01T00:00:00Z"}
    put = await pgw.client.put("/v1/sales/s1", json={"skus": [f"{a}:x"], "per_user_limit": 5, **window},
                               headers=auth("k-ops"))
    assert put.status == 201
    await pgw.set_stock(f"{a}:x", {"W1": 5})
    await pgw.set_stock(f"{b}:x", {"W1": 5})
    resp = await pgw.post("/v1/orders", order_body("span-1", items=[{"sku": f"{a}:x", "qty": 1},
                                                                     {"sku": f"{b}:x", "qty": 1}], sale_id="s1"),
                          auth("k-web"))
    assert resp.status == 409
    assert (await resp.json())["code"] == "sku_not_in_sale"
    assert [(await pgw.stock(f"{g}:x"))["available"] for g in (a, b)] == [5, 5]


@pytest.mark.parametrize("first_home", [True, False])
async def test_an_order_id_is_one_order_whichever_partitions_its_payloads_name(pgw, first_home):
    a, b = groups(2)
    order_id = order_id_for(a, home=first_home)
    other = b if first_home else next(g for g in groups(N) if not away(order_id, g))  # the id's home
    for g in (a, other):
        await pgw.set_stock(f"{g}:x", {"W1": 5})
    assert (await order(pgw, order_id, f"{a}:x")).status == 201
    assert (await order(pgw, order_id, f"{a}:x")).status == 200  # the same payload: a replay
    again = await order(pgw, order_id, f"{other}:x")  # another payload, in another partition
    assert again.status == 409
    assert (await again.json())["code"] == "idempotency_mismatch"
    assert (await pgw.stock(f"{other}:x"))["available"] == 5
    assert (await pgw.stock(f"{a}:x"))["available"] == 4


async def test_one_id_sent_at_once_with_payloads_in_every_partition_is_one_order(make_gateway, redis):
    """Two gateways race one order id, each with the four payloads (one per partition) many times."""
    gws = [await make_gateway(partitions=N), await make_gateway(partitions=N)]
    skus = [f"{g}:x" for g in groups(N)]
    for sku in skus:
        await gws[0].set_stock(sku, {"W1": 5})
    for round_ in range(5):
        order_id = f"race-{round_}"
        tries = [(gws[n % 2], skus[n % N]) for n in range(40)]
        answers = await asyncio.gather(*(order(gw, order_id, sku) for gw, sku in tries))
        won = {sku for (_, sku), r in zip(tries, answers, strict=True) if r.status in (200, 201)}
        assert len(won) == 1, won  # one payload owns the id; every other is 409 idempotency_mismatch
        assert sorted({r.status for r in answers}) in ([201, 409], [200, 201, 409])
        assert sum(r.status == 201 for r in answers) == 1
        for r, (_, sku) in zip(answers, tries, strict=True):
            if sku not in won:
                assert (await r.json())["code"] == "idempotency_mismatch"
    left = [(await gws[0].stock(sku))["available"] for sku in skus]
    assert sum(left) == N * 5 - 5  # five orders, one unit each, wherever they won
    locators = [await redis.get(keys.locator(f"race-{n}", LAYOUT.home(f"race-{n}"))) for n in range(5)]
    assert all(loc is None or loc.decode() in LAYOUT.all() for loc in locators)


async def test_a_refused_order_leaves_its_id_free_for_any_partition(pgw):
    a, b = groups(2)
    order_id = order_id_for(a, home=False)
    await pgw.set_stock(f"{b}:x", {"W1": 5})
    short = await order(pgw, order_id, f"{a}:x")  # no stock in a: refused, nothing kept
    assert short.status == 409 and (await short.json())["code"] == "insufficient_stock"
    assert (await order(pgw, order_id, f"{b}:x")).status == 201


async def test_orders_are_found_by_id_paid_cancelled_and_give_stock_back_in_their_partition(pgw, pg):
    (a,) = groups(1)
    sku = f"{a}:tv"
    await pgw.set_stock(sku, {"W1": 10})
    far, near = order_id_for(a, home=False, prefix="far"), order_id_for(a, home=True, prefix="near")
    for order_id in (far, near):
        assert (await order(pgw, order_id, sku, qty=2)).status == 201
    got = await (await pgw.client.get(f"/v1/orders/{far}", headers=auth("k-ops"))).json()
    assert got["status"] == "pending_payment" and got["items"][0]["sku"] == sku
    paid = await pgw.client.post(f"/v1/orders/{far}/payment", json={"payment_id": "p-1", "amount": 0},
                                 headers=auth("k-pay"))
    assert paid.status == 200, await paid.text()
    cancelled = await pgw.client.post(f"/v1/orders/{near}/cancel", json={"reason": "customer"},
                                      headers=auth("k-ops"))
    assert cancelled.status == 200, await cancelled.text()
    view = await pgw.stock(sku)
    assert (view["available"], view["reserved"]) == (8, 2)
    assert (await pgw.client.get("/v1/orders/nobody-1", headers=auth("k-ops"))).status == 404
    await pgw.caught_up()
    rows = dict(await pg.fetch("SELECT order_id, status FROM orders"))
    assert rows == {far: "paid", near: "cancelled"}
    events = await (await pgw.client.get(f"/v1/orders/{far}/events", headers=auth("k-ops"))).json()
    assert [e["type"] for e in events["events"]] == ["order.accepted", "order.paid"]


async def test_an_order_past_its_records_ttl_is_changed_again_in_its_skus_partition(pgw, redis, pg):
    (a,) = groups(1)
    sku, order_id = f"{a}:x", order_id_for(a, home=False, prefix="old")
    await pgw.set_stock(sku, {"W1": 5})
    assert (await order(pgw, order_id, sku)).status == 201
    paid = await pgw.client.post(f"/v1/orders/{order_id}/payment", json={"payment_id": "p-1", "amount": 0},
                                 headers=auth("k-pay"))
    assert paid.status == 200
    await pgw.caught_up()
    p = LAYOUT.of_sku(sku)
    await redis.delete(keys.order(order_id, p), keys.locator(order_id, LAYOUT.home(order_id)))  # what TTLs do
    got = await (await pgw.client.get(f"/v1/orders/{order_id}", headers=auth("k-ops"))).json()
    assert got["status"] == "paid"  # from PostgreSQL
    shipped = await pgw.client.post(f"/v1/orders/{order_id}/ship", json={},
                                    headers=auth("k-ops"))
    assert shipped.status == 200, await shipped.text()
    assert await redis.hget(keys.order(order_id, p), "s") == b"shipped"  # made again beside its stock
    view = await pgw.stock(sku)
    assert (view["on_hand"], view["reserved"]) == (4, 0)
    got = await (await pgw.client.get(f"/v1/orders/{order_id}", headers=auth("k-ops"))).json()
    assert got["status"] == "shipped"  # found with no locator: every partition was looked in
    await pgw.caught_up()
    assert await pg.fetchval("SELECT status FROM orders WHERE order_id = $1", order_id) == "shipped"


async def test_unpaid_orders_expire_in_every_partition(make_gateway):
    gw = await make_gateway(partitions=N, reservation_ttl=1)
    skus = [f"{g}:x" for g in groups(N)]
    until = 0.0
    for n, sku in enumerate(skus):
        await gw.set_stock(sku, {"W1": 3})
        body = await (await order(gw, f"e-{n}", sku, qty=3)).json()
        until = max(until, dt.datetime.fromisoformat(body["reserved_until"]).timestamp())
    await asyncio.sleep(max(0.0, until - time.time() + 0.05))  # expiry is about time passing
    await asyncio.wait_for(gw.app[K.EXPIRER].wait_pass(), 5)
    for n, sku in enumerate(skus):
        got = await (await gw.client.get(f"/v1/orders/e-{n}", headers=auth("k-ops"))).json()
        assert (got["status"], got["cancel_reason"]) == ("cancelled", "expired")
        assert (await gw.stock(sku))["available"] == 3


async def test_a_sale_lives_in_the_partition_of_its_skus_and_keeps_its_limit(pgw, redis):
    a, b = groups(2)
    window = {"starts_at": "2020-01-01T00:00:00Z", "ends_at": "2190-01-01T00:00:00Z"}
    spans = await pgw.client.put("/v1/sales/s-bad", json={"skus": [f"{a}:x", f"{b}:x"], "per_user_limit": 1,
                                                           **window}, headers=auth("k-ops"))
    assert spans.status == 422 and (await spans.json())["code"] == "sale_spans_partitions"
    put = await pgw.client.put("/v1/sales/s11", json={"skus": [f"{a}:x", f"{a}:y"], "per_user_limit": 2,
                                                       **window}, headers=auth("k-ops"))
    assert put.status == 201, await put.text()
    assert await redis.exists(keys.sale("s11", LAYOUT.of_sku(a)))
    moved = await pgw.client.put("/v1/sales/s11", json={"skus": [f"{b}:x"], "per_user_limit": 2, **window},
                                 headers=auth("k-ops"))
    assert moved.status == 422 and (await moved.json())["code"] == "sale_moves_partition"
    await pgw.set_stock(f"{a}:x", {"W1": 10})
    answers = await asyncio.gather(*(order(pgw, f"s-{n}", f"{a}:x", sale_id="s11") for n in range(6)))
    assert sorted(r.status for r in answers) == [201, 201, 409, 409, 409, 409]  # one user, limit 2
    listed = await (await pgw.client.get("/v1/sales", headers=auth("k-ops"))).json()
    assert [(s["sale_id"], s["sold"], s["remaining"]) for s in listed["sales"]] == [("s11", 2, 8)]


async def test_redis_rebuilt_from_postgresql_puts_everything_back_in_its_partition(pgw, redis, pg):
    a, b = groups(2)
    await pgw.set_stock(f"{a}:x", {"W1": 10})
    await pgw.set_stock(f"{b}:x", {"W1": 10})
    far = order_id_for(a, home=False, prefix="r")
    assert (await order(pgw, far, f"{a}:x", qty=3)).status == 201
    assert (await order(pgw, "r-b", f"{b}:x", qty=4)).status == 201
    await pgw.caught_up()
    await redis.flushall()  # Redis lost everything: orders answer 503 until the rebuild
    resp = await order(pgw, "r-new", f"{a}:x")
    assert resp.status == 503, await resp.text()
    await pgw.app[K.WRITER].ensure_group()
    counts = await rebuild(redis, pg, idempotency_ttl=86400, layout=LAYOUT)
    assert (counts["orders"], counts["pending"]) == (2, 2)
    assert [(await pgw.stock(f"{g}:x"))["available"] for g in (a, b)] == [7, 6]
    assert (await order(pgw, far, f"{a}:x", qty=3)).status == 200  # a replay, found where it was rebuilt
    cancelled = await pgw.client.post(f"/v1/orders/{far}/cancel", json={"reason": "ops"}, headers=auth("k-ops"))
    assert cancelled.status == 200, await cancelled.text()
    assert (await pgw.stock(f"{a}:x"))["available"] == 10
    await pgw.caught_up()
    report = await reconcile(redis, pg, layout=LAYOUT)
    assert report["ok"] and report["checked"] == 2, report


async def test_redis_laid_out_with_other_partitions_stops_start_up(make_gateway, redis, pg):
    one = await make_gateway(partitions=1)  # one partition: the markers say so
    await one.set_stock("SKU-1", {"W1": 1})
    await one.caught_up()
    with pytest.raises(ConfigError, match="OMS_PARTITIONS=4"):
        await mark_ready(redis, pg, LAYOUT)
    assert await mark_ready(redis, pg, keys.SINGLE)
    await redis.flushall()  # PostgreSQL has stock: an empty Redis is a lost one, not a new one
    assert not await mark_ready(redis, pg, LAYOUT)
    assert [await redis.get(keys.ready(p)) for p in LAYOUT.all()] == [None] * N
