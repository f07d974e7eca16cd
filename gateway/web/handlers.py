"""HTTP handlers: parse, authorise, call the domain, answer JSON. Errors are raised, not rendered."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import msgspec
import orjson
from aiohttp import web

from gateway import keys, metrics, orders, quarantine
from gateway.coalescer import Result
from gateway.errors import Forbidden, GatewayError, Invalid, NotFound, PayloadTooLarge
from gateway.faults import unless_down
from gateway.inventory import change_stock, plan_allocation, put_warehouse, stock_views
from gateway.models import (
    BatchIn,
    CancelIn,
    InventoryAdjust,
    InventorySet,
    OrderId,
    OrderIn,
    PaymentIn,
    PlanIn,
    SaleId,
    Sku,
    WarehouseId,
    WarehouseIn,
    decode,
    decode_order,
    valid,
)
from gateway.ops import workerstate
from gateway.orders import load_order
from gateway.sales import SaleIn, put_sale, sale_view
from gateway.stockwatch import forecast, hot
from gateway.web import appkeys as K
from gateway.web.auth import Principal, may_read
from gateway.web.common import json, path_id, principal


def may_submit(who: Principal, order: OrderIn, services: tuple[str, ...]) -> None:
    if who.role == "user":
        if order.user_id != who.user_id:
            raise Forbidden("A user token may only order for its own user_id")
    elif who.role == "storefront":
        if order.channel != who.channel:
            raise Forbidden(f"This storefront key may only order on channel {who.channel!r}")
    else:
        who.require(*services)


async def submit(
    app: web.Application, who: Principal, body: bytes, services: tuple[str, ...] = ("storefront",)
) -> asyncio.Future[Result]:
    """Validate, authorise and price one order, then queue it; the future holds the answer."""
    order = decode_order(body)
    may_submit(who, order, services)
    if order.sale_id is not None:
        order = await app[K.SALES].apply_prices(order)
    return app[K.COALESCER].submit(order, who.key_id)


OUTCOMES = metrics.tally(metrics.ORDERS)  # by outcome: accepted, replayed or the refusal's code
ANSWERED = {201: "accepted", 200: "replayed"}


async def create_order(request: web.Request) -> web.Response:
    try:
        pending = await submit(request.app, principal(request), await request.read())
        status, body = await pending
    except GatewayError as err:
        OUTCOMES.add(err.code)
        raise
    except web.HTTPRequestEntityTooLarge:
        OUTCOMES.add(PayloadTooLarge.code)
        raise
    OUTCOMES.add(ANSWERED[status])
    return json(body, status)


async def create_batch(request: web.Request) -> web.Response:
    """Up to 500 orders (stores, marketplace imports), each atomic on its own, answered in order."""
    who = principal(request)
    if who.role == "user":
        raise Forbidden("Batch import is for services")
    if who.role != "storefront":
        who.require("ops")
    batch = decode(await request.read(), BatchIn)
    pending: list[asyncio.Future[Result] | GatewayError] = []
    for raw in batch.orders:
        try:
            pending.append(await submit(request.app, who, bytes(raw), ("storefront", "ops")))
        except GatewayError as err:
            pending.append(err)
    results = []
    for raw, item in zip(batch.orders, pending, strict=True):
        if isinstance(item, asyncio.Future):
            try:
                status, body = await item
            except GatewayError as err:
                status, body = err.status, err.problem()
        else:
            status, body = item.status, item.problem()
        OUTCOMES.add(ANSWERED.get(status) or body["code"])
        results.append({"order_id": _order_id_of(raw), "status": status, "body": body})
    return json({"results": results})


def _order_id_of(raw: msgspec.Raw) -> str | None:
    try:
        value = orjson.loads(bytes(raw))
    except orjson.JSONDecodeError:
        return None
    order_id = value.get("order_id") if isinstance(value, dict) else None
    return order_id if isinstance(order_id, str) else None


async def get_order(request: web.Request) -> web.Response:
    who = principal(request)
    order = await load_order(request.app[K.REDIS], request.app[K.PG], order_id_of(request),
                             request.app[K.SETTINGS].layout)
    if order is None or not may_read(who, order["user_id"], order["channel"]):
        raise NotFound("No such order")  # never 403: ids cannot be probed
    return json(order)


def order_id_of(request: web.Request) -> str:
    order_id = request.match_info["order_id"]
    if not valid(order_id, OrderId):
        raise NotFound("No such order")
    return order_id


async def change(request: web.Request, who: Principal, action: str, data: dict[str, Any],
                 **kwargs: Any) -> dict[str, Any]:
    """The order of the path after ``action``, as ``who`` may drive it."""
    app = request.app
    return await orders.change(app[K.SCRIPTS], app[K.PG], order_id_of(request), action, data,
                               record_ttl=app[K.SETTINGS].idempotency_ttl,
                               visible=lambda user_id, channel: may_read(who, user_id, channel),
                               user_only=who.role == "user", layout=app[K.SETTINGS].layout, **kwargs)


async def optional_body(request: web.Request, type_: type[Any]) -> Any:
    body = await request.read()
    return decode(body if body.strip() else b"{}", type_)


async def pay(request: web.Request) -> web.Response:
    who = principal(request)
    who.require("payments")
    body = decode(await request.read(), PaymentIn)
    data = {"payment_id": body.payment_id, "amount": body.amount}
    return json(await change(request, who, "pay", data,
                             payment_id=body.payment_id, amount=body.amount, key_id=who.key_id))


async def cancel(request: web.Request) -> web.Response:
    who = principal(request)
    if who.role != "user":
        who.require("ops", "payments")
    body = decode(await request.read(), CancelIn)
    if who.role == "user" and body.reason != "customer":
        raise Forbidden("A buyer cancels with reason 'customer'")
    return json(await change(request, who, "cancel", {"reason": body.reason},
                             reason=body.reason))


def service_transition(action: str, body_type: type[Any]) -> Any:
    """A handler for a transition that ops and payments services drive with an optional body."""

    async def handler(request: web.Request) -> web.Response:
        who = principal(request)
        who.require("ops", "payments")
        body = await optional_body(request, body_type)
        data = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not None}
        return json(await change(request, who, action, data))

    return handler


async def get_inventory(request: web.Request) -> web.Response:
    principal(request).require("ops")
    sku = path_id(request, "sku", Sku)
    (view,) = await stock_views(request.app[K.REDIS], [sku], request.app[K.SETTINGS].layout)
    return json(await with_forecast(request.app, view))


async def stream_figures(redis: Any, layout: keys.Partitions) -> dict[str, int | None]:
    """Entries in the partitions' streams, and the writers' pending and lag summed over them
    (None while a stream has no writers' group)."""
    pipe = redis.pipeline(transaction=False)
    for p in layout.all():
        pipe.xlen(keys.events(p))
        pipe.xinfo_groups(keys.events(p))
    replies = await pipe.execute()
    groups = [next((g for g in infos if g["name"] == keys.WRITER_GROUP.encode()), {}) for infos in replies[1::2]]

    def total(field: str) -> int | None:
        values = [g.get(field) for g in groups]
        return None if any(v is None for v in values) else sum(values)

    return {"stream_length": sum(replies[::2]), "writer_pending": total("pending"), "writer_lag": total("lag")}


async def with_forecast(app: web.Application, view: dict[str, Any]) -> dict[str, Any]:
    """The view with its sell-out forecast, or marked ``"forecast": "unavailable"`` without PostgreSQL."""
    found, ok = await unless_down(
        forecast(app[K.PG], view["sku"], view["available"], app[K.SETTINGS].forecast_window),
        {"sales_per_minute": None, "sell_out_eta": None})
    view.update(found)
    if not ok:
        view["forecast"] = "unavailable"
    return view


async def stats(request: web.Request) -> web.Response:
    """The live numbers an operator watches during a sale, with a forecast per selling SKU.

    ``scope`` names which figures are the answering worker's (``pid``) and which are global.
    """
    principal(request).require("ops")
    app = request.app
    window = app[K.SETTINGS].forecast_window
    selling, pg_up = await unless_down(hot(app[K.PG], window, 20), [])
    views = await stock_views(app[K.REDIS], [h.sku for h in selling], app[K.SETTINGS].layout)
    for view in views:
        await with_forecast(app, view)
    coalescer = app[K.COALESCER]
    streams = await stream_figures(app[K.REDIS], app[K.SETTINGS].layout)
    held, _ = await unless_down(quarantine.count(app[K.PG]), None)
    return json({
        # with OMS_WORKERS > 1 a request reaches one worker: the "worker" figures are its own
        # alone; the stream, the consumer group, the quarantine and the forecasts are shared
        "pid": os.getpid(), "scope": {
            "worker": ["orders_in_flight", "reserve_batches", "sold_out_answers", "orders_expired"],
            "global": ["stream_length", "writer_pending", "writer_lag", "quarantined", "window_seconds", "skus"],
        },
        "orders_in_flight": coalescer.in_flight, "reserve_batches": coalescer.batches,
        "sold_out_answers": coalescer.sold_out_answers,
        "orders_expired": app[K.EXPIRER].expired,
        # the writers run in other processes: their progress is read from the consumer groups
        **streams,
        "quarantined": held, "window_seconds": window, "skus": views,
        **({} if pg_up else {"unavailable": ["postgres"]}),  # the forecasts and the quarantine count
    })


async def put_inventory(request: web.Request) -> web.Response:
    principal(request).require("ops")
    sku = path_id(request, "sku", Sku)
    body = decode(await request.read(), InventorySet)
    view = await change_stock(request.app[K.SCRIPTS], request.app[K.WAREHOUSES], sku, "set", "set",
                              body.warehouses)
    return json(await with_forecast(request.app, view))


async def adjust_inventory(request: web.Request) -> web.Response:
    principal(request).require("ops")
    sku = path_id(request, "sku", Sku)
    body = decode(await request.read(), InventoryAdjust)
    if body.delta == 0:
        raise Invalid("delta must not be 0", code="invalid_delta")
    view = await change_stock(request.app[K.SCRIPTS], request.app[K.WAREHOUSES], sku, "add", body.reason,
                              {body.warehouse: body.delta})
    return json(await with_forecast(request.app, view))


async def put_warehouse_route(request: web.Request) -> web.Response:
    principal(request).require("ops")
    wid = path_id(request, "warehouse_id", WarehouseId)
    body = decode(await request.read(), WarehouseIn)
    app = request.app
    created, view = await put_warehouse(app[K.PG], app[K.REDIS], app[K.WAREHOUSES], wid, body)
    return json(view, 201 if created else 200)


async def put_sale_route(request: web.Request) -> web.Response:
    principal(request).require("ops")
    sale_id = path_id(request, "sale_id", SaleId)
    body = decode(await request.read(), SaleIn)
    created = await put_sale(request.app[K.PG], request.app[K.REDIS], sale_id, body, request.app[K.SETTINGS].layout)
    await request.app[K.SALES].load()
    view = await sale_view(request.app[K.REDIS], sale_id, request.app[K.SETTINGS].layout)
    return json(view, 201 if created else 200)


async def get_sale(request: web.Request) -> web.Response:
    principal(request).require("ops")
    view = await sale_view(request.app[K.REDIS], path_id(request, "sale_id", SaleId), request.app[K.SETTINGS].layout)
    if view is None:
        raise NotFound("No such sale")
    return json(view)


async def allocation_plan(request: web.Request) -> web.Response:
    principal(request).require("ops")
    body = decode(await request.read(), PlanIn)
    if len({i.sku for i in body.items}) != len(body.items):
        raise Invalid("SKUs must be unique within a plan", code="duplicate_sku")
    app = request.app
    strategy = body.strategy or app[K.SETTINGS].strategy
    region = body.ship_to.region if body.ship_to else None
    return json(await plan_allocation(app[K.REDIS], app[K.WAREHOUSES], [(i.sku, i.qty) for i in body.items],
                                      strategy, region))


async def healthz(request: web.Request) -> web.Response:
    """Names the worker process that answered: with OMS_WORKERS > 1 the kernel picks one."""
    return json({"status": "ok", "worker": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    """Ready when Redis and the scripts are: order intake needs nothing else. ``degraded`` names
    what is missing without stopping intake: PostgreSQL (the stream buffers up to
    OMS_MAX_BACKLOG entries) and, under ``serve``, a role waiting to be restarted."""
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
    ready = checks["redis"] and checks["scripts"]
    workers = workerstate.read()
    degraded = ([] if checks["postgres"] else ["postgres"]) + workerstate.degraded(workers)
    extra = {} if workers is None else {"workers": workers}
    resp = json({"ready": ready, **checks, "degraded": degraded, **extra}, 200 if ready else 503)
    if not ready:
        resp.headers["Retry-After"] = "1"
    return resp


