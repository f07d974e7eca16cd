"""Orders whose lines span inventory partitions: holds, then the primary, all or nothing.

``make test-cluster`` runs this file on the 3-primary cluster too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import orjson

from gateway import keys, spans
from gateway.errors import BackendDown
from gateway.models import decode_order, encode
from gateway.ops.rebuild import rebuild
from gateway.ops.reconcile import reconcile
from gateway.orders import transition_call
from gateway.web import appkeys as K
from tests.conftest import auth, order_body
from tests.test_partitioned import LAYOUT, N, groups

A, B, C = (f"{g}:x" for g in groups(3))  # one SKU in each of three partitions


async def span_gateway(make_gateway, **overrides):
    return await make_gateway(partitions=N, **overrides)


async def buy(gw, order_id: str, lines: list[tuple[str, int]], user: str = "u-1"):
    return await gw.post("/v1/orders", order_body(order_id, user, [{"sku": s, "qty": q} for s, q in lines]),
                         auth("k-web"))


async def died_after_its_hold(gw, order_id: str, user: str, sku: str, qty: int) -> tuple[dict[str, Any], str, Any]:
    """The hold of an order of (A, 1) and (sku, qty), taken in sku's partition as by a process
    that died next: never committed, and no primary. Returns the order's body, its payload as
    the gateway encodes it, and the take's reply."""
    body = order_body(order_id, user, [{"sku": A, "qty": 1}, {"sku": sku, "qty": qty}])
    raw = encode(decode_order(orjson.dumps(body))).decode()
    q, cache = LAYOUT.of_sku(sku), gw.app[K.WAREHOUSES]
    ks, args = spans.hold_call("take", order_id, raw, q, [[sku, qty, list(cache.order("priority", None))]],
                               arg=LAYOUT.of_sku(A), version=cache.versions[q], lives=3600)
    return body, raw, await gw.app[K.SCRIPTS].call("hold", ks, args)


async def stale(redis, order_id: str, sku: str) -> None:
    """The hold of ``order_id`` in sku's partition listed as taken longer ago than the sweep waits."""
    await redis.zadd(keys.holds(LAYOUT.of_sku(sku)), {order_id: int(time.time() * 1000) - spans.STALE_MS - 1})


async def levels(gw, *names: str) -> list[tuple[int, int]]:
    return [((v := await gw.stock(s))["available"], v["reserved"]) for s in names]


async def test_an_order_over_three_partitions_is_taken_whole_and_stored_whole(make_gateway, redis, pg):
    gw = await span_gateway(make_gateway)
    for sku in (A, B, C):
        await gw.set_stock(sku, {"W1": 5})
    resp = await buy(gw, "s-1", [(A, 1), (B, 2), (C, 3)])
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert [(a["sku"], a["qty"]) for a in body["allocations"]] == [(A, 1), (B, 2), (C, 3)]
    assert await levels(gw, A, B, C) == [(4, 1), (3, 2), (2, 3)]
    primary = LAYOUT.of_sku(A)
    assert await redis.hget(keys.order("s-1", primary), "x") is not None
    for sku in (B, C):
        assert await redis.hget(keys.hold("s-1", LAYOUT.of_sku(sku)), "s") == b"held"
        assert not await redis.zcard(keys.holds(LAYOUT.of_sku(sku)))  # committed
    assert (await buy(gw, "s-1", [(A, 1), (B, 2), (C, 3)])).status == 200  # a replay
    other = await buy(gw, "s-1", [(A, 1), (B, 1)])
    assert other.status == 409 and (await other.json())["code"] == "idempotency_mismatch"
    assert await levels(gw, A, B, C) == [(4, 1), (3, 2), (2, 3)]
    await gw.caught_up()
    rows = await pg.fetch("SELECT sku, qty FROM allocations WHERE order_id = 's-1' ORDER BY sku")
    assert sorted((r["sku"], r["qty"]) for r in rows) == sorted([(A, 1), (B, 2), (C, 3)])
    assert (await reconcile(redis, pg, layout=LAYOUT))["ok"]


