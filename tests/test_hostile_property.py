"""Property: whatever a client sends to any request model, the answer is a success or a 4xx
problem, never a 5xx; and what is accepted reaches PostgreSQL exactly as it was sent.

Hypothesis takes a valid request for each route and breaks one place of it (a value, a key,
a path segment or a query parameter) with hostile strings (control characters, NUL,
trailing newlines, key-like text), absurd numbers, or nested junk.
"""

from __future__ import annotations

import itertools
import json
import urllib.parse
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import keys
from tests.conftest import auth

SKU = "P-1"
ORDER = {"order_id": "ord-0", "user_id": "u-1", "channel": "web", "items": [{"sku": SKU, "qty": 1, "unit_price": 5}],
         "ship_to": {"region": "east"}, "currency": "EUR"}
ROUTES: list[tuple[str, str, dict[str, str], Any]] = [  # method, path with {segment}s, their values, body
    ("POST", "/v1/orders", {}, ORDER),
    ("POST", "/v1/orders/batch", {}, {"orders": [ORDER]}),
    ("POST", "/v1/orders/{id}/payment", {"id": "seed-1"}, {"payment_id": "pay-1", "amount": 5}),
    ("POST", "/v1/orders/{id}/cancel", {"id": "seed-1"}, {"reason": "ops"}),
    ("POST", "/v1/orders/{id}/ship", {"id": "seed-1"}, {"carrier": "DHL", "tracking": "T-1"}),
    ("POST", "/v1/orders/{id}/refund", {"id": "seed-1"}, {"reason": "damaged", "amount": 5}),
    ("GET", "/v1/orders/{id}", {"id": "seed-1"}, None),
    ("GET", "/v1/orders/{id}/events", {"id": "seed-1"}, None),
    ("GET", "/v1/inventory/{sku}/movements", {"sku": SKU}, None),
    ("PUT", "/v1/inventory/{sku}", {"sku": SKU}, {"warehouses": {"W1": 1000}}),
    ("POST", "/v1/inventory/{sku}/adjust", {"sku": SKU}, {"warehouse": "W1", "delta": 1, "reason": "count"}),
    ("GET", "/v1/inventory/{sku}", {"sku": SKU}, None),
    ("PUT", "/v1/warehouses/{id}", {"id": "W2"}, {"region": "west", "priority": 2, "active": True}),
    ("PUT", "/v1/sales/{id}", {"id": "s-1"}, {"skus": [SKU], "starts_at": "2026-01-01T00:00:00Z",
                                             "ends_at": "2030-01-01T00:00:00Z", "per_user_limit": 5,
                                             "channels": ["web"], "reservation_ttl": 60, "strategy": "priority",
                                             "prices": {SKU: 5}, "currency": "EUR"}),
    ("GET", "/v1/sales/{id}", {"id": "s-1"}, None),
    ("POST", "/v1/allocations/plan", {}, {"items": [{"sku": SKU, "qty": 1}], "ship_to": {"region": "east"},
                                         "strategy": "region"}),
    ("PUT", "/v1/webhooks/{id}", {"id": "h-1"}, {"url": "http://127.0.0.1:9/x", "events": ["order.paid"],
                                                "secret": "s" * 16}),
    ("DELETE", "/v1/webhooks/{id}", {"id": "h-2"}, None),
]
QUERIES = {
    "/v1/orders": {"user_id": "u-1", "status": "paid", "channel": "web", "sale_id": "s-1", "limit": "5",
                   "from": "2026-01-01T00:00:00Z", "to": "2030-01-01T00:00:00Z", "cursor": "MTIzfG8tMQ=="},
    "/v1/events": {"after": "0", "limit": "10"},
    "/v1/inventory": {"prefix": "P-", "limit": "5", "cursor": "UC0x"},
    f"/v1/inventory/{SKU}/movements": {"warehouse": "W1", "from": "2026-01-01T00:00:00Z",
                                       "to": "2030-01-01T00:00:00Z", "limit": "5", "cursor": "MTIzfDQ1"},
    "/v1/payments": {"from": "2026-01-01T00:00:00Z", "to": "2030-01-01T00:00:00Z", "currency": "EUR", "limit": "5",
                     "cursor": "MTIzfDQ1"},
    "/v1/refunds": {"from": "2026-01-01T00:00:00Z", "currency": "EUR", "limit": "5", "cursor": "MTIzfDQ1"},
    "/v1/exports/orders.csv": {"user_id": "u-1", "status": "paid", "channel": "web", "sale_id": "s-1",
                               "from": "2026-01-01T00:00:00Z", "to": "2030-01-01T00:00:00Z"},
    "/v1/exports/payments.csv": {"from": "2026-01-01T00:00:00Z", "to": "2030-01-01T00:00:00Z", "currency": "EUR"},
    "/v1/exports/refunds.csv": {"from": "2026-01-01T00:00:00Z", "currency": "EUR"},
    "/v1/exports/movements.csv": {"sku": SKU, "warehouse": "W1", "from": "2026-01-01T00:00:00Z",
                                  "to": "2030-01-01T00:00:00Z"},
}

HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.builds(lambda a, c, b: a + c + b, st.text(max_size=6), st.characters(categories=["Cc"]), st.text(max_size=6)),
    st.sampled_from(["", " ", "\x00", "u-1\n", "W1\n", "*", "{p0}", keys.stock(SKU), "r:W1", "a" * 300,
                     "\u2028", "\ufeff", "../x", "%00", "null", "east|west", "1e400"]),
)
HOSTILE_NUMBER = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.sampled_from([0, -1, 10**9 + 1, 10**12 + 1, 2**63, 2**64, 10**400]),
)
HOSTILE = st.recursive(st.one_of(st.none(), st.booleans(), HOSTILE_NUMBER, HOSTILE_TEXT),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(HOSTILE_TEXT, inner, max_size=3),
                       max_leaves=6)
_ids = itertools.count()


def places(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON value: the value itself, each member, each element."""
    found = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            found += places(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += places(v, (*path, i))
    return found


def replaced(value: Any, path: tuple[Any, ...], new: Any, rename: bool) -> Any:
    """``value`` with the place at ``path`` replaced by ``new`` (or its key renamed to ``new``)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        out = dict(value)
        if rename and not rest:
            out[str(new)] = out.pop(head)
        else:
            out[head] = replaced(value[head], rest, new, rename)
        return out
    out = list(value)
    out[head] = replaced(value[head], rest, new, rename)
    return out


def fresh_ids(body: Any) -> Any:
    """New order ids per example, so an accepted order is a new order, not a replay."""
    n = next(_ids)
    if isinstance(body, dict) and body.get("order_id") == "ord-0":
        return {**body, "order_id": f"ord-{n}"}
    if isinstance(body, dict) and "orders" in body:
        return {"orders": [fresh_ids(o) for o in body["orders"]]}
    return body


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes | None]:
    method, template, segments, body = draw(st.sampled_from(ROUTES))
    body = fresh_ids(body)
    target = draw(st.sampled_from(["body", "segment", "query"] if segments or body is not None else ["query"]))
    if target == "segment" and segments:
        name = draw(st.sampled_from(sorted(segments)))
        segments = {**segments, name: draw(HOSTILE_TEXT)}
    elif target == "body" and body is not None:
        path = draw(st.sampled_from(places(body)))
        rename = bool(path) and isinstance(path[-1], str) and draw(st.booleans())
        body = replaced(body, path, draw(HOSTILE_TEXT if rename else HOSTILE), rename)
    url = template.format(**{k: urllib.parse.quote(v, safe="") for k, v in segments.items()})
    if target == "query" or body is None and not segments:
        url, params = draw(st.sampled_from(sorted(QUERIES.items())))
        method = "GET"
        name = draw(st.sampled_from(sorted(params)))
        params = {**params, name: draw(HOSTILE_TEXT)}
        url += "?" + urllib.parse.urlencode(params)
        body = None
    raw = None if body is None else json.dumps(body).encode()  # big ints and NaN as Python writes them
    return method, url, raw


@pytest.fixture
async def gw(make_gateway):
    """One gateway for every example (Hypothesis runs them inside one test): stock and an order to act on."""
    gw = await make_gateway()
    await gw.set_stock(SKU, {"W1": 10_000})
    resp = await gw.post("/v1/orders", {**ORDER, "order_id": "seed-1"})
    assert resp.status == 201, await resp.text()
    return gw


@settings(max_examples=250, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=requests())
async def test_hostile_request_is_never_a_5xx_and_what_is_accepted_lands_intact(gw, pg, request):
    method, url, raw = request
    resp = await gw.client.request(method, url, data=raw, headers={**auth("k-admin"),
                                                                   "Content-Type": "application/json"})
    assert resp.status < 500, (method, url, raw, await resp.text())
    if resp.status >= 400:
        assert resp.content_type == "application/problem+json", (method, url)
        problem = await resp.json()
        assert problem["status"] == resp.status and problem["code"], problem
        return
    if method == "POST" and url == "/v1/orders" and resp.status == 201:
        await gw.caught_up()
        sent = orjson.loads(raw)
        row = await pg.fetchrow("SELECT payload::text AS payload, user_id FROM orders WHERE order_id = $1",
                                sent["order_id"])
        stored = orjson.loads(row["payload"])
        assert row["user_id"] == sent["user_id"]
        for field in ("user_id", "channel", "ship_to", "currency"):
            assert stored.get(field) == sent.get(field), field
        assert [(i["sku"], i["qty"]) for i in stored["items"]] == [(i["sku"], i["qty"]) for i in sent["items"]]
    if method == "PUT" and url.startswith("/v1/warehouses/"):
        sent = orjson.loads(raw)
        wid = urllib.parse.unquote(url.rsplit("/", 1)[1])
        row = await pg.fetchrow("SELECT region FROM warehouses WHERE warehouse_id = $1", wid)
        assert row["region"] == sent.get("region")
    if method == "PUT" and url.startswith("/v1/webhooks/"):
        sent = orjson.loads(raw)
        row = await pg.fetchrow("SELECT url, secret FROM webhooks WHERE webhook_id = $1",
                                urllib.parse.unquote(url.rsplit("/", 1)[1]))
        assert (row["url"], row["secret"]) == (sent["url"], sent["secret"])
