"""Hot-SKU stock buckets (``OMS_HOT_SKUS``): one SKU over several partitions, every promise kept.

``make test-cluster`` runs this file on the 3-primary cluster too, where the buckets sit on
different primaries.
"""

from __future__ import annotations

import asyncio
import time

from gateway import buckets, keys
from gateway.ops.rebuild import rebuild
from gateway.ops.reconcile import reconcile
from gateway.web import appkeys as K
from tests.conftest import auth, order_body

N, HOT = 4, "s11:tv"
LAYOUT = keys.Partitions(N, ":", ((HOT, N),))
PLACES = LAYOUT.places(HOT)
WINDOW = {"starts_at": "2020-01-01T00:00:00Z", "ends_at": "2190-01-01T00:00:00Z"}


async def hot_gateway(make_gateway, **overrides):
    return await make_gateway(partitions=N, hot_skus=LAYOUT.hot, **overrides)


async def per_bucket(redis, field: str = "W1") -> list[int]:
    return [int(await redis.hget(keys.stock(HOT, p), field) or 0) for p in PLACES]


def users_in(bucket: str, count: int, layout: keys.Partitions = LAYOUT) -> list[str]:
    """``count`` user ids whose orders of the hot SKU go to ``bucket``."""
    found = (f"u-{n}" for n in range(100_000) if layout.target([HOT], f"u-{n}") == bucket)
    return [next(found) for _ in range(count)]


async def order(gw, order_id: str, user: str, qty: int = 1, **extra):
    return await gw.post("/v1/orders", order_body(order_id, user, [{"sku": HOT, "qty": qty}], **extra),
                         auth("k-web"))


async def test_stock_is_spread_over_the_buckets_and_sells_exactly_once(make_gateway, redis, pg):
    gw = await hot_gateway(make_gateway)
    view = await gw.set_stock(HOT, {"W1": 100})
    assert (view["on_hand"], view["available"]) == (100, 100)
    assert await per_bucket(redis) == [25] * N
    answers = await asyncio.gather(*(order(gw, f"h-{n}", f"u-{n}") for n in range(300)))
    accepted = {f"h-{n}" for n, r in enumerate(answers) if r.status == 201}
    assert sorted({r.status for r in answers}) == [201, 409] and len(accepted) == 100  # none oversold
    assert await per_bucket(redis) == [0] * N
    assert sum(await per_bucket(redis, "r:W1")) == 100
    await gw.caught_up()
    assert {r["order_id"] for r in await pg.fetch("SELECT order_id FROM orders")} == accepted
    report = await reconcile(redis, pg, layout=LAYOUT)
    assert report["ok"], report
    ledger = await pg.fetch("SELECT delta, on_hand_after FROM inventory_movements WHERE sku = $1", HOT)
    assert [(r["delta"], r["on_hand_after"]) for r in ledger] == [(100, 100)]  # moves write no ledger rows


async def test_a_bucket_run_dry_pulls_from_the_others_so_no_unit_is_refused(make_gateway, redis):
    gw = await hot_gateway(make_gateway)
    await gw.set_stock(HOT, {"W1": 12})
    await buckets.gather(gw.app[K.SCRIPTS], LAYOUT, HOT)  # every unit in the first bucket
    assert await per_bucket(redis) == [12, 0, 0, 0]
    buyers = users_in(PLACES[1], 6) + users_in(PLACES[3], 6)  # all in buckets that hold nothing
    answers = [await order(gw, f"d-{n}", user) for n, user in enumerate(buyers)]
    assert [r.status for r in answers] == [201] * 12
    late = await order(gw, "d-late", users_in(PLACES[2], 1)[0])
    assert late.status == 409 and (await late.json())["code"] == "insufficient_stock"
    assert sum(await per_bucket(redis)) == 0 and sum(await per_bucket(redis, "r:W1")) == 12


