"""Hostile input anywhere a client reaches (body, path, query, token claims) is a 4xx problem,
changes nothing, and never reaches PostgreSQL, a Redis key or a log line."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import jwt
import orjson
import pytest
from aiohttp import web

from gateway import keys
from gateway.web.app import create_app
from tests.conftest import SECRET, auth, order_body, user_token
from tests.test_bad_input import SKU, dump, refused_without_trace, snapshot

NUL = "\x00"


@pytest.fixture
async def gw(make_gateway):
    """Without its writer, so the stream's length shows any write (see tests/test_bad_input.py)."""
    gw = await make_gateway(run_writer=False)
    await gw.set_stock(SKU, {"W1": 5})
    return gw


def order(**changes: Any) -> bytes:
    return dump({**order_body("hostile-1", items=[{"sku": SKU, "qty": 1}]), **changes})


SALE = {"skus": [SKU], "starts_at": "2026-11-11T00:00:00Z", "ends_at": "2026-11-12T00:00:00Z",
        "per_user_limit": 2}
HOOK = {"url": "http://127.0.0.1:9/hook", "events": ["*"], "secret": "s" * 16}

BODIES = [
    pytest.param("POST", "/v1/orders", order(ship_to={"region": NUL}), id="region_nul"),
    pytest.param("POST", "/v1/orders", order(ship_to={"region": "east\n"}), id="region_trailing_newline"),
    pytest.param("POST", "/v1/orders", order(user_id="u-1\x07"), id="user_id_bell"),
    pytest.param("POST", "/v1/orders", order(user_id="u-1\n"), id="user_id_trailing_newline"),
    pytest.param("POST", "/v1/orders", order(user_id="u\x85"), id="user_id_c1_control"),
    pytest.param("POST", "/v1/orders", order(order_id="nl-1\n"), id="order_id_trailing_newline"),
    pytest.param("POST", "/v1/orders", order(items=[{"sku": "SKU-1\n", "qty": 1}]), id="sku_trailing_newline"),
    pytest.param("POST", "/v1/orders", order(sale_id="s1\n"), id="sale_id_trailing_newline"),
    pytest.param("POST", "/v1/orders", order(currency="EUR\n"), id="currency_trailing_newline"),
    pytest.param("POST", "/v1/orders/batch", dump({"orders": [orjson.loads(order())]})[:-2]
                 + b"," + b"[" * 1000 + b"]" * 1000 + b"]}", id="batch_entry_nested_1000_deep"),
    pytest.param("PUT", f"/v1/inventory/{SKU}", dump({"warehouses": {"W1\n": 5}}), id="warehouse_key_newline"),
    pytest.param("POST", f"/v1/inventory/{SKU}/adjust", dump({"warehouse": "W1", "delta": 1, "reason": "count\n"}),
                 id="adjust_reason_newline"),
    pytest.param("PUT", "/v1/warehouses/W1", dump({"region": NUL}), id="warehouse_region_nul"),
    pytest.param("PUT", "/v1/warehouses/W1%0A", dump({"region": "east"}), id="warehouse_id_trailing_newline"),
    pytest.param("PUT", "/v1/sales/s1", dump({**SALE, "starts_at": "0001-01-01T00:00:00+14:00"}),
                 id="sale_starts_in_year_0"),
    pytest.param("PUT", "/v1/sales/s1", dump({**SALE, "ends_at": "9999-12-31T23:59:59-14:00"}),
                 id="sale_ends_after_year_9999"),
    pytest.param("PUT", "/v1/sales/s1", dump({**SALE, "channels": ["web"] * 6}), id="sale_channels_repeated"),
    pytest.param("PUT", "/v1/sales/s1%0A", dump(SALE), id="sale_id_trailing_newline"),
    pytest.param("PUT", "/v1/webhooks/h1", dump({**HOOK, "secret": "s" * 16 + NUL}), id="webhook_secret_nul"),
    pytest.param("PUT", "/v1/webhooks/h1", dump({**HOOK, "url": "http://127.0.0.1:9/\x00"}), id="webhook_url_nul"),
    pytest.param("PUT", "/v1/webhooks/h1%0A", dump(HOOK), id="webhook_id_trailing_newline"),
    pytest.param("POST", "/v1/allocations/plan", dump({"items": [{"sku": "S\n", "qty": 1}]}), id="plan_sku_newline"),
    pytest.param("POST", "/v1/allocations/plan", dump({"items": [{"sku": SKU, "qty": 1}],
                                                       "ship_to": {"region": "e\x00"}}), id="plan_region_nul"),
]


