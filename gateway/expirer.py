"""The expirer: unpaid orders past ``reserved_until`` become cancelled (``expired``), stock back.
Each pass also finishes what a dead process left: moves between a hot SKU's buckets, and
the holds of orders over several partitions (gateway/spans.py).

Every process runs one; they may race freely, because the transition script re-checks
status and time atomically: of two expirers (or an expirer and a late payment) exactly one
changes the order, the other finds it done.
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from gateway import buckets, keys, spans
from gateway.errors import GatewayError
from gateway.faults import log_retry
from gateway.orders import check_reply, transition_call
from gateway.scripts import Scripts

log = logging.getLogger(__name__)
SWEEP_EVERY = 1.0  # seconds between looks for moves and holds a dead process left (both wait seconds)


class Expirer:
    def __init__(self, scripts: Scripts, *, record_ttl: int, interval: float = 0.25, batch: int = 500,
                 layout: keys.Partitions = keys.SINGLE) -> None:
        self.scripts = scripts
        self.layout = layout
        self.record_ttl = record_ttl
        self.interval = interval
        self.batch = batch
        self.expired = 0
        self._passes = 0
        self._pass = asyncio.Condition()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="expirer")

    async def close(self) -> None:
        self._stop.set()
        if self._task:
            await asyncio.gather(self._task, return_exceptions=True)

    async def wait_pass(self) -> None:
        """Return after a whole pass that began after this call."""
        async with self._pass:
            target = self._passes + 2
            await self._pass.wait_for(lambda: self._passes >= target)

    async def _run(self) -> None:
        sweep_due = 0.0
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            try:
                while await self.expire_due() == self.batch:
                    pass
                if self.layout.count > 1 and loop.time() >= sweep_due:  # what dead processes left, each second
                    sweep_due = loop.time() + SWEEP_EVERY
                    for p in self.layout.all():
                        if self.layout.hot:
                            await buckets.recover(self.scripts, p)
                        await spans.sweep(self.scripts, self.layout, p, lives=self.record_ttl)
            except Exception as exc:
                log_retry(log, exc, "expirer pass failed; retrying")
            async with self._pass:
                self._passes += 1
                self._pass.notify_all()
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
            except TimeoutError:
                pass

    async def expire_due(self) -> int:
        """Expire up to ``batch`` orders per partition whose reservation has run out; returns the
        most that were due in one partition."""
        return max([await self._expire_in(p) for p in self.layout.all()])

    async def _expire_in(self, p: str) -> int:
        redis = self.scripts.redis
        sec, usec = await redis.time()
        now_ms = sec * 1000 + usec // 1000
        due = await redis.zrangebyscore(keys.expiry(p), "-inf", now_ms, start=0, num=self.batch)
        if not due:
            return 0
        pipe = redis.pipeline(transaction=False)
        for order_id in due:
            pipe.hget(keys.order(order_id.decode(), p), "p")
        payloads = await pipe.execute()
        gone = [d for d, raw in zip(due, payloads, strict=True) if raw is None]
        if gone:  # record gone: nothing left to expire
            await redis.zrem(keys.expiry(p), *gone)
        live = [(d.decode(), orjson.loads(raw)) for d, raw in zip(due, payloads, strict=True) if raw is not None]
        calls = [transition_call(order_id, payload, "expire", {"reason": "expired"}, reason="expired",
                                 record_ttl=self.record_ttl, p=p, layout=self.layout) for order_id, payload in live]
        for (order_id, payload), reply in zip(live, await self.scripts.call_many("transition", calls) if calls else [],
                                              strict=True):
            if isinstance(reply, list):
                try:
                    _, changed = check_reply(reply, "expire")
                except GatewayError:
                    continue  # paid or cancelled meanwhile, or not due by Redis' clock
                self.expired += changed
                if changed and self.layout.count > 1 and len(spans.parts_of(
                        self.layout, [item["sku"] for item in payload["items"]], payload["user_id"])) > 1:
                    await spans.settle(self.scripts, self.layout, order_id, payload, "cancelled", p,
                                       lives=self.record_ttl)
        return len(due)
