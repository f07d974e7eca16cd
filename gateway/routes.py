"""HTTP handlers: parse, authorise, call the domain, answer JSON. Errors are raised, not rendered."""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from gateway import appkeys as K
from gateway import keys
from gateway.auth import Principal
from gateway.errors import Forbidden, Invalid, NotFound
from gateway.inventory import change_stock, put_warehouse, stock_view
from gateway.models import (
    InventoryAdjust,
    InventorySet,
    WarehouseIn,
    decode,
    decode_order,
    encode,
    render_order,
)

ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
SKU = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
WAREHOUSE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


def json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def principal(request: web.Request) -> Principal:
    return request.app[K.AUTH].authenticate(request.headers.get("Authorization"))


def path_id(request: web.Request, name: str, pattern: re.Pattern[str]) -> str:
    value = request.match_info[name]
    if not pattern.match(value):
        raise Invalid(f"{name} {value!r} is malformed", code=f"invalid_{name}")
    return value


async def create_order(request: web.Request) -> web.Response:
    who = principal(request)
    order = decode_order(await request.read())
    if who.role == "user":
        if order.user_id != who.user_id:
            raise Forbidden("A user token may only order for its own user_id")
    elif who.role == "storefront":
        if order.channel != who.channel:
            raise Forbidden(f"This storefront key may only order on channel {who.channel!r}")
    else:
        who.require("storefront")
    status, body = await request.app[K.COALESCER].submit(order, encode(order))
    return json(body, status)


def may_read(who: Principal, user_id: str, channel: str) -> bool:
    if who.role == "user":
        return user_id == who.user_id
    if who.role == "storefront":
        return channel == who.channel
    return who.role in ("admin", "ops", "payments")


async def get_order(request: web.Request) -> web.Response:
    who = principal(request)
    order_id = request.match_info["order_id"]
    if not ID.match(order_id):
        raise NotFound("No such order")
    order = await load_order(request.app, order_id)
    if order is None or not may_read(who, order["user_id"], order["channel"]):
        raise NotFound("No such order")  # never 403: ids cannot be probed
    return json(order)


async def load_order(app: web.Application, order_id: str) -> dict[str, Any] | None:
    """The order as it is now: Redis while it holds the record, else PostgreSQL."""
    raw = await app[K.REDIS].hmget(keys.order(order_id), "p", "a", "c", "u", "s")
    if raw[0] is not None:
        return render_order(orjson.loads(raw[0]), raw[1].decode(), int(raw[2]), int(raw[3]), raw[4].decode())
    row = await app[K.PG].fetchrow(
        """SELECT o.payload::text AS payload, o.status,
                  (extract(epoch FROM o.created_at) * 1000)::bigint AS created_ms,
                  (extract(epoch FROM o.reserved_until) * 1000)::bigint AS until_ms,
                  coalesce((SELECT string_agg(g, ';' ORDER BY line_no) FROM (
                      SELECT i.line_no, string_agg(a.warehouse || '=' || a.qty, ',' ORDER BY a.warehouse) AS g
                      FROM order_items i JOIN allocations a ON a.order_id = i.order_id AND a.sku = i.sku
                      WHERE i.order_id = o.order_id GROUP BY i.line_no) lines), '') AS alloc
           FROM orders o WHERE o.order_id = $1""",
        order_id,
    )
    if row is None:
        return None
    return render_order(orjson.loads(row["payload"]), row["alloc"], row["created_ms"], row["until_ms"],
                        row["status"])


async def get_inventory(request: web.Request) -> web.Response:
    principal(request).require("ops")
    sku = path_id(request, "sku", SKU)
    return json(stock_view(sku, await request.app[K.REDIS].hgetall(keys.stock(sku))))


async def put_inventory(request: web.Request) -> web.Response:
    principal(request).require("ops")
    sku = path_id(request, "sku", SKU)
    body = decode(await request.read(), InventorySet)
    view = await change_stock(request.app[K.SCRIPTS], request.app[K.WAREHOUSES], sku, "set", "set",
                              body.warehouses)
    return json(view)


async def adjust_inventory(request: web.Request) -> web.Response:
    principal(request).require("ops")
    sku = path_id(request, "sku", SKU)
    body = decode(await request.read(), InventoryAdjust)
    if body.delta == 0:
        raise Invalid("delta must not be 0", code="invalid_delta")
    view = await change_stock(request.app[K.SCRIPTS], request.app[K.WAREHOUSES], sku, "add", body.reason,
                              {body.warehouse: body.delta})
    return json(view)


async def put_warehouse_route(request: web.Request) -> web.Response:
    principal(request).require("ops")
    wid = path_id(request, "warehouse_id", WAREHOUSE)
    body = decode(await request.read(), WarehouseIn)
    app = request.app
    created, view = await put_warehouse(app[K.PG], app[K.REDIS], app[K.WAREHOUSES], wid, body)
    return json(view, 201 if created else 200)


async def healthz(request: web.Request) -> web.Response:
    return json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    checks = {"redis": False, "postgres": False, "scripts": app[K.SCRIPTS].loaded}
    try:
        checks["redis"] = bool(await app[K.REDIS].ping())
    except Exception:  # readiness reports, it does not fail
        pass
    try:
        checks["postgres"] = await app[K.PG].fetchval("SELECT 1") == 1
    except Exception:
        pass
    ready = all(checks.values())
    return json({"ready": ready, **checks}, 200 if ready else 503)


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/orders", create_order)
    app.router.add_get("/v1/orders/{order_id}", get_order)
    app.router.add_get("/v1/inventory/{sku}", get_inventory)
    app.router.add_put("/v1/inventory/{sku}", put_inventory)
    app.router.add_post("/v1/inventory/{sku}/adjust", adjust_inventory)
    app.router.add_put("/v1/warehouses/{warehouse_id}", put_warehouse_route)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
