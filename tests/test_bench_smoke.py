"""The benchmark harness works: its servers answer as the gateway would, its generators and
readers count right, and a short run of the whole harness yields P1..P7 and its files.
Speed is not tested."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import time

import asyncpg
import pytest
from aiohttp import ClientSession
from redis.crc import key_slot
from rich.console import Console

from bench import procs, run, writer_forms
from bench.load import Samples, open_loop, open_loop_procs, parse_wrk, python_closed_loop
from bench.report import cluster_rows, hot_rows, markdown, report
from bench.rows import Visibility, batch, copy_rate, copy_records
from gateway import keys
from tests.conftest import ADMIN, Backends, order_body

SLEEPER = "import time; time.sleep(60)"
SPAWNER = ("import subprocess, sys, time\n"
           "for role in sys.argv[1:]:\n"
           f"    subprocess.Popen([sys.executable, '-c', {SLEEPER!r}, 'gateway', role])\n"
           "time.sleep(60)\n")


async def test_ceiling_answers_201_and_refuses_a_bad_body(tmp_path):
    port = run.free_port()
    async with run.server("ceiling", [sys.executable, "bench/ceiling.py", "--port", str(port)], port, tmp_path) as srv:
        async with ClientSession() as http:
            async with http.post(srv.base + "/v1/orders", json=order_body("c-1")) as resp:
                assert resp.status == 201
                assert (await resp.json())["order_id"] == "c-1"
            async with http.post(srv.base + "/v1/orders", json={**order_body("c-2"), "extra": 1}) as resp:
                assert resp.status == 422
            async with http.post(srv.base + "/v1/orders", data=b"{not json") as resp:
                assert resp.status == 400
        closed = await python_closed_loop(srv.base, 1, "smoke")
        assert closed["requests"] == closed["ok"] == closed["statuses"][201] > 0 and closed["socket_errors"] == 0
        opened = await open_loop(srv.base, 200, 0.5, "smoke-ol", connections=8)
        assert opened["statuses"] == {201: 100} and opened["unanswered"] == 0
        assert opened["latency_ms"]["p50"] <= opened["latency_ms"]["p99"] <= opened["latency_ms"]["max"]
        split = await open_loop_procs(srv.base, 200, 0.5, "smoke-procs", procs=2, connections=4)
        assert split["statuses"] == {201: 100} and split["connections"] == 8 and split["generator_cpu_s"] > 0


async def test_naive_sells_the_stock_once_then_refuses(tmp_path, backends: Backends):
    port = run.free_port()
    cmd = [sys.executable, "bench/naive.py", "--port", str(port), "--dsn", backends.database_url, "--stock", "SMALL=3"]
    async with run.server("naive", cmd, port, tmp_path) as srv, ClientSession() as http:
        statuses = []
        for n in range(5):
            body = order_body(f"n-{n}", items=[{"sku": "SMALL", "qty": 1}])
            async with http.post(srv.base + "/v1/orders", json=body, headers=ADMIN) as resp:
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


def test_wrk_output_is_read_with_the_status_counts_of_order_lua():
    out = ("Running 5s test @ http://127.0.0.1:1/\n  1 threads and 64 connections\n"
           "  12000 requests in 5.00s, 2.10MB read\n  Socket errors: connect 0, read 1, write 0, timeout 2\n"
           "  Non-2xx or 3xx responses: 3000\nRequests/sec:   2400.00\nstatus 201 9000\nstatus 409 2997\n")
    assert parse_wrk(out) == {"tool": "wrk", "requests": 12000, "statuses": {201: 9000, 409: 2997}, "ok": 9000,
                              "seconds": 5.0, "socket_errors": 3}


def test_samples_merge_across_processes_and_survive_json():
    a, b = Samples(lags=[0.001], send_span=1.0, connections=2, cpu_s=0.5), Samples(lags=[0.002], send_span=1.2)
    for n in range(99):
        a.add(201, n / 1000, n / 2000)
    b.add(503, 0.5, 0.1)
    a.merge(Samples.from_json(b.to_json()))
    summary = a.summary(rate=100, seconds=1)
    assert summary["statuses"] == {201: 99, 503: 1} and summary["requests"] == 100
    assert summary["by_status_ms"][503]["p99"] == 500 and summary["latency_ms"]["max"] == 500
    assert summary["by_status_ms"][503]["wire_p99"] == 100 and summary["by_status_ms"][201]["wire_p99"] == 49
    assert summary["sent_per_s"] == pytest.approx(100 / 1.2) and a.cpu_s == 0.5 and a.connections == 2


def test_gateway_processes_are_told_apart_by_command_line():
    lone = subprocess.Popen([sys.executable, "-c", SLEEPER, "gateway", "serve"])
    tree = subprocess.Popen([sys.executable, "-c", SPAWNER, "http", "http", "writer"])
    try:
        deadline = time.monotonic() + 10
        while len(procs.descendants(tree.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        kids = procs.gateway_roles(tree.pid)
        assert kids.keys() == {"supervisor", "gateway", "writer"}
        assert kids["supervisor"] == [tree.pid] and len(kids["gateway"]) == 2 and len(kids["writer"]) == 1
        assert procs.gateway_roles(lone.pid) == {procs.IN_PROCESS: [lone.pid]}
        assert procs.gateway_rss(tree.pid) > procs.rss_bytes(tree.pid) > 0
        snap = procs.cpu_snapshot(tree.pid, redis=None, postgres=None)
        assert snap.keys() == {"supervisor", "gateway", "writer", "Redis", "PostgreSQL"} and snap["Redis"] is None
    finally:
        for pid in procs.descendants(tree.pid) + [tree.pid, lone.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        tree.wait()
        lone.wait()


def test_cpu_seconds_count_work_and_exited_children():
    before = procs.cpu_seconds(os.getpid(), waited_children=True)
    subprocess.run([sys.executable, "-c", "sum(range(3_000_000))"], check=True)
    assert procs.cpu_seconds(os.getpid(), waited_children=True) - before > 0.01
    assert procs.cpu_used({"a": 1.0, "Redis": None}, {"a": 1.5, "Redis": None}) == {"a": 0.5, "Redis": None}


async def test_visibility_times_each_201_until_its_row_is_there(backends: Backends):
    conn = await asyncpg.connect(backends.database_url)
    try:
        await conn.execute("CREATE SCHEMA IF NOT EXISTS bench_smoke; DROP TABLE IF EXISTS bench_smoke.orders;"
                           "CREATE TABLE bench_smoke.orders (order_id text PRIMARY KEY)")
        vis, stop = Visibility(conn, interval=0.01, table="bench_smoke.orders"), asyncio.Event()
        for n in range(3):
            vis.answered(f"v-{n}", 201)
        vis.answered("refused", 503)
        writer = await asyncpg.connect(backends.database_url)
        poller = asyncio.create_task(vis.run(stop))
        await asyncio.sleep(0.1)
        await writer.execute("INSERT INTO bench_smoke.orders VALUES ('v-0'), ('v-1')")
        await asyncio.sleep(0.1)
        stop.set()
        await poller
        await vis.finish(timeout=0.2)
        await writer.close()
        summary = vis.summary()
        assert summary["seen"] == 2 and summary["missing"] == 1  # v-2 never written; the 503 not awaited
        assert 100 <= summary["p50_ms"] <= summary["max_ms"] < 1000 and summary["poll_ms"] >= 10
    finally:
        await conn.execute("DROP SCHEMA bench_smoke CASCADE")
        await conn.close()


@pytest.mark.slow
async def test_a_short_run_yields_p1_to_p7_and_its_files(tmp_path, backends: Backends):
    opts = run.Options(seconds=1, rounds=1, warmup=0, open_seconds=0.5, open_connections=64,
                       loads=(0.5, run.VISIBILITY_SHARE), overload_connections=64, cluster=False)
    results = await run.run_bench(run.Servers(backends.redis_url, backends.database_url), opts, tmp_path)
    assert all(results[p] > 0 for p in ("P1", "P2", "P3", "P4", "P6", "P7", "fsync_cost"))
    assert results["P5"]["rss_growth_mb"] == results["P5"]["rss_growth_mb"]  # measured, not NaN
    gateway = results["rounds"]["gateway"][0]
    assert gateway["ok"] > 0 and gateway["writer_lag_s"] >= 0
    cpu = results["cpu_per_1000"]
    assert cpu["Redis"] is None and cpu["PostgreSQL"] is None  # external servers: not ours to measure
    assert sum(v for v in cpu.values() if v) > 0
    assert set(results["sold_out"]["statuses"]) == {409} and results["sold_out"]["reserved_after"] == 0
    curve, over = results["open_loops"][:-1], results["open_loops"][-1]
    assert all(set(ol["statuses"]) == {201} for ol in curve)
    vis = curve[1]["visibility"]
    assert vis["seen"] == curve[1]["statuses"][201] and vis["missing"] == 0  # every 201 became a row
    assert set(over["statuses"]) <= {201, 503} and over["unanswered"] == 0 and over["rss"]["peak"] > 0
    drain, push = results["writer"]["drain"], results["writer"]["push"]
    # every row owed when the writer started: the backlog, its two markers, and what earlier rounds left in the stream
    assert drain["in_stream_order"] and push["ok"] + 2 <= drain["rows"]
    assert results["copy"]["rows"] == drain["rows"]
    assert results["copy"]["tables"] == ["orders", "order_items", "allocations", "order_events"]
    results["took_s"] = 1.0
    report(results, Console(file=io.StringIO()), out=tmp_path / "results")
    assert (tmp_path / "results" / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| P7 |" in markdown(results) and (tmp_path / "results" / "latest.json").stat().st_size > 0
    assert results["cluster"] is None and "| cluster |" not in markdown(results)  # skipped


@pytest.mark.slow
async def test_the_cluster_section_runs_the_rounds_with_every_key_on_one_primary(tmp_path, backends: Backends):
    opts = run.Options(seconds=1, rounds=1, warmup=0)
    result = await run.bench_cluster(run.Servers(backends.redis_url, backends.database_url), 1000.0, opts, tmp_path)
    assert result["rounds"][0]["ok"] > 0 and result["rounds"][0]["writer_lag_s"] >= 0
    assert result["ratio_to_one_node"] == result["best_orders_per_s"] / 1000.0
    assert result["slot"] == key_slot(keys.ONE.encode()) and result["appendfsync"] == "always"
    cpu, holder = result["cpu_per_1000"], result["partition_primary"]
    others = [v for name, v in cpu.items() if name.startswith("Valkey primary") and name != holder]
    assert len(others) == 2 and cpu[holder] == result["partition_primary_cpu_per_1000"]
    assert cpu[holder] > max(others)  # the primary with the partition did the work
    assert result["gateway_cpu_per_1000"] == cpu["gateway"] > 0 and cpu["PostgreSQL"] is None  # external
    label, value, detail = cluster_rows({"cluster": result})[0]
    assert f"{result['best_orders_per_s']:,.0f}" == value and holder in detail


@pytest.mark.slow
async def test_the_hot_sku_section_spreads_one_skus_work_over_every_primary(tmp_path, backends: Backends,
                                                                              monkeypatch):
    monkeypatch.setattr(run, "SPREAD_SKUS", 300)
    opts = run.Options(seconds=1, rounds=1, warmup=0)
    result = await run.bench_hot(run.Servers(backends.redis_url, backends.database_url), opts, tmp_path)
    for name in ("hot", "spread"):
        shares = result[name]["primary_cpu_per_1000"]
        assert result[name]["rounds"][0]["ok"] > 0 and len(shares) == 3
        assert min(shares.values()) > 0.2 * max(shares.values()), (name, shares)  # no primary left idle
    assert result["ratio_hot_to_spread"] == result["hot"]["best_orders_per_s"] / result["spread"]["best_orders_per_s"]
    rows = hot_rows(result)
    assert [row[1] for row in rows] == [f"{result[n]['best_orders_per_s']:,.0f}" for n in ("hot", "spread")]


async def test_both_writer_forms_write_every_row_of_their_batches(pg, backends: Backends):
    result = await writer_forms.measure(backends.database_url, orders=30, rounds=1)
    assert set(result) == {"unnest", "copy"} and all(r["median_rows_per_s"] > 0 for r in result.values())
    per_form = {r["form"]: r["n"] for r in await pg.fetch(
        "SELECT split_part(order_id, '-', 2) AS form, count(*) AS n FROM orders GROUP BY 1")}
    assert per_form == {"unnest": 60, "copy": 60}  # a warm-up and a counted batch each
    assert await pg.fetchval("SELECT count(*) FROM order_items") == 120
    assert await pg.fetchval("SELECT count(*) FROM allocations") == 120
    assert await pg.fetchval("SELECT count(*) FROM order_events WHERE type = 'order.accepted'") == 120


async def test_copy_baseline_copies_what_the_writer_writes_per_order_and_cleans_up(pg, backends: Backends):
    """P3's baseline: as many rows per table as the writer inserts for the same orders."""
    records = copy_records(batch("cb", 25))
    assert {t: len(r) for t, (_, r) in records.items()} == {
        "orders": 25, "order_items": 25, "allocations": 25, "order_events": 25}
    events = records["order_events"][1]
    assert [e[6] for e in events[1:]] == [e[7] for e in events[:-1]]  # a hash chain, like the writer's
    result = await copy_rate(backends.database_url, 25)
    assert result["rows"] == 25 and result["rows_per_s"] > 0 and result["orders_only_rows_per_s"] > 0
    assert await pg.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'naive' "
                             "AND tablename LIKE 'copy_%'") == 0
    assert await pg.fetchval("SELECT count(*) FROM orders") == 0  # scratch tables only
