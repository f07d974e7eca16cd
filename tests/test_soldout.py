"""The sold-out fast path (gateway/soldout.py): after a SKU's last unit, new orders for it
are refused in the process, without Redis, yet nothing the reserve script would accept is
refused once the process heard why: replays (also of orders taken on another process) get
their order, and a restock, a cancellation or an activated warehouse sells again as soon as
its message arrives, on every process; a lost subscription forgets every flag."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Awaitable
from typing import Any

from gateway import keys
from gateway.soldout import restocked
from gateway.web import appkeys as K
from tests.conftest import auth, order_body

OPS = auth("k-ops")


def body(order_id: str, sku: str = "SO-1", qty: int = 1, **extra: Any) -> dict[str, Any]:
    return order_body(order_id, items=[{"sku": sku, "qty": qty}], **extra)


async def buy(gw, order_id: str, sku: str = "SO-1", qty: int = 1, **extra: Any) -> tuple[int, dict[str, Any]]:
    resp = await gw.post("/v1/orders", body(order_id, sku, qty, **extra))
    return resp.status, await resp.json()


def fast(gw) -> int:
    return gw.app[K.COALESCER].sold_out_answers


def memory(gw):
    return gw.app[K.COALESCER].soldout


async def sell_out(gw, sku: str = "SO-1", units: int = 2) -> None:
    """Sell every unit, then have one order refused by the reserve script: the SKU is remembered
    once its holders are read."""
    await gw.set_stock(sku, {"W1": units})
    for n in range(units):
        assert (await buy(gw, f"{sku}-won-{n}", sku))[0] == 201
    status, problem = await buy(gw, f"{sku}-first-refusal", sku)
    assert (status, problem["code"]) == (409, "insufficient_stock")
    await memory(gw).loaded()
    assert memory(gw).holders(sku) == {f"{sku}-won-{n}" for n in range(units)}


async def heard(action: Awaitable[Any], *gws) -> Any:
    """Run ``action``, then wait until every process has read one restock message after it:
    messages arrive in order, so whatever ``action`` published has been heard."""
    result = await action
    for gw in gws:
        memory(gw).forgot.clear()
    await restocked(gws[0].app[K.SCRIPTS].redis, "-")  # no such SKU: a marker
    for gw in gws:
        await asyncio.wait_for(memory(gw).forgot.wait(), 5)
    return result


async def test_orders_after_the_last_unit_are_refused_by_the_fast_path_and_reserve_nothing(gw, redis):
    await sell_out(gw)
    before = fast(gw)
    for n in range(5):
        status, problem = await buy(gw, f"late-{n}", qty=2)
        assert status == 409
        assert problem["code"] == "insufficient_stock"
        assert (problem["sku"], problem["missing"]) == ("SO-1", 2)
    assert fast(gw) - before == 5
    assert not any([await redis.exists(await gw.order_key(f"late-{n}")) for n in range(5)])
    assert (await gw.stock("SO-1"))["warehouses"]["W1"] == {"on_hand": 2, "reserved": 2, "available": 0}
    resp = await gw.client.get("/v1/stats", headers=OPS)
    assert (await resp.json())["sold_out_answers"] == fast(gw)


async def won_before_the_sell_out(seller, refuser, order_id: str) -> dict[str, Any]:
    """``seller`` takes the only unit for ``order_id``, then ``refuser`` refuses the next order
    and remembers the SKU; returns the winning order."""
    await seller.set_stock("SO-1", {"W1": 1})
    status, won = await buy(seller, order_id)
    assert status == 201
    assert (await buy(refuser, f"after-{order_id}"))[0] == 409
    await memory(refuser).loaded()
    assert memory(refuser).remembers("SO-1")
    return won


async def test_a_replay_of_an_order_accepted_before_the_sell_out_gets_its_order_back(gw):
    first = await won_before_the_sell_out(gw, gw, "lucky")
    before = fast(gw)
    status, again = await buy(gw, "lucky")
    assert (status, again) == (200, first)
    status, problem = await buy(gw, "lucky", qty=2)
    assert (status, problem["code"]) == (409, "idempotency_mismatch")
    assert fast(gw) == before  # neither was refused as sold out


async def test_a_restock_on_another_process_sells_again_once_its_message_arrives(make_gateway):
    a, b = await make_gateway(), await make_gateway()
    await sell_out(b)
    resp = await heard(a.client.post("/v1/inventory/SO-1/adjust",
                                     json={"warehouse": "W1", "delta": 3, "reason": "receipt"}, headers=OPS), b)
    assert resp.status == 200
    statuses = [(await buy(b, f"after-{n}"))[0] for n in range(4)]
    assert statuses == [201, 201, 201, 409]


async def test_a_replay_on_another_process_of_an_order_taken_before_the_sell_out_gets_its_order(make_gateway):
    """B never saw the order: it knows it from the SKU's holders in Redis."""
    a, b = await make_gateway(), await make_gateway()
    first = await won_before_the_sell_out(a, b, "lucky-on-a")
    assert (await buy(b, "lucky-on-a")) == (200, first)
    assert (await buy(b, "another-on-b"))[0] == 409


