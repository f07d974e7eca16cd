"""``GET /v1/stats/stream`` read over real HTTP: the counts between two events are exact, stock
alerts arrive as the feed commits them and resume by ``Last-Event-ID``, the figures are global
across serve's HTTP workers, refusals come before the first byte, and the stream ends cleanly
when the client goes or the app shuts down."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from gateway.web import appkeys as K
from gateway.web import schemas as S
from gateway.web.app import create_app
from tests.conftest import ADMIN, auth, order_body, user_token
from tests.test_supervisor import serve, workers_answering  # noqa: F401  (the fixture)

OPS = auth("k-ops")


@dataclasses.dataclass
class Event:
    event: str
    id: str | None
    data: bytes

    def stats(self) -> S.LiveStats:
        assert self.event == "stats", self
        return msgspec.json.decode(self.data, type=S.LiveStats)

    def stock(self) -> S.StockEvent:
        assert self.event == "stock", self
        alert = msgspec.json.decode(self.data, type=S.StockEvent)
        assert self.id == str(alert.id)
        return alert


class Events:
    """A server-sent event reader over an open response (the WHATWG parsing rules, as much as we send)."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def next(self, timeout: float = 15) -> Event:
        async def read() -> Event:
            event, event_id, data = "message", None, []
            while True:
                line = await self.resp.content.readline()
                if not line:
                    raise EOFError("the stream ended")
                line = line.rstrip(b"\r\n")
                if not line:
                    if data:
                        return Event(event, event_id, b"\n".join(data))
                    continue
                if line.startswith(b":"):  # a comment: aiohttp-sse's ping
                    continue
                name, _, value = line.partition(b":")
                value = value.removeprefix(b" ")
                if name == b"event":
                    event = value.decode()
                elif name == b"id":
                    event_id = value.decode()
                elif name == b"data":
                    data.append(value)
        return await asyncio.wait_for(read(), timeout)

    async def stats(self) -> S.LiveStats:
        """The next stats event, past any stock event."""
        while (event := await self.next()).event != "stats":
            event.stock()
        return event.stats()


@contextlib.asynccontextmanager
async def stream(gw, query: str = "interval=0.2", headers: dict[str, str] | None = None) -> AsyncIterator[Events]:
    """An open stream; leaving closes the connection and waits until the server's handler is done."""
    others = gw.app[K.LIVE].count
    resp = await gw.client.get(f"/v1/stats/stream?{query}", headers=headers or OPS)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/event-stream" and resp.headers["Cache-Control"] == "no-cache"
    try:
        yield Events(resp)
    finally:
        resp.close()
        await asyncio.wait_for(gw.app[K.LIVE].wait_closed(others), 10)


async def until_counted(events: Events, accepted: int, refused: dict[str, int], timeout: float = 30) -> list[Any]:
    """Stats events until their counts add up to ``accepted`` and ``refused``; never past them."""
    seen: list[S.LiveStats] = []
    deadline = time.monotonic() + timeout

    def sums() -> tuple[int, dict[str, int]]:
        codes: dict[str, int] = {}
        for s in seen:
            for code, n in s.refused.items():
                codes[code] = codes.get(code, 0) + n
        return sum(s.accepted for s in seen), codes

    while sums() != (accepted, refused):
        got_accepted, got_refused = sums()
        assert got_accepted <= accepted and all(got_refused.get(c, 0) <= n for c, n in refused.items()), sums()
        assert set(got_refused) <= set(refused), got_refused
        assert time.monotonic() < deadline, f"counted {sums()}, want {(accepted, refused)}"
        seen.append(await events.stats())
    return seen


