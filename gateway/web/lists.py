"""The console's read side: lists of orders, warehouses, sales, stock, the ledger and the money.

Each list that pages does so newest first by (a time, a unique key), with an opaque cursor
(gateway/web/common.py). The filters of a list are parsed by one function that its CSV
export (gateway/web/exports.py) calls too, so both refuse the same input the same way, and
every parameter is checked before the caller's scope can make the answer empty.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any, Literal

import asyncpg
import orjson
from aiohttp import web

from gateway import keys
from gateway.errors import Invalid, NotFound
from gateway.inventory import stock_views
from gateway.lifecycle import STATUSES
from gateway.models import Channel, Currency, SaleId, Sku, UserId, WarehouseId, iso_ms, valid
from gateway.orders import ORDER_SELECT, owner, row_view
from gateway.sales import sale_views
from gateway.web import appkeys as K
from gateway.web import schemas as S
from gateway.web.auth import Principal, may_read
from gateway.web.common import cursor as make_cursor
from gateway.web.common import (
    json,
    only_params,
    parse_cursor,
    parse_id_cursor,
    path_id,
    principal,
    query_limit,
    query_value,
    time_range,
)
from gateway.web.handlers import order_id_of
from gateway.wire import decode_warehouse

AT_MS = "(extract(epoch FROM {}) * 1000)::bigint"


class Where:
    """SQL conditions with their arguments, numbered as they are added: no value enters the text."""

    def __init__(self) -> None:
        self.terms: list[str] = []
        self.args: list[Any] = []

    def add(self, term: str, *values: Any) -> None:
        """``term`` with one ``{}`` per value, e.g. ``add("o.channel = {}", "web")``."""
        marks = []
        for value in values:
            self.args.append(value)
            marks.append(f"${len(self.args)}")
        self.terms.append(term.format(*marks))

    def times(self, column: str, q: Any) -> None:
        for op, t in time_range(q).items():
            self.add(f"{column} {op} {{}}", t)

    def sql(self, joiner: str = " WHERE ") -> str:
        return joiner + " AND ".join(self.terms) if self.terms else ""

    def limit(self, n: int) -> str:
        self.args.append(n)
        return f" LIMIT ${len(self.args)}"


# ---- orders ----------------------------------------------------------------------------------

ORDER_FILTERS: dict[str, Any] = {"user_id": UserId, "status": Literal[STATUSES], "channel": Channel,
                                 "sale_id": SaleId}


def may_list_orders(who: Principal) -> None:
    if who.role not in ("user", "storefront"):
        who.require("ops")


def order_filters(who: Principal, q: Any) -> Where | None:
    """``GET /v1/orders``' filters and time range on ``created_at``, within the caller's scope: a user
    sees its own orders, a storefront its channel's. None when the filters leave that scope."""
    filters = {name: value for name, type_ in ORDER_FILTERS.items()
               if (value := query_value(q, name, type_)) is not None}
    where = Where()
    where.times("o.created_at", q)
    if who.role == "user" and filters.setdefault("user_id", who.user_id) != who.user_id:
        return None
    if who.role == "storefront" and filters.setdefault("channel", who.channel) != who.channel:
        return None
    for column, value in filters.items():
        where.add(f"o.{column} = {{}}", value)
    return where


async def list_orders(request: web.Request) -> web.Response:
    """Newest first with a cursor; a user sees only its own orders, a storefront only its channel."""
    who = principal(request)
    may_list_orders(who)
    q = request.query
    limit = query_limit(q)
    where = order_filters(who, q)
    after = parse_cursor(q["cursor"]) if "cursor" in q else None
    if where is None:
        return json({"orders": [], "next": None})
    if after is not None:
        where.add("(o.created_at, o.order_id) < ({}, {})", *after)
    sql = ORDER_SELECT + where.sql() + " ORDER BY o.created_at DESC, o.order_id DESC" + where.limit(limit + 1)
    rows = await request.app[K.PG].fetch(sql, *where.args)
    page = rows[:limit]
    nxt = make_cursor(page[-1]["created_ms"], page[-1]["order_id"]) if len(rows) > limit else None
    return json({"orders": [row_view(r) for r in page], "next": nxt})


