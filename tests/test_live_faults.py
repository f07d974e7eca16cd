"""The live stream and the health routes with a store down: the stream goes on and names it,
a stream that cannot start is a 503 with Retry-After, the JSON routes answer 503, never 500,
and all recover by themselves. Own embedded servers, as tests/test_backend_faults.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest

from tests.conftest import Gateway, auth, order_body
from tests.test_backend_faults import SKU, Servers, recovered, servers, started  # noqa: F401  (the fixture)
from tests.test_live import Events, stream

pytestmark = pytest.mark.slow
ADMIN, OPS = auth("k-admin"), auth("k-ops")
ROUTES = [("GET", "/v1/quarantine", None), ("POST", "/v1/quarantine/replay", None),
          ("GET", "/v1/webhooks/lf-h/attempts", None), ("POST", "/v1/webhooks/lf-h/replay", {"from_event_id": 1})]


@pytest.fixture
async def gw(servers: Servers) -> AsyncIterator[Gateway]:  # noqa: F811
    async for gateway in started(servers):
        resp = await gateway.client.put("/v1/webhooks/lf-h", headers=ADMIN,
                                        json={"url": "http://127.0.0.1:9/h", "events": ["*"], "secret": "s" * 16})
        assert resp.status == 201
        yield gateway


async def until_unavailable(events: Events, want: list[str] | None, limit: int = 200) -> None:
    """Stats events until one names exactly ``want`` down (None: nothing down)."""
    for _ in range(limit):
        s = await events.stats()
        if (None if s.unavailable is msgspec.UNSET else s.unavailable) == want:
            return
    raise AssertionError(f"no event with unavailable={want}")


async def assert_503(gw: Gateway) -> None:
    for method, path, body in ROUTES:
        resp = await gw.client.request(method, path, json=body, headers=ADMIN)
        assert resp.status == 503, (path, resp.status, await resp.text())
        assert int(resp.headers["Retry-After"]) >= 1
        assert (await resp.json())["code"] == "backend_unavailable"


async def test_postgres_stopped_the_stats_go_on_and_say_so(gw, servers):  # noqa: F811
    async with stream(gw) as events:
        assert (await events.stats()).unavailable is msgspec.UNSET
        await servers.stop_postgres()
        try:
            await until_unavailable(events, ["postgres"])
            resp = await gw.post("/v1/orders", order_body("lf-pg", items=[{"sku": SKU, "qty": 1}]))
            assert resp.status == 201  # intake needs only Redis, and the stream counts it
            counted = 0
            while not counted:
                s = await events.stats()
                assert s.unavailable == ["postgres"] and s.stream_length is not None and s.hot == []
                counted = s.accepted
            assert counted == 1
            await assert_503(gw)
            refused = await gw.client.get("/v1/stats/stream", headers=OPS)  # where would the alerts start?
            assert refused.status == 503 and int(refused.headers["Retry-After"]) >= 1
            assert (await refused.json())["code"] == "backend_unavailable"
            async with stream(gw, headers={**OPS, "Last-Event-ID": "1"}) as resumed:  # it says where
                assert (await resumed.stats()).unavailable == ["postgres"]
        finally:
            await servers.start_postgres()
        await until_unavailable(events, None)
    await recovered(gw)
    await gw.caught_up()


async def test_valkey_killed_the_stream_says_so_and_recovers(gw, servers):  # noqa: F811
    async with stream(gw) as events:
        await events.stats()
        servers.valkey.kill()
        try:
            await until_unavailable(events, ["redis"])
            s = await events.stats()  # and goes on
            assert s.unavailable == ["redis"] and (s.stream_length, s.writer_lag, s.hot) == (None, None, [])
            async with stream(gw) as late:  # opening needs PostgreSQL only
                assert (await late.stats()).unavailable == ["redis"]
        finally:
            await servers.restart_valkey()
        await until_unavailable(events, None)
    await recovered(gw)
    await gw.caught_up()


async def test_the_health_routes_are_503_with_postgres_down_and_recover(gw, servers):  # noqa: F811
    await servers.stop_postgres()
    try:
        await assert_503(gw)
    finally:
        await servers.start_postgres()
    await recovered(gw)
    for method, path, body in ROUTES:
        resp = await gw.client.request(method, path, json=body, headers=ADMIN)
        assert resp.status == 200, (path, await resp.text())
    await gw.caught_up()
