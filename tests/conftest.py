"""Real servers, started once per run; fresh state per test.

``OMS_TEST_REDIS_URL`` / ``OMS_TEST_DATABASE_URL`` point the suite at servers of your
own; otherwise it starts embedded Valkey and PostgreSQL in a temporary directory. Under
pytest-xdist (``make test`` runs three processes) each process starts its own pair, in its own
temporary directory, and a test file stays in one process (``--dist loadfile``). Servers of
your own are shared by the processes: run those with ``TEST_WORKERS=0``.
A test fails when the event loop reported an error nobody handled while it ran (a task
that died unobserved, an exception in a callback), as asyncpg's test base does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import db, keys, orders, redisconn
from gateway.config import Settings
from gateway.ops.embedded import EmbeddedPostgres, EmbeddedValkey, EmbeddedValkeyCluster
from gateway.web import appkeys as K
from gateway.web.app import create_app

ADMIN = {"Authorization": "Bearer dev-admin-key"}
API_KEYS = "admin=k-admin,ops=k-ops,payments=k-pay,storefront:web=k-web,storefront:app=k-app"
SECRET = "test-secret-for-the-suite-0123456789abcdef"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def user_token(sub: str, *, ttl: int = 3600, secret: str = SECRET, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + ttl, **claims}, secret, algorithm="HS256")


def as_user(sub: str) -> dict[str, str]:
    return auth(user_token(sub))


def order_body(order_id: str, user_id: str = "u-1", items: Any = None, **extra: Any) -> dict[str, Any]:
    return {"order_id": order_id, "user_id": user_id, "channel": "web",
            "items": items if items is not None else [{"sku": "SKU-1", "qty": 1}], **extra}


class LoopErrors:
    """An event-loop exception handler that records every context it is given."""

    def __init__(self) -> None:
        self.contexts: list[dict[str, Any]] = []

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.contexts.append(context)

    def report(self) -> str:
        lines = []
        for context in self.contexts:
            lines.append(str(context.get("message", "unhandled error in the event loop")))
            for name in ("task", "future", "handle"):
                if name in context:
                    lines.append(f"  {name}: {context[name]!r}")
            exc = context.get("exception")
            if exc is not None:
                lines.append("".join(traceback.format_exception(exc)).rstrip())
        return "\n".join(lines)


@contextlib.contextmanager
def loop_errors_recorded(loop: asyncio.AbstractEventLoop) -> Iterator[LoopErrors]:
    """Record what ``loop`` reports while the block runs, then restore its previous handler.

    Collects garbage before leaving: a task that died with nobody awaiting it reports
    "Task exception was never retrieved" only when it is collected.
    """
    previous = loop.get_exception_handler()
    errors = LoopErrors()
    loop.set_exception_handler(errors)
    try:
        yield errors
        gc.collect()
    finally:
        loop.set_exception_handler(previous)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with a slow test first, in their order, then the rest: under ``--dist loadfile``
    (with ``--no-loadscope-reorder``) the processes share out the long files early and
    the short ones fill in, rather than one long file running alone at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@pytest.fixture(autouse=True)
async def loop_errors() -> AsyncIterator[LoopErrors]:
    """Fail the test, at teardown, if the event loop reported an error nobody handled.

    Autouse and function-scoped, it is set up before the test's other fixtures and torn
    down after them, so errors while gateways and clients close count too. The loop is the
    session's: the handler is installed per test and the previous one put back.
    """
    with loop_errors_recorded(asyncio.get_running_loop()) as errors:
        yield errors
    if errors.contexts:
        pytest.fail("the event loop reported error(s) nobody handled:\n" + errors.report(), pytrace=False)


@dataclasses.dataclass
class Backends:
    redis_url: str
    database_url: str


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Any:
    redis_url = os.environ.get("OMS_TEST_REDIS_URL")
    database_url = os.environ.get("OMS_TEST_DATABASE_URL")
    base: Path = tmp_path_factory.mktemp("servers")
    started: list[Any] = []
    if not redis_url and os.environ.get("OMS_TEST_CLUSTER"):
        cluster = EmbeddedValkeyCluster(base / "cluster", primaries=3)
        started.append(cluster)
        redis_url = cluster.start()
    if not redis_url:
        valkey = EmbeddedValkey(base / "valkey")
        started.append(valkey)
        redis_url = valkey.start()
    if not database_url:
        pg = EmbeddedPostgres(base / "pg", database="oms_test")
        started.append(pg)
        database_url = pg.start()
    yield Backends(redis_url, database_url)
    for server in reversed(started):
        server.stop()


@pytest.fixture
async def redis(backends: Backends) -> AsyncIterator[aioredis.Redis]:
    client = redisconn.connect(backends.redis_url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def pg(backends: Backends) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(backends.database_url)
    async with pool.acquire() as conn:
        await db.migrate(conn)
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
        )
        await conn.execute("TRUNCATE " + ", ".join(f'"{t["tablename"]}"' for t in tables) + " CASCADE")
    yield pool
    await pool.close()


@pytest.fixture
def settings(backends: Backends) -> Settings:
    return Settings.from_env({
        "OMS_REDIS_URL": backends.redis_url, "OMS_DATABASE_URL": backends.database_url,
        "OMS_API_KEYS": API_KEYS, "OMS_JWT_SECRET": SECRET, "OMS_ENV": "test",
        "OMS_WRITER_CLAIM_IDLE_MS": "200",
        **LAYOUT_ENV,
    })


# make test-cluster runs the cluster files with the stock over three partitions
# (OMS_TEST_PARTITIONS=3); a command a test starts is given the same layout
LAYOUT_ENV = {k.replace("OMS_TEST_", "OMS_"): v for k, v in os.environ.items()
              if k in ("OMS_TEST_PARTITIONS", "OMS_TEST_PARTITION_SEP")}


class Gateway:
    """A running app and a client for it."""

    def __init__(self, app: web.Application, client: TestClient) -> None:
        self.app = app
        self.client = client
        self.layout: keys.Partitions = app[K.SETTINGS].layout

    async def order_key(self, order_id: str) -> str:
        """The key of the order's record, in the partition that holds it."""
        return keys.order(order_id, await orders.locate(self.app[K.REDIS], self.layout, order_id))

    async def expire_record(self, order_id: str) -> None:
        """What the record's TTL does: the record and its locator gone."""
        await self.app[K.REDIS].delete(await self.order_key(order_id),
                                       keys.locator(order_id, self.layout.home(order_id)))

    async def stream_length(self) -> int:
        """Entries in the events streams of every partition."""
        return sum([await self.app[K.REDIS].xlen(keys.events(p)) for p in self.layout.all()])

    async def markers(self) -> list[bool]:
        """Whether each partition's ready marker is set."""
        return [bool(await self.app[K.REDIS].exists(keys.ready(p))) for p in self.layout.all()]

    async def ready(self) -> bool:
        return all(await self.markers())

    async def open_holds(self) -> list[int]:
        """Holds not yet known committed, per partition (gateway/spans.py)."""
        return [await self.app[K.REDIS].zcard(keys.holds(p)) for p in self.layout.all()]

    async def caught_up(self) -> None:
        """Wait until the writer has written everything the stream held at this call."""
        await asyncio.wait_for(self.app[K.WRITER].wait_idle(), timeout=30)

    async def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        return await self.client.post(path, json=body, headers=headers or auth("k-admin"))

    async def stock(self, sku: str) -> dict[str, Any]:
        resp = await self.client.get(f"/v1/inventory/{sku}", headers=auth("k-ops"))
        assert resp.status == 200
        return await resp.json()

    async def set_stock(self, sku: str, warehouses: dict[str, int]) -> dict[str, Any]:
        resp = await self.client.put(f"/v1/inventory/{sku}", json={"warehouses": warehouses},
                                     headers=auth("k-ops"))
        assert resp.status == 200, await resp.text()
        return await resp.json()


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(settings: Settings, redis: aioredis.Redis, pg: asyncpg.Pool) -> AsyncIterator[GatewayFactory]:
    made: list[TestClient] = []

    async def make(**overrides: Any) -> Gateway:
        app = create_app(dataclasses.replace(settings, **overrides))
        client = TestClient(TestServer(app), connector=aiohttp.TCPConnector(limit=0))
        await client.start_server()
        made.append(client)
        return Gateway(app, client)

    yield make
    for client in reversed(made):
        await client.close()


@pytest.fixture
async def gw(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway()


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
