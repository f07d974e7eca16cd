"""The Grafana board in deploy/grafana: well formed, importable anywhere (every query on the
data source variable), and every metric it queries exported by a real gateway after a small
workload over two HTTP workers."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from gateway.web.urls import ROUTES
from tests.conftest import ADMIN, order_body
from tests.test_make_run import ROOT, free_port
from tests.test_supervisor import kill_serve, serve_env, start_serve
from tests.test_webhooks import Receiver

BOARD = ROOT / "deploy" / "grafana" / "flash-sale.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# The gateway's metrics (gateway/metrics.py) and their types: the board may query only these.
METRICS = {
    "oms_http_requests_total": "counter",
    "oms_http_request_duration_seconds": "histogram",
    "oms_orders_total": "counter",
    "oms_sold_out_answers_total": "counter",
    "oms_order_transitions_total": "counter",
    "oms_coalescer_batch_size": "histogram",
    "oms_orders_in_flight": "gauge",
    "oms_script_duration_seconds": "histogram",
    "oms_writer_batch_size": "histogram",
    "oms_writer_commit_duration_seconds": "histogram",
    "oms_writer_rows_total": "counter",
    "oms_stream_length": "gauge",
    "oms_stream_pending": "gauge",
    "oms_stream_oldest_pending_age_seconds": "gauge",
    "oms_writer_lag_entries": "gauge",
    "oms_writer_lag_seconds": "gauge",
    "oms_quarantined_entries": "gauge",
    "oms_orders_expired_total": "counter",
    "oms_webhook_deliveries_total": "counter",
    "oms_webhook_delivery_age_seconds": "histogram",
    "oms_backend_errors_total": "counter",
    "oms_stock_available": "gauge",
    "oms_stock_sell_out_eta_seconds": "gauge",
    "oms_build_info": "gauge",
    "oms_start_time_seconds": "gauge",
}

# ---- a small PromQL tokenizer: enough to find the series an expression selects ----

STRING = r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`'
MATCHERS = r'\{(?:"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|[^}"\'])*\}'  # a "}" inside a label value is no end
TOKEN = re.compile(rf"""
    {STRING}
  | (?:by|without|on|ignoring|group_left|group_right)\b\s*(?:\([^)]*\))?   # label names, not series
  | \[[^\]]*\]                      # ranges and subqueries, which may hold Grafana's $__rate_interval
  | \$\{{?\w+\}}?                   # a Grafana variable outside a matcher
  | \d[\w.]*                        # numbers and durations (offset 5m, 1e3)
  | (?P<name>[A-Za-z_:][\w:]*)\s*(?:(?P<call>(?:(?:by|without)\s*\([^)]*\)\s*)?\()|(?P<matchers>{MATCHERS}))?
  | {MATCHERS}                      # a selector by matchers alone
""", re.X)
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
EQUALS = re.compile(r'(\w+)\s*=\s*"((?:\\.|[^"\\])*)"')  # label="value"; not !=, =~ or !~


def selectors(expr: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Each series name ``expr`` selects, with the labels it requires to equal a value."""
    for token in TOKEN.finditer(expr):
        name = token["name"]
        if name and not token["call"] and name not in KEYWORDS:
            yield name, dict(EQUALS.findall(token["matchers"] or ""))


def metric_names(expr: str) -> set[str]:
    return {name for name, _ in selectors(expr)}


def family(series: str) -> str:
    """The metric a series belongs to: a histogram's buckets, sum and count are the histogram's."""
    base = re.sub(r"_(bucket|sum|count)$", "", series)
    return base if METRICS.get(base) == "histogram" else series