async def test_a_short_line_anywhere_takes_nothing_anywhere(make_gateway):
    gw = await span_gateway(make_gateway)
    await gw.set_stock(A, {"W1": 5})
    await gw.set_stock(B, {"W1": 1})
    await gw.set_stock(C, {"W1": 5})
    short_held = await buy(gw, "s-2", [(A, 1), (B, 2), (C, 1)])  # a hold refuses
    assert short_held.status == 409
    assert (await short_held.json())["code"] == "insufficient_stock" and B in (await short_held.json())["detail"]
    short_primary = await buy(gw, "s-3", [(A, 9), (C, 1)])  # the primary refuses after the hold
    assert short_primary.status == 409 and A in (await short_primary.json())["detail"]
    assert await levels(gw, A, B, C) == [(5, 0), (1, 0), (5, 0)]
    # the id is free again at once: the retry takes C's part anew, a generation the
    # refusal's tombstone does not name (it refuses only a reserve counting on the old one)
    again = await buy(gw, "s-3", [(A, 1), (C, 1)])
    assert again.status == 201, await again.text()
    assert await levels(gw, A, B, C) == [(4, 1), (1, 0), (4, 1)]


async def test_cancel_ship_and_expiry_move_every_part(make_gateway, pg, redis):
    gw = await span_gateway(make_gateway, reservation_ttl=1)
    for sku in (A, B):
        await gw.set_stock(sku, {"W1": 10})
    for n in range(3):
        assert (await buy(gw, f"l-{n}", [(A, 1), (B, 2)])).status == 201
    cancelled = await gw.client.post("/v1/orders/l-0/cancel", json={"reason": "customer"}, headers=auth("k-ops"))
    assert cancelled.status == 200, await cancelled.text()
    paid = await gw.client.post("/v1/orders/l-1/payment", json={"payment_id": "p-1", "amount": 0},
                                headers=auth("k-pay"))
    assert paid.status == 200, await paid.text()
    shipped = await gw.client.post("/v1/orders/l-1/ship", json={}, headers=auth("k-ops"))
    assert shipped.status == 200, await shipped.text()
    deadline = time.time() + 1.2
    await asyncio.sleep(max(0.0, deadline - time.time()))  # l-2's reservation runs out: time itself
    await asyncio.wait_for(gw.app[K.EXPIRER].wait_pass(), 5)
    assert (await (await gw.client.get("/v1/orders/l-2", headers=auth("k-ops"))).json())["status"] == "cancelled"
    a, b = await gw.stock(A), await gw.stock(B)
    assert (a["on_hand"], a["reserved"], b["on_hand"], b["reserved"]) == (9, 0, 8, 0)  # l-1 shipped from both
    assert await redis.zcard(keys.remote(LAYOUT.of_sku(A))) == 0  # every part followed at once
    await gw.caught_up()
    moves = await pg.fetch("SELECT sku, delta FROM inventory_movements WHERE order_id = 'l-1' ORDER BY sku")
    assert sorted((r["sku"], r["delta"]) for r in moves) == sorted([(A, -1), (B, -2)])
    assert (await reconcile(redis, pg, layout=LAYOUT))["ok"]


