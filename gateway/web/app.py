"""The application factory: routes (each behind the error edge, gateway/web/edge.py), and one
cleanup context per resource.

``create_app`` opens nothing; resources open in order when the app starts (Redis and its
scripts, PostgreSQL with migrations, the warehouse cache, the coalescer, the writer, the
webhook sender) and close in reverse: the webhook sender stops first, and the coalescer
answers what it holds before the writer drains.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import ResponseError

from gateway import db, keys, metrics, redisconn, webhooks
from gateway.coalescer import Coalescer
from gateway.config import ConfigError, Settings
from gateway.expirer import Expirer
from gateway.inventory import WarehouseCache
from gateway.livestats import Streams
from gateway.sales import SaleCache
from gateway.scripts import Scripts
from gateway.soldout import SoldOut
from gateway.web import appkeys as K
from gateway.web import live, urls
from gateway.web.auth import Authenticator
from gateway.writer import Writers

log = logging.getLogger(__name__)


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[K.SETTINGS]
    assert settings.redis_url, "serve starts embedded servers before the app"
    client = redisconn.connect(settings.redis_url, max_connections=64, socket_timeout=10,
                               socket_connect_timeout=5)
    app[K.REDIS] = client
    scripts = Scripts(client, replicas=1 if settings.durability == "replicated" else 0)
    await scripts.load()
    app[K.SCRIPTS] = scripts
    yield
    await client.aclose()


async def pg_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[K.SETTINGS]
    assert settings.database_url
    pool = await db.create_pool(settings.database_url)
    async with pool.acquire() as conn:
        await db.migrate(conn)
    app[K.PG] = pool
    yield
    await pool.close()


async def wait_aof_supported(client: aioredis.Redis) -> bool:
    try:
        await client.execute_command("WAITAOF", 1, 0, 100)
    except ResponseError as exc:
        log.warning("OMS_DURABILITY=fsync but Redis cannot confirm fsync (%s); "
                    "orders are acknowledged without WAITAOF", exc)
        return False
    return True


async def mark_ready(client: aioredis.Redis, pool: asyncpg.Pool, layout: keys.Partitions = keys.SINGLE) -> bool:
    """Set the ready marker of each partition on a new system; refuse to when Redis lost what PostgreSQL has.

    Without the marker every script answers 503, never "insufficient stock": an empty Redis
    beside a PostgreSQL with orders and stock means Redis lost its data, and selling from it
    would oversell. ``python -m gateway rebuild-redis`` restores it and sets the marker.
    The marker holds the partition layout (``OMS_PARTITIONS``): Redis laid out otherwise is a
    configuration error, since its keys are not where this process would look.
    """
    tags = list(dict.fromkeys([*layout.all(), keys.ONE]))
    pipe = client.pipeline(transaction=False)
    for p in tags:
        pipe.get(keys.ready(p))
    marks = dict(zip(tags, await pipe.execute(), strict=True))
    wrong = {p: m.decode() for p, m in marks.items() if m is not None and m.decode() != layout.mark}
    if wrong:
        raise ConfigError(f"OMS_PARTITIONS={layout.count}: Redis holds data laid out as {sorted(set(wrong.values()))} "
                          "(partitions/separator); keep the settings it was made with, or rebuild Redis from PostgreSQL")
    missing = [p for p in layout.all() if marks[p] is None]
    if not missing:
        return True
    has_state = await pool.fetchval("SELECT EXISTS (SELECT 1 FROM inventory) OR EXISTS (SELECT 1 FROM orders)")
    if not has_state:
        for p in missing:
            await client.set(keys.ready(p), layout.mark, nx=True)
        return True
    log.error("Redis has no state but PostgreSQL has orders and stock: Redis lost its data. "
              "Orders answer 503 until `python -m gateway rebuild-redis` restores it.")
    return False


async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[K.SETTINGS]
    client = app[K.REDIS]
    await mark_ready(client, app[K.PG], settings.layout)
    cache = WarehouseCache(client, settings.layout)
    await cache.load()
    app[K.WAREHOUSES] = cache
    if settings.durability == "async":
        log.warning("OMS_DURABILITY=async: orders are acknowledged before Redis has them on disk")
        wait_aof = False
    else:
        wait_aof = await wait_aof_supported(client)
    sales = SaleCache(client, settings.layout)
    await sales.load()
    app[K.SALES] = sales
    soldout = SoldOut(settings.redis_url, client, layout=settings.layout)
    await soldout.start()
    coalescer = Coalescer(
        app[K.SCRIPTS], cache, sales, strategy=settings.strategy, reservation_ttl=settings.reservation_ttl,
        record_ttl=settings.idempotency_ttl, max_in_flight=settings.max_in_flight,
        max_batch=settings.max_batch, wait_aof=wait_aof, soldout=soldout, max_backlog=settings.max_backlog,
        layout=settings.layout,
    )
    coalescer.start()
    app[K.COALESCER] = coalescer
    writer = Writers(client, app[K.PG], settings.layout, batch=settings.writer_batch,
                    claim_idle_ms=settings.writer_claim_idle_ms, low_stock=settings.low_stock)
    await writer.ensure_group()
    if settings.run_writer:
        writer.start()
    app[K.WRITER] = writer
    expirer = Expirer(app[K.SCRIPTS], record_ttl=settings.idempotency_ttl, layout=settings.layout)
    expirer.start()
    app[K.EXPIRER] = expirer
    publisher = metrics.Publisher([
        metrics.Sampled(metrics.SOLD_OUT, lambda: coalescer.sold_out_answers).publish,
        metrics.Sampled(metrics.EXPIRED, lambda: expirer.expired).publish,
        lambda: metrics.IN_FLIGHT.set(coalescer.in_flight),
    ])
    publisher.start()
    app[K.PUBLISHER] = publisher
    yield
    await publisher.close()
    await expirer.close()
    await coalescer.close()
    await soldout.close()
    try:
        await asyncio.wait_for(writer.close(drain=True), timeout=15)
    except TimeoutError:
        log.warning("writer did not drain in 15 s; the rest is written on the next start")
        await writer.close(drain=False)


async def webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[K.SETTINGS]
    assert settings.database_url
    sender = webhooks.Sender(app[K.PG], settings.database_url)
    sender.start()
    app[K.WEBHOOKS] = sender
    yield
    await sender.close()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body)
    app[K.SETTINGS] = settings
    app[K.AUTH] = Authenticator(settings.api_keys, settings.jwt_secret)
    app[K.EXPORTS] = asyncio.Semaphore(settings.max_exports)
    app[K.LIVE] = Streams()
    app.on_shutdown.append(live.end_streams)  # before the handlers are awaited and the pools close
    app.cleanup_ctx.extend([redis_ctx, pg_ctx, engine_ctx, webhooks_ctx])
    urls.setup(app)
    if settings.dev_credentials:
        log.warning("development credentials active: OMS_API_KEYS or OMS_JWT_SECRET is not set and the "
                    "development default stands in for it (README.md, section Auth); set both before anyone "
                    "else can reach this port")
    return app
