"""A process's memory of sold-out SKUs, so the crowd that keeps pressing "buy" after the
last unit went costs neither Redis nor an fsync: the refusal is answered in the process.

A SKU is remembered when the reserve script found nothing available in any active
warehouse, together with the ids of the orders whose records name it (the holders zset,
written by lua/reserve.lua). Those orders still go to the reserve script, so a replay of an
order accepted before the sell-out gets its order back; every other order for the SKU is
refused at once. The holders are read after the sell-out was seen, so they hold every
order that took a unit; no order can take one later without units coming back first.

Everything that can make units available again (a stock change, an order cancelled or
expired, a repair, a rebuild, a warehouse change) publishes the SKU (or ``*``) on
``keys.RESTOCK``, and every process forgets it at once; a flag taken from a reply that a
restock message overtook is not kept (``epoch``), flags are only taken while subscribed, a
lost subscription forgets every flag, and each flag lapses after ``ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway import keys, redisconn
from gateway.models import OrderIn

log = logging.getLogger(__name__)


async def restocked(client: aioredis.Redis, sku: str = "*") -> None:
    """Tell every process that ``sku`` (``*``: every SKU) may have units again."""
    await client.publish(keys.RESTOCK, sku)


class SoldOut:
    def __init__(self, redis_url: str, redis: aioredis.Redis, ttl: float = 1.0, limit: int = 50_000,
                 layout: keys.Partitions = keys.SINGLE) -> None:
        self.redis_url = redis_url
        self.redis = redis  # the shared client, for reading holders
        self.layout = layout
        self.ttl = ttl
        # A SKU with more holders than this (a long seller, not a flash sale) is not
        # remembered: reading its holders every ``ttl`` would cost more than it saves.
        self.limit = limit
        self.epoch = 0  # bumped by every restock message: a reply sent before it proves nothing
        self.listening = False
        self._skus: dict[str, tuple[float, frozenset[str]]] = {}  # sku -> (until, holders)
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.forgot = asyncio.Event()  # set by every restock message (clear it to await the next)

    def refusal(self, order: OrderIn) -> int | None:
        """The index of the order's first line whose SKU is remembered as sold out, unless the
        order is one of that SKU's holders (a replay, for the reserve script to answer)."""
        if self._skus:
            for j, item in enumerate(order.items):
                holders = self.holders(item.sku)
                if holders is not None and order.order_id not in holders:
                    return j
        return None

    def remembers(self, sku: str) -> bool:
        return self.holders(sku) is not None

    def holders(self, sku: str) -> frozenset[str] | None:
        """The holders of a SKU remembered as sold out; None when it is not."""
        hit = self._skus.get(sku)
        if hit is None:
            return None
        if hit[0] > time.monotonic():
            return hit[1]
        del self._skus[sku]
        return None

    def mark(self, sku: str, epoch: int) -> None:
        """Remember ``sku`` as sold out, as seen by a script call sent at ``epoch``, once its
        holders are read (until then its orders go on to the reserve script)."""
        if self.listening and epoch == self.epoch and sku not in self._loading and not self.remembers(sku):
            self._loading[sku] = asyncio.get_running_loop().create_task(self._load(sku, epoch))

    async def _load(self, sku: str, epoch: int) -> None:
        try:
            ids = []
            for p in self.layout.places(sku):  # a hot SKU's holders are in each of its buckets
                ids += await self.redis.zrangebyscore(keys.holders(sku, p), int(time.time() * 1000) - 60_000, "+inf",
                                                      start=0, num=self.limit + 1)
        except (RedisError, OSError) as exc:
            log.warning("holders of sold-out %s not read (%s); its orders go to Redis", sku, exc)
        else:
            if len(ids) <= self.limit and self.listening and epoch == self.epoch:
                self._skus[sku] = (time.monotonic() + self.ttl, frozenset(i.decode() for i in ids))
        finally:
            del self._loading[sku]

    async def loaded(self) -> None:
        """Wait until every holders read under way has finished (tests)."""
        while self._loading:
            await asyncio.gather(*self._loading.values(), return_exceptions=True)

    def forget(self, sku: str) -> None:
        self.epoch += 1
        self.forgot.set()
        if sku == "*":
            self._skus.clear()
        else:
            self._skus.pop(sku, None)

    async def start(self) -> None:
        """Subscribe; return once the subscription is confirmed (or after 5 s without it)."""
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="soldout")
        try:
            await asyncio.wait_for(self._subscribed.wait(), 5)
        except TimeoutError:
            log.warning("restock channel not subscribed yet; sold-out SKUs go to Redis until it is")

    async def close(self) -> None:
        tasks = [*self._loading.values(), *([self._task] if self._task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self) -> None:
        # A client of its own: the shared one times reads out, and a subscription waits.
        client = redisconn.connect(self.redis_url, socket_connect_timeout=5, health_check_interval=15)
        try:
            while True:
                try:
                    async with await redisconn.subscriber(client) as pubsub:
                        await pubsub.subscribe(keys.RESTOCK)
                        async for message in pubsub.listen():
                            if message["type"] == "subscribe":
                                self.listening = True
                                self._subscribed.set()
                            elif message["type"] == "message":
                                self.forget(message["data"].decode())
                except (RedisError, OSError) as exc:
                    log.warning("restock subscription lost (%s); resubscribing", exc)
                finally:
                    self.listening = False
                    self.forget("*")
                await asyncio.sleep(1)  # Redis is down: do not spin
        finally:
            await client.aclose()
