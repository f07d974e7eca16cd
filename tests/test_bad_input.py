"""Bad input is refused with a problem+json 4xx and leaves no trace: no stock moved, no order
record, no event, and the gateway stays ready."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway import keys
from gateway.web import appkeys as K
from tests.conftest import auth, order_body

SKU = "SKU-1"
ORDER_KEYS = keys.pattern("order")
EVENTS = keys.events()
WAREHOUSES = keys.warehouses()
DEEP = 30_000  # levels of nesting that still fit under max_body


@pytest.fixture
async def gw(make_gateway):
    """A gateway without its writer: the events stream only grows, so its length shows any write."""
    gw = await make_gateway(run_writer=False)
    await gw.set_stock(SKU, {"W1": 5, "W2": 3})
    return gw


async def snapshot(gw, redis) -> dict[str, Any]:
    return {
        "stock": await gw.stock(SKU),
        "orders": await redis.keys(ORDER_KEYS),
        "events": await redis.xlen(EVENTS),
        "warehouses": await redis.hgetall(WAREHOUSES),
    }


async def refused_without_trace(gw, redis, method: str, path: str, body: bytes, status: int,
                                code: str) -> None:
    before = await snapshot(gw, redis)
    resp = await gw.client.request(method, path, data=body, headers=auth("k-admin"))
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert problem["status"] == status
    assert problem["code"] == code
    assert isinstance(problem["detail"], str) and problem["detail"]
    after = await snapshot(gw, redis)
    assert after["orders"] == []
    assert after == before
    assert (await gw.client.get("/readyz")).status == 200


def dump(value: Any) -> bytes:
    return orjson.dumps(value)


def order(**changes: Any) -> bytes:
    return dump({**order_body("bad-1", items=[{"sku": SKU, "qty": 1}]), **changes})


def order_without(field: str) -> bytes:
    body = order_body("bad-1", items=[{"sku": SKU, "qty": 1}])
    del body[field]
    return dump(body)


def item(**changes: Any) -> bytes:
    return order(items=[{"sku": SKU, "qty": 1, **changes}])


VALID = order()
BAD_ORDERS = [
    pytest.param(item(qty="1"), 422, "invalid", id="qty_string"),
    pytest.param(item(qty=1.5), 422, "invalid", id="qty_float"),
    pytest.param(item(qty=True), 422, "invalid", id="qty_bool"),
    pytest.param(item(qty=None), 422, "invalid", id="qty_null"),
    pytest.param(item(qty=0), 422, "invalid", id="qty_zero"),
    pytest.param(item(qty=1001), 422, "invalid", id="qty_over_1000"),
    pytest.param(item(qty=-1), 422, "invalid", id="qty_negative"),
    pytest.param(VALID.replace(b'"qty":1', b'"qty":' + b"9" * 40), 422, "invalid", id="qty_beyond_int64"),
    pytest.param(VALID.replace(b'"qty":1', b'"qty":NaN'), 400, "malformed_json", id="qty_nan"),
    pytest.param(order(items={"sku": SKU, "qty": 1}), 422, "invalid", id="items_object"),
    pytest.param(order(items=[]), 422, "invalid", id="items_empty"),
    pytest.param(order(items=[{"sku": f"S-{i}", "qty": 1} for i in range(51)]), 422, "invalid",
                 id="items_51"),
    pytest.param(order(items=[None]), 422, "invalid", id="item_null"),
    pytest.param(order(items=[{"sku": SKU, "qty": 1}, {"sku": SKU, "qty": 2}]), 422, "duplicate_sku",
                 id="duplicate_sku"),
    pytest.param(item(discount=5), 422, "invalid", id="unknown_item_field"),
    pytest.param(item(sku="SKU 1"), 422, "invalid", id="sku_with_space"),
    pytest.param(item(sku="SKU/1"), 422, "invalid", id="sku_with_slash"),
    pytest.param(item(sku="SKU*"), 422, "invalid", id="sku_with_glob"),
    pytest.param(item(sku="S" * 65), 422, "invalid", id="sku_65_chars"),
    pytest.param(item(unit_price=-1), 422, "invalid", id="unit_price_negative"),
    pytest.param(item(unit_price="9.99"), 422, "invalid", id="unit_price_string"),
    pytest.param(order(user_id=42), 422, "invalid", id="user_id_number"),
    pytest.param(order(user_id=""), 422, "invalid", id="user_id_empty"),
    pytest.param(order(user_id="u" * 129), 422, "invalid", id="user_id_129_chars"),
    pytest.param(VALID.replace(b'"u-1"', b'"\\ud800"'), 400, "malformed_json", id="user_id_lone_surrogate"),
    pytest.param(order(order_id=""), 422, "invalid", id="order_id_empty"),
    pytest.param(order(order_id="o" * 65), 422, "invalid", id="order_id_65_chars"),
    pytest.param(order(order_id="bad 1"), 422, "invalid", id="order_id_with_space"),
    pytest.param(order(order_id="bad/1"), 422, "invalid", id="order_id_with_slash"),
    pytest.param(order(order_id="bestellung-ä"), 422, "invalid", id="order_id_unicode"),
    pytest.param(order(order_id=7), 422, "invalid", id="order_id_number"),
    pytest.param(order(channel="tv"), 422, "invalid", id="channel_unknown"),
    pytest.param(order(channel="WEB"), 422, "invalid", id="channel_upper_case"),
    pytest.param(order(currency="usd"), 422, "invalid", id="currency_lower_case"),
    pytest.param(order(currency="USDT"), 422, "invalid", id="currency_four_letters"),
    pytest.param(order(sale_id="sale 1"), 422, "invalid", id="sale_id_with_space"),
    pytest.param(order(ship_to={"region": "east", "zip": "10001"}), 422, "invalid",
                 id="ship_to_unknown_field"),
    pytest.param(order(ship_to={"region": "east|west"}), 422, "invalid", id="ship_to_region_with_separator"),
    pytest.param(order(ship_to="east"), 422, "invalid", id="ship_to_string"),
    pytest.param(order(coupon="FREE"), 422, "invalid", id="unknown_top_level_field"),
    pytest.param(order_without("order_id"), 422, "invalid", id="missing_order_id"),
    pytest.param(order_without("user_id"), 422, "invalid", id="missing_user_id"),
    pytest.param(order_without("channel"), 422, "invalid", id="missing_channel"),
    pytest.param(order_without("items"), 422, "invalid", id="missing_items"),
    pytest.param(b"one SKU-1, please", 400, "malformed_json", id="body_not_json"),
    pytest.param(b"", 400, "malformed_json", id="body_empty"),
    pytest.param(VALID[:-1], 400, "malformed_json", id="body_truncated"),
    pytest.param(VALID + b" {}", 400, "malformed_json", id="body_with_trailing_data"),
    pytest.param(b"\xff\xfe" + VALID, 400, "malformed_json", id="body_not_utf8"),
    pytest.param(dump([orjson.loads(VALID)]), 422, "invalid", id="body_json_array"),
    pytest.param(b"null", 422, "invalid", id="body_json_null"),
    pytest.param(b'"order"', 422, "invalid", id="body_json_string"),
    pytest.param(b"[" * DEEP + b"]" * DEEP, 422, "too_deep", id="deeply_nested_arrays"),
    pytest.param(b'{"junk":' * DEEP, 422, "too_deep", id="deeply_nested_unterminated_objects"),
    pytest.param(VALID.replace(b'"items":[', b'"items":[' + b"[" * DEEP).replace(b"]", b"]" * (DEEP + 1), 1),
                 422, "too_deep", id="deeply_nested_items"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_ORDERS)
async def test_bad_order_is_refused_without_trace(gw, redis, body, status, code):
    await refused_without_trace(gw, redis, "POST", "/v1/orders", body, status, code)


async def test_body_over_the_limit_is_413_without_trace(gw, redis):
    limit = gw.app[K.SETTINGS].max_body
    body = VALID[:-1] + b" " * (limit + 1 - len(VALID)) + b"}"
    assert len(body) == limit + 1
    await refused_without_trace(gw, redis, "POST", "/v1/orders", body, 413, "payload_too_large")


async def test_body_of_exactly_the_limit_is_accepted(gw):
    limit = gw.app[K.SETTINGS].max_body
    body = VALID[:-1] + b" " * (limit - len(VALID)) + b"}"
    resp = await gw.client.post("/v1/orders", data=body, headers=auth("k-admin"))
    assert resp.status == 201, await resp.text()


SET = f"/v1/inventory/{SKU}"
ADJUST = f"/v1/inventory/{SKU}/adjust"
W1 = "/v1/warehouses/W1"


def adjustment(**changes: Any) -> bytes:
    return dump({"warehouse": "W1", "delta": 2, "reason": "count", **changes})


BAD_INVENTORY = [
    pytest.param("PUT", SET, dump({"warehouses": {}}), 422, "invalid", id="set_no_warehouses"),
    pytest.param("PUT", SET, dump({"warehouses": {"W1": -1}}), 422, "invalid", id="set_negative"),
    pytest.param("PUT", SET, dump({"warehouses": {"W1": "9"}}), 422, "invalid", id="set_string"),
    pytest.param("PUT", SET, dump({"warehouses": {"W1": 10**9 + 1}}), 422, "invalid",
                 id="set_over_a_billion"),
    pytest.param("PUT", SET, dump({"warehouses": {"W|1": 9}}), 422, "invalid",
                 id="set_warehouse_id_with_separator"),
    pytest.param("PUT", SET, dump({"warehouses": {"r:W1": 9}}), 422, "invalid",
                 id="set_warehouse_id_like_a_reserved_field"),
    pytest.param("PUT", SET, dump({"warehouses": {"W1": 9}, "note": "x"}), 422, "invalid",
                 id="set_unknown_field"),
    pytest.param("PUT", SET, dump({"W1": 9}), 422, "invalid", id="set_missing_warehouses"),
    pytest.param("PUT", SET, b"W1=9", 400, "malformed_json", id="set_not_json"),
    pytest.param("PUT", "/v1/inventory/SKU%201", dump({"warehouses": {"W1": 9}}), 422, "invalid_sku",
                 id="set_sku_with_space"),
    pytest.param("PUT", f"/v1/inventory/{'S' * 65}", dump({"warehouses": {"W1": 9}}), 422, "invalid_sku",
                 id="set_sku_65_chars"),
    pytest.param("POST", ADJUST, adjustment(delta=0), 422, "invalid_delta", id="adjust_delta_zero"),
    pytest.param("POST", ADJUST, adjustment(delta=1.5), 422, "invalid", id="adjust_delta_float"),
    pytest.param("POST", ADJUST, adjustment(delta=10**9 + 1), 422, "invalid",
                 id="adjust_delta_over_a_billion"),
    pytest.param("POST", ADJUST, adjustment(reason="Restock"), 422, "invalid", id="adjust_reason_upper_case"),
    pytest.param("POST", ADJUST, dump({"delta": 2, "reason": "count"}), 422, "invalid",
                 id="adjust_missing_warehouse"),
    pytest.param("POST", ADJUST, b"", 400, "malformed_json", id="adjust_empty_body"),
    pytest.param("PUT", W1, dump({"priority": 0}), 422, "invalid", id="warehouse_priority_zero"),
    pytest.param("PUT", W1, dump({"priority": "1"}), 422, "invalid", id="warehouse_priority_string"),
    pytest.param("PUT", W1, dump({"active": "yes"}), 422, "invalid", id="warehouse_active_string"),
    pytest.param("PUT", W1, dump({"region": "east|west"}), 422, "invalid",
                 id="warehouse_region_with_separator"),
    pytest.param("PUT", W1, dump({"region": "east", "capacity": 9}), 422, "invalid",
                 id="warehouse_unknown_field"),
    pytest.param("PUT", W1, b"[]", 422, "invalid", id="warehouse_json_array"),
    pytest.param("PUT", f"/v1/warehouses/{'W' * 33}", dump({"priority": 1}), 422, "invalid_warehouse_id",
                 id="warehouse_id_33_chars"),
    pytest.param("PUT", "/v1/warehouses/W:1", dump({"priority": 1}), 422, "invalid_warehouse_id",
                 id="warehouse_id_with_colon"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), BAD_INVENTORY)
async def test_bad_inventory_or_warehouse_change_is_refused_without_trace(gw, redis, pg, method, path, body,
                                                                          status, code):
    rows = await pg.fetchval("SELECT count(*) FROM warehouses")
    await refused_without_trace(gw, redis, method, path, body, status, code)
    assert await pg.fetchval("SELECT count(*) FROM warehouses") == rows


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/nothing-here"),
    ("POST", "/v2/orders"),
    ("GET", "/v1/orders/o-1/items"),
])
async def test_unknown_route_is_404_problem(gw, method, path):
    resp = await gw.client.request(method, path, headers=auth("k-admin"))
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == "not_found"


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("DELETE", "/v1/orders", "POST"),
    ("PATCH", f"/v1/inventory/{SKU}", "PUT"),
    ("GET", "/v1/warehouses/W1", "PUT"),
])
async def test_wrong_method_is_405_problem_naming_the_allowed_ones(gw, redis, method, path, allowed):
    before = await snapshot(gw, redis)
    resp = await gw.client.request(method, path, json={"warehouses": {"W1": 99}}, headers=auth("k-admin"))
    assert resp.status == 405
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == "method_not_allowed"
    assert allowed in resp.headers["Allow"]
    assert await snapshot(gw, redis) == before
