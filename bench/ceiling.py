"""The framework ceiling: aiohttp + uvloop, decode the order with msgspec, answer 201.

Nothing else happens per request, so this is as fast as one gateway process can possibly
answer. ``python bench/ceiling.py --port 8081``
"""

from __future__ import annotations

import argparse

import msgspec
import uvloop
from aiohttp import web

from gateway.models import OrderIn

decoder = msgspec.json.Decoder(OrderIn)
encode = msgspec.json.Encoder().encode


async def create_order(request: web.Request) -> web.Response:
    try:
        order = decoder.decode(await request.read())
    except msgspec.ValidationError as exc:
        return web.json_response({"code": "invalid", "detail": str(exc)}, status=422)
    except msgspec.DecodeError as exc:
        return web.json_response({"code": "malformed_json", "detail": str(exc)}, status=400)
    return web.Response(body=encode({"order_id": order.order_id, "status": "pending_payment"}),
                        status=201, content_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/v1/orders", create_order)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None,
                loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