@pytest.mark.parametrize(("method", "path", "body"), BODIES)
async def test_hostile_body_or_path_is_422_without_trace(gw, redis, pg, method, path, body):
    tables = await table_counts(pg)
    await refused_without_trace(gw, redis, method, path, body, 422, expected_code(path, body))
    assert await table_counts(pg) == tables


def expected_code(path: str, body: bytes) -> str:
    """The code the gateway gives: a path segment names itself, nesting says too_deep, else invalid."""
    if b"[[[[" in body:
        return "too_deep"
    if "%0A" in path:
        return {"warehouses": "invalid_warehouse_id", "sales": "invalid_sale_id",
                "webhooks": "invalid_webhook_id"}[path.split("/")[2]]
    if b"0001-01-01" in body or b"9999-12-31" in body:
        return "invalid_time"
    return "invalid"


async def table_counts(pg) -> dict[str, int]:
    return {t: await pg.fetchval(f"SELECT count(*) FROM {t}")
            for t in ("orders", "warehouses", "sales", "webhooks", "order_events")}


async def test_ship_with_a_nul_carrier_is_422_and_the_order_stays_paid(gw, redis):
    assert (await gw.post("/v1/orders", order_body("ship-1", items=[{"sku": SKU, "qty": 1}]))).status == 201
    pay = await gw.post("/v1/orders/ship-1/payment", {"payment_id": "p-1", "amount": 0}, auth("k-pay"))
    assert pay.status == 200
    before = await snapshot(gw, redis)
    for carrier in (NUL, "DHL\n", "D\x1bH"):
        resp = await gw.post("/v1/orders/ship-1/ship", {"carrier": carrier}, auth("k-ops"))
        assert resp.status == 422, await resp.text()
        assert (await resp.json())["code"] == "invalid"
    assert await snapshot(gw, redis) == before
    order = await (await gw.client.get("/v1/orders/ship-1", headers=auth("k-ops"))).json()
    assert order["status"] == "paid"


@pytest.mark.parametrize(("query", "code"), [
    ("channel=%00", "invalid_channel"),
    ("user_id=%00", "invalid_user_id"),
    ("user_id=u-1%0A", "invalid_user_id"),
    ("sale_id=%00", "invalid_sale_id"),
    ("sale_id=s1%0A", "invalid_sale_id"),
    ("status=paid%0A", "invalid_status"),
    ("limit=%D9%A3", "invalid_limit"),  # an Arabic-Indic three: int() takes it, the contract does not
    ("limit=1_0", "invalid_limit"),
    ("cursor=%00", "invalid_cursor"),
    ("from=0001-01-01T00:00:00%2B14:00", "invalid_from"),
    ("to=%00", "invalid_to"),
])
async def test_hostile_list_query_is_422(gw, query, code):
    resp = await gw.client.get(f"/v1/orders?{query}", headers=auth("k-ops"))
    assert resp.status == 422, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == code


@pytest.mark.parametrize(("path", "query", "code"), [
    ("/v1/inventory", "prefix=%00", "invalid_prefix"),
    ("/v1/inventory", "prefix=SKU%0A", "invalid_prefix"),
    ("/v1/inventory", "cursor=U0tVAA==", "invalid_cursor"),  # "SKU\0"
    ("/v1/inventory", "limit=%D9%A3", "invalid_limit"),
    (f"/v1/inventory/{SKU}/movements", "warehouse=W%00", "invalid_warehouse"),
    (f"/v1/inventory/{SKU}/movements", "from=2026-01-01T00:00:00Z%0A", "invalid_from"),
    (f"/v1/inventory/{SKU}/movements", "to=9999-12-31T23:59:59-14:00", "invalid_to"),
    (f"/v1/inventory/{SKU}/movements", "cursor=MTcwMDAwMDAwMDAwMHwxAA==", "invalid_cursor"),  # "...|1\0"
    ("/v1/payments", "currency=EU%1BR", "invalid_currency"),
    ("/v1/payments", "limit=1e9", "invalid_limit"),
    ("/v1/refunds", "cursor=OTk5OTk5OTk5OTk5OTk5OTk5OXwx", "invalid_cursor"),  # a time past year 9999
    ("/v1/exports/orders.csv", "channel=%00", "invalid_channel"),
    ("/v1/exports/orders.csv", "status=paid%0A", "invalid_status"),
    ("/v1/exports/payments.csv", "from=%00", "invalid_from"),
    ("/v1/exports/refunds.csv", "currency=EUR%0A", "invalid_currency"),
    ("/v1/exports/movements.csv", "sku=S%0A", "invalid_sku"),
])
async def test_hostile_query_of_the_console_lists_and_exports_is_422(gw, path, query, code):
    resp = await gw.client.get(f"{path}?{query}", headers=auth("k-admin"))
    assert resp.status == 422, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == code