async def test_a_sale_of_the_hot_sku_keeps_each_users_limit_and_counts_every_bucket(make_gateway):
    gw = await hot_gateway(make_gateway)
    put = await gw.client.put("/v1/sales/s11", json={"skus": [HOT], "per_user_limit": 2, **WINDOW},
                              headers=auth("k-ops"))
    assert put.status == 201, await put.text()
    await gw.set_stock(HOT, {"W1": 40})
    greedy = await asyncio.gather(*(order(gw, f"g-{n}", "greedy", sale_id="s11") for n in range(8)))
    assert sorted(r.status for r in greedy) == [201, 201] + [409] * 6
    others = await asyncio.gather(*(order(gw, f"o-{n}", f"u-{n}", sale_id="s11") for n in range(10)))
    assert [r.status for r in others] == [201] * 10
    sale = await (await gw.client.get("/v1/sales/s11", headers=auth("k-ops"))).json()
    assert (sale["sold"], sale["remaining"]) == (12, 28)


async def test_a_cancel_gives_units_back_to_the_bucket_they_came_from(make_gateway, redis):
    gw = await hot_gateway(make_gateway)
    await gw.set_stock(HOT, {"W1": 8})
    user = users_in(PLACES[2], 1)[0]
    assert (await order(gw, "c-1", user, qty=2)).status == 201
    assert await per_bucket(redis) == [2, 2, 0, 2] and await per_bucket(redis, "r:W1") == [0, 0, 2, 0]
    resp = await gw.client.post("/v1/orders/c-1/cancel", json={"reason": "customer"}, headers=auth("k-ops"))
    assert resp.status == 200, await resp.text()
    assert await per_bucket(redis) == [2, 2, 2, 2] and await per_bucket(redis, "r:W1") == [0] * N


async def test_stock_set_lower_takes_back_what_is_free_and_never_what_is_reserved(make_gateway, redis):
    gw = await hot_gateway(make_gateway)
    await gw.set_stock(HOT, {"W1": 20})
    for n, user in enumerate(users_in(PLACES[1], 3)):
        assert (await order(gw, f"s-{n}", user)).status == 201
    view = await gw.set_stock(HOT, {"W1": 9})
    assert (view["on_hand"], view["reserved"], view["available"]) == (9, 3, 6)
    assert sum(await per_bucket(redis)) == 6 and await per_bucket(redis, "r:W1") == [0, 3, 0, 0]
    below = await gw.client.put(f"/v1/inventory/{HOT}", json={"warehouses": {"W1": 2}}, headers=auth("k-ops"))
    assert below.status == 409 and (await below.json())["code"] == "below_reserved"
    assert (await gw.stock(HOT))["on_hand"] == 9


async def test_a_move_cut_short_by_a_dead_process_is_finished_once(make_gateway, redis, pg):
    gw = await hot_gateway(make_gateway)
    scripts = gw.app[K.SCRIPTS]
    await gw.set_stock(HOT, {"W1": 8})
    await gw.caught_up()
    source, to = PLACES[0], PLACES[1]
    taken = await buckets._step(scripts, HOT, source, "out", "t-1", "W1", 2, f"{to}|{HOT}|W1|")  # then it died
    assert taken == 2 and await per_bucket(redis) == [0, 2, 2, 2]
    assert (await gw.stock(HOT))["available"] == 6  # in flight: in no bucket
    report = await reconcile(redis, pg, layout=LAYOUT)
    assert report["ok"], report  # the record holds them
    assert await buckets.recover(scripts, source) == 0  # not stale yet: its process may be alive
    await redis.zadd(keys.transfers(source), {"t-1": int(time.time() * 1000) - buckets.STALE_MS - 1})
    assert await buckets.recover(scripts, source) == 1
    assert await per_bucket(redis) == [0, 4, 2, 2]
    await buckets._step(scripts, HOT, to, "in", "t-1", "W1", 2)  # the dead process's "in", late: nothing
    assert await buckets.recover(scripts, source) == 0
    assert await per_bucket(redis) == [0, 4, 2, 2] and (await gw.stock(HOT))["available"] == 8