async def test_a_part_held_days_is_there_when_its_order_ships_after_its_record_lapsed(make_gateway, redis, pg):
    """Pay now, ship days later: the order's record lapses (OMS_IDEMPOTENCY_TTL after its last
    change) and the ship makes it again from PostgreSQL. The hold elsewhere has no TTL while
    it holds units, as its units have none, so its part ships too. (With the record's TTL,
    it lapsed first, and the ship left that part's units reserved for good.)"""
    gw = await span_gateway(make_gateway)
    await gw.set_stock(A, {"W1": 5})
    await gw.set_stock(B, {"W1": 5})
    assert (await buy(gw, "d-1", [(A, 1), (B, 2)])).status == 201
    paid = await gw.client.post("/v1/orders/d-1/payment", json={"payment_id": "p-d1", "amount": 0},
                                headers=auth("k-pay"))
    assert paid.status == 200, await paid.text()
    hold = keys.hold("d-1", LAYOUT.of_sku(B))
    assert await redis.ttl(hold) == -1
    await gw.caught_up()
    await gw.expire_record("d-1")
    shipped = await gw.client.post("/v1/orders/d-1/ship", json={}, headers=auth("k-ops"))
    assert shipped.status == 200, await shipped.text()
    a, b = await gw.stock(A), await gw.stock(B)
    assert (a["on_hand"], a["reserved"], b["on_hand"], b["reserved"]) == (4, 0, 3, 0)
    assert 0 < await redis.ttl(hold)  # shipped: it lives as the order's record does
    await gw.caught_up()
    assert (await reconcile(redis, pg, layout=LAYOUT))["ok"]


async def test_a_replay_of_a_cancelled_order_is_answered_though_its_held_stock_sold_since(make_gateway, redis):
    """The cancel released the hold; a replay takes nothing and gets the order, as on one
    partition, whether the unit is there or sold since. (It used to take the released part
    for a moment, and a buyer of the last unit could be told it was sold out.)"""
    gw = await span_gateway(make_gateway)
    await gw.set_stock(A, {"W1": 5})
    await gw.set_stock(B, {"W1": 1})
    created = await buy(gw, "c-1", [(A, 1), (B, 1)])
    assert created.status == 201
    cancelled = await gw.client.post("/v1/orders/c-1/cancel", json={"reason": "customer"}, headers=auth("k-ops"))
    assert cancelled.status == 200, await cancelled.text()
    hold = keys.hold("c-1", LAYOUT.of_sku(B))
    assert await redis.hmget(hold, "s", "g", "k") == [b"released", b"1", b"1"]  # a committed order's part
    other = await buy(gw, "c-1", [(A, 1), (B, 1)], user="u-2")  # the primary's record answers it
    assert other.status == 409 and (await other.json())["code"] == "idempotency_mismatch"
    again = await buy(gw, "c-1", [(A, 1), (B, 1)])  # a replay while the unit is there
    assert again.status == 200 and (await again.json())["status"] == "cancelled", await again.text()
    assert await redis.hmget(hold, "s", "g") == [b"released", b"1"]  # neither took the released part again
    assert await levels(gw, A, B) == [(5, 0), (1, 0)]
    assert (await buy(gw, "c-2", [(B, 1)], user="u-2")).status == 201  # the unit c-1 gave back
    replay = await buy(gw, "c-1", [(A, 1), (B, 1)])
    assert replay.status == 200, await replay.text()
    assert {**await replay.json(), "status": "pending_payment"} == await created.json()
    assert (await replay.json())["status"] == "cancelled"
    other = await buy(gw, "c-1", [(A, 2), (B, 1)])
    assert other.status == 409 and (await other.json())["code"] == "idempotency_mismatch"
    assert await levels(gw, A, B) == [(5, 0), (0, 1)]


async def test_an_id_whose_cancelled_order_record_is_gone_takes_its_released_part_anew(make_gateway, redis):
    """The primary's record lives OMS_IDEMPOTENCY_TTL after a cancel, its hold elsewhere about
    as long: once the record is gone the id is free, and a new order takes that part again."""
    gw = await span_gateway(make_gateway)
    await gw.set_stock(A, {"W1": 5})
    await gw.set_stock(B, {"W1": 5})
    assert (await buy(gw, "g-1", [(A, 1), (B, 1)])).status == 201
    cancelled = await gw.client.post("/v1/orders/g-1/cancel", json={"reason": "customer"}, headers=auth("k-ops"))
    assert cancelled.status == 200, await cancelled.text()
    await gw.caught_up()
    await gw.expire_record("g-1")
    again = await buy(gw, "g-1", [(A, 1), (B, 2)], user="u-2")
    assert again.status == 201, await again.text()
    assert await redis.hmget(keys.hold("g-1", LAYOUT.of_sku(B)), "s", "g", "k") == [b"held", b"2", b"1"]
    assert await levels(gw, A, B) == [(4, 1), (3, 2)]


