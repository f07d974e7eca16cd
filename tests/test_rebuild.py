"""Rebuilding Redis from PostgreSQL after it lost its data: stock, orders and sales come back as they were."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from gateway import keys
from gateway.ops.rebuild import Refused, rebuild
from gateway.web import appkeys as K
from tests.conftest import LAYOUT_ENV, auth, order_body

ROOT = Path(__file__).resolve().parent.parent
SKUS = ("SKU-1", "SKU-2")


def at(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat()


def sale_order(order_id: str, user: str, qty: int) -> dict:
    return order_body(order_id, user, [{"sku": "SKU-1", "qty": qty}], sale_id="s1")


async def submit(gw, body: dict) -> dict:
    resp = await gw.post("/v1/orders", body)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def act(gw, order_id: str, path: str, body: dict, key: str) -> None:
    resp = await gw.client.post(f"/v1/orders/{order_id}/{path}", json=body, headers=auth(key))
    assert resp.status == 200, (order_id, path, await resp.text())


async def workload(gw) -> dict[str, dict]:
    """Two warehouses, two SKUs, a priced sale, orders in every status; returns the 201 bodies."""
    for wid, priority, region in (("W1", 1, "east"), ("W2", 2, "west")):
        resp = await gw.client.put(f"/v1/warehouses/{wid}", json={"priority": priority, "region": region},
                                   headers=auth("k-ops"))
        assert resp.status == 201
    await gw.set_stock("SKU-1", {"W1": 10, "W2": 10})
    await gw.set_stock("SKU-2", {"W1": 5, "W2": 8})
    sale = {"skus": ["SKU-1"], "starts_at": at(-60), "ends_at": at(3600), "per_user_limit": 3,
            "prices": {"SKU-1": 500}, "currency": "EUR"}
    assert (await gw.client.put("/v1/sales/s1", json=sale, headers=auth("k-ops"))).status == 201
    bodies = {
        "o-pending": order_body("o-pending", "u-1", [{"sku": "SKU-2", "qty": 2}]),
        "o-paid": order_body("o-paid", "u-2", [{"sku": "SKU-1", "qty": 1}, {"sku": "SKU-2", "qty": 1}]),
        "o-shipped": order_body("o-shipped", "u-3", [{"sku": "SKU-2", "qty": 6}]),
        "o-cancelled": order_body("o-cancelled", "u-4", [{"sku": "SKU-1", "qty": 2}]),
        "s-held": sale_order("s-held", "u-9", 3),
        "s-paid": sale_order("s-paid", "u-8", 1),
        "s-cancelled": sale_order("s-cancelled", "u-8", 2),
        "s-refunding": sale_order("s-refunding", "u-7", 2),
        "s-shipped-refund": sale_order("s-shipped-refund", "u-6", 1),
    }
    created = {oid: await submit(gw, body) for oid, body in bodies.items()}
    for oid in ("o-paid", "o-shipped", "s-paid", "s-refunding", "s-shipped-refund"):
        amount = 500 * created[oid]["items"][0]["qty"] if oid.startswith("s-") else 0
        await act(gw, oid, "payment", {"payment_id": f"pay-{oid}", "amount": amount}, "k-pay")
    for oid in ("o-shipped", "s-shipped-refund"):
        await act(gw, oid, "ship", {}, "k-ops")
    await act(gw, "s-shipped-refund", "refund", {}, "k-pay")  # shipped: its units stay sold
    for oid in ("o-cancelled", "s-cancelled", "s-refunding"):  # s-refunding was paid: units given back
        await act(gw, oid, "cancel", {"reason": "ops"}, "k-ops")
    await gw.caught_up()
    return created


async def stock_views(gw) -> dict[str, dict]:
    """The stock part of each SKU's inventory view (the forecast moves with the clock)."""
    views = {sku: await gw.stock(sku) for sku in SKUS}
    return {sku: {k: v[k] for k in ("warehouses", "on_hand", "reserved", "available")} for sku, v in views.items()}


async def sold(gw) -> int:
    resp = await gw.client.get("/v1/sales/s1", headers=auth("k-ops"))
    assert resp.status == 200
    return (await resp.json())["sold"]


async def lose_redis(gw, redis) -> None:
    await redis.flushall()
    await gw.app[K.SCRIPTS].load()
    refused = await gw.post("/v1/orders", order_body("o-during-loss", items=[{"sku": "SKU-1", "qty": 1}]))
    assert refused.status == 503 and (await refused.json())["code"] == "not_ready"


async def run_rebuild(gw, pg, **kwargs) -> dict:
    return await rebuild(gw.app[K.REDIS], pg, idempotency_ttl=gw.app[K.SETTINGS].idempotency_ttl,
                         layout=gw.layout, **kwargs)


