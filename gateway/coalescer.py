"""The request coalescer: concurrent orders go to Redis as one script call.

There is no timer. Whatever arrived while the previous batch was in Redis is sent as the
next batch the moment that one returns, so an idle gateway adds no latency and a busy one
sends large batches. The batch script call and, with ``OMS_DURABILITY=fsync``, a
``WAITAOF`` travel in one pipeline: one round trip and one fsync (a group commit) per
batch, and no answer leaves before its reservation is on disk.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from gateway import keys, metrics
from gateway.errors import (
    BackendDown,
    BacklogFull,
    Conflict,
    GatewayError,
    IdempotencyMismatch,
    InsufficientStock,
    LimitExceeded,
    NotReady,
    Overloaded,
    PriceMismatch,
    RateLimited,
    SaleNotActive,
)
from gateway.inventory import WarehouseCache
from gateway.models import OrderIn, encode, render_order
from gateway.sales import SaleCache
from gateway.scripts import Scripts
from gateway.soldout import SoldOut
from gateway.wire import Reserve

log = logging.getLogger(__name__)

Result = tuple[int, dict[str, Any]]
Queued = tuple[OrderIn, bytes, str, "asyncio.Future[Result]"]  # the order, its payload, its key_id ("": a user's)


def reserve_call(
    orders: list[tuple[OrderIn, bytes, str]], warehouses: WarehouseCache, sales: SaleCache, strategy: str,
    ttl_ms: int, record_ttl: int, max_backlog: int = 0,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of one reserve script call for a batch (see lua/reserve.lua); each order
    comes with its payload and the ``key_id`` of the service key that sent it ("" for a user)."""
    ks = [keys.events(), keys.expiry(), keys.wh_version(), keys.sale_version(), keys.ready(), keys.rate_limits()]
    prefs: dict[tuple[str, ...], int] = {}
    packed = []
    for order, payload, key_id in orders:
        ks += [keys.order(order.order_id), keys.bucket("orders:user", order.user_id),
               keys.bucket("orders:key", key_id or "-")]
        chosen = strategy
        if order.sale_id is not None:
            ks += [keys.sale(order.sale_id), keys.sale_user(order.sale_id, order.user_id)]
            sale = sales.by_id.get(order.sale_id)
            chosen = sale.strategy if sale is not None and sale.strategy else strategy
        ks.extend(keys.stock(item.sku) for item in order.items)
        ks.extend(keys.holders(item.sku) for item in order.items)
        pref = warehouses.order(chosen, order.ship_to.region if order.ship_to else None)
        index = prefs.setdefault(pref, len(prefs))
        lines = [[item.sku, item.qty, index, -1 if item.unit_price is None else item.unit_price]
                 for item in order.items]
        packed.append([order.order_id, payload.decode(), ttl_ms, lines, order.channel,
                       int(order.sale_id is not None), int(chosen == "max_stock"), int(bool(key_id))])
    batch = orjson.dumps({"p": list(prefs), "o": packed})
    return ks, [record_ttl, batch, warehouses.version, max_backlog]