@pytest.mark.parametrize(("expr", "names"), [
    ('histogram_quantile(0.99, sum by (le) (rate(oms_http_request_duration_seconds_bucket'
     '{route="/v1/orders/{order_id}", method="POST"}[$__rate_interval])))',
     {"oms_http_request_duration_seconds_bucket"}),
    ("sum(rate(a_total[5m] offset 1h)) by (outcome) / ignoring (x) group_left (y) b", {"a_total", "b"}),
    ('time() - max(oms_start_time_seconds{job=~"$job"}) > bool 3e2 or vector(0)', {"oms_start_time_seconds"}),
    ("sum without (pid) (x) and on (sku) y unless sum (z)", {"x", "y", "z"}),
    (r'foo{a="b\" rate(bar) c", d!~"e}f"} + max_over_time(baz:ratio[1m:10s])', {"foo", "baz:ratio"}),
    ('{__name__="x"} * 2', set()),
])
def test_the_extractor_finds_the_series_an_expression_selects(expr, names):
    assert metric_names(expr) == names


def test_the_extractor_reads_equality_matchers_only():
    expr = 'rate(m_bucket{route="/v1/orders", method="POST", status!="500", job=~"$job"}[1m]) / n'
    assert list(selectors(expr)) == [("m_bucket", {"route": "/v1/orders", "method": "POST"}), ("n", {})]


# ---- the board ----

def load_board() -> dict[str, Any]:
    return json.loads(BOARD.read_text())


