"""What the edge adds per request (request id, metrics, access line): ``python -m bench.logcost``.

In one process, no network: a handler that returns a ready 201 is awaited bare, behind the
edge of the order route (gateway/web/edge.py: request id, counts and latency, no access line
at the default sample), and behind the edge of a route that logs, with the root handler
writing to a file through the SecretFilter in the text and the JSON format. The differences
are what the edge and one access line add to a request.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.config import Settings
from gateway.ops import logjson, logsafe
from gateway.web import appkeys as K
from gateway.web.edge import edge

N = 20_000
ROUNDS = 7


async def ready(request: web.Request) -> web.StreamResponse:
    return web.Response(status=201, body=b"{}", content_type="application/json")


async def resolved(app: web.Application, method: str, path: str, headers: dict[str, str]) -> web.Request:
    request = make_mocked_request(method, path, headers=headers, app=app)
    match_info = await app.router.resolve(request)  # what aiohttp does before the handler
    match_info.add_app(app)
    match_info.freeze()
    request._match_info = match_info
    return request


async def per_call(handler: Callable[[web.Request], Awaitable[web.StreamResponse]], request: web.Request) -> float:
    """Best of ROUNDS, in microseconds per request."""
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(N):
            await handler(request)
        times.append((time.perf_counter() - start) / N * 1e6)
    return min(times)


async def main() -> None:
    settings = Settings.from_env({})
    app = web.Application()
    app[K.SETTINGS] = settings
    app.router.add_post("/v1/orders", ready)
    app.router.add_get("/v1/orders/{order_id}", ready)
    app.freeze()
    order = await resolved(app, "POST", "/v1/orders", {})
    order_with_id = await resolved(app, "POST", "/v1/orders", {"X-Request-ID": "client-0123456789"})
    other = await resolved(app, "GET", "/v1/orders/o-1", {})
    # one wrapper per route, as urls.setup makes them
    traced_order = edge(ready, "/v1/orders", "POST", settings.access_log_sample)
    traced_other = edge(ready, "/v1/orders/{order_id}", "GET")

    with tempfile.NamedTemporaryFile("w", suffix=".log") as out:
        root = logging.getLogger()
        root.setLevel(logging.INFO)
        handler = logging.StreamHandler(out)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        secret_filter = logsafe.install(settings)
        bare = await per_call(ready, order)
        rows = [("bare handler", bare, 0.0)]
        for name, request in [("order route, id generated", order), ("order route, client id", order_with_id)]:
            cost = await per_call(traced_order, request)
            rows.append((name + ", no access line", cost, cost - bare))
        text = await per_call(traced_other, other)
        rows.append(("other route, access line, text", text, text - bare))
        handler.setFormatter(logjson.JsonFormatter(secret_filter.redact))
        json_ = await per_call(traced_other, other)
        rows.append(("other route, access line, json", json_, json_ - bare))
        root.removeHandler(handler)

    print(f"Python {sys.version.split()[0]}, best of {ROUNDS} x {N} calls, microseconds per request")
    for name, cost, added in rows:
        print(f"{name:45} {cost:7.2f}  (+{added:.2f})")


if __name__ == "__main__":
    asyncio.run(main())
