"""The live stats stream's figures (``GET /v1/stats/stream``): what changed between two ticks,
and the stock alerts of the event feed as they commit.

Rates come from the same series a scrape reads (gateway/metrics.py): under ``serve`` every
HTTP worker publishes its running totals to the multiprocess files each second, and a tick
reads all of them, so the figures are the gateway's, not the answering worker's. A tick
takes the difference of running totals, so another worker's last second may show a tick
late but is never lost or counted twice. Outside ``serve`` the figures are this process's.
The stream's and writer's progress is read from Redis, hot SKUs from PostgreSQL and Redis
(as ``/v1/stats`` does); a store that is down leaves its figures out and is named in
``unavailable``, and the stream goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar

import asyncpg
import orjson
import redis.asyncio as aioredis
from prometheus_client.core import Metric

from gateway import keys, metrics, stockwatch
from gateway.faults import unless_down
from gateway.inventory import stock_views
from gateway.models import iso_ms
from gateway.scrape import stream_state

ORDER_ROUTE = {"route": "/v1/orders", "method": "POST"}  # the latency the board shows: order submission
NOT_REFUSED = frozenset({"accepted", "replayed"})
STOCK_TYPES = ["inventory.low_stock", "inventory.sold_out"]
HOT_SKUS = 10
HOT_EVERY = 5.0  # seconds between readings of the best sellers: an aggregate over the forecast window
FEED_PAGE = 1000  # stock alerts sent per tick at most; the rest follow on the next
T = TypeVar("T")


class Streams:
    """The open streams of one app: shutdown ends them before the pools close (aiohttp waits
    for running handlers before the cleanup contexts), and tests await their end."""

    def __init__(self) -> None:
        self.closing = asyncio.Event()
        self.count = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    @contextlib.contextmanager
    def opened(self) -> Iterator[None]:
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1
            for most, waiter in self._waiters:
                if self.count <= most and not waiter.done():
                    waiter.set_result(None)

    def close(self) -> None:
        self.closing.set()

    async def wait_closed(self, remaining: int = 0) -> None:
        """Until at most ``remaining`` streams are open."""
        if self.count <= remaining:
            return
        entry = (remaining, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            await entry[1]
        finally:
            self._waiters.remove(entry)


@dataclasses.dataclass(frozen=True, slots=True)
class Totals:
    """Running totals read at one moment."""

    at: float  # time.monotonic()
    outcomes: dict[str, float]  # oms_orders_total by outcome
    latency: dict[float, float]  # the order route's cumulative histogram buckets, by upper bound
    in_flight: float


def totals(families: Iterable[Metric], at: float) -> Totals:
    outcomes: dict[str, float] = {}
    latency: dict[float, float] = {}
    in_flight = 0.0
    for family in families:
        for s in family.samples:
            if s.name == "oms_orders_total":
                outcomes[s.labels["outcome"]] = outcomes.get(s.labels["outcome"], 0.0) + s.value
            elif s.name == "oms_http_request_duration_seconds_bucket" and all(
                    s.labels.get(k) == v for k, v in ORDER_ROUTE.items()):
                bound = float(s.labels["le"])
                latency[bound] = latency.get(bound, 0.0) + s.value
            elif s.name == "oms_orders_in_flight":
                in_flight += s.value
    return Totals(at, outcomes, latency, in_flight)


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative ``(upper bound, count)`` pairs,
    ascending: linear within the bucket the rank falls in, the last finite bound for +Inf.
    None without observations."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def difference(before: Totals, now: Totals) -> dict[str, Any]:
    """The rates and order latency between two readings. A total that went down (a reset)
    counts from zero."""
    seconds = max(now.at - before.at, 0.0)

    def grew(new: float, old: float) -> int:
        return round(new - old) if new >= old else round(new)

    counts = {o: grew(v, before.outcomes.get(o, 0.0)) for o, v in now.outcomes.items()}
    accepted = counts.pop("accepted", 0)
    refused = {o: n for o, n in sorted(counts.items()) if n > 0 and o not in NOT_REFUSED}
    buckets = [(bound, float(grew(v, before.latency.get(bound, 0.0)))) for bound, v in sorted(now.latency.items())]

    def per_s(n: int) -> float:
        return round(n / seconds, 3) if seconds > 0 else 0.0

    return {"seconds": round(seconds, 3), "accepted": accepted, "accepted_per_s": per_s(accepted),
            "refused": refused, "refused_per_s": {o: per_s(n) for o, n in refused.items()},
            "p50_ms": _ms(quantile(0.5, buckets)), "p99_ms": _ms(quantile(0.99, buckets)),
            "in_flight": max(round(now.in_flight), 0)}


class Live:
    """One stream's state: the last totals, and the feed id its stock alerts follow.

    ``publish`` puts this process's own tallies in the series first, so what it counted
    itself is exact (gateway/metrics.py publishes each second otherwise). ``after`` is the
    feed id to tail after (the client's ``Last-Event-ID``); None: the end of the feed at
    ``start``.
    """

    def __init__(self, redis: aioredis.Redis, pool: asyncpg.Pool, *, window: int,
                 publish: Callable[[], None], after: int | None = None, layout: keys.Partitions = keys.SINGLE) -> None:
        self.redis, self.pool, self.window, self.publish = redis, pool, window, publish
        self.layout = layout
        self.after = after
        self.previous: Totals | None = None
        self._selling: list[stockwatch.Hot] = []
        self._selling_at = -math.inf

    async def start(self) -> None:
        """Read where the feed ends; a PostgreSQL fault propagates (the stream cannot start without it)."""
        if self.after is None:
            self.after = await self.pool.fetchval("SELECT coalesce(max(id), 0) FROM order_events")
        self.previous = self._read()

    def _read(self) -> Totals:
        self.publish()
        return totals(metrics.collected(), time.monotonic())

    async def tick(self) -> list[tuple[str, str | None, dict[str, Any]]]:
        """``(event, id, data)`` of one tick: the stock alerts committed since the last, then the stats."""
        down: set[str] = set()
        alerts = await self._unless("postgres", down, self.stock, [])
        return [*(("stock", str(a["id"]), a) for a in alerts), ("stats", None, await self.stats(down))]

    async def stats(self, down: set[str]) -> dict[str, Any]:
        """The figures since the previous call (or ``start``); ``down`` names the stores found down."""
        assert self.previous is not None, "start() first"
        now = self._read()
        figures = difference(self.previous, now)
        self.previous = now
        stream = await self._unless("redis", down, lambda: stream_state(self.redis, self.layout), None)
        selling = await self._best_sellers(down)
        views = await self._unless("redis", down, lambda: stock_views(self.redis, [h.sku for h in selling], self.layout),
                                   []) if selling else []
        return {
            "at": iso_ms(int(time.time() * 1000)), **figures,
            "writer_lag": None if stream is None else int(stream["lag"]),
            "writer_pending": None if stream is None else int(stream["pending"]),
            "stream_length": None if stream is None else int(stream["length"]),
            "hot": [_hot(h, v["available"]) for h, v in zip(selling, views, strict=False)],
            **({"unavailable": sorted(down)} if down else {}),
        }

    async def _best_sellers(self, down: set[str]) -> list[stockwatch.Hot]:
        """The window's best sellers, read again every ``HOT_EVERY`` seconds: under a sale the
        aggregate costs PostgreSQL far more than a tick, and the ranking moves slowly (each
        tick still reads their stock from Redis). Empty while PostgreSQL is down."""
        if "postgres" not in down and time.monotonic() - self._selling_at >= HOT_EVERY:
            selling = await self._unless("postgres", down, lambda: stockwatch.hot(self.pool, self.window, HOT_SKUS),
                                         None)
            if selling is not None:
                self._selling, self._selling_at = selling, time.monotonic()
        return [] if "postgres" in down else self._selling

    @staticmethod
    async def _unless(store: str, down: set[str], call: Callable[[], Awaitable[T]], fallback: T) -> T:
        """``call()``, or ``fallback`` with ``store`` named in ``down``; not called at all once
        that store failed this tick (no second wait on a sick store)."""
        if store in down:
            return fallback
        result, ok = await unless_down(call(), fallback)
        if not ok:
            down.add(store)
        return result

    async def stock(self) -> list[dict[str, Any]]:
        """The feed's ``inventory.low_stock`` / ``inventory.sold_out`` events committed since the last call.

        Every writer of ``order_events`` draws its ids under one advisory lock held to its
        commit (gateway/feed.py), so once the newest id is visible every id below it is
        final: the cursor moves to that id even past events that are not alerts.
        """
        assert self.after is not None, "start() first"
        async with self.pool.acquire() as conn:
            end = await conn.fetchval("SELECT coalesce(max(id), 0) FROM order_events")
            rows = await conn.fetch(
                """SELECT id, type, data->>'sku' AS sku, (data->>'available')::bigint AS available,
                          (extract(epoch FROM at) * 1000)::bigint AS at_ms
                   FROM order_events WHERE id > $1 AND id <= $2 AND type = ANY($3::text[])
                   ORDER BY id LIMIT $4""",
                self.after, end, STOCK_TYPES, FEED_PAGE)
        self.after = rows[-1]["id"] if len(rows) == FEED_PAGE else max(end, self.after)
        return [{"id": r["id"], "type": r["type"], "sku": r["sku"], "available": r["available"],
                 "at": iso_ms(r["at_ms"])} for r in rows]

    async def events(self, interval: float, closing: asyncio.Event) -> AsyncIterator[tuple[str, str | None, str]]:
        """``(event, id, JSON data)`` to send: a tick at once and every ``interval`` seconds
        (the next at once when a tick took longer), until ``closing`` is set. Stock alerts
        carry their feed id, so a client resumes with ``Last-Event-ID``; while PostgreSQL
        is down they wait, and the stats say so."""
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while not closing.is_set():
            for event, event_id, data in await self.tick():
                yield event, event_id, orjson.dumps(data).decode()
            deadline = max(deadline + interval, loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await closing.wait()


def _hot(hot: stockwatch.Hot, available: int) -> dict[str, Any]:
    eta = None
    if hot.per_second > 0 and available > 0:
        eta = iso_ms(int((time.time() + available / hot.per_second) * 1000))
    return {"sku": hot.sku, "available": available, "sales_per_minute": round(hot.per_second * 60, 3),
            "sell_out_eta": eta}