class Coalescer:
    def __init__(
        self,
        scripts: Scripts,
        warehouses: WarehouseCache,
        sales: SaleCache,
        *,
        strategy: str = "priority",
        reservation_ttl: int,
        record_ttl: int,
        max_in_flight: int,
        max_batch: int,
        wait_aof: bool,
        max_backlog: int = 0,
        soldout: SoldOut | None = None,
    ) -> None:
        self.scripts = scripts
        self.warehouses = warehouses
        self.sales = sales
        self.strategy = strategy
        self.ttl_ms = reservation_ttl * 1000
        self.record_ttl = record_ttl
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self.wait_aof = wait_aof
        self.max_backlog = max_backlog
        self.soldout = soldout
        self.in_flight = 0
        self.batches = 0
        self.sold_out_answers = 0
        self._sizes = metrics.spread(metrics.COALESCER_BATCH)
        self._pending: list[Queued] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="coalescer")

    def submit(self, order: OrderIn, key_id: str = "") -> asyncio.Future[Result]:
        """Queue one validated order; the future gets ``(status, body)`` or a GatewayError.
        ``key_id`` names the service key that sent it for its rate limit ("" for a user's token).

        Raises InsufficientStock for a SKU remembered as sold out (gateway/soldout.py), and
        Overloaded instead of queueing past ``max_in_flight`` (bounded memory).
        """
        if self.soldout is not None:
            line = self.soldout.refusal(order)
            if line is not None:
                self.sold_out_answers += 1
                raise InsufficientStock(order.items[line].sku, order.items[line].qty)
        if self._closing or self._loop is None or self.in_flight >= self.max_in_flight:
            raise Overloaded()
        # the loop start() saw: asyncio.get_running_loop() calls getpid() on Python 3.11, a
        # system call that took 6% of a sold-out answer's CPU here
        fut: asyncio.Future[Result] = self._loop.create_future()
        self._pending.append((order, encode(order), key_id, fut))
        self.in_flight += 1
        self._idle.clear()
        self._wake.set()
        return fut

    async def close(self) -> None:
        """Stop taking orders, answer every queued one, then stop the loop."""
        self._closing = True
        await self._idle.wait()
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                await self._settle(batch)
            self._idle.set()

    async def _settle(self, batch: list[Queued]) -> None:
        """Reserve for the batch and hand each waiter its result."""
        try:
            results = await self._reserve(batch)
        except Exception as exc:  # every waiter learns the batch failed
            if not isinstance(exc, GatewayError):
                log.exception("batch of %d orders failed", len(batch))
                exc = BackendDown("Reservation failed, retry with the same order_id")
            for _, _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            for (_, _, _, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
        finally:
            self.in_flight -= len(batch)
            self.batches += 1
            self._sizes.observe(len(batch))

    async def _reserve(self, batch: list[Queued]) -> list[Any]:
        orders = [(order, payload, key_id) for order, payload, key_id, _ in batch]
        epoch = self.soldout.epoch if self.soldout else 0
        while True:
            ks, args = reserve_call(orders, self.warehouses, self.sales, self.strategy, self.ttl_ms,
                                    self.record_ttl, self.max_backlog)
            reply = await self.scripts.call("reserve", ks, args, wait_aof=self.wait_aof)
            if int(reply[0]) == Reserve.NOT_READY:
                raise NotReady()
            if int(reply[0]) == Reserve.BACKLOG_FULL:
                raise BacklogFull()
            if int(reply[0]) != Reserve.STALE_WAREHOUSES:
                break
            await self.warehouses.load()  # another process changed warehouses: plan again
        await self.sales.refresh(int(reply[1]))
        return [self._decode(order, payload, r, epoch) for (order, payload, _, _), r in zip(batch, reply[2:], strict=True)]

    def _decode(self, order: OrderIn, payload: bytes, r: list[Any], epoch: int) -> Result | Exception:
        code = int(r[0])
        if code == Reserve.ACCEPTED or code == Reserve.REPLAYED:
            accepted = code == Reserve.ACCEPTED
            body = render_order(orjson.loads(payload), r[1].decode(), int(r[2]), int(r[3]),
                                "pending_payment" if accepted else r[4].decode())
            return (201 if accepted else 200, body)
        if code == Reserve.MISMATCH:
            return IdempotencyMismatch(f"order_id {order.order_id!r} was used with another payload")
        if code == Reserve.RATE_LIMITED:
            return RateLimited(int(r[1]))
        if code == Reserve.SALE_REFUSED:
            return Coalescer._sale_refusal(order, r[1].decode(), int(r[2]), int(r[3]))
        line, missing = int(r[1]), int(r[2])  # Reserve.SHORT
        sku = order.items[line].sku
        if missing == order.items[line].qty and self.soldout is not None:  # nothing left anywhere
            self.soldout.mark(sku, epoch)
        return InsufficientStock(sku, missing)

    @staticmethod
    def _sale_refusal(order: OrderIn, code: str, a: int, b: int) -> Exception:
        if code == "limit_exceeded":
            return LimitExceeded(f"you hold {a} unit(s) of a {b}-unit limit in this sale", held=a, limit=b)
        if code == "price_mismatch":
            sku = order.items[a].sku
            return PriceMismatch(f"{sku} costs {b} in this sale", sku=sku, unit_price=b)
        if code == "sku_not_in_sale":
            return Conflict(f"{order.items[a].sku} is not part of sale {order.sale_id!r}", code=code)
        if code == "channel_not_allowed":
            return Conflict(f"sale {order.sale_id!r} does not sell on channel {order.channel!r}", code=code)
        return SaleNotActive(f"sale {order.sale_id!r} is not running now")
