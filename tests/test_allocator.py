"""The allocator: strategies and the split policy by hand, and the reserve script against the
Python reference on thousands of random stock layouts (differential testing)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allocator import Warehouse, plan, preference
from gateway import keys
from gateway.coalescer import reserve_call
from gateway.inventory import WarehouseCache
from gateway.models import decode_order, encode
from gateway.sales import SaleCache
from gateway.scripts import Scripts
from tests.conftest import auth, order_body

W = [Warehouse("A", 2, "east"), Warehouse("B", 1, "west"), Warehouse("C", 1, "east"),
     Warehouse("D", 3, None, active=False)]


def test_priority_lower_number_first_ties_by_id_inactive_never():
    assert preference(W, "priority") == ("B", "C", "A")


def test_region_first_then_priority():
    assert preference(W, "region", "east") == ("C", "A", "B")
    assert preference(W, "region", None) == ("B", "C", "A")


def test_single_warehouse_for_the_whole_order_when_one_can():
    got, short = plan([2, 1], [[("B", 5), ("A", 9)], [("B", 0), ("A", 1)]])
    assert short is None
    assert got == [[("A", 2)], [("A", 1)]]


def test_each_line_whole_from_one_warehouse_preferring_one_already_used():
    # No warehouse fills every line; line 3 could come from C (first) or A, and A is already used.
    got, _ = plan([3, 2, 1], [[("B", 1), ("A", 3), ("C", 0)], [("B", 2), ("A", 1), ("C", 0)],
                              [("C", 1), ("A", 1), ("B", 0)]])
    assert got == [[("A", 3)], [("B", 2)], [("A", 1)]]


def test_split_in_candidate_order_when_no_single_warehouse_can():
    got, _ = plan([5], [[("B", 2), ("A", 2), ("C", 4)]])
    assert got == [[("B", 2), ("A", 2), ("C", 1)]]


def test_max_stock_takes_from_the_fullest_first():
    got, _ = plan([3], [[("B", 3), ("A", 7)]], max_stock=True)
    assert got == [[("A", 3)]]


def test_short_line_names_the_missing_units():
    assert plan([4, 9], [[("A", 5)], [("A", 3), ("B", 5)]]) == (None, (1, 1))


WAREHOUSES = ["W1", "W2", "W3", "W4"]
layouts = st.lists(st.dictionaries(st.sampled_from(WAREHOUSES), st.integers(0, 6), max_size=4),
                   min_size=1, max_size=4)


@pytest.fixture
async def engine(redis):
    scripts = Scripts(redis)
    await scripts.load()
    cache, sales = WarehouseCache(redis), SaleCache(redis)
    await redis.set(keys.ready(), "1")
    await redis.hset(keys.warehouses(), mapping={"W1": "2|east|1", "W2": "1|west|1", "W3": "1|east|1",
                                                 "W4": "5||1"})
    await cache.load()
    return redis, scripts, cache, sales


@pytest.mark.slow
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stock=layouts, qtys=st.lists(st.integers(1, 9), min_size=4, max_size=4),
       strategy=st.sampled_from(["priority", "region", "max_stock"]), region=st.sampled_from(["east", "west"]))
async def test_reserve_script_matches_the_reference(engine, stock, qtys, strategy, region):
    redis, scripts, cache, sales = engine
    await redis.delete(*(keys.stock(f"S{j}") for j in range(4)), keys.order("o"))
    for j, layout in enumerate(stock):
        if layout:
            await redis.hset(keys.stock(f"S{j}"), mapping=layout)
    items = [{"sku": f"S{j}", "qty": qtys[j]} for j in range(len(stock))]
    order = decode_order(orjson.dumps(order_body("o", items=items, ship_to={"region": region})))
    ks, args = reserve_call([(order, encode(order), "")], cache, sales, strategy, 60_000, 60)
    reply = (await scripts.call("reserve", ks, args))[2]

    pref = cache.order(strategy, region)
    cands = [[(wh, stock[j].get(wh, 0)) for wh in pref] for j in range(len(stock))]
    expected, short = plan([i["qty"] for i in items], cands, strategy == "max_stock")
    if short is not None:
        assert [int(reply[0]), int(reply[1]), int(reply[2])] == [4, *short]
        return
    assert int(reply[0]) == 1
    groups = reply[1].decode().split(";")
    got = [[(p.split("=")[0], int(p.split("=")[1])) for p in g.split(",")] for g in groups]
    assert got == expected
    for j, takes in enumerate(expected):
        after = {k.decode(): int(v) for k, v in (await redis.hgetall(keys.stock(f"S{j}"))).items()}
        for wh, take in takes:
            assert after[wh] == stock[j][wh] - take
            assert after["r:" + wh] == take


async def test_plan_matches_what_the_next_order_gets(gw):
    for wid, prio, region in (("W1", 2, "east"), ("W2", 1, "west"), ("W3", 3, "east")):
        resp = await gw.client.put(f"/v1/warehouses/{wid}", json={"priority": prio, "region": region},
                                   headers=auth("k-ops"))
        assert resp.status == 201
    await gw.set_stock("A", {"W1": 3, "W2": 1, "W3": 5})
    await gw.set_stock("B", {"W1": 2, "W3": 2})
    items = [{"sku": "A", "qty": 4}, {"sku": "B", "qty": 2}]
    for strategy in ("priority", "region", "max_stock"):
        plan_resp = await gw.client.post("/v1/allocations/plan", headers=auth("k-ops"), json={
            "items": items, "ship_to": {"region": "east"}, "strategy": strategy})
        assert plan_resp.status == 200
        planned = await plan_resp.json()
        assert planned["unfilled"] == []
        stock_before = await gw.stock("A")
        await gw.client.put("/v1/sales/s-" + strategy, headers=auth("k-ops"), json={
            "skus": ["A", "B"], "starts_at": "2020-01-01T00:00:00Z", "ends_at": "2100-01-01T00:00:00Z",
            "per_user_limit": 100, "strategy": strategy})
        order = await (await gw.post("/v1/orders", order_body(f"o-{strategy}", items=items,
                                                              sale_id="s-" + strategy,
                                                              ship_to={"region": "east"}))).json()
        assert order["allocations"] == planned["allocations"], strategy
        assert (await gw.stock("A"))["available"] == stock_before["available"] - 4
        await gw.client.post(f"/v1/orders/o-{strategy}/cancel", json={"reason": "ops"}, headers=auth("k-ops"))


async def test_plan_names_unfilled_lines_and_reserves_nothing(gw):
    await gw.set_stock("A", {"W1": 3})
    resp = await gw.client.post("/v1/allocations/plan", headers=auth("k-ops"), json={
        "items": [{"sku": "A", "qty": 2}, {"sku": "Z", "qty": 4}]})
    assert await resp.json() == {"allocations": [{"sku": "A", "warehouse": "W1", "qty": 2}],
                                 "unfilled": [{"sku": "Z", "qty": 4}]}
    assert (await gw.stock("A"))["available"] == 3
    assert (await gw.client.post("/v1/allocations/plan", headers=auth("k-web"),
                                 json={"items": [{"sku": "A", "qty": 1}]})).status == 403
    bad = await gw.client.post("/v1/allocations/plan", headers=auth("k-ops"),
                               json={"items": [{"sku": "A", "qty": 1}], "strategy": "random"})
    assert bad.status == 422
