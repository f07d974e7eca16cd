"""CSV exports for finance and operations, streamed: a server-side cursor in a read-only
transaction feeds the answer ``OMS_EXPORT_PREFETCH`` rows at a time, so no export holds its
whole set in memory.

Each export takes the filters of its list (gateway/web/lists.py) and refuses bad ones the
same way; the first rows are fetched before the status line goes out, so a refusal or a
store that is down is still a problem+json answer. A failure after that can only cut the
answer short: the connection is closed without the closing chunk, so the client sees a
truncated transfer, never a CSV that looks complete. An export holds a pool connection
(shared with the writer) while the client reads: at most ``OMS_MAX_EXPORTS`` run at once
per process (503 ``exports_busy`` beyond), and a client that stops reading for
``WRITE_TIMEOUT`` seconds loses its export.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from gateway.errors import ExportsBusy
from gateway.models import Sku, iso_ms
from gateway.ops.logjson import REQUEST_ID
from gateway.orders import total
from gateway.web import access
from gateway.web import appkeys as K
from gateway.web import schemas as S
from gateway.web.common import neutral, only_params, principal, query_value
from gateway.web.lists import (
    MOVEMENTS,
    NEWEST,
    PAYMENTS,
    REFUNDS,
    Money,
    may_list_orders,
    money_filters,
    movement_filters,
    order_filters,
)

log = logging.getLogger(__name__)
WRITE_TIMEOUT = 60.0  # seconds a client may stop reading
ACQUIRE_TIMEOUT = 10.0
ORDERS = """
    SELECT o.order_id, (extract(epoch FROM o.created_at) * 1000)::bigint AS created_ms, o.status, o.user_id,
           o.channel, o.sale_id, o.currency, o.payload::text AS payload, o.payment_id, o.cancel_reason
    FROM orders o"""
ORDER_COLUMNS = ("order_id", "created_at", "status", "user_id", "channel", "sale_id", "currency", "total",
                 "items", "payment_id", "cancel_reason")
MOVEMENT_COLUMNS = ("id", "sku", "warehouse", "delta", "on_hand_after", "reason", "order_id", "at")
Row = Callable[[asyncpg.Record], Sequence[Any]]


def order_row(r: asyncpg.Record) -> Sequence[Any]:
    payload = orjson.loads(r["payload"])
    items = ";".join(f"{i['sku']}:{i['qty']}" for i in payload["items"])
    return (r["order_id"], iso_ms(r["created_ms"]), r["status"], r["user_id"], r["channel"], r["sale_id"],
            r["currency"], total(payload), items, r["payment_id"], r["cancel_reason"])


def movement_row(r: asyncpg.Record) -> Sequence[Any]:
    return (r["id"], r["sku"], r["warehouse"], r["delta"], r["on_hand_after"], r["reason"], r["order_id"],
            iso_ms(r["at_ms"]))


async def stream_csv(request: web.Request, filename: str, header: Sequence[str], sql: str, args: list[Any],
                     row: Row) -> web.StreamResponse:
    """Every row of ``sql`` as CSV, header first; cells are neutralised against spreadsheet formulas."""
    app = request.app
    slots = app[K.EXPORTS]
    if slots.locked():
        raise ExportsBusy(f"{app[K.SETTINGS].max_exports} export(s) are running; retry shortly")
    prefetch = app[K.SETTINGS].export_prefetch
    resp: web.StreamResponse | None = None
    sent = 0
    try:
        # bounded like every call: a pool the writer keeps busy is a 503, not a hang
        async with (slots, app[K.PG].acquire(timeout=ACQUIRE_TIMEOUT) as conn,
                    conn.transaction(isolation="repeatable_read", readonly=True)):
            cur = await conn.cursor(sql, *args)
            rows = await cur.fetch(prefetch)
            resp = web.StreamResponse(headers={
                "Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store",
                access.HEADER: REQUEST_ID.get() or ""})
            resp.content_type, resp.charset = "text/csv", "utf-8"
            await resp.prepare(request)
            buffer = io.StringIO()
            out = csv.writer(buffer, lineterminator="\r\n")
            out.writerow(header)
            while True:
                out.writerows([neutral(v) for v in row(r)] for r in rows)
                sent += len(rows)
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await resp.write(buffer.getvalue().encode())
                buffer.seek(0)
                buffer.truncate()
                if len(rows) < prefetch:
                    break
                rows = await cur.fetch(prefetch)
    except Exception as exc:
        if resp is None or not resp.prepared:
            raise  # nothing sent yet: the edge answers it (503 for a store that is down)
        log.warning("export %s cut off after %d row(s): %s: %s", filename, sent, type(exc).__name__, exc)
        if request.transport is not None:
            request.transport.close()
        return resp
    await resp.write_eof()
    return resp


async def orders_csv(request: web.Request) -> web.StreamResponse:
    """GET /v1/orders as CSV: the same filters and scope, newest first."""
    who = principal(request)
    may_list_orders(who)
    only_params(request.query, S.OrderExportQuery)
    where = order_filters(who, request.query)
    if where is None:  # nothing in the caller's scope: the header alone
        sql, args = ORDERS + " WHERE false", []
    else:
        sql, args = ORDERS + where.sql() + " ORDER BY o.created_at DESC, o.order_id DESC", where.args
    return await stream_csv(request, "orders.csv", ORDER_COLUMNS, sql, args, order_row)


def money_csv(money: Money) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        principal(request).require("payments", "ops")
        only_params(request.query, S.MoneyExportQuery)
        where = money_filters(request.query)
        sql = money.select + where.sql(" AND ") + NEWEST.format("e")
        return await stream_csv(request, f"{money.name}.csv", money.columns, sql, where.args,
                                lambda r: list(money.item(r).values()))

    return handler


payments_csv = money_csv(PAYMENTS)
refunds_csv = money_csv(REFUNDS)


async def movements_csv(request: web.Request) -> web.StreamResponse:
    """The ledger of one SKU (``sku``) or of all, newest first."""
    principal(request).require("ops")
    only_params(request.query, S.MovementExportQuery)
    sku = query_value(request.query, "sku", Sku)
    where = movement_filters(request.query, sku)
    sql = MOVEMENTS + where.sql() + NEWEST.format("m")
    return await stream_csv(request, "movements.csv", MOVEMENT_COLUMNS, sql, where.args, movement_row)
