"""``/v1/stats`` says which figures are the answering worker's and which are global."""

from __future__ import annotations

import os

from tests.conftest import auth, order_body


async def stats(gw):
    resp = await gw.client.get("/v1/stats", headers=auth("k-ops"))
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_every_figure_is_named_in_exactly_one_scope(gw):
    body = await stats(gw)
    worker, shared = body["scope"]["worker"], body["scope"]["global"]
    assert set(body) == {"pid", "scope"} | set(worker) | set(shared)
    assert not set(worker) & set(shared)
    assert len(worker) == len(set(worker)) and len(shared) == len(set(shared))
    assert body["pid"] == os.getpid()  # the test server runs in this process


async def test_worker_figures_are_the_answering_workers_and_global_ones_are_shared(make_gateway):
    """Two gateways on the same servers stand for two workers: orders through one move only
    its worker figures, and both read the same global ones."""
    first, second = await make_gateway(), await make_gateway()
    await first.set_stock("SKU-1", {"W1": 10})
    for n in range(3):
        resp = await first.post("/v1/orders", order_body(f"sc-{n}"))
        assert resp.status == 201, await resp.text()
    await first.caught_up()
    await second.caught_up()
    one, two = await stats(first), await stats(second)
    assert one["reserve_batches"] >= 1 and two["reserve_batches"] == 0
    assert {name: one[name] for name in one["scope"]["global"] if name != "skus"} == {
        name: two[name] for name in two["scope"]["global"] if name != "skus"}
    assert [v["sku"] for v in one["skus"]] == [v["sku"] for v in two["skus"]] == ["SKU-1"]