async def test_units_that_came_back_without_a_restock_message_sell_once_the_flag_lapses(gw, redis):
    """A lost message costs at most ``ttl`` seconds of refusals, never stranded units."""
    memory(gw).ttl = 0.5
    await sell_out(gw)
    await redis.hincrby(keys.stock("SO-1", gw.layout.of_sku("SO-1")), "W1", 1)  # no publish: as if the message was lost
    await asyncio.sleep(0.6)  # the lapse is a time, there is no event to await
    assert not memory(gw).remembers("SO-1")
    assert (await buy(gw, "still-sells"))[0] == 201


async def test_a_sku_with_more_holders_than_the_limit_is_not_remembered_but_still_refused(gw, redis):
    """A long seller's holders are not read every second: its refusals stay with the reserve script."""
    memory(gw).limit = 1
    await gw.set_stock("SO-1", {"W1": 2})
    for n in range(2):
        assert (await buy(gw, f"long-{n}"))[0] == 201
    before = fast(gw)
    for n in range(3):
        assert (await buy(gw, f"refused-{n}"))[0] == 409
        await memory(gw).loaded()
    assert not memory(gw).remembers("SO-1")
    assert fast(gw) == before
    assert not any([await redis.exists(await gw.order_key(f"refused-{n}")) for n in range(3)])


async def test_holders_that_outlived_their_record_are_trimmed(gw, redis):
    await redis.zadd(keys.holders("SO-1", gw.layout.of_sku("SO-1")), {"long-gone": 1})
    await sell_out(gw)
    assert await redis.zscore(keys.holders("SO-1", gw.layout.of_sku("SO-1")), "long-gone") is None
    lives = await redis.ttl(await gw.order_key("SO-1-won-0"))
    score = await redis.zscore(keys.holders("SO-1", gw.layout.of_sku("SO-1")), "SO-1-won-0")
    assert abs(score / 1000 - (await redis.time())[0] - lives) < 5


async def test_a_cancelled_order_gives_its_unit_to_the_next_buyer(gw):
    await sell_out(gw, units=1)
    resp = await heard(gw.client.post("/v1/orders/SO-1-won-0/cancel", json={"reason": "customer"}, headers=OPS),
                       gw)
    assert resp.status == 200, await resp.text()
    assert (await buy(gw, "next-buyer"))[0] == 201
    assert (await buy(gw, "one-too-many"))[0] == 409


async def test_the_restock_message_makes_every_process_forget(make_gateway):
    a, b = await make_gateway(), await make_gateway()
    await sell_out(b)
    soldout = b.app[K.COALESCER].soldout
    soldout.forgot.clear()
    await a.set_stock("SO-1", {"W1": 5})
    await asyncio.wait_for(soldout.forgot.wait(), 5)  # the message, on B's own subscription
    assert not soldout.remembers("SO-1")
    before = fast(b)
    assert (await buy(b, "after-restock"))[0] == 201
    assert fast(b) == before


