"""A sick backend is a 503 with Retry-After on every route, never a 500; what needs only the
other store still answers; and the same gateway recovers by itself when the store returns.

These tests kill and restart their own embedded Valkey and stop and start their own
PostgreSQL (not the suite's shared servers).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from gateway import db
from gateway.config import Settings
from gateway.ops.embedded import EmbeddedPostgres, EmbeddedValkey
from gateway.web import appkeys as K
from gateway.web.app import create_app
from tests.conftest import API_KEYS, SECRET, Gateway, auth, order_body

pytestmark = pytest.mark.slow
SKU = "F-1"
ADMIN, OPS, PAY = auth("k-admin"), auth("k-ops"), auth("k-pay")
SALE = {"skus": [SKU], "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2199-01-01T00:00:00Z",
        "per_user_limit": 1000}
HOOK = {"url": "http://127.0.0.1:9/hook", "events": ["order.paid"], "secret": "s" * 16}
BACKLOG = 30
EXPORTS = tuple(f"GET /v1/exports/{name}.csv" for name in ("orders", "payments", "refunds", "movements"))


class Servers:
    def __init__(self, base) -> None:
        self.valkey = EmbeddedValkey(base / "valkey")
        self.pg = EmbeddedPostgres(base / "pg", database="oms_faults")
        self.redis_url = self.valkey.start()
        self.database_url = self.pg.start()

    async def restart_valkey(self) -> None:
        await asyncio.to_thread(self.valkey.start)

    async def stop_postgres(self) -> None:
        await asyncio.to_thread(self.pg.stop)

    async def start_postgres(self) -> None:
        await asyncio.to_thread(self.pg.start)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Any:
    servers = Servers(tmp_path_factory.mktemp("faults"))
    yield servers
    servers.pg.stop()
    servers.valkey.stop()


@pytest.fixture
async def gw(servers: Servers) -> AsyncIterator[Gateway]:
    async for gateway in started(servers):
        yield gateway


@pytest.fixture
async def small_backlog(servers: Servers) -> AsyncIterator[Gateway]:
    async for gateway in started(servers, OMS_MAX_BACKLOG=str(BACKLOG)):
        yield gateway


async def started(servers: Servers, **env: str) -> AsyncIterator[Gateway]:
    """A gateway on fresh state, with stock and three written orders."""
    client = aioredis.from_url(servers.redis_url)
    await client.flushall()
    await client.aclose()
    pool = await db.create_pool(servers.database_url)
    async with pool.acquire() as conn:
        await db.migrate(conn)
        await conn.execute("TRUNCATE orders, order_items, allocations, order_events, inventory, "
                           "inventory_movements, warehouses, sales, webhooks, quarantine CASCADE")
    await pool.close()
    settings = Settings.from_env({
        "OMS_REDIS_URL": servers.redis_url, "OMS_DATABASE_URL": servers.database_url,
        "OMS_API_KEYS": API_KEYS, "OMS_JWT_SECRET": SECRET, "OMS_ENV": "test", "OMS_WRITER_CLAIM_IDLE_MS": "200",
        **env,
    })
    app = create_app(settings)
    test_client = TestClient(TestServer(app), connector=aiohttp.TCPConnector(limit=0))
    await test_client.start_server()
    gw = Gateway(app, test_client)
    await gw.set_stock(SKU, {"W1": 100})
    for n in (1, 2, 3):
        assert (await gw.post("/v1/orders", order_body(f"seed-{n}", items=[{"sku": SKU, "qty": 1}]))).status == 201
    await gw.caught_up()
    yield gw
    await test_client.close()


def calls(n: int) -> list[tuple[str, str, Any, dict[str, str]]]:
    """One call of every kind of route; ``n`` keeps new ids new."""
    return [
        ("POST", "/v1/orders", order_body(f"new-{n}", items=[{"sku": SKU, "qty": 1}]), ADMIN),
        ("POST", "/v1/orders/batch", {"orders": [order_body(f"batch-{n}", items=[{"sku": SKU, "qty": 1}])]}, ADMIN),
        ("GET", "/v1/orders/seed-1", None, ADMIN),
        ("GET", "/v1/orders/seed-1/events", None, ADMIN),
        ("GET", "/v1/orders", None, ADMIN),
        ("POST", "/v1/orders/seed-2/payment", {"payment_id": "pay-1", "amount": 0}, PAY),
        ("POST", "/v1/orders/seed-3/cancel", {"reason": "ops"}, OPS),
        ("GET", f"/v1/inventory/{SKU}", None, OPS),
        ("GET", "/v1/inventory", None, OPS),
        ("GET", f"/v1/inventory/{SKU}/movements", None, OPS),
        ("PUT", f"/v1/inventory/{SKU}", {"warehouses": {"W1": 100 + n}}, OPS),
        ("POST", f"/v1/inventory/{SKU}/adjust", {"warehouse": "W1", "delta": 1, "reason": "count"}, OPS),
        ("PUT", "/v1/warehouses/W1", {"priority": 1}, OPS),
        ("PUT", "/v1/sales/s1", SALE, OPS),
        ("GET", "/v1/sales/s1", None, OPS),
        ("GET", "/v1/sales", None, OPS),
        ("GET", "/v1/warehouses", None, OPS),
        ("GET", "/v1/payments", None, PAY),
        ("GET", "/v1/refunds", None, PAY),
        ("GET", "/v1/exports/orders.csv", None, OPS),
        ("GET", "/v1/exports/payments.csv", None, PAY),
        ("GET", "/v1/exports/refunds.csv", None, PAY),
        ("GET", "/v1/exports/movements.csv", None, OPS),
        ("POST", "/v1/allocations/plan", {"items": [{"sku": SKU, "qty": 1}]}, OPS),
        ("GET", "/v1/stats", None, OPS),
        ("GET", "/v1/events", None, OPS),
        ("PUT", "/v1/webhooks/h1", HOOK, ADMIN),
        ("GET", "/v1/webhooks", None, ADMIN),
        ("DELETE", "/v1/webhooks/h-none", None, ADMIN),
        ("GET", "/v1/reconciliation", None, OPS),
        ("POST", "/v1/reconciliation/repair", None, ADMIN),
        ("GET", "/readyz", None, {}),
        ("GET", "/metrics", None, OPS),
    ]


async def answers(gw: Gateway, n: int) -> dict[str, tuple[int, Any, dict[str, str]]]:
    out = {}
    for method, path, body, headers in calls(n):
        resp = await gw.client.request(method, path, json=body, headers=headers)
        payload = await resp.json() if resp.content_type.endswith("json") else await resp.text()
        out[f"{method} {path}"] = (resp.status, payload, dict(resp.headers))
    return out


def assert_503s_are_well_formed(seen: dict[str, tuple[int, Any, dict[str, str]]]) -> None:
    for route, (status, body, headers) in seen.items():
        assert status != 500, (route, body)
        if status == 503:
            assert int(headers["Retry-After"]) >= 1, route
            if route != "GET /readyz":
                assert body["code"] == "backend_unavailable", (route, body)
                assert body["status"] == 503


async def recovered(gw: Gateway, timeout: float = 30.0) -> dict[str, tuple[int, Any, dict[str, str]]]:
    """Ask every route again until none answers 503: the gateway finds the store by itself."""
    deadline = time.monotonic() + timeout
    n = 100
    while True:
        n += 1
        seen = await answers(gw, n)
        down = [r for r, (status, _, _) in seen.items() if status >= 500]
        if not down:
            return seen
        assert time.monotonic() < deadline, f"still failing: {down}"
        await asyncio.sleep(0.2)


async def test_valkey_killed_and_restarted(gw, servers):
    healthy = await answers(gw, 1)
    assert all(status < 500 for status, _, _ in healthy.values()), healthy
    servers.valkey.kill()
    try:
        down = await answers(gw, 2)
        assert_503s_are_well_formed(down)
        # PostgreSQL alone still answers what it holds
        for route in ("GET /v1/orders", "GET /v1/events", "GET /v1/webhooks", "GET /v1/orders/seed-1/events",
                      f"GET /v1/inventory/{SKU}/movements", "GET /v1/payments", "GET /v1/refunds", *EXPORTS):
            assert down[route][0] == 200, (route, down[route])
        for route in ("POST /v1/orders", "GET /v1/orders/seed-1", "POST /v1/orders/seed-2/payment",
                      f"GET /v1/inventory/{SKU}", "GET /v1/stats", "GET /readyz", "GET /v1/inventory",
                      "GET /v1/sales", "GET /v1/warehouses"):
            assert down[route][0] == 503, (route, down[route])
        assert down["GET /readyz"][1]["redis"] is False
        assert down["POST /v1/orders/batch"][1]["results"][0]["status"] == 503
        # the metrics still answer, without what only Redis knows, and count the fault
        status, text, _ = down["GET /metrics"]
        assert status == 200 and "oms_stream_length" not in text
        assert 'oms_backend_errors_total{backend="redis"}' in text
    finally:
        await servers.restart_valkey()
    back = await recovered(gw)
    assert back["POST /v1/orders"][0] == 201
    assert back["GET /readyz"][0] == 200
    await gw.caught_up()


async def test_postgres_stopped_and_started(gw, servers):
    await answers(gw, 1)
    await servers.stop_postgres()
    try:
        down = await answers(gw, 3)
        assert_503s_are_well_formed(down)
        # order intake and the live record need only Redis
        assert down["POST /v1/orders"][0] == 201
        assert down["GET /v1/orders/seed-1"][0] == 200
        view = down[f"GET /v1/inventory/{SKU}"]
        assert view[0] == 200 and view[1]["forecast"] == "unavailable" and view[1]["sell_out_eta"] is None
        stats = down["GET /v1/stats"]
        assert stats[0] == 200 and stats[1]["unavailable"] == ["postgres"]
        for route in ("GET /v1/orders", "GET /v1/events", "GET /v1/webhooks", "PUT /v1/warehouses/W1",
                      "GET /v1/reconciliation", "GET /v1/orders/seed-1/events", "GET /v1/inventory",
                      f"GET /v1/inventory/{SKU}/movements", "GET /v1/payments", "GET /v1/refunds", *EXPORTS):
            assert down[route][0] == 503, (route, down[route])
        # the order view and the tables allocation uses need only Redis
        for route in ("GET /v1/sales", "GET /v1/warehouses"):
            assert down[route][0] == 200, (route, down[route])
        assert down["GET /v1/orders/seed-1"][1]["payment_id"] is None
        ready = down["GET /readyz"]  # intake goes on: ready, and degraded
        assert ready[0] == 200 and ready[1]["postgres"] is False and ready[1]["degraded"] == ["postgres"]
        status, text, _ = down["GET /metrics"]
        assert status == 200 and "oms_stream_length" in text and "oms_quarantined_entries" not in text
    finally:
        await servers.start_postgres()
    back = await recovered(gw)
    assert back["GET /v1/orders"][0] == 200
    await gw.caught_up()  # the writer found PostgreSQL again too
    listed = await (await gw.client.get("/v1/orders?limit=200", headers=OPS)).json()
    assert "new-3" in {o["order_id"] for o in listed["orders"]}  # taken while PostgreSQL was down


async def test_a_long_postgres_outage_buffers_orders_up_to_the_backlog_and_nothing_is_lost(small_backlog, servers):
    gw = small_backlog

    await servers.stop_postgres()
    try:
        accepted: list[str] = []
        for n in range(BACKLOG + 5):  # the stream was empty: each order is one entry
            resp = await gw.post("/v1/orders", order_body(f"out-{n}", items=[{"sku": SKU, "qty": 1}]))
            if resp.status != 201:
                break
            accepted.append(f"out-{n}")
        assert len(accepted) == BACKLOG
        body = await resp.json()
        assert (resp.status, body["code"], resp.headers["Retry-After"]) == (503, "backlog_full", "5")
        assert (await gw.post("/v1/orders", order_body("out-late", items=[{"sku": SKU, "qty": 1}]))).status == 503
        # the live record still answers; what needs PostgreSQL says so at once, not after a timeout
        assert (await gw.client.get("/v1/orders/out-0", headers=OPS)).status == 200
        began = time.monotonic()
        listed = await gw.client.get("/v1/orders", headers=OPS)
        assert listed.status == 503 and (await listed.json())["code"] == "backend_unavailable"
        assert time.monotonic() - began < 5  # command_timeout is 10 s
        ready = await (await gw.client.get("/readyz")).json()
        assert ready["ready"] is True and ready["degraded"] == ["postgres"]
        # longer than a restart: the writer fails, backs off and fails again, three times at least
        deadline = time.monotonic() + 60
        while gw.app[K.WRITER].retries < 3:
            assert time.monotonic() < deadline, "the writer never retried"
            await asyncio.sleep(0.2)
    finally:
        await servers.start_postgres()
    await gw.caught_up()  # the writer found PostgreSQL again and wrote the whole backlog
    async with gw.app[K.PG].acquire() as conn:
        written = await conn.fetchval("SELECT count(*) FROM orders WHERE order_id LIKE 'out-%'")
    assert written == BACKLOG
    assert (await gw.post("/v1/orders", order_body("out-after", items=[{"sku": SKU, "qty": 1}]))).status == 201
    ready = await (await gw.client.get("/readyz")).json()
    assert ready["degraded"] == []
