"""The obvious design: one PostgreSQL transaction per order, a row lock on the stock row.

aiohttp + uvloop + asyncpg; the same HTTP shape as the gateway (201, 409
``insufficient_stock``). Its tables live in schema ``naive``, recreated at start.
``python bench/naive.py --port 8082 --dsn postgresql://... --stock HOT=1000000``
"""

from __future__ import annotations

import argparse

import asyncpg
import msgspec
import uvloop
from aiohttp import web

from gateway.models import OrderIn

SCHEMA = """
DROP SCHEMA IF EXISTS naive CASCADE;
CREATE SCHEMA naive;
CREATE TABLE naive.stock (sku text PRIMARY KEY, qty integer NOT NULL CHECK (qty >= 0));
CREATE TABLE naive.orders (
    order_id   text PRIMARY KEY,
    user_id    text NOT NULL,
    channel    text NOT NULL,
    items      jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""
POOL = web.AppKey("pool", asyncpg.Pool)
decoder = msgspec.json.Decoder(OrderIn)
encode = msgspec.json.Encoder().encode


def problem(status: int, code: str, detail: str = "") -> web.Response:
    return web.json_response({"code": code, "detail": detail}, status=status,
                             content_type="application/problem+json")


async def create_order(request: web.Request) -> web.Response:
    try:
        order = decoder.decode(await request.read())
    except msgspec.ValidationError as exc:
        return problem(422, "invalid", str(exc))
    except msgspec.DecodeError as exc:
        return problem(400, "malformed_json", str(exc))
    items = msgspec.json.encode(order.items).decode()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        for item in order.items:
            qty = await conn.fetchval("SELECT qty FROM naive.stock WHERE sku = $1 FOR UPDATE", item.sku)
            if qty is None or qty < item.qty:
                raise web.HTTPConflict(body=encode({"code": "insufficient_stock", "sku": item.sku}),
                                       content_type="application/problem+json")
            await conn.execute("UPDATE naive.stock SET qty = qty - $2 WHERE sku = $1", item.sku, item.qty)
        inserted = await conn.fetchval(
            "INSERT INTO naive.orders (order_id, user_id, channel, items) VALUES ($1, $2, $3, $4::jsonb) "
            "ON CONFLICT DO NOTHING RETURNING 1", order.order_id, order.user_id, order.channel, items)
        if inserted is None:
            raise web.HTTPConflict(body=encode({"code": "duplicate_order"}), content_type="application/problem+json")
    return web.Response(body=encode({"order_id": order.order_id, "status": "pending_payment"}),
                        status=201, content_type="application/json")


def create_app(dsn: str, stock: dict[str, int]) -> web.Application:
    async def pool_ctx(app: web.Application):
        pool = await asyncpg.create_pool(dsn, min_size=4, max_size=16)
        async with pool.acquire() as conn:
            await conn.execute(SCHEMA)
            await conn.executemany("INSERT INTO naive.stock VALUES ($1, $2)", list(stock.items()))
        app[POOL] = pool
        yield
        await pool.close()

    app = web.Application()
    app.cleanup_ctx.append(pool_ctx)
    app.router.add_post("/v1/orders", create_order)
    return app


def parse_stock(spec: str) -> tuple[str, int]:
    sku, _, qty = spec.partition("=")
    return sku, int(qty)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--stock", type=parse_stock, action="append", default=[],
                        help="SKU=QTY, repeatable (default HOT=10000000)")
    args = parser.parse_args()
    web.run_app(create_app(args.dsn, dict(args.stock or [("HOT", 10_000_000)])), host="127.0.0.1",
                port=args.port, print=None, access_log=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