async def test_rebuild_restores_stock_and_sale_counts_then_marks_ready(gw, redis, pg):
    await workload(gw)
    before, sold_before = await stock_views(gw), await sold(gw)
    await lose_redis(gw, redis)
    counts = await run_rebuild(gw, pg)
    assert await gw.ready()
    assert await stock_views(gw) == before
    on_hand = {(r["sku"], r["warehouse"]): r["on_hand"] for r in await pg.fetch("SELECT * FROM inventory")}
    for sku, view in before.items():
        for wh, w in view["warehouses"].items():
            assert w["on_hand"] == w["available"] + w["reserved"] == on_hand[(sku, wh)]
    assert await sold(gw) == sold_before == 3 + 1 + 1  # s-held, s-paid, s-shipped-refund
    assert counts == {"warehouses": 2, "sales": 1, "sale_users": 3, "stock": 4, "conservation": [],
                      "orders": 9, "pending": 2}


async def test_rebuilt_orders_can_be_paid_shipped_and_replayed(gw, redis, pg):
    created = await workload(gw)
    await lose_redis(gw, redis)
    await run_rebuild(gw, pg)
    # the holders a sold-out SKU's flag lets through to replay (gateway/soldout.py)
    holders = await redis.zrange(keys.holders("SKU-2", gw.layout.of_sku("SKU-2")), 0, -1)
    assert {m.decode() for m in holders} == {"o-pending", "o-paid", "o-shipped"}
    replay = await gw.post("/v1/orders", order_body("o-pending", "u-1", [{"sku": "SKU-2", "qty": 2}]))
    assert replay.status == 200 and await replay.json() == created["o-pending"]
    stock = await stock_views(gw)
    again = await gw.post("/v1/orders", order_body("o-cancelled", "u-4", [{"sku": "SKU-1", "qty": 2}]))
    assert again.status == 200 and (await again.json())["status"] == "cancelled"
    other = await gw.post("/v1/orders", order_body("o-cancelled", "u-4", [{"sku": "SKU-1", "qty": 1}]))
    assert other.status == 409 and (await other.json())["code"] == "idempotency_mismatch"
    assert await stock_views(gw) == stock  # replays reserved nothing
    await act(gw, "o-pending", "payment", {"payment_id": "pay-late", "amount": 0}, "k-pay")
    await act(gw, "o-paid", "ship", {}, "k-ops")
    assert (await gw.stock("SKU-2"))["warehouses"]["W1"] == {"on_hand": 4, "reserved": 2, "available": 2}


async def test_rebuilt_reservation_still_expires(make_gateway, redis, pg):
    gw = await make_gateway(reservation_ttl=2)
    await gw.set_stock("SKU-1", {"W1": 5})
    order = await submit(gw, order_body("e-1", items=[{"sku": "SKU-1", "qty": 3}]))
    await gw.caught_up()
    await lose_redis(gw, redis)
    counts = await run_rebuild(gw, pg)
    assert counts["pending"] == 1
    assert (await gw.stock("SKU-1"))["available"] == 2
    until = dt.datetime.fromisoformat(order["reserved_until"]).timestamp()
    await asyncio.sleep(max(0.0, until - time.time() + 0.05))  # time passing: nothing to await
    await asyncio.wait_for(gw.app[K.EXPIRER].wait_pass(), 5)
    got = await (await gw.client.get("/v1/orders/e-1", headers=auth("k-ops"))).json()
    assert got["status"] == "cancelled"
    assert (await gw.stock("SKU-1"))["warehouses"]["W1"] == {"on_hand": 5, "reserved": 0, "available": 5}


async def test_rebuilt_sale_keeps_per_user_limits(gw, redis, pg):
    await workload(gw)
    await lose_redis(gw, redis)
    await run_rebuild(gw, pg)
    over = await gw.post("/v1/orders", sale_order("l-1", "u-9", 1))
    assert over.status == 409
    problem = await over.json()
    assert problem["code"] == "limit_exceeded" and problem["held"] == 3 and problem["limit"] == 3
    assert (await gw.post("/v1/orders", sale_order("l-2", "u-8", 2))).status == 201  # s-cancelled gave 2 back
    assert (await gw.post("/v1/orders", sale_order("l-3", "u-8", 1))).status == 409
    assert (await gw.post("/v1/orders", sale_order("l-4", "u-7", 3))).status == 201  # refunded before shipping


async def test_forced_rebuild_drops_counters_postgres_does_not_back(gw, redis, pg):
    await workload(gw)
    p = gw.layout.of_sku("SKU-1")  # the sale's partition
    ghost = keys.sale_user("s1", "ghost", p)
    legacy = keys.sale("s1:u:u-9", p)  # where u-9's units in s1 lived before keys were injective
    for key in (ghost, legacy):
        await redis.hset(key, "units", 2)
    await run_rebuild(gw, pg, force=True)
    assert not await redis.exists(ghost, legacy)
    assert await redis.hget(keys.sale_user("s1", "u-9", p), "units") == b"3"