async def test_a_warehouse_activated_on_another_process_is_sold_from(make_gateway):
    a, b = await make_gateway(), await make_gateway()
    resp = await a.client.put("/v1/warehouses/W9", json={"priority": 5, "active": False}, headers=OPS)
    assert resp.status in (200, 201), await resp.text()
    await a.set_stock("SO-1", {"W9": 2})
    await sell_out(b, units=1)  # W1: 1 unit, W9 inactive
    resp = await heard(a.client.put("/v1/warehouses/W9", json={"priority": 5, "active": True}, headers=OPS), b)
    assert resp.status == 200
    status, order = await buy(b, "from-w9")
    assert status == 201, order
    assert order["allocations"] == [{"sku": "SO-1", "warehouse": "W9", "qty": 1}]


async def test_redis_restarted_without_its_data_answers_503_not_sold_out(gw, redis):
    """A restart drops every subscription, and a process that lost its subscription forgets
    every flag: what it remembered came from the Redis that is gone."""
    await sell_out(gw)
    memory(gw).forgot.clear()
    await redis.delete(*[keys.ready(p) for p in gw.layout.all()])
    await redis.client_kill_filter(_type="pubsub")
    await asyncio.wait_for(memory(gw).forgot.wait(), 5)
    assert not memory(gw).remembers("SO-1")
    status, problem = await buy(gw, "during-loss")
    assert (status, problem["code"]) == (503, "not_ready")


async def test_a_rebuild_makes_every_process_forget_before_it_starts(gw, redis):
    await sell_out(gw)
    await heard(restocked(redis), gw)  # what gateway/ops/rebuild.py publishes once the marker is gone
    assert not memory(gw).remembers("SO-1")


async def test_an_order_with_a_sold_out_line_takes_nothing_from_its_other_lines(gw):
    await sell_out(gw)
    await gw.set_stock("SO-2", {"W1": 4})
    order = order_body("mixed", items=[{"sku": "SO-2", "qty": 1}, {"sku": "SO-1", "qty": 1}])
    resp = await gw.post("/v1/orders", order)
    problem = await resp.json()
    assert (resp.status, problem["code"], problem["sku"]) == (409, "insufficient_stock", "SO-1")
    assert (await gw.stock("SO-2"))["available"] == 4


async def test_buyers_racing_restocks_on_two_processes_oversell_nothing_and_strand_nothing(make_gateway):
    """200 buyers split over two processes while 3 restocks of 10 units land during the rush:
    every accepted order holds a unit, and whatever the processes remembered when, every unit
    left over can still be bought."""
    a, b = await make_gateway(), await make_gateway()
    await a.set_stock("SO-1", {"W1": 10})

    async def restock() -> None:
        for _ in range(3):
            await asyncio.sleep(0)  # let a share of the buyers in between restocks
            resp = await a.client.post("/v1/inventory/SO-1/adjust",
                                       json={"warehouse": "W1", "delta": 10, "reason": "receipt"}, headers=OPS)
            assert resp.status == 200

    results = await heard(asyncio.gather(*(buy(a if n % 2 else b, f"rush-{n}") for n in range(200)), restock()),
                          a, b)
    statuses = Counter(status for status, _ in results[:-1])
    assert statuses[201] + statuses[409] == 200
    stock = await a.stock("SO-1")
    assert (stock["on_hand"], stock["reserved"]) == (40, statuses[201])
    left = [await buy(a if n % 2 else b, f"late-{n}") for n in range(stock["available"] + 2)]
    assert [s for s, _ in left] == [201] * stock["available"] + [409, 409]


async def test_refusals_leave_no_reference_cycles_for_the_collector(gw):
    """A 409 must be freed by reference counting: cyclic garbage is freed only by a collection,
    which paused a worker ~30 ms per 2,000 refusals (the reserve script's refusal, set on a
    future the handler's frame holds, raised there: exception -> traceback -> frame -> future)."""
    await gw.set_stock("SO-1", {"W1": 5})
    gc.collect()
    gc.disable()
    try:
        for n in range(50):  # 10 of 5 units: refused by the reserve script, and not sold out
            assert (await buy(gw, f"cycle-{n}", qty=10))[0] == 409
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = Counter(type(o).__name__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not memory(gw).remembers("SO-1")
    assert left["InsufficientStock"] == 0, left.most_common(10)
    assert left["frame"] < 10, left.most_common(10)
