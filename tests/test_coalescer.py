"""The coalescer: concurrent orders share script calls, survive a script cache flush, shed load."""

from __future__ import annotations

import asyncio
from collections import Counter

from gateway.models import decode_order
from gateway.web import appkeys as K
from tests.conftest import auth, order_body


async def test_concurrent_orders_are_coalesced_into_few_batches(gw):
    await gw.set_stock("SKU-1", {"W1": 1000})
    coalescer = gw.app[K.COALESCER]
    before = coalescer.batches
    resps = await asyncio.gather(*(gw.post("/v1/orders", order_body(f"c-{i}")) for i in range(300)))
    assert Counter(r.status for r in resps) == {201: 300}
    assert coalescer.batches - before < 300
    assert coalescer.in_flight == 0


async def test_flushed_script_cache_is_reloaded(gw, redis):
    await gw.set_stock("SKU-1", {"W1": 5})
    await redis.script_flush()
    resp = await gw.post("/v1/orders", order_body("ns-1"))
    assert resp.status == 201
    await redis.script_flush()
    resp = await gw.client.put("/v1/inventory/SKU-1", json={"warehouses": {"W1": 9}}, headers=auth("k-ops"))
    assert resp.status == 200
    assert (await resp.json())["available"] == 8


async def test_overload_answers_503_with_retry_after_and_reserves_nothing_for_those(make_gateway):
    gw = await make_gateway(max_in_flight=5)
    await gw.set_stock("SKU-1", {"W1": 1000})
    resps = await asyncio.gather(*(gw.post("/v1/orders", order_body(f"o-{i}")) for i in range(200)))
    by_status = Counter(r.status for r in resps)
    assert set(by_status) <= {201, 503}
    assert by_status[503] > 0
    shed = [r for r in resps if r.status == 503]
    assert all(r.headers["Retry-After"] == "1" for r in shed)
    assert {(await r.json())["code"] for r in shed} == {"overloaded"}
    assert (await gw.stock("SKU-1"))["reserved"] == by_status[201]


async def test_close_answers_every_queued_order(make_gateway):
    gw = await make_gateway()
    await gw.set_stock("SKU-1", {"W1": 100})
    coalescer = gw.app[K.COALESCER]
    futures = []
    for i in range(50):
        o = decode_order(f'{{"order_id":"q-{i}","user_id":"u","channel":"web","items":[{{"sku":"SKU-1","qty":1}}]}}'.encode())
        futures.append(coalescer.submit(o))
    await coalescer.close()
    results = await asyncio.gather(*futures)
    assert [status for status, _ in results] == [201] * 50
    assert (await gw.stock("SKU-1"))["reserved"] == 50