async def test_flash_sale_after_rebuild_never_oversells(gw, redis, pg):
    await workload(gw)
    await lose_redis(gw, redis)
    await run_rebuild(gw, pg)
    left = (await gw.stock("SKU-1"))["available"]
    reserved = (await gw.stock("SKU-1"))["reserved"]
    assert 0 < left < 100

    async def buy(i: int) -> tuple[int, str | None]:
        resp = await gw.post("/v1/orders", sale_order(f"fs-{i}", f"buyer-{i}", 1))
        return resp.status, (await resp.json()).get("code")

    answers = Counter(await asyncio.gather(*(buy(i) for i in range(100))))
    assert answers == {(201, None): left, (409, "insufficient_stock"): 100 - left}
    stock = await gw.stock("SKU-1")
    assert stock["available"] == 0 and stock["reserved"] == reserved + left
    assert all(w["available"] >= 0 for w in stock["warehouses"].values())
    await gw.caught_up()
    assert await pg.fetchval("SELECT count(*) FROM orders WHERE order_id LIKE 'fs-%'") == left


async def keyspace(redis) -> dict[bytes, object]:
    """Every key with its content, and whether it expires (versions are bumped by design; a
    holder's score is when its record expires, so like a TTL it is only read as present)."""
    dump: dict[bytes, object] = {}
    async for key in redis.scan_iter(match=keys.all_pattern()):
        kind = (await redis.type(key)).decode()
        if keys.parse(key)[0] in ("wh_version", "sale_version") or kind == "stream":
            continue
        read = {"hash": redis.hgetall, "zset": lambda k: redis.zrange(k, 0, -1, withscores=True),
                "set": redis.smembers, "string": redis.get}[kind]
        content = await read(key)
        if keys.parse(key)[0] == "holders":
            content = sorted(member for member, _ in content)
        dump[key] = (content, await redis.ttl(key) > 0)
    return dump


async def test_rebuild_refuses_a_redis_in_service_and_twice_gives_the_same_state(gw, redis, pg):
    await workload(gw)
    live = await keyspace(redis)
    with pytest.raises(Refused, match="in service"):
        await run_rebuild(gw, pg)
    assert await keyspace(redis) == live
    await lose_redis(gw, redis)
    await run_rebuild(gw, pg)
    first = await keyspace(redis)
    await run_rebuild(gw, pg, force=True)
    assert await keyspace(redis) == first
    assert await gw.ready()


async def test_rebuild_refuses_while_events_are_not_in_postgres_yet(make_gateway, redis, pg):
    gw = await make_gateway(run_writer=False)
    await gw.set_stock("SKU-1", {"W1": 5})
    with pytest.raises(Refused, match="not in PostgreSQL yet"):
        await run_rebuild(gw, pg, force=True)
    assert not any(await gw.markers())  # stopped selling: the stream only drains from here
    gw.app[K.WRITER].start()
    await gw.caught_up()
    await run_rebuild(gw, pg)
    assert (await gw.stock("SKU-1"))["available"] == 5


async def test_postgres_reserving_more_than_on_hand_is_reported_and_clamped(gw, redis, pg):
    await gw.set_stock("SKU-1", {"W1": 5})
    await submit(gw, order_body("c-1", items=[{"sku": "SKU-1", "qty": 3}]))
    await gw.caught_up()
    await pg.execute("UPDATE inventory SET on_hand = 2 WHERE sku = 'SKU-1'")
    await lose_redis(gw, redis)
    counts = await run_rebuild(gw, pg)
    assert counts["conservation"] == [{"sku": "SKU-1", "warehouse": "W1", "on_hand": 2, "reserved": 3}]
    assert (await gw.stock("SKU-1"))["warehouses"]["W1"] == {"on_hand": 3, "reserved": 3, "available": 0}


async def cli(backends, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")}
    env.update(OMS_REDIS_URL=backends.redis_url, OMS_DATABASE_URL=backends.database_url, **LAYOUT_ENV)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "rebuild-redis", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_rebuilds_and_refuses_a_second_run_without_force(gw, redis, pg, backends):
    await workload(gw)
    before = await stock_views(gw)
    await lose_redis(gw, redis)
    code, out, err = await cli(backends)
    assert code == 0, err
    assert orjson.loads(out)["pending"] == 2  # stdout is the counts alone, the bar is on stderr
    assert await gw.ready()
    assert await stock_views(gw) == before
    code, _, err = await cli(backends)
    assert code == 2 and "refused" in err and "--force" in err
    code, _, err = await cli(backends, "--force")
    assert code == 0, err
    assert await stock_views(gw) == before