async def test_a_replay_after_its_hold_record_lapsed_takes_the_part_once(make_gateway, redis):
    """Should a hold's record lapse before its order's (both live OMS_IDEMPOTENCY_TTL once
    settled), the first replay takes the part and gives it back; it leaves it marked as a
    part of an order that exists, so later replays take nothing."""
    gw = await span_gateway(make_gateway)
    await gw.set_stock(A, {"W1": 5})
    await gw.set_stock(B, {"W1": 5})
    lines = [(A, 1), (B, 1)]
    assert (await buy(gw, "h-1", lines)).status == 201
    cancelled = await gw.client.post("/v1/orders/h-1/cancel", json={"reason": "customer"}, headers=auth("k-ops"))
    assert cancelled.status == 200, await cancelled.text()
    hold = keys.hold("h-1", LAYOUT.of_sku(B))
    await redis.delete(hold)  # as its TTL would
    for _ in range(3):
        replay = await buy(gw, "h-1", lines)
        assert replay.status == 200 and (await replay.json())["status"] == "cancelled", await replay.text()
    assert await redis.hmget(hold, "s", "g", "k") == [b"released", b"1", b"1"]  # taken once, by the first
    assert await levels(gw, A, B) == [(5, 0), (5, 0)]


async def test_holds_a_dead_process_left_are_given_back_and_its_late_primary_is_refused(make_gateway, redis):
    gw = await span_gateway(make_gateway)
    scripts = gw.app[K.SCRIPTS]
    await gw.set_stock(A, {"W1": 5})
    await gw.set_stock(B, {"W1": 5})
    q = LAYOUT.of_sku(B)
    payload, raw, taken = await died_after_its_hold(gw, "dead-1", "u-1", B, 2)
    assert taken[0] == 1 and int(taken[3]) == 1  # the part's first generation
    assert (await gw.stock(B))["available"] == 3
    assert await spans.sweep(scripts, LAYOUT, q, lives=3600) == 0  # not stale yet
    await stale(redis, "dead-1", B)
    assert await spans.sweep(scripts, LAYOUT, q, lives=3600) == 1
    assert (await gw.stock(B))["available"] == 5  # given back
    order = decode_order(orjson.dumps(payload))  # the dead process's reserve, arriving late
    late = await gw.app[K.COALESCER]._primary(order, raw.encode(), "", 0, {LAYOUT.of_sku(A): [0], q: [1]},
                                              LAYOUT.of_sku(A), {q: (taken[1].decode(), True, 1)}, [0])
    assert isinstance(late, BackendDown)  # refused: it counts on the part given back
    assert await levels(gw, A, B) == [(5, 0), (5, 0)]
    for _ in range(3):  # the client's retries within the tombstone's life: the first takes the part
        retry = await gw.post("/v1/orders", payload, auth("k-web"))  # again (generation 2) and the order
        assert retry.status in (200, 201), await retry.text()
    assert await levels(gw, A, B) == [(4, 1), (3, 2)]
    assert await redis.hget(keys.hold("dead-1", q), "g") == b"2"


