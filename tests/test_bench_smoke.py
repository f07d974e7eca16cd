"""The benchmark harness works: its servers answer as the gateway would, its generators count
right, and a one-second run of the whole harness yields P1..P4. Speed is not tested."""

from __future__ import annotations

import sys

import asyncpg
import pytest
from aiohttp import ClientSession

from bench import run
from bench.load import open_loop, python_closed_loop
from tests.conftest import ADMIN, Backends, order_body


async def test_ceiling_answers_201_and_refuses_a_bad_body(tmp_path):
    port = run.free_port()
    async with run.server("ceiling", [sys.executable, "bench/ceiling.py", "--port", str(port)], port, tmp_path) as base:
        async with ClientSession() as http:
            async with http.post(base + "/v1/orders", json=order_body("c-1")) as resp:
                assert resp.status == 201
                assert (await resp.json())["order_id"] == "c-1"
            async with http.post(base + "/v1/orders", json={**order_body("c-2"), "extra": 1}) as resp:
                assert resp.status == 422
            async with http.post(base + "/v1/orders", data=b"{not json") as resp:
                assert resp.status == 400
        closed = await python_closed_loop(base, 1, "smoke")
        assert closed["requests"] == closed["ok"] > 0 and closed["socket_errors"] == 0
        opened = await open_loop(base, 200, 0.5, "smoke-ol", connections=8)
        assert opened["statuses"] == {201: 100}
        assert opened["latency_ms"]["p50"] <= opened["latency_ms"]["p99"] <= opened["latency_ms"]["max"]


async def test_naive_sells_the_stock_once_then_refuses(tmp_path, backends: Backends):
    port = run.free_port()
    cmd = [sys.executable, "bench/naive.py", "--port", str(port), "--dsn", backends.database_url, "--stock", "SMALL=3"]
    async with run.server("naive", cmd, port, tmp_path) as base, ClientSession() as http:
        statuses = []
        for n in range(5):
            body = order_body(f"n-{n}", items=[{"sku": "SMALL", "qty": 1}])
            async with http.post(base + "/v1/orders", json=body, headers=ADMIN) as resp:
                statuses.append(resp.status)
                if resp.status == 409:
                    assert (await resp.json())["code"] == "insufficient_stock"
        conn = await asyncpg.connect(backends.database_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM naive.orders") == 3
            assert await conn.fetchval("SELECT qty FROM naive.stock WHERE sku = 'SMALL'") == 0
        finally:
            await conn.close()
    assert statuses == [201, 201, 201, 409, 409]


@pytest.mark.slow
async def test_a_one_second_run_yields_p1_to_p4(tmp_path, backends: Backends):
    opts = run.Options(seconds=1, rounds=1, warmup=1, open_seconds=1)
    results = await run.run_bench(backends.redis_url, backends.database_url, opts, tmp_path)
    assert {"P1", "P2", "P3", "P4"} <= results.keys()
    assert all(results[p] > 0 for p in ("P1", "P2", "P3", "P4"))
    gateway = results["rounds"]["gateway"][0]
    assert gateway["ok"] > 0 and gateway["writer"]["rows"] > 0  # every reserved order reached PostgreSQL
    assert results["copy"]["rows"] >= gateway["writer"]["rows"]
    assert set(results["open_loop"]["statuses"]) == {201}
    assert "| P4 |" in run.markdown(results)
