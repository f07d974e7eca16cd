"""Reconciliation: Redis stock agrees with PostgreSQL after real traffic; drift made by hand is
found with its numbers and repaired from PostgreSQL, never into negative availability; the
endpoints and `python -m gateway reconcile` answer as documented."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import keys
from gateway.ops.reconcile import reconcile, repair
from gateway.web import appkeys as K
from tests.conftest import as_user, auth, order_body

ROOT = Path(__file__).resolve().parents[1]


async def ok(resp) -> dict[str, Any]:
    assert resp.status in (200, 201), await resp.text()
    return await resp.json()


async def workload(gw) -> None:
    """Set stock, take orders (one split over two warehouses), pay, ship, cancel pending and paid, adjust."""
    await gw.set_stock("SKU-A", {"W1": 10, "W2": 6})
    await gw.set_stock("SKU-B", {"W1": 4})
    for order_id, items in [("r-1", [("SKU-A", 3)]), ("r-2", [("SKU-A", 2), ("SKU-B", 1)]),
                            ("r-3", [("SKU-A", 8)]), ("r-4", [("SKU-B", 2)]), ("r-5", [("SKU-A", 1)])]:
        await ok(await gw.post("/v1/orders", order_body(order_id, items=[{"sku": s, "qty": q} for s, q in items])))
    for order_id in ("r-1", "r-2", "r-3"):
        await ok(await gw.post(f"/v1/orders/{order_id}/payment", {"payment_id": f"p-{order_id}", "amount": 0},
                               auth("k-pay")))
    await ok(await gw.post("/v1/orders/r-1/ship", {}, auth("k-ops")))
    await ok(await gw.post("/v1/orders/r-4/cancel", {"reason": "ops"}, auth("k-ops")))
    await ok(await gw.post("/v1/orders/r-2/cancel", {"reason": "ops"}, auth("k-ops")))
    await ok(await gw.post("/v1/inventory/SKU-A/adjust", {"warehouse": "W2", "delta": 5, "reason": "recount"},
                           auth("k-ops")))
    await ok(await gw.post("/v1/inventory/SKU-B/adjust", {"warehouse": "W1", "delta": -1, "reason": "damaged"},
                           auth("k-ops")))
    await gw.caught_up()


@pytest.fixture
async def traffic(gw) -> dict[str, dict[str, Any]]:
    """The workload's per-warehouse stock views in Redis, by SKU."""
    await workload(gw)
    return {sku: (await gw.stock(sku))["warehouses"] for sku in ("SKU-A", "SKU-B")}


def view(on_hand: int, reserved: int) -> dict[str, int]:
    return {"on_hand": on_hand, "reserved": reserved, "available": on_hand - reserved}


def shifted(w: dict[str, int], available: int = 0, reserved: int = 0) -> dict[str, int]:
    return view(w["on_hand"] + available + reserved, w["reserved"] + reserved)