@pytest.mark.parametrize("path", ["/v1/orders/o%00/events", "/v1/orders/o-1%0A/events"])
async def test_hostile_order_id_of_the_timeline_is_404(gw, path):
    resp = await gw.client.get(path, headers=auth("k-admin"))
    assert resp.status == 404 and (await resp.json())["code"] == "not_found"


async def test_cursor_naming_an_order_id_with_nul_is_422(gw):
    import base64

    for inner in (b"1700000000000|o\x00", b"1700000000000|o-1\n", b"99999999999999999|o-1", b"x|o-1"):
        cursor = base64.urlsafe_b64encode(inner).decode()
        resp = await gw.client.get("/v1/orders", params={"cursor": cursor}, headers=auth("k-ops"))
        assert resp.status == 422, (inner, await resp.text())
        assert (await resp.json())["code"] == "invalid_cursor"


@pytest.mark.parametrize("claims", [
    pytest.param({"sub": "u\x00"}, id="sub_nul"),
    pytest.param({"sub": "u-1\n"}, id="sub_trailing_newline"),
    pytest.param({"sub": 42}, id="sub_number"),
    pytest.param({"sub": "u-1", "exp": 10**400}, id="exp_10_to_the_400"),
    pytest.param({"sub": "u-1", "exp": 2**70}, id="exp_beyond_year_2200"),
    pytest.param({"sub": "u-1", "exp": "soon"}, id="exp_string"),
])
async def test_hostile_token_claims_are_401(gw, redis, claims):
    token = jwt.encode({"exp": int(time.time()) + 3600, **claims}, SECRET, algorithm="HS256")
    before = await snapshot(gw, redis)
    for method, path in (("POST", "/v1/orders"), ("GET", "/v1/orders"), ("GET", "/v1/orders/o-1")):
        resp = await gw.client.request(method, path, data=order(user_id="u-1"),
                                       headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 401, await resp.text()
        assert (await resp.json())["code"] == "invalid_token"
    assert await snapshot(gw, redis) == before


async def test_token_whose_claims_nest_past_the_recursion_limit_is_401(gw):
    import base64

    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    token = part(b'{"alg":"HS256","typ":"JWT"}') + "." + part(b'{"a":' + b"[" * 3000 + b"]" * 3000 + b"}") + ".x"
    resp = await gw.client.get("/v1/orders", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 401
    assert (await resp.json())["code"] == "invalid_token"


async def test_a_valid_user_with_an_ordinary_token_still_orders(gw):
    resp = await gw.client.post("/v1/orders", data=order(user_id="ü-1 {p0}:*"),
                                headers=auth(user_token("ü-1 {p0}:*")))
    assert resp.status == 201, await resp.text()


async def until(condition, timeout: float = 5.0) -> None:
    """Poll a condition no event reports (what the server logged)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_client_leaving_mid_body_is_not_an_error(settings, redis, pg, caplog):
    """A buyer's phone that drops off after half a body: one INFO line, no traceback, nothing done.

    Served as ``serve`` serves (aiohttp's test server cancels the handler instead).
    """
    runner = web.AppRunner(create_app(dataclasses.replace(settings, run_writer=False)), handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    caplog.set_level(logging.INFO)
    try:
        for n in range(1, 4):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k-admin\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + order()[:40])
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            await until(lambda n=n: len([r for r in caplog.records if r.name == "gateway.web.edge"]) >= n)
    finally:
        await runner.cleanup()
    edge = [r for r in caplog.records if r.name == "gateway.web.edge"]
    assert [(r.levelno, r.exc_info) for r in edge] == [(logging.INFO, None)] * 3
    assert await redis.keys(keys.order("*")) == []