async def test_orders_between_two_events_are_counted_exactly(gw):
    await gw.set_stock("LV-1", {"W1": 5})
    async with stream(gw) as events:
        first = await events.stats()
        assert (first.accepted, first.refused, first.hot) == (0, {}, [])
        assert first.stream_length is not None and first.writer_lag is not None and first.unavailable is msgspec.UNSET
        statuses = [(await gw.post("/v1/orders", order_body(f"lv-{n}", items=[{"sku": "LV-1", "qty": 1}]))).status
                    for n in range(8)]
        assert statuses == [201] * 5 + [409] * 3
        assert (await gw.post("/v1/orders", {"order_id": "lv-bad"})).status == 422
        seen = await until_counted(events, 5, {"insufficient_stock": 3, "invalid": 1})
        quiet = await events.stats()  # nothing happened since
        assert (quiet.accepted, quiet.refused, quiet.accepted_per_s, quiet.p50_ms) == (0, {}, 0.0, None)
    for s in seen:
        assert 0 < s.seconds < 5
        assert s.accepted_per_s == pytest.approx(s.accepted / s.seconds, rel=0.01)
        for code, n in s.refused.items():
            assert s.refused_per_s[code] == pytest.approx(n / s.seconds, rel=0.01)
    busy = [s for s in seen if s.accepted or s.refused]
    assert busy and all(s.p50_ms is not None and 0 < s.p50_ms <= s.p99_ms for s in busy)
    await gw.caught_up()


async def test_hot_skus_show_their_stock_and_rate(gw):
    await gw.set_stock("LV-H", {"W1": 50})
    for n in range(4):
        assert (await gw.post("/v1/orders", order_body(f"lvh-{n}", items=[{"sku": "LV-H", "qty": 2}]))).status == 201
    await gw.caught_up()  # the rate is read from PostgreSQL
    async with stream(gw) as events:
        (hot,) = (await events.stats()).hot
    assert (hot.sku, hot.available) == ("LV-H", 42)
    assert hot.sales_per_minute > 0 and hot.sell_out_eta is not None


async def test_a_sell_out_arrives_as_a_stock_event_and_a_reconnect_resumes_after_the_last_one(gw):
    async with stream(gw) as events:
        await events.stats()  # open: the alerts follow the feed from its end now
        await gw.set_stock("LV-2", {"W1": 3})
        for n in range(3):
            assert (await gw.post("/v1/orders", order_body(f"lv2-{n}", items=[{"sku": "LV-2", "qty": 1}]))).status == 201
        await gw.caught_up()
        alerts: list[S.StockEvent] = []
        while not alerts or alerts[-1].type != "inventory.sold_out":
            event = await events.next()
            if event.event == "stock":
                alerts.append(event.stock())
    assert (alerts[-1].sku, alerts[-1].available) == ("LV-2", 0)
    feed = (await (await gw.client.get("/v1/events?limit=1000", headers=OPS)).json())["events"]
    announced = [(e["id"], e["type"], e["data"]["available"]) for e in feed if e["type"].startswith("inventory.")]
    assert [(a.id, a.type, a.available) for a in alerts] == announced  # each once, in feed order

    resumed = {**OPS, "Last-Event-ID": str(alerts[-1].id - 1)}
    async with stream(gw, headers=resumed) as events:
        again = await events.next()  # before the first stats: what committed after that id
        assert again.stock() == alerts[-1]
        await events.stats()
    async with stream(gw, headers={**OPS, "Last-Event-ID": str(alerts[-1].id)}) as events:
        await events.stats()  # nothing after it


@pytest.mark.parametrize("headers", [OPS, auth("k-admin")], ids=["ops", "admin"])
async def test_ops_and_admin_may_watch(gw, headers):
    async with stream(gw, headers=headers) as events:
        await events.stats()


@pytest.mark.parametrize("headers,status", [
    ({}, 401), (auth("k-pay"), 403), (auth("k-web"), 403), (auth("nope"), 401),
    ({"Authorization": f"Bearer {user_token('u-1')}"}, 403),
], ids=["none", "payments", "storefront", "unknown_key", "user"])
async def test_everyone_else_is_refused_before_the_stream_opens(gw, headers, status):
    resp = await gw.client.get("/v1/stats/stream", headers=headers)
    assert resp.status == status and resp.content_type == "application/problem+json"
    assert (await resp.json())["status"] == status
    assert gw.app[K.LIVE].count == 0


