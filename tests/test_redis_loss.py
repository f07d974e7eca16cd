"""Redis losing its data: the gateway answers 503 ``not_ready``, never "insufficient stock"."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from gateway import keys
from gateway.errors import NotReady
from gateway.ops import reconcile as reconciler
from gateway.web import appkeys as K
from gateway.web.app import mark_ready
from tests.conftest import auth, order_body


async def test_flushed_redis_answers_503_not_insufficient_stock(gw, redis, pg):
    await gw.set_stock("SKU-1", {"W1": 5})
    assert (await gw.post("/v1/orders", order_body("o-1"))).status == 201
    await gw.caught_up()
    await redis.flushall()
    await gw.app[K.SCRIPTS].load()
    order = await gw.post("/v1/orders", order_body("o-2"))
    assert order.status == 503
    assert (await order.json())["code"] == "not_ready"
    assert order.headers["Retry-After"] == "5"
    stock = await gw.client.put("/v1/inventory/SKU-1", json={"warehouses": {"W1": 9}}, headers=auth("k-ops"))
    assert stock.status == 503
    pay = await gw.client.post("/v1/orders/o-1/payment", json={"payment_id": "p", "amount": 0},
                               headers=auth("k-pay"))
    assert pay.status == 503
    assert not await redis.exists(keys.stock("SKU-1"))


async def test_start_on_empty_redis_marks_ready_only_when_postgres_is_empty(gw, redis, pg):
    await redis.delete(keys.ready())
    assert await mark_ready(redis, pg) is True  # nothing in PostgreSQL: a new system
    await gw.set_stock("SKU-1", {"W1": 5})
    await gw.caught_up()
    await redis.delete(keys.ready())
    assert await mark_ready(redis, pg) is False
    assert not await redis.exists(keys.ready())


async def test_repair_refuses_a_redis_that_lost_everything(gw, redis, pg, backends):
    await gw.set_stock("SKU-1", {"W1": 5})
    await gw.caught_up()
    await redis.flushall()
    with pytest.raises(NotReady):
        await reconciler.repair(redis, pg, gw.app[K.SCRIPTS])
    env = {**os.environ, "OMS_REDIS_URL": backends.redis_url, "OMS_DATABASE_URL": backends.database_url}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "reconcile", "--repair", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2 and b"rebuild-redis" in err
    assert not await redis.exists(keys.stock("SKU-1"))
