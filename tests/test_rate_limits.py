"""Rate limits: off by default, 429 ``rate_limited`` with Retry-After per user and per service
key for orders and per key for payments, nothing taken when refused, replays answered, and
a change made while the gateway runs applied at once, across two workers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import aiohttp
import pytest

from gateway import keys, ratelimits
from gateway.ratelimits import Limit
from tests.conftest import ADMIN, as_user, auth, order_body
from tests.test_make_run import ROOT
from tests.test_supervisor import serve, workers_answering  # noqa: F401  (the fixture)

SKU = "RL-1"
SLOW = 0.01  # a token every 100 s: none comes back while a test runs


def line(n: int, user: str = "u-1", sku: str = SKU) -> dict:
    return order_body(f"rl-{user}-{n}", user, [{"sku": sku, "qty": 1}])


async def test_no_limit_by_default_admits_a_burst(gw):
    await gw.set_stock(SKU, {"W1": 100})
    statuses = await asyncio.gather(*(gw.post("/v1/orders", line(n)) for n in range(60)))
    assert [r.status for r in statuses] == [201] * 60


async def test_a_user_over_its_limit_gets_429_and_nothing_is_taken(gw, redis):
    await gw.set_stock(SKU, {"W1": 100})
    await ratelimits.put(redis, "orders:user", Limit(SLOW, 3))
    for n in range(3):
        assert (await gw.post("/v1/orders", line(n), as_user("u-1"))).status == 201
    refused = await gw.post("/v1/orders", line(3), as_user("u-1"))
    body = await refused.json()
    assert (refused.status, body["code"], body["status"]) == (429, "rate_limited", 429)
    assert refused.content_type == "application/problem+json"
    assert 90 <= int(refused.headers["Retry-After"]) <= 100
    assert (await gw.stock(SKU))["available"] == 97  # the refused order took nothing
    assert not await redis.exists(keys.order("rl-u-1-3"))
    # a replay is answered as before, not limited; another user has a bucket of its own
    assert (await gw.post("/v1/orders", line(0), as_user("u-1"))).status == 200
    assert (await gw.post("/v1/orders", line(0, "u-2"), as_user("u-2"))).status == 201
    # the limit is per user_id, whoever sends: the storefront's order for u-1 is refused too
    assert (await gw.post("/v1/orders", line(4), auth("k-web"))).status == 429


async def test_a_change_applies_without_a_restart(gw, redis):
    await gw.set_stock(SKU, {"W1": 100})
    await ratelimits.put(redis, "orders:user", Limit(SLOW, 1))
    assert (await gw.post("/v1/orders", line(0), as_user("u-1"))).status == 201
    assert (await gw.post("/v1/orders", line(1), as_user("u-1"))).status == 429
    await ratelimits.put(redis, "orders:user", None)
    assert (await gw.post("/v1/orders", line(2), as_user("u-1"))).status == 201
    await ratelimits.put(redis, "orders:user", Limit(1000, 1000))
    assert (await gw.post("/v1/orders", line(3), as_user("u-1"))).status == 201


async def test_a_service_key_has_its_own_bucket(gw, redis):
    await gw.set_stock(SKU, {"W1": 100})
    await ratelimits.put(redis, "orders:key", Limit(SLOW, 2))
    web_key, app_key = auth("k-web"), auth("k-app")
    assert [(await gw.post("/v1/orders", line(n, f"w-{n}"), web_key)).status for n in range(3)] == [201, 201, 429]
    app_order = {**line(0, "a-0"), "channel": "app"}
    assert (await gw.post("/v1/orders", app_order, app_key)).status == 201
    # a user's token has no key: the key limit does not apply to it
    assert (await gw.post("/v1/orders", line(9, "u-9"), as_user("u-9"))).status == 201
    # in a batch, each order takes its own token: the storefront's bucket is empty
    batch = await gw.post("/v1/orders/batch", {"orders": [line(5, "w-5")]}, web_key)
    assert (await batch.json())["results"][0]["status"] == 429


async def test_payments_per_key_and_a_repeated_payment_is_still_answered(gw, redis):
    await gw.set_stock(SKU, {"W1": 100})
    for n in range(2):
        assert (await gw.post("/v1/orders", line(n))).status == 201
    await ratelimits.put(redis, "payments:key", Limit(SLOW, 1))
    pay = auth("k-pay")
    first = await gw.post("/v1/orders/rl-u-1-0/payment", {"payment_id": "p-0", "amount": 0}, pay)
    assert first.status == 200
    second = await gw.post("/v1/orders/rl-u-1-1/payment", {"payment_id": "p-1", "amount": 0}, pay)
    assert (second.status, (await second.json())["code"]) == (429, "rate_limited")
    assert int(second.headers["Retry-After"]) >= 1
    order = await (await gw.client.get("/v1/orders/rl-u-1-1", headers=auth("k-ops"))).json()
    assert order["status"] == "pending_payment"  # nothing changed
    again = await gw.post("/v1/orders/rl-u-1-0/payment", {"payment_id": "p-0", "amount": 0}, pay)
    assert again.status == 200  # the payment that happened is answered, limit or not
    # the admin key has a bucket of its own
    assert (await gw.post("/v1/orders/rl-u-1-1/payment", {"payment_id": "p-1", "amount": 0})).status == 200


def test_limits_refuse_what_cannot_be():
    for rate, burst in [(0, 1), (-1, 1), (float("nan"), 1), (float("inf"), 1), (1, 0), (1, 10**7)]:
        with pytest.raises(ValueError):
            Limit(rate, burst)
    assert Limit.decode(Limit(2.5, 10).encode()) == Limit(2.5, 10)


@pytest.mark.slow
async def test_two_workers_share_one_bucket_set_live_by_the_cli(serve, backends):  # noqa: F811
    proc, base = serve
    assert len(await workers_answering(base, 2)) == 2
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")} | {
        "OMS_REDIS_URL": backends.redis_url, "OMS_DATABASE_URL": backends.database_url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "rate-limit", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    bad = await asyncio.to_thread(cli, "set", "orders:user", "--rate", "0")
    assert bad.returncode == 2 and "rate must be" in bad.stderr
    done = await asyncio.to_thread(cli, "set", "orders:user", "--rate", str(SLOW), "--burst", "5")
    assert done.returncode == 0, done.stderr
    assert '"orders:user"' in done.stdout and '"burst": 5' in done.stdout
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.put(base + f"/v1/inventory/{SKU}", json={"warehouses": {"W1": 100}}, headers=ADMIN) as r:
            assert r.status == 200

        async def order(n: int) -> int:  # new connections: both workers take some
            async with http.post(base + "/v1/orders", json=line(n, "bot"), headers=ADMIN) as resp:
                return resp.status

        statuses = await asyncio.gather(*(order(n) for n in range(40)))
        assert sorted(statuses) == [201] * 5 + [429] * 35
        lifted = await asyncio.to_thread(cli, "off", "orders:user")
        assert lifted.returncode == 0 and lifted.stdout.strip() == "{}"
        assert await order(99) == 201