async def order_events(request: web.Request) -> web.Response:
    """The order's timeline as PostgreSQL has it (events the writer has not written yet follow)."""
    who = principal(request)
    order_id = order_id_of(request)
    app = request.app
    found = await owner(app[K.REDIS], app[K.PG], order_id, app[K.SETTINGS].layout)
    if found is None or not may_read(who, *found):
        raise NotFound("No such order")  # never 403: ids cannot be probed
    rows = await app[K.PG].fetch(
        f"""SELECT seq, type, {AT_MS.format("at")} AS at_ms, data::text AS data
            FROM order_events WHERE order_id = $1 ORDER BY seq""", order_id)
    return json({"events": [{"seq": r["seq"], "type": r["type"], "at": iso_ms(r["at_ms"]),
                             "data": orjson.Fragment(r["data"])} for r in rows]})


# ---- warehouses, sales, stock ----------------------------------------------------------------

async def list_warehouses(request: web.Request) -> web.Response:
    """The table allocation uses (Redis), a warehouse stock named without configuring it included."""
    principal(request).require("ops")
    table = await request.app[K.REDIS].hgetall(keys.warehouses(request.app[K.SETTINGS].layout.all()[0]))
    rows = []
    for wid, raw in table.items():
        priority, region, active = decode_warehouse(raw.decode())
        rows.append({"warehouse_id": wid.decode(), "region": region, "priority": priority, "active": active})
    rows.sort(key=lambda w: (w["priority"], w["warehouse_id"]))
    return json({"warehouses": rows})


async def list_sales(request: web.Request) -> web.Response:
    """Every sale with its live counts, latest start first."""
    principal(request).require("ops")
    redis = request.app[K.REDIS]
    layout = request.app[K.SETTINGS].layout
    pipe = redis.pipeline(transaction=False)
    for p in layout.all():
        pipe.smembers(keys.sales(p))
    ids = sorted({s.decode() for members in await pipe.execute() for s in members})
    views = [v for v in await sale_views(redis, ids, layout) if v is not None]
    views.sort(key=lambda v: v["sale_id"])
    views.sort(key=lambda v: v["starts_at"], reverse=True)  # iso_ms strings sort as their times
    return json({"sales": views})


def _sku_cursor(sku: str) -> str:
    return base64.urlsafe_b64encode(sku.encode()).decode()


def _parse_sku_cursor(raw: str) -> str:
    try:
        sku = base64.urlsafe_b64decode(raw.encode()).decode()
    except ValueError:  # binascii.Error and UnicodeDecodeError both are
        sku = ""
    if not valid(sku, Sku):
        raise Invalid("cursor is malformed; pass back the 'next' value", code="invalid_cursor")
    return sku


async def list_inventory(request: web.Request) -> web.Response:
    """SKUs PostgreSQL has stock rows for, in SKU order, with the live figures from Redis."""
    principal(request).require("ops")
    q = request.query
    only_params(q, S.InventoryQuery)
    limit = query_limit(q)
    where = Where()
    prefix = query_value(q, "prefix", Sku)
    if prefix is not None:
        where.add("starts_with(sku, {})", prefix)
    if "cursor" in q:
        where.add("sku > {}", _parse_sku_cursor(q["cursor"]))
    rows = await request.app[K.PG].fetch(
        "SELECT DISTINCT sku FROM inventory" + where.sql() + " ORDER BY sku" + where.limit(limit + 1),
        *where.args)
    skus = [r["sku"] for r in rows[:limit]]
    views = await stock_views(request.app[K.REDIS], skus, request.app[K.SETTINGS].layout)
    for view in views:  # the forecast is GET /v1/inventory/{sku}'s: one query per SKU
        view.update(sales_per_minute=None, sell_out_eta=None)
    return json({"skus": views, "next": _sku_cursor(skus[-1]) if len(rows) > limit else None})


# ---- the ledger ------------------------------------------------------------------------------

MOVEMENTS = f"""SELECT m.id, m.sku, m.warehouse, m.delta, m.on_hand_after, m.reason, m.order_id,
                       {AT_MS.format("m.at")} AS at_ms
                FROM inventory_movements m"""
NEWEST = " ORDER BY {0}.at DESC, {0}.id DESC"


def movement_filters(q: Any, sku: str | None) -> Where:
    where = Where()
    if sku is not None:
        where.add("m.sku = {}", sku)
    warehouse = query_value(q, "warehouse", WarehouseId)
    if warehouse is not None:
        where.add("m.warehouse = {}", warehouse)
    where.times("m.at", q)
    return where