@pytest.mark.parametrize("query,code", [
    ("interval=abc", "invalid_interval"), ("interval=NaN", "invalid_interval"), ("interval=nan", "invalid_interval"),
    ("interval=1e309", "invalid_interval"), ("interval=inf", "invalid_interval"), ("interval=1%00", "invalid_interval"),
    ("interval=%001", "invalid_interval"), ("interval=-1", "invalid_interval"), ("interval=0", "invalid_interval"),
    ("interval=0.1", "invalid_interval"), ("interval=10.01", "invalid_interval"), ("interval=1_0", "invalid_interval"),
    ("interval=%201", "invalid_interval"), ("interval=1%0A", "invalid_interval"), ("interval=", "invalid_interval"),
    ("interval=0x1", "invalid_interval"), ("interval=1&interval=2", "invalid_interval"),
    ("interval=" + "1" * 5000, "invalid_interval"), ("intervall=1", "unknown_parameter"),
    ("interval=1&x%00=1", "unknown_parameter"),
])
async def test_hostile_query_values_are_422_with_a_code(gw, query, code):
    resp = await gw.client.get(f"/v1/stats/stream?{query}", headers=OPS)
    assert resp.status == 422 and resp.content_type == "application/problem+json", query
    body = await resp.json()
    assert (body["status"], body["code"]) == (422, code)
    assert gw.app[K.LIVE].count == 0


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", str(2**63), "1e3", "1 2"])
async def test_a_malformed_last_event_id_is_422(gw, value):
    resp = await gw.client.get("/v1/stats/stream", headers={**OPS, "Last-Event-ID": value})
    assert resp.status == 422 and (await resp.json())["code"] == "invalid_last_event_id"


@pytest.mark.parametrize("interval", ["0.2", "10", "1e0", "2.50"])
async def test_each_valid_interval_opens_the_stream(gw, interval):
    async with stream(gw, f"interval={interval}") as events:
        await events.stats()


async def test_the_stream_ends_when_the_client_goes(gw):
    async with stream(gw) as events:
        await events.stats()
        assert gw.app[K.LIVE].count == 1
    assert gw.app[K.LIVE].count == 0  # stream() waited for the handler to finish


async def test_without_handler_cancellation_the_next_write_ends_a_stream_whose_client_went(settings, redis, pg):
    """``serve`` runs aiohttp as web.run_app does, which does not cancel a handler whose client left."""
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{host}:{port}/v1/stats/stream?interval=0.2", headers=OPS) as resp:
                await Events(resp).stats()
                assert app[K.LIVE].count == 1
        await asyncio.wait_for(app[K.LIVE].wait_closed(), 10)
    finally:
        await runner.cleanup()


async def test_the_stream_ends_cleanly_when_the_app_shuts_down(make_gateway):
    gw = await make_gateway()
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.client.make_url("/v1/stats/stream?interval=10"), headers=OPS) as resp:
            await Events(resp).stats()
            began = time.monotonic()
            await asyncio.wait_for(gw.client.server.close(), 20)
            assert time.monotonic() - began < 5  # not aiohttp's 60 s shutdown timeout
            assert await resp.content.read() == b""  # the end of the stream, not a reset
    assert gw.app[K.LIVE].count == 0


@pytest.mark.slow
async def test_the_figures_are_global_across_serves_http_workers(serve):  # noqa: F811
    proc, base = serve
    assert len(await workers_answering(base, 2)) == 2
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.put(base + "/v1/inventory/LV-G", json={"warehouses": {"W1": 30}}, headers=ADMIN) as r:
            assert r.status == 200
        async with http.get(base + "/v1/stats/stream?interval=0.2", headers=ADMIN) as resp:
            assert resp.status == 200
            events = Events(resp)
            await events.stats()

            async def buy(n: int) -> int:  # a new connection each: the kernel spreads them over both workers
                body = order_body(f"lvg-{n}", f"u-{n}", [{"sku": "LV-G", "qty": 1}])
                async with http.post(base + "/v1/orders", json=body, headers=ADMIN) as r:
                    return r.status

            statuses = await asyncio.gather(*(buy(n) for n in range(50)))
            assert sorted(statuses) == [201] * 30 + [409] * 20
            await until_counted(events, 30, {"insufficient_stock": 20})
            quiet = await events.stats()
            assert (quiet.accepted, quiet.refused) == (0, {})


@pytest.mark.slow
async def test_serve_stops_promptly_and_cleanly_with_a_stream_open(serve, tmp_path):  # noqa: F811
    proc, base = serve
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/v1/stats/stream?interval=10", headers=ADMIN) as resp:
            await Events(resp).stats()
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(resp.content.read(), 20) == b""  # the stream's end, not a reset
            assert await asyncio.to_thread(proc.wait, 30) == 0
    assert time.monotonic() - began < 8  # not the 10 s interval, nor run_app's 10 s shutdown timeout
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log and "live stream ended by an error" not in log