async def cli(backends, *args: str) -> tuple[int, dict[str, Any]]:
    """Run `python -m gateway reconcile ...` against the test servers; (exit code, printed JSON)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")}
    env.update(OMS_DATABASE_URL=backends.database_url, OMS_REDIS_URL=backends.redis_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "reconcile", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode in (0, 1), err.decode()
    return proc.returncode, orjson.loads(out)


async def test_mixed_workload_reconciles_without_drift(traffic, redis, pg):
    # paid r-3 (8) and pending r-5 (1) hold stock; shipped, cancelled and refunding orders do not
    assert sum(w["reserved"] for w in traffic["SKU-A"].values()) == 9
    report = await reconcile(redis, pg)
    assert report == {"ok": True, "lagging": False, "checked": 3, "drift": [], "conservation": [], "quarantined": []}


async def test_order_landing_between_the_two_reads_is_not_taken_for_drift(gw, redis, pg):
    """An order reserved after PostgreSQL was read but before Redis was: the comparison starts over."""
    await gw.set_stock("SKU-1", {"W1": 10})
    await gw.caught_up()
    async with pg.acquire() as blocker, blocker.transaction():
        await blocker.execute("LOCK TABLE allocations IN ACCESS EXCLUSIVE MODE")
        check = asyncio.create_task(reconcile(redis, pg, wait=20))
        while not await blocker.fetchval(  # nothing to await: poll until its read waits on the lock
                "SELECT count(*) FROM pg_locks WHERE relation = 'allocations'::regclass AND NOT granted"):
            await asyncio.sleep(0.01)
        await ok(await gw.post("/v1/orders", order_body("between")))
    report = await check
    assert report == {"ok": True, "lagging": False, "checked": 1, "drift": [], "conservation": [], "quarantined": []}
    assert (await gw.stock("SKU-1"))["reserved"] == 1


async def test_hand_made_drift_is_found_with_its_numbers_and_repaired(traffic, gw, redis, pg):
    a, b = traffic["SKU-A"], traffic["SKU-B"]
    await redis.hincrby(keys.stock("SKU-A"), "W1", 3)
    await redis.hset(keys.stock("SKU-A"), "r:W2", a["W2"]["reserved"] + 4)
    await redis.hset(keys.stock("SKU-A"), "W9", 4)
    await redis.delete(keys.stock("SKU-B"))

    report = await reconcile(redis, pg)
    expected = [
        {"sku": "SKU-A", "warehouse": "W1", "redis": shifted(a["W1"], available=3), "postgres": a["W1"]},
        {"sku": "SKU-A", "warehouse": "W2", "redis": shifted(a["W2"], reserved=4), "postgres": a["W2"]},
        {"sku": "SKU-A", "warehouse": "W9", "redis": view(4, 0), "postgres": view(0, 0)},
        {"sku": "SKU-B", "warehouse": "W1", "redis": view(0, 0), "postgres": b["W1"]},
    ]
    assert report == {"ok": False, "lagging": False, "checked": 4, "drift": expected, "conservation": [],
                      "quarantined": []}

    fixed = await repair(redis, pg, gw.app[K.SCRIPTS])
    assert fixed == {"ok": True, "lagging": False, "refused": [], "repaired": [
        {"sku": d["sku"], "warehouse": d["warehouse"], "before": d["redis"], "after": d["postgres"]} for d in expected]}
    assert (await reconcile(redis, pg))["ok"]
    # W9 came by hand, not through the API: no warehouse entry, so nothing allocates from it
    assert (await gw.stock("SKU-A"))["warehouses"] == {**a, "W9": {**view(0, 0), "active": False}}
    assert (await gw.stock("SKU-B"))["warehouses"] == b


async def test_orders_after_repair_cannot_oversell(traffic, gw, redis, pg):
    await redis.delete(keys.stock("SKU-B"))
    await redis.hincrby(keys.stock("SKU-A"), "W2", 50)
    assert (await repair(redis, pg, gw.app[K.SCRIPTS]))["ok"]
    left = (await gw.stock("SKU-B"))["available"]
    assert left > 0
    too_many = await gw.post("/v1/orders", order_body("after-1", items=[{"sku": "SKU-B", "qty": left + 1}]))
    assert too_many.status == 409
    assert (await too_many.json())["code"] == "insufficient_stock"
    await ok(await gw.post("/v1/orders", order_body("after-2", items=[{"sku": "SKU-B", "qty": left}])))
    a_left = (await gw.stock("SKU-A"))["available"]
    short = await gw.post("/v1/orders", order_body("after-3", items=[{"sku": "SKU-A", "qty": a_left + 1}]))
    assert short.status == 409
    stock = await gw.stock("SKU-B")
    assert stock["available"] == 0 and stock["reserved"] == left
    await gw.caught_up()
    assert (await reconcile(redis, pg))["ok"]


async def test_postgres_reserved_above_on_hand_is_reported_and_its_key_left_alone(traffic, gw, redis, pg):
    wh, held = next((wh, w["reserved"]) for wh, w in traffic["SKU-A"].items() if w["reserved"] > 0)
    await pg.execute("UPDATE inventory SET on_hand = $1 WHERE sku = 'SKU-A' AND warehouse = $2", held - 1, wh)
    await redis.hincrby(keys.stock("SKU-A"), "W2" if wh == "W1" else "W1", 2)  # fixable on its own
    await redis.hincrby(keys.stock("SKU-B"), "W1", 2)  # another SKU: still repaired
    sku_a_before = await redis.hgetall(keys.stock("SKU-A"))

    report = await reconcile(redis, pg)
    assert report["conservation"] == [
        {"sku": "SKU-A", "warehouse": wh, "store": "postgres", **view(held - 1, held)}]
    assert {(d["sku"], d["warehouse"]) for d in report["drift"]} == {("SKU-A", "W1"), ("SKU-A", "W2"),
                                                                     ("SKU-B", "W1")}

    fixed = await repair(redis, pg, gw.app[K.SCRIPTS])
    assert not fixed["ok"]
    assert [(d["sku"], d["warehouse"]) for d in fixed["repaired"]] == [("SKU-B", "W1")]
    assert {(d["sku"], d["warehouse"], d["reason"]) for d in fixed["refused"]} == {
        ("SKU-A", "W1", "postgres_negative_available"), ("SKU-A", "W2", "postgres_negative_available")}
    assert await redis.hgetall(keys.stock("SKU-A")) == sku_a_before
    after = await reconcile(redis, pg)
    assert [(d["sku"], d["warehouse"]) for d in after["drift"]] == [("SKU-A", "W1"), ("SKU-A", "W2")]
    assert not [c for c in after["conservation"] if c["store"] == "redis"]


async def test_lagging_writer_is_reported_and_repair_refuses_to_act(make_gateway, redis, pg):
    gw = await make_gateway(run_writer=False)
    await gw.set_stock("SKU-1", {"W1": 10})
    await ok(await gw.post("/v1/orders", order_body("lag-1")))
    before = await redis.hgetall(keys.stock("SKU-1"))

    report = await reconcile(redis, pg, wait=0.2)
    assert report["lagging"] and not report["ok"]
    assert report["drift"] == [{"sku": "SKU-1", "warehouse": "W1", "redis": view(10, 1), "postgres": view(0, 0)}]

    fixed = await repair(redis, pg, gw.app[K.SCRIPTS], wait=0.2)
    assert fixed["lagging"] and fixed["repaired"] == []
    assert [d["reason"] for d in fixed["refused"]] == ["lagging"]
    assert await redis.hgetall(keys.stock("SKU-1")) == before


async def test_repair_script_writes_nothing_when_any_warehouse_moved_or_would_go_negative(gw, redis):
    await gw.set_stock("SKU-1", {"W1": 10, "W2": 5})
    scripts, key = gw.app[K.SCRIPTS], keys.stock("SKU-1")
    before = await redis.hgetall(key)
    stale = await scripts.call("repair", [key], ["W1", 10, 0, 7, 0, "W2", 4, 0, 5, 0])
    assert stale == [0, b"W2"]
    negative = await scripts.call("repair", [key], ["W1", 10, 0, 7, 0, "W2", 5, 0, -1, 1])
    assert negative == [2, b"W2"]
    assert await redis.hgetall(key) == before
    assert await scripts.call("repair", [key], ["W1", 10, 0, 7, 1, "W2", 5, 0, 5, 0]) == [1]
    assert await redis.hgetall(key) == {b"W1": b"7", b"r:W1": b"1", b"W2": b"5", b"r:W2": b"0"}


@pytest.mark.parametrize(("headers", "get_status", "repair_status"), [
    (auth("k-ops"), 200, 403),
    (auth("k-admin"), 200, 200),
    (auth("k-web"), 403, 403),
    (auth("k-pay"), 403, 403),
    (as_user("u-1"), 403, 403),
    ({}, 401, 401),
], ids=["ops", "admin", "storefront", "payments", "user", "anonymous"])
async def test_reconciliation_endpoints_are_for_ops_and_repair_for_admin(gw, headers, get_status, repair_status):
    await gw.set_stock("SKU-1", {"W1": 3})
    await gw.caught_up()
    got = await gw.client.get("/v1/reconciliation", headers=headers)
    assert got.status == get_status
    if get_status == 200:
        assert await got.json() == {"ok": True, "lagging": False, "checked": 1, "drift": [], "conservation": [], "quarantined": []}
    fixed = await gw.client.post("/v1/reconciliation/repair", headers=headers)
    assert fixed.status == repair_status
    if repair_status == 200:
        assert await fixed.json() == {"ok": True, "lagging": False, "repaired": [], "refused": []}


async def test_cli_exits_1_on_drift_and_repair_makes_it_exit_0(traffic, backends, redis):
    assert await cli(backends) == (0, {"ok": True, "lagging": False, "checked": 3, "drift": [], "conservation": [], "quarantined": []})
    await redis.hincrby(keys.stock("SKU-B"), "W1", 7)
    code, report = await cli(backends)
    assert code == 1
    assert [(d["sku"], d["warehouse"], d["redis"]["available"] - d["postgres"]["available"])
            for d in report["drift"]] == [("SKU-B", "W1", 7)]
    code, fixed = await cli(backends, "--repair")
    assert code == 0
    assert fixed["repaired"] == [{"sku": "SKU-B", "warehouse": "W1", "before": report["drift"][0]["redis"],
                                  "after": report["drift"][0]["postgres"]}]
    assert (await cli(backends))[0] == 0