async def list_movements(request: web.Request) -> web.Response:
    """The SKU's ledger, newest first."""
    principal(request).require("ops")
    sku = path_id(request, "sku", Sku)
    q = request.query
    only_params(q, S.MovementQuery)
    limit = query_limit(q)
    where = movement_filters(q, sku)
    if "cursor" in q:
        where.add("(m.at, m.id) < ({}, {})", *parse_id_cursor(q["cursor"]))
    rows = await request.app[K.PG].fetch(MOVEMENTS + where.sql() + NEWEST.format("m") + where.limit(limit + 1),
                                         *where.args)
    page = rows[:limit]
    items = [{"id": r["id"], "warehouse": r["warehouse"], "delta": r["delta"], "on_hand_after": r["on_hand_after"],
              "reason": r["reason"], "order_id": r["order_id"], "at": iso_ms(r["at_ms"])} for r in page]
    nxt = make_cursor(page[-1]["at_ms"], page[-1]["id"]) if len(rows) > limit else None
    return json({"movements": items, "next": nxt})


# ---- payments and refunds --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Money:
    """A finance list: the events it is made of, and the members of each item, in order."""

    name: str
    select: str
    columns: tuple[str, ...]

    def item(self, row: asyncpg.Record) -> dict[str, Any]:
        return {c: iso_ms(row["at_ms"]) if c == "at" else row[c] for c in self.columns}


PAYMENTS = Money("payments", f"""
    SELECT e.id, e.order_id, e.data->>'payment_id' AS payment_id, (e.data->>'amount')::bigint AS amount,
           o.currency, {AT_MS.format("e.at")} AS at_ms, o.user_id, o.channel
    FROM order_events e JOIN orders o ON o.order_id = e.order_id
    WHERE e.type = 'order.paid'""", ("order_id", "payment_id", "amount", "currency", "at", "user_id", "channel"))
# A refund is the order.refunding event; without an amount of its own it gives back what was paid.
REFUNDS = Money("refunds", f"""
    SELECT e.id, e.order_id,
           coalesce((e.data->>'amount')::bigint, (
               SELECT (p.data->>'amount')::bigint FROM order_events p
               WHERE p.order_id = e.order_id AND p.type = 'order.paid' ORDER BY p.seq LIMIT 1)) AS amount,
           o.currency, e.data->>'reason' AS reason, {AT_MS.format("e.at")} AS at_ms,
           CASE WHEN o.status = 'refunded' THEN 'refunded' ELSE 'refunding' END AS status
    FROM order_events e JOIN orders o ON o.order_id = e.order_id
    WHERE e.type = 'order.refunding'""", ("order_id", "amount", "currency", "reason", "at", "status"))


def money_filters(q: Any) -> Where:
    where = Where()
    where.times("e.at", q)
    currency = query_value(q, "currency", Currency)
    if currency is not None:
        where.add("o.currency = {}", currency)
    return where


def money_list(money: Money) -> Any:
    async def handler(request: web.Request) -> web.Response:
        """Newest first; ``totals`` per currency cover every item the filters select, not the page."""
        principal(request).require("payments", "ops")
        q = request.query
        only_params(q, S.MoneyQuery)
        limit = query_limit(q)
        where = money_filters(q)
        filtered = money.select + where.sql(" AND ")
        totals_args = list(where.args)
        if "cursor" in q:
            where.add("(e.at, e.id) < ({}, {})", *parse_id_cursor(q["cursor"]))
        pool = request.app[K.PG]
        rows = await pool.fetch(money.select + where.sql(" AND ") + NEWEST.format("e") + where.limit(limit + 1),
                                *where.args)
        totals = await pool.fetch(
            f"""SELECT currency, count(*) AS count, coalesce(sum(amount), 0) AS amount FROM ({filtered}) f
                GROUP BY currency ORDER BY currency NULLS LAST""", *totals_args)
        page = rows[:limit]
        nxt = make_cursor(page[-1]["at_ms"], page[-1]["id"]) if len(rows) > limit else None
        return json({money.name: [money.item(r) for r in page],
                     "totals": [{"currency": t["currency"], "count": t["count"], "amount": int(t["amount"])}
                                for t in totals],
                     "next": nxt})

    return handler


list_payments = money_list(PAYMENTS)
list_refunds = money_list(REFUNDS)