def all_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those nested in collapsed rows too."""
    return [p for top in board["panels"] for p in (top, *top.get("panels", []))]


def queries(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets, and the selectors of ``label_values`` variables."""
    found = [t["expr"] for p in all_panels(board) for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            matched = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert matched, f"variable {var['name']}: not a label_values query: {query}"
            found.append(matched[1])
    return found


def test_board_is_well_formed():
    board = load_board()
    assert board["schemaVersion"] >= 39 and board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert all(v["datasource"] == DATASOURCE for v in variables.values() if v["type"] == "query")
    panels = all_panels(board)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    kinds = {p["type"] for p in panels}
    assert {"timeseries", "stat"} <= kinds <= {"timeseries", "stat", "row"}
    for panel in panels:
        if panel["type"] == "row":
            continue
        where = f"panel {panel['id']} {panel['title']!r}"
        assert panel["datasource"] == DATASOURCE, where
        assert panel["targets"], where
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            assert target.get("datasource") == DATASOURCE, where
            assert target.get("expr", "").strip(), where


def test_panels_fit_the_grid_without_overlapping():
    cells: dict[tuple[int, int], str] = {}
    for panel in load_board()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_the_board_queries_every_gateway_metric_by_its_series():
    """Only known metrics; histograms through their _bucket/_sum/_count series, others by name;
    and every metric the gateway exports has a place on the board."""
    used: set[str] = set()
    for expr in queries(load_board()):
        names = metric_names(expr)
        assert names, f"selects no series: {expr}"
        for series in names:
            metric = family(series)
            assert metric in METRICS, f"{series} is not a gateway metric: {expr}"
            assert (series != metric) == (METRICS[metric] == "histogram"), f"{series} in {expr}"
            used.add(metric)
    assert used == set(METRICS)


def test_route_filters_name_real_routes():
    routes = {(r.method, r.path) for r in ROUTES} | {(None, r.path) for r in ROUTES}
    filters = [labels for expr in queries(load_board()) for _, labels in selectors(expr) if "route" in labels]
    assert filters, "no panel filters by route"
    for labels in filters:
        assert (labels.get("method"), labels["route"]) in routes, labels


# ---- the board against a real gateway ----

@pytest.fixture
async def serve(backends, redis, pg, tmp_path):
    """``python -m gateway serve`` with two HTTP workers against the test servers."""
    proc, base = await start_serve(serve_env(backends, free_port(), tmp_path), tmp_path / "serve.log")
    try:
        yield base
    finally:
        kill_serve(proc)


async def until(check, what: str, timeout: float = 30) -> None:
    """Poll the gateway's observable state (other processes: nothing here can be awaited)."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not reached in {timeout} s: {what}"
        await asyncio.sleep(0.2)


async def workload(http: aiohttp.ClientSession, base: str, receiver: Receiver) -> None:
    """Stock, three orders accepted and one replayed, one refused for stock, a payment, a
    shipment, a cancel, an expiry and a webhook delivery."""
    async def call(method: str, path: str, body: Any, want: int) -> Any:
        async with http.request(method, base + path, json=body, headers=ADMIN) as resp:
            assert resp.status == want, await resp.text()
            return await resp.json()

    await call("PUT", "/v1/webhooks/board", {"url": receiver.url("board"), "events": ["order.paid"],
                                             "secret": "whsec-0123456789abcdef"}, 201)
    await call("PUT", "/v1/warehouses/W1", {"region": "east", "priority": 1, "active": True}, 201)
    await call("PUT", "/v1/inventory/BRD-1", {"warehouses": {"W1": 5}}, 200)
    await call("PUT", "/v1/inventory/BRD-2", {"warehouses": {"W1": 5}}, 200)
    for n in range(3):
        await call("POST", "/v1/orders", order_body(f"brd-{n}", f"u-{n}", [{"sku": "BRD-1", "qty": 1}]), 201)
    await call("POST", "/v1/orders", order_body("brd-0", "u-0", [{"sku": "BRD-1", "qty": 1}]), 200)
    refused = await call("POST", "/v1/orders", order_body("brd-9", "u-9", [{"sku": "BRD-1", "qty": 10}]), 409)
    assert refused["code"] == "insufficient_stock"
    await call("POST", "/v1/orders/brd-0/payment", {"payment_id": "p-0", "amount": 0}, 200)
    await call("POST", "/v1/orders/brd-0/ship", {}, 200)
    await call("POST", "/v1/orders/brd-1/cancel", {"reason": "customer"}, 200)
    now = dt.datetime.now(dt.UTC)
    await call("PUT", "/v1/sales/brd-sale", {
        "skus": ["BRD-2"], "starts_at": (now - dt.timedelta(minutes=1)).isoformat(),
        "ends_at": (now + dt.timedelta(hours=1)).isoformat(), "per_user_limit": 5, "reservation_ttl": 1}, 201)
    await call("POST", "/v1/orders", order_body("brd-exp", "u-e", [{"sku": "BRD-2", "qty": 1}], sale_id="brd-sale"),
               201)

    async def expired() -> bool:
        return (await call("GET", "/v1/orders/brd-exp", None, 200))["status"] == "cancelled"

    await until(expired, "the sale order's 1 s reservation expires")
    await receiver.wait_until(lambda: bool(receiver.delivered("board")))


def exported(text: str) -> dict[str, tuple[str, list[Any]]]:
    """Metric name -> (type, samples) as the board names it (counters with their _total)."""
    # imported here: prometheus-client comes with gateway/metrics.py, which this module does not need
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for fam in text_string_to_metric_families(text):
        name = fam.name + "_total" if fam.type == "counter" and not fam.name.endswith("_total") else fam.name
        found[name] = (fam.type, fam.samples)
    return found


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gateway.metrics") is None,
                    reason="GET /metrics lands with gateway/metrics.py on main; run after merging it")
async def test_every_metric_the_board_queries_is_exported_after_a_workload(serve):
    base = serve
    board_selectors = [s for expr in queries(load_board()) for s in selectors(expr)]
    wanted = {family(series) for series, _ in board_selectors}
    receiver = Receiver()
    await receiver.start()
    try:
        async with aiohttp.ClientSession() as http:
            await workload(http, base, receiver)
            # the writer process commits on its own time: its families appear once it has
            deadline = time.monotonic() + 30
            while True:
                async with http.get(base + "/metrics", headers=ADMIN) as resp:
                    assert resp.status == 200, await resp.text()
                    metrics = exported(await resp.text())
                missing = wanted - set(metrics)
                if not missing or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
    finally:
        await receiver.close()
    assert not missing, f"the board queries metrics /metrics does not export: {sorted(missing)}"
    for metric in wanted:
        assert metrics[metric][0] == METRICS[metric], metric
    # the board's label filters select series that exist (the order route's latency, the outcomes)
    for series, labels in board_selectors:
        labels = {k: v for k, v in labels.items() if k != "job"}
        samples = metrics[family(series)][1]
        assert any(s.name == series and labels.items() <= s.labels.items() for s in samples), (series, labels)