async def test_two_processes_expire_and_sweep_at_once_and_every_unit_comes_back_once(make_gateway, redis, pg):
    """Two gateways stand for two hosts. Both expire the same orders at once, and both sweep
    the same hold a dead process left. Each order expires once (one order.cancelled event),
    each unit comes back once, and nothing stays held."""
    gws = [await span_gateway(make_gateway, reservation_ttl=1) for _ in range(2)]
    for sku in (A, B, C):
        await gws[0].set_stock(sku, {"W1": 20})
    until = 0.0
    for n in range(8):
        resp = await buy(gws[n % 2], f"x-{n}", [(A, 1), (B, 1), (C, 1)], user=f"u-{n}")
        assert resp.status == 201, await resp.text()
        until = max(until, dt.datetime.fromisoformat((await resp.json())["reserved_until"]).timestamp())
    q = LAYOUT.of_sku(B)
    assert (await died_after_its_hold(gws[0], "dead-2", "u-9", B, 3))[2][0] == 1
    await stale(redis, "dead-2", B)
    assert await levels(gws[0], A, B, C) == [(12, 8), (9, 11), (12, 8)]
    await asyncio.sleep(max(0.0, until - time.time() + 0.05))  # expiry is about time passing
    await asyncio.gather(*(gw.app[K.EXPIRER].expire_due() for gw in gws),
                         *(spans.sweep(gw.app[K.SCRIPTS], LAYOUT, q, lives=3600) for gw in gws))
    await asyncio.gather(*(gw.app[K.EXPIRER].wait_pass() for gw in gws))
    assert await levels(gws[0], A, B, C) == [(20, 0)] * 3
    for p in LAYOUT.all():
        assert await redis.zcard(keys.holds(p)) == 0 and await redis.zcard(keys.remote(p)) == 0
    await asyncio.gather(*(gw.caught_up() for gw in gws))
    events = await pg.fetch("SELECT order_id, count(*) AS n FROM order_events WHERE type = 'order.cancelled' "
                            "GROUP BY order_id")
    assert {r["order_id"]: r["n"] for r in events} == {f"x-{n}": 1 for n in range(8)}
    rows = await pg.fetch("SELECT status, cancel_reason FROM orders WHERE order_id LIKE 'x-%'")
    assert [tuple(r) for r in rows] == [("cancelled", "expired")] * 8
    assert (await reconcile(redis, pg, layout=LAYOUT))["ok"]


async def test_a_dead_attempt_with_another_payload_gives_back_only_its_own_hold(make_gateway, redis):
    """The primary holds the id with a first payload; a process that died took a hold for the
    same id with another payload. The sweep gives that hold back (it used to keep it for
    good, since the primary had an order), and leaves the order, its record's life and its
    own hold alone."""
    gw = await span_gateway(make_gateway)
    for sku in (A, B, C):
        await gw.set_stock(sku, {"W1": 5})
    assert (await buy(gw, "w-1", [(A, 1), (B, 1)])).status == 201
    ttl = await redis.ttl(await gw.order_key("w-1"))
    assert (await died_after_its_hold(gw, "w-1", "u-1", C, 2))[2][0] == 1  # another payload, its own hold
    await stale(redis, "w-1", C)
    assert await spans.sweep(gw.app[K.SCRIPTS], LAYOUT, LAYOUT.of_sku(C), lives=3600) == 1
    assert await levels(gw, A, B, C) == [(4, 1), (4, 1), (5, 0)]
    assert await redis.ttl(await gw.order_key("w-1")) >= ttl - 5  # no tombstone's 30 s
    assert await redis.hget(keys.hold("w-1", LAYOUT.of_sku(B)), "s") == b"held"
    assert (await buy(gw, "w-1", [(A, 1), (B, 1)])).status == 200


