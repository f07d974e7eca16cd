"""``GET /metrics``: Prometheus text that prometheus-client's parser reads, exact counts across
two HTTP workers and the writer process, the figures read at scrape time, and the bulk
publication (``Spread``) agreeing with the library's own ``observe``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from tests.conftest import ADMIN, auth, order_body
from tests.test_supervisor import serve, workers_answering  # noqa: F401  (the fixture)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_a_spread_publishes_what_observe_would() -> None:
    registry = CollectorRegistry()
    by_observe = Histogram("a_seconds", "x", ["route"], buckets=metrics.LATENCY, registry=registry)
    in_bulk = Histogram("b_seconds", "x", ["route"], buckets=metrics.LATENCY, registry=registry)
    spread = metrics.Spread(in_bulk, "/r")
    values = [0.0, 0.0005, 0.00051, 0.001, 0.3, 9.99, 10.0, 11.0, 1e9, *[i / 997 for i in range(500)]]
    for v in values:
        by_observe.labels("/r").observe(v)
        spread.observe(v)
    spread.publish()
    spread.publish()  # nothing new: adds nothing
    samples = parse(generate_latest(registry).decode())
    a = {(n.removeprefix("a_seconds"), ls): v for (n, ls), v in samples.items() if n.startswith("a_seconds")}
    b = {(n.removeprefix("b_seconds"), ls): v for (n, ls), v in samples.items() if n.startswith("b_seconds")}
    assert a.keys() == b.keys() and len(a) > len(metrics.LATENCY)
    for key, v in a.items():
        assert b[key] == pytest.approx(v), key
    assert value(samples, "b_seconds_count", route="/r") == len(values)


async def test_metrics_parse_and_count_what_this_process_answered(gw) -> None:
    await gw.set_stock("MET-1", {"W1": 2})
    before = parse(await (await gw.client.get("/metrics", headers=auth("k-ops"))).text())
    for n in range(3):
        await gw.post("/v1/orders", order_body(f"met-{n}", items=[{"sku": "MET-1", "qty": 1}]))
    await gw.post("/v1/orders", {"order_id": "met-bad"})  # 422 invalid
    resp = await gw.client.get("/metrics", headers=auth("k-ops"))
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    after = parse(await resp.text())

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("oms_orders_total", outcome="accepted") == 2
    assert grew("oms_orders_total", outcome="insufficient_stock") == 1
    assert grew("oms_orders_total", outcome="invalid") == 1
    assert grew("oms_http_requests_total", route="/v1/orders", method="POST", status="201") == 2
    assert grew("oms_http_request_duration_seconds_count", route="/v1/orders", method="POST") == 4
    assert grew("oms_coalescer_batch_size_count") == 3
    assert grew("oms_script_duration_seconds_count", script="reserve") >= 3
    await gw.caught_up()
    after = parse(await (await gw.client.get("/metrics", headers=auth("k-ops"))).text())
    assert value(after, "oms_stock_available", sku="MET-1") == 0
    assert value(after, "oms_stream_length") == 0 and ("oms_writer_lag_seconds", frozenset()) in after
    assert value(after, "oms_quarantined_entries") == 0
    assert grew("oms_writer_rows_total", table="order_items") == 2


async def test_metrics_need_an_ops_key(gw) -> None:
    assert (await gw.client.get("/metrics")).status == 401
    assert (await gw.client.get("/metrics", headers=auth("k-web"))).status == 403


@pytest.mark.slow
async def test_counts_are_exact_across_two_http_workers_and_the_writer(serve) -> None:  # noqa: F811
    proc, base = serve
    assert len(await workers_answering(base, 2)) == 2
    # new connections: the kernel spreads them over both workers
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async def call(method: str, path: str, body: Any = None) -> int:
            async with http.request(method, base + path, json=body, headers=ADMIN) as resp:
                await resp.read()
                return resp.status

        assert await call("PUT", "/v1/inventory/MET-2", {"warehouses": {"W1": 40}}) == 200
        accepted, refused, paid = 40, 25, 17
        statuses = await asyncio.gather(*(
            call("POST", "/v1/orders", order_body(f"mw-{n}", f"u-{n}", [{"sku": "MET-2", "qty": 1}]))
            for n in range(accepted + refused)))
        assert sorted(statuses) == [201] * accepted + [409] * refused
        assert await call("POST", "/v1/orders", order_body("mw-0", "u-0", [{"sku": "MET-2", "qty": 1}])) == 200
        to_pay = [n for n, status in enumerate(statuses) if status == 201][:paid]
        assert await asyncio.gather(*(
            call("POST", f"/v1/orders/mw-{n}/payment", {"payment_id": f"p-{n}", "amount": 0}) for n in to_pay
        )) == [200] * paid

        async def scrape() -> Samples:
            async with http.get(base + "/metrics", headers=ADMIN) as resp:
                assert resp.status == 200
                return parse(await resp.text())

        want = {("oms_orders_total", "accepted"): accepted, ("oms_orders_total", "insufficient_stock"): refused,
                ("oms_orders_total", "replayed"): 1, ("oms_order_transitions_total", "paid"): paid}

        def seen(samples: Samples) -> dict[tuple[str, str], float]:
            return {(name, label): value(samples, name, **({"to": label} if "transitions" in name
                                                           else {"outcome": label}))
                    for name, label in want}

        deadline = time.monotonic() + 30  # each worker publishes its tallies every second
        samples = await scrape()
        while seen(samples) != want and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            samples = await scrape()
        assert seen(samples) == want
        for _ in range(6):  # whichever worker answers, the same exact totals
            assert seen(await scrape()) == want
        assert value(samples, "oms_http_requests_total", route="/v1/orders", method="POST",
                     status="201") == accepted
        pids = {dict(labels)["pid"] for name, labels in samples if name == "oms_start_time_seconds"}
        assert len(pids) >= 3  # two HTTP workers and the writer
        while value(samples, "oms_writer_rows_total", table="order_items") < accepted:
            assert time.monotonic() < deadline, "the writer's rows never showed"
            await asyncio.sleep(0.2)
            samples = await scrape()
        assert value(samples, "oms_writer_commit_duration_seconds_count") >= 1
