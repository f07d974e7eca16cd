"""Real servers, started once per run; fresh state per test.

``OMS_TEST_REDIS_URL`` / ``OMS_TEST_DATABASE_URL`` point the suite at servers of your
own; otherwise it starts embedded Valkey and PostgreSQL in a temporary directory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import appkeys as K
from gateway import db
from gateway.app import create_app
from gateway.config import Settings
from gateway.embedded import EmbeddedPostgres, EmbeddedValkey

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
    client = aioredis.from_url(backends.redis_url)
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
    })


class Gateway:
    """A running app and a client for it."""

    def __init__(self, app: web.Application, client: TestClient) -> None:
        self.app = app
        self.client = client

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
