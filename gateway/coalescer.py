"""The request coalescer: concurrent orders go to Redis as one script call.

There is no timer. Whatever arrived while the previous batch was in Redis is sent as the
next batch the moment that one returns, so an idle gateway adds no latency and a busy one
sends large batches. The batch script call and, with ``OMS_DURABILITY=fsync``, a
``WAITAOF`` travel in one pipeline: one round trip and one fsync (a group commit) per
batch, and no answer leaves before its reservation is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
import orjson

from gateway import buckets, keys, metrics, spans
from gateway.errors import (
    BackendDown,
    BacklogFull,
    Conflict,
    GatewayError,
    IdempotencyMismatch,
    InsufficientStock,
    Invalid,
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
from gateway.wire import Hold, Reserve

log = logging.getLogger(__name__)

SPANNING_AT_ONCE = 8  # orders over several partitions in flight per batch: each holds a connection per step
MAX_PULLS = 2  # per order and batch: a hot SKU's bucket refilled twice and short again answers short
Result = tuple[int, dict[str, Any]]
Queued = tuple[OrderIn, bytes, str, "asyncio.Future[Result]"]  # the order, its payload, its key_id ("": a user's)


def reserve_call(
    orders: list[tuple[OrderIn, bytes, str]], warehouses: WarehouseCache, sales: SaleCache, strategy: str,
    ttl_ms: int, record_ttl: int, max_backlog: int = 0, p: str = keys.ONE, homes: frozenset[str] = frozenset(),
    spans: dict[str, dict[str, Any]] | None = None,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of one reserve script call in partition ``p`` for a batch (see
    lua/reserve.lua); each order comes with its payload and the ``key_id`` of the service key
    that sent it ("" for a user). ``homes`` are the order ids whose locator ``p`` keeps."""
    ks = [keys.events(p), keys.expiry(p), keys.wh_version(p), keys.sale_version(p), keys.ready(p), keys.rate_limits(p)]
    prefs: dict[tuple[str, ...], int] = {}
    packed = []
    for order, payload, key_id in orders:
        ks += [keys.order(order.order_id, p), keys.locator(order.order_id, p),
               keys.bucket("orders:user", order.user_id, p), keys.bucket("orders:key", key_id or "-", p)]
        chosen = strategy
        if order.sale_id is not None:
            ks += [keys.sale(order.sale_id, p), keys.sale_user(order.sale_id, order.user_id, p)]
            sale = sales.by_id.get(order.sale_id)
            chosen = sale.strategy if sale is not None and sale.strategy else strategy
        ks.extend(keys.stock(item.sku, p) for item in order.items)
        ks.extend(keys.holders(item.sku, p) for item in order.items)
        pref = warehouses.order(chosen, order.ship_to.region if order.ship_to else None)
        index = prefs.setdefault(pref, len(prefs))
        lines = [[item.sku, item.qty, index, -1 if item.unit_price is None else item.unit_price]
                 for item in order.items]
        packed.append([order.order_id, payload.decode(), ttl_ms, lines, order.channel,
                       int(order.sale_id is not None), int(chosen == "max_stock"), int(bool(key_id)),
                       p if order.order_id in homes else "", *([spans[order.order_id]] if spans else [])])
    batch = orjson.dumps({"p": list(prefs), "o": packed})
    return ks, [record_ttl, batch, warehouses.versions.get(p, -1), max_backlog]


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
        layout: keys.Partitions = keys.SINGLE,
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
        self.layout = layout
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
        """One result per order: one script call per partition the batch touches, in one round trip."""
        orders = [(order, payload, key_id) for order, payload, key_id, _ in batch]
        epoch = self.soldout.epoch if self.soldout else 0
        results: list[Any] = [None] * len(batch)
        several = self.layout.count > 1
        groups: dict[str, list[int]] = {} if several else {keys.ONE: list(range(len(batch)))}
        spanning: list[tuple[str, int]] = []  # (primary partition, order)
        for i, (order, _, _) in enumerate(orders if several else ()):
            if (stray := self._stray_line(order)) is not None:
                results[i] = self._sale_refusal(order, "sku_not_in_sale", stray, 0)
                continue
            try:
                groups.setdefault(self.layout.target((item.sku for item in order.items), order.user_id), []).append(i)
            except keys.SpansPartitions as exc:
                if order.sale_id is None:  # its primary: its first line's partition (gateway/spans.py)
                    spanning.append((self.layout.target([order.items[0].sku], order.user_id), i))
                else:  # a sale's SKUs share their partition: some line here is not the sale's
                    results[i] = Invalid(f"the order's skus belong to more than one inventory partition ({exc})",
                                         code="spans_partitions")
        claimed: list[int] = []
        if several:
            claimed = await self._claim(orders, [(p, i) for p, idx in groups.items() for i in idx] + spanning, results)
            groups = {p: kept for p, idx in groups.items() if (kept := [i for i in idx if results[i] is None])}
        if spanning:  # part by part, beside the batch's one call per partition
            gate = asyncio.Semaphore(SPANNING_AT_ONCE)

            async def one(i: int) -> Result | Exception:
                async with gate:
                    return await self._spanning(*orders[i], epoch)

            ready = [i for _, i in spanning if results[i] is None]
            for i, result in zip(ready, await asyncio.gather(*map(one, ready)), strict=True):
                results[i] = result
        pulls: dict[int, int] = {}  # order -> pulls made for it (gateway/buckets.py)
        while groups:
            parts = list(groups)
            calls = [reserve_call([orders[i] for i in groups[p]], self.warehouses, self.sales, self.strategy,
                                  self.ttl_ms, self.record_ttl, self.max_backlog, p,
                                  frozenset(orders[i][0].order_id for i in groups[p]
                                            if several and self.layout.home(orders[i][0].order_id) == p))
                     for p in parts]
            replies = await self.scripts.call_many("reserve", calls, wait_aof=self.wait_aof)
            stale, short = False, []
            for p, reply in zip(parts, replies, strict=True):
                if isinstance(reply, Exception):
                    raise reply
                code = int(reply[0])
                if code == Reserve.STALE_WAREHOUSES:  # another process changed warehouses: plan again
                    stale = True
                    continue
                idx = groups.pop(p)
                if code in (Reserve.NOT_READY, Reserve.BACKLOG_FULL):
                    for i in idx:
                        results[i] = NotReady() if code == Reserve.NOT_READY else BacklogFull()
                    continue
                await self.sales.refresh(int(reply[1]), p)
                for i, r in zip(idx, reply[2:], strict=True):
                    if int(r[0]) == Reserve.SHORT and pulls.get(i, 0) < MAX_PULLS \
                            and len(self.layout.places(orders[i][0].items[int(r[1])].sku)) > 1:
                        short.append((p, i, r))
                    else:
                        results[i] = self._decode(orders[i][0], orders[i][1], r, epoch, pulls.get(i, 0) == 0)
            wanted: dict[tuple[str, str], list[tuple[int, Any]]] = {}
            for p, i, r in short:  # a hot SKU's bucket ran short: one pull per SKU and bucket, then again
                wanted.setdefault((orders[i][0].items[int(r[1])].sku, p), []).append((i, r))
            for (sku, p), waiting in wanted.items():
                if await buckets.pull(self.scripts, self.layout, sku, p, sum(int(r[2]) for _, r in waiting)):
                    for i, _ in waiting:
                        pulls[i] = pulls.get(i, 0) + 1
                        groups.setdefault(p, []).append(i)
                else:  # no other bucket has any: sold out everywhere
                    for i, r in waiting:
                        results[i] = self._decode(orders[i][0], orders[i][1], r, epoch)
            if stale:
                await self.warehouses.load()
        if claimed:
            await self._unclaim([i for i in claimed if isinstance(results[i], Exception)], orders)
        return results

    async def _spanning(self, order: OrderIn, payload: bytes, key_id: str, epoch: int) -> Result | Exception:
        """An order whose lines span partitions (gateway/spans.py): its holds, then its primary."""
        parts = spans.parts_of(self.layout, [item.sku for item in order.items], order.user_id)
        primary, *others = parts  # its locator is claimed (_claim): a refusal here takes it back with the batch's
        raw = payload.decode()
        pref = list(self.warehouses.order(self.strategy, order.ship_to.region if order.ship_to else None))
        lines = {p: [[order.items[j].sku, order.items[j].qty, pref] for j in parts[p]] for p in others}  # one pref list
        held: dict[str, tuple[str, bool, int]] = {}  # partition -> (allocation, taken now, generation)
        result: Result | Exception | None = None
        # A fault (BackendDown) leaves the holds as they are: the primary may have the order
        # though its answer was lost, so only the sweep, asking the primary, gives them back.
        pulls = [0]  # units pulled into a short hot-SKU bucket (gateway/buckets.py), then again
        anew: set[str] = set()  # released parts of a committed order whose record is gone: its id is free
        for _ in range(3 + MAX_PULLS):  # a stale warehouse version: reload and take again
            waiting = [p for p in others if p not in held]
            calls = [spans.hold_call("take", order.order_id, raw, p, lines[p], arg=primary,
                                     version=self.warehouses.versions.get(p, -1), lives=self._lives(order),
                                     anew=p in anew)
                     for p in waiting]
            stale = pulled = False
            for p, reply in zip(waiting, await self.scripts.call_many("hold", calls, wait_aof=self.wait_aof),
                                strict=True):
                if isinstance(reply, Exception):
                    raise reply
                code = Hold(int(reply[0]))
                if code is Hold.DONE:
                    held[p] = (reply[1].decode(), bool(int(reply[2])), int(reply[3]))
                elif code is Hold.STALE_WAREHOUSES:
                    stale = True
                elif code is Hold.RELEASED and result is None:  # taken by nothing: the record answers
                    recorded = await self._recorded(order, payload, primary, epoch)
                    if recorded is None:
                        anew.add(p)
                    else:
                        result = recorded
                elif code is Hold.SHORT and await self._pull(order, parts[p][int(reply[1])], p, int(reply[2]), pulls):
                    pulled = True
                elif result is None:
                    result = (NotReady() if code is Hold.NOT_READY else
                              IdempotencyMismatch(f"order_id {order.order_id!r} was used with another payload")
                              if code is Hold.MISMATCH else
                              self._decode(order, payload, [Reserve.SHORT, parts[p][int(reply[1])], reply[2]], epoch,
                                           pulls[0] < MAX_PULLS))
            if not (stale or pulled or anew - held.keys()) or result is not None:
                break
            if stale:
                await self.warehouses.load()
                pref[:] = self.warehouses.order(self.strategy, order.ship_to.region if order.ship_to else None)
        if isinstance(result, InsufficientStock):  # a replay of an order that holds nothing now takes nothing
            result = await self._recorded(order, payload, primary, epoch) or result
        if result is None and len(held) < len(others):
            result = Overloaded()
        if result is None:
            result = await self._primary(order, payload, key_id, epoch, parts, primary, held, pulls)
        live = isinstance(result, tuple) and (result[0] == 201 or result[1]["status"] in spans.HOLDING)
        fresh = [p for p, (_, new, _) in held.items() if new]
        if not live and fresh and not isinstance(result, tuple | IdempotencyMismatch):
            # refused: the holds this attempt took go back, unless a concurrent attempt with the
            # same payload got the order with them (the primary has it: lua/abort.lua). The id
            # with another payload keeps none of them.
            live = bool(await self.scripts.call("abort", [keys.order(order.order_id, primary)],
                                                [spans.GIVE_BACK_S, spans.given({p: held[p][2] for p in fresh}), raw]))
        if live:  # the order holds them (a replay of a live order too)
            await self.scripts.call_many("hold", [spans.hold_call("commit", order.order_id, raw, p, lines[p])
                                                  for p in held])
            return result
        if fresh:  # refused, or a replay of an order that no longer holds stock: give back this attempt's
            # ("cancelled" for a replay: released, and marked as a part of an order that exists,
            # so the next replay takes nothing; its own hold record had lapsed before the order's)
            given_as = "cancelled" if isinstance(result, tuple) else spans.GIVEN_BACK
            await self.scripts.call_many("hold", [spans.hold_call("settle", order.order_id, raw, p, lines[p],
                                                                  arg=given_as, lives=self.record_ttl)
                                                  for p in fresh])
        return result

    async def _primary(self, order: OrderIn, payload: bytes, key_id: str, epoch: int, parts: dict[str, list[int]],
                       primary: str, held: dict[str, tuple[str, bool, int]], pulls: list[int]) -> Result | Exception:
        """Reserve the primary's lines with the holds' allocations for the others."""
        here = msgspec.structs.replace(order, items=[order.items[j] for j in parts[primary]])
        remote = {str(j): group for p, (alloc, _, _) in held.items() for j, group in zip(parts[p], alloc.split(";"),
                                                                                      strict=True)}
        spec = {order.order_id: {"n": len(order.items), "l": parts[primary], "r": remote, "x": ",".join(held),
                                 "g": {p: gen for p, (_, _, gen) in held.items()}}}
        homes = frozenset([order.order_id]) if self.layout.home(order.order_id) == primary else frozenset()
        for _ in range(3 + MAX_PULLS):
            ks, args = reserve_call([(here, payload, key_id)], self.warehouses, self.sales, self.strategy, self.ttl_ms,
                                    self.record_ttl, self.max_backlog, primary, homes, spec)
            reply = await self.scripts.call("reserve", ks, args, wait_aof=self.wait_aof)
            code = int(reply[0])
            if code == Reserve.NOT_READY:
                return NotReady()
            if code == Reserve.BACKLOG_FULL:
                return BacklogFull()
            if code == Reserve.STALE_WAREHOUSES:
                await self.warehouses.load()
                continue
            await self.sales.refresh(int(reply[1]), primary)
            r = reply[2]
            if int(r[0]) == Reserve.ABORTED:
                return spans.aborted()
            if int(r[0]) != Reserve.SHORT:
                return self._decode(order, payload, r, epoch)
            r = [r[0], parts[primary][int(r[1])], r[2]]
            if not await self._pull(order, int(r[1]), primary, int(r[2]), pulls):
                return self._decode(order, payload, r, epoch, pulls[0] < MAX_PULLS)
        return Overloaded()

    async def _recorded(self, order: OrderIn, payload: bytes, primary: str, epoch: int) -> Result | Exception | None:
        """What the primary's record of the order answers (a replay, or the id with another
        payload), as lua/reserve.lua would; None when it has none. Asked for a part released
        with its order (Hold.RELEASED), and for a part whose hold record lapsed first, which
        a replay takes again and may find the stock gone."""
        pipe = self.scripts.redis.pipeline(transaction=False)
        pipe.hmget(keys.order(order.order_id, primary), "p", "a", "c", "u", "s")
        ((seen, *fields),) = await self.scripts.execute(pipe)
        if seen is None:
            return None
        if seen != payload:
            return IdempotencyMismatch(f"order_id {order.order_id!r} was used with another payload")
        if None in fields:  # not a whole record: the refusal stands
            return None
        alloc, created, until, status = fields
        return self._decode(order, payload, [Reserve.REPLAYED, alloc, int(created), int(until), status], epoch)

    async def _pull(self, order: OrderIn, line: int, p: str, missing: int, pulls: list[int]) -> bool:
        """Whether units of the short line's SKU, a hot one, were pulled into its bucket ``p``
        from the others (at most MAX_PULLS times per order): then the order is tried again.
        Short once they are spent proves no sell-out (``_decode``'s ``may_mark``)."""
        sku = order.items[line].sku
        if pulls[0] >= MAX_PULLS or len(self.layout.places(sku)) == 1:
            return False
        moved = await buckets.pull(self.scripts, self.layout, sku, p, missing)
        pulls[0] += bool(moved)
        return bool(moved)

    async def _claim(self, orders: list[tuple[OrderIn, bytes, str]], placed: list[tuple[str, int]],
                     results: list[Any]) -> list[int]:
        """Write the locator of each order kept outside its id's home partition (gateway/keys.py);
        ``placed`` pairs each order with the partition it is reserved in (its primary, for one
        over several).

        A locator naming another partition means the id was taken there with another payload:
        that order is answered 409 here. Returns the orders whose locator was written here, so
        a refusal takes it back.
        """
        away = [(p, i) for p, i in placed if self.layout.home(orders[i][0].order_id) != p]
        if not away:
            return []
        pipe = self.scripts.redis.pipeline(transaction=False)
        locators = [keys.locator(orders[i][0].order_id, self.layout.home(orders[i][0].order_id)) for _, i in away]
        for (p, i), locator in zip(away, locators, strict=True):
            pipe.set(locator, p, nx=True, get=True, ex=self._lives(orders[i][0]))
        # durable as the order's record: a locator a failover lost would let the id be taken elsewhere
        replies = await self.scripts.execute(pipe, locators if self.wait_aof else None)
        claimed = []
        for (p, i), before in zip(away, replies, strict=True):
            if before is None:
                claimed.append(i)
            elif before.decode() != p:
                results[i] = IdempotencyMismatch(f"order_id {orders[i][0].order_id!r} was used with another payload")
        return claimed

    async def _unclaim(self, refused: list[int], orders: list[tuple[OrderIn, bytes, str]]) -> None:
        """Take back the locators of refused orders: their id may be used again, for any SKUs."""
        if not refused:
            return
        ids = [orders[i][0].order_id for i in refused]
        with contextlib.suppress(GatewayError):  # a locator left behind only refuses another payload for this id
            pipe = self.scripts.redis.pipeline(transaction=False)
            for order_id in ids:
                pipe.delete(keys.locator(order_id, self.layout.home(order_id)))
            await self.scripts.execute(pipe)

    def _lives(self, order: OrderIn) -> int:
        """Seconds the order's record lives (lua/reserve.lua ``lives``), so its locator lives as long."""
        sale = self.sales.by_id.get(order.sale_id) if order.sale_id is not None else None
        ttl = sale.reservation_ttl if sale is not None and sale.reservation_ttl else self.ttl_ms // 1000
        return max(self.record_ttl, ttl + 3600)

    def _decode(self, order: OrderIn, payload: bytes, r: list[Any], epoch: int,
                may_mark: bool = True) -> Result | Exception:
        """The answer to one order's reply; ``may_mark`` False when a short line does not prove
        the SKU sold out (a hot SKU's bucket refilled from the others ran short again)."""
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
        if missing == order.items[line].qty and may_mark and self.soldout is not None:  # nothing left anywhere
            self.soldout.mark(sku, epoch)
        return InsufficientStock(sku, missing)

    def _stray_line(self, order: OrderIn) -> int | None:
        """A line of a sale order whose SKU keeps its stock away from the sale's partitions, so
        cannot be in it (a sale's partitions are its SKUs' and never change); None when the
        sale is not known here: the reserve script judges."""
        sale = self.sales.by_id.get(order.sale_id) if order.sale_id is not None else None
        if sale is None:
            return None
        places = self.layout.places(sale.skus[0])
        return next((j for j, item in enumerate(order.items) if self.layout.places(item.sku) != places), None)

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