async def test_redis_rebuilt_puts_each_reservation_back_in_its_bucket(make_gateway, redis, pg):
    gw = await hot_gateway(make_gateway)
    await gw.set_stock(HOT, {"W1": 20})
    placed = {p: users_in(p, 1)[0] for p in PLACES}
    for n, user in enumerate(placed.values()):
        assert (await order(gw, f"r-{n}", user, qty=n + 1)).status == 201
    await gw.caught_up()
    before = await gw.stock(HOT)
    await redis.flushall()
    await gw.app[K.WRITER].ensure_group()
    await rebuild(redis, pg, idempotency_ttl=86400, layout=LAYOUT)
    assert await per_bucket(redis, "r:W1") == [1, 2, 3, 4]  # each order's units where its bucket is
    after = await gw.stock(HOT)
    assert {k: after[k] for k in ("on_hand", "reserved", "available")} == \
        {k: before[k] for k in ("on_hand", "reserved", "available")}
    for n in range(N):
        resp = await gw.client.post(f"/v1/orders/r-{n}/cancel", json={"reason": "ops"}, headers=auth("k-ops"))
        assert resp.status == 200, await resp.text()
    assert await per_bucket(redis, "r:W1") == [0] * N and (await gw.stock(HOT))["available"] == 20
    await gw.caught_up()
    assert (await reconcile(redis, pg, layout=LAYOUT))["ok"]


async def test_two_gateways_pulling_from_each_other_sell_every_unit_once_and_lose_none(make_gateway, redis, pg):
    gws = [await hot_gateway(make_gateway), await hot_gateway(make_gateway)]
    await gws[0].set_stock(HOT, {"W1": 60, "W2": 7})
    await buckets.gather(gws[0].app[K.SCRIPTS], LAYOUT, HOT)  # all in one bucket: every other one must pull
    answers = await asyncio.gather(*(order(gws[n % 2], f"p-{n}", f"u-{n}") for n in range(200)))
    assert sum(r.status == 201 for r in answers) == 67 and {r.status for r in answers} == {201, 409}
    available = [int(v) for p in PLACES for f, v in (await redis.hgetall(keys.stock(HOT, p))).items()
                 if not f.startswith(b"r:")]
    assert min(available) >= 0 and sum(available) == 0
    assert sum(await per_bucket(redis, "r:W1")) + sum(await per_bucket(redis, "r:W2")) == 67  # none lost
    assert [await redis.zcard(keys.transfers(p)) for p in PLACES] == [0] * N  # every move finished
    await gws[0].caught_up()
    await gws[1].caught_up()
    assert (await reconcile(redis, pg, layout=LAYOUT))["ok"]


async def test_an_order_across_partitions_pulls_for_its_hot_line_as_a_one_partition_order_does(
        make_gateway, redis, pg):
    """With K < N buckets, a hot line beside a line of another partition makes the order span:
    its hot part, the primary's (hot line first) or a hold (second), pulls when short."""
    layout = keys.Partitions(N, ":", ((HOT, 2),))
    first, second = layout.places(HOT)
    cold = next(f"c{n}:x" for n in range(100) if layout.of_sku(f"c{n}:x") not in (first, second))
    gw = await make_gateway(partitions=N, hot_skus=layout.hot)
    await gw.set_stock(HOT, {"W1": 8})
    await gw.set_stock(cold, {"W1": 20})
    await buckets.gather(gw.app[K.SCRIPTS], layout, HOT)  # every unit in the first bucket
    async def buy(n: int, user: str):
        lines = [HOT, cold] if n % 2 else [cold, HOT]
        return await gw.post("/v1/orders", order_body(f"x-{n}", user, [{"sku": s, "qty": 1} for s in lines]),
                             auth("k-web"))

    answers = [await buy(n, user) for n, user in enumerate(users_in(second, 10, layout))]
    assert [r.status for r in answers] == [201] * 8 + [409] * 2, [await r.text() for r in answers]
    assert {(await r.json())["code"] for r in answers[8:]} == {"insufficient_stock"}
    assert [((v := await gw.stock(s))["available"], v["reserved"]) for s in (HOT, cold)] == [(0, 8), (12, 8)]
    assert await gw.open_holds() == [0] * N  # the refused gave theirs back
    await gw.caught_up()
    assert (await reconcile(redis, pg, layout=layout))["ok"]