async def test_a_committed_order_keeps_its_holds_and_a_lost_status_is_caught_up(make_gateway, redis, pg):
    gw = await span_gateway(make_gateway)
    scripts = gw.app[K.SCRIPTS]
    await gw.set_stock(A, {"W1": 5})
    await gw.set_stock(B, {"W1": 5})
    assert (await buy(gw, "c-1", [(A, 1), (B, 2)])).status == 201
    p, q = LAYOUT.of_sku(A), LAYOUT.of_sku(B)
    await redis.zadd(keys.holds(q), {"c-1": 1})  # as if its process died before the commit
    assert await spans.sweep(scripts, LAYOUT, q, lives=3600) == 1
    assert await redis.hget(keys.hold("c-1", q), "s") == b"held" and (await gw.stock(B))["reserved"] == 2
    payload = orjson.loads(await redis.hget(keys.order("c-1", p), "p"))
    ks, args = transition_call("c-1", payload, "cancel", {"reason": "ops"}, reason="ops", record_ttl=3600,
                               p=p, layout=LAYOUT)
    await scripts.call("transition", ks, args)  # cancelled, then the process died before its holds heard
    assert await levels(gw, A, B) == [(5, 0), (3, 2)]
    await redis.zadd(keys.remote(p), {"c-1": 1})
    assert await spans.sweep(scripts, LAYOUT, p, lives=3600) == 1
    assert await levels(gw, A, B) == [(5, 0), (5, 0)]
    await gw.caught_up()
    assert (await reconcile(redis, pg, layout=LAYOUT))["ok"]


async def test_many_buyers_of_an_order_over_two_partitions_never_oversell_either(make_gateway, redis, pg):
    gw = await span_gateway(make_gateway)
    await gw.set_stock(A, {"W1": 30})
    await gw.set_stock(B, {"W1": 50})
    answers = await asyncio.gather(*(buy(gw, f"m-{n}", [(A, 1), (B, 1)], f"u-{n}") for n in range(100)))
    assert sum(r.status == 201 for r in answers) == 30 and {r.status for r in answers} == {201, 409}
    assert await levels(gw, A, B) == [(0, 30), (20, 30)]  # no hold left behind by the 70 refused
    await gw.caught_up()
    assert (await reconcile(redis, pg, layout=LAYOUT))["ok"]


async def test_redis_rebuilt_puts_the_holds_back_and_a_cancel_still_frees_every_part(make_gateway, redis, pg):
    gw = await span_gateway(make_gateway)
    await gw.set_stock(A, {"W1": 5})
    await gw.set_stock(B, {"W1": 5})
    assert (await buy(gw, "r-1", [(A, 2), (B, 3)])).status == 201
    await gw.caught_up()
    await redis.flushall()
    await gw.app[K.WRITER].ensure_group()
    await rebuild(redis, pg, idempotency_ttl=86400, layout=LAYOUT)
    assert await levels(gw, A, B) == [(3, 2), (2, 3)]
    assert (await buy(gw, "r-1", [(A, 2), (B, 3)])).status == 200
    resp = await gw.client.post("/v1/orders/r-1/cancel", json={"reason": "ops"}, headers=auth("k-ops"))
    assert resp.status == 200, await resp.text()
    assert await levels(gw, A, B) == [(5, 0), (5, 0)]
    await gw.caught_up()
    assert (await reconcile(redis, pg, layout=LAYOUT))["ok"]


async def test_the_same_order_sent_twice_at_once_by_two_gateways_is_one_order_with_its_holds(make_gateway, redis):
    gws = [await span_gateway(make_gateway), await span_gateway(make_gateway)]
    await gws[0].set_stock(A, {"W1": 50})
    await gws[0].set_stock(B, {"W1": 50})
    await gws[0].set_stock(C, {"W1": 50})
    lines = [(A, 1), (B, 1), (C, 1)]
    answers = await asyncio.gather(*(buy(gws[n % 2], f"t-{n // 4}", lines) for n in range(40)))
    assert {r.status for r in answers} <= {200, 201, 503}
    assert sum(r.status == 201 for r in answers) == 10  # one order per id
    assert await levels(gws[0], A, B, C) == [(40, 10)] * 3  # each holds its units once, none lost
    for sku in (B, C):
        assert await redis.zcard(keys.holds(LAYOUT.of_sku(sku))) == 0
