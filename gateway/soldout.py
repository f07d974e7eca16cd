"""A process's memory of sold-out SKUs, so the crowd that keeps pressing "buy" after the
last unit went costs neither a reservation script nor an fsync.

A SKU is remembered when the reserve script found nothing available in any active
warehouse. Orders for it then take a cheaper road (``Coalescer._check``, lua/soldout.lua):
one read-only call per batch confirms that the order id is new (a replay must still get
its order back) and that the SKU still has nothing available, so the memory only chooses
the road and can never refuse an order the reserve script would have taken.

Everything that can make units available again (a stock change, an order cancelled or
expired, a repair, a rebuild, a warehouse change) publishes the SKU (or ``*``) on
``keys.RESTOCK``, and every process forgets it at once; a flag taken from a reply that a
restock message overtook is not kept (``epoch``), flags are only taken while subscribed,
and each expires after ``ttl`` seconds in case a message was lost.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway import keys
from gateway.models import OrderIn

log = logging.getLogger(__name__)


async def restocked(client: aioredis.Redis, sku: str = "*") -> None:
    """Tell every process that ``sku`` (``*``: every SKU) may have units again."""
    await client.publish(keys.RESTOCK, sku)


class SoldOut:
    def __init__(self, redis_url: str, ttl: float = 1.0) -> None:
        self.redis_url = redis_url
        self.ttl = ttl
        self.epoch = 0  # bumped by every restock message: a reply sent before it proves nothing
        self.listening = False
        self._skus: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.forgot = asyncio.Event()  # set by every restock message (clear it to await the next)

    def line(self, order: OrderIn) -> int | None:
        """The index of the order's first line whose SKU is remembered as sold out."""
        if self._skus:
            for j, item in enumerate(order.items):
                if self.remembers(item.sku):
                    return j
        return None

    def remembers(self, sku: str) -> bool:
        until = self._skus.get(sku)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._skus[sku]
        return False

    def mark(self, sku: str, epoch: int) -> None:
        """Remember ``sku`` as sold out, as seen by a script call sent at ``epoch``."""
        if self.listening and epoch == self.epoch:
            self._skus[sku] = time.monotonic() + self.ttl

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
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        # A client of its own: the shared one times reads out, and a subscription waits.
        client = aioredis.from_url(self.redis_url, socket_connect_timeout=5, health_check_interval=15)
        try:
            while True:
                try:
                    async with client.pubsub() as pubsub:
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
