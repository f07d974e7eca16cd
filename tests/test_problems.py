"""Problem bodies follow RFC 9457: ``status`` is the HTTP status code, other facts have members of their own."""

from __future__ import annotations

import datetime as dt
import inspect

import pytest

from gateway import errors, keys
from gateway.web import appkeys as K
from tests.conftest import as_user, auth, order_body

STANDARD = ("type", "title", "status", "code", "detail")


def at(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat()


async def problem(resp, status: int, code: str) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["status"] == status and type(body["status"]) is int, body
    assert body["code"] == code and body["type"] == f"urn:oms:problem:{code}", body
    assert isinstance(body["title"], str) and isinstance(body["detail"], str), body
    return body


async def test_every_problem_we_can_provoke_carries_the_http_status(gw, redis):
    c, ops, pay = gw.client, auth("k-ops"), auth("k-pay")
    await gw.set_stock("SKU-1", {"W1": 3})
    await gw.set_stock("HOT", {"W1": 10})
    sale = {"skus": ["HOT"], "starts_at": at(-60), "ends_at": at(3600), "per_user_limit": 1,
            "prices": {"HOT": 100}, "currency": "EUR", "channels": ["web"]}
    assert (await c.put("/v1/sales/s1", json=sale, headers=ops)).status == 201
    assert (await c.put("/v1/sales/later", json={**sale, "starts_at": at(600)}, headers=ops)).status == 201
    assert (await gw.post("/v1/orders", order_body("o-1"))).status == 201
    priced = order_body("o-2", items=[{"sku": "SKU-1", "qty": 1, "unit_price": 250}])
    assert (await gw.post("/v1/orders", priced)).status == 201
    assert (await gw.post("/v1/orders", order_body("s-1", items=[{"sku": "HOT", "qty": 1}], sale_id="s1"))).status == 201

    await problem(await c.post("/v1/orders", data=b"{", headers=auth("k-admin")), 400, "malformed_json")
    await problem(await c.get("/v1/orders/o-1"), 401, "unauthorized")
    await problem(await c.get("/v1/orders/o-1", headers=auth("nope")), 401, "invalid_token")
    await problem(await c.get("/v1/inventory/SKU-1", headers=auth("k-web")), 403, "forbidden")
    await problem(await c.get("/v1/orders/o-1", headers=as_user("someone-else")), 404, "not_found")
    await problem(await c.get("/v1/nowhere", headers=ops), 404, "not_found")
    await problem(await c.delete("/v1/orders", headers=ops), 405, "method_not_allowed")
    big = b"[" + b" " * gw.app[K.SETTINGS].max_body + b"]"
    await problem(await c.post("/v1/orders", data=big, headers=auth("k-admin")), 413, "payload_too_large")
    await problem(await gw.post("/v1/orders", order_body("o-3", items=[])), 422, "invalid")
    dup = order_body("o-3", items=[{"sku": "SKU-1", "qty": 1}, {"sku": "SKU-1", "qty": 1}])
    await problem(await gw.post("/v1/orders", dup), 422, "duplicate_sku")
    await problem(await c.get("/v1/inventory/bad%20sku", headers=ops), 422, "invalid_sku")
    await problem(await gw.post("/v1/orders", order_body("o-1", items=[{"sku": "SKU-1", "qty": 2}])),
                  409, "idempotency_mismatch")
    short = await problem(await gw.post("/v1/orders", order_body("o-4", items=[{"sku": "SKU-1", "qty": 9}])),
                          409, "insufficient_stock")
    assert short["sku"] == "SKU-1" and short["missing"] == 8
    below = await problem(await c.post("/v1/inventory/SKU-1/adjust", headers=ops,
                                       json={"warehouse": "W1", "delta": -3, "reason": "count"}),
                          409, "below_reserved")
    assert below["warehouse"] == "W1" and below["reserved"] == 2
    illegal = await problem(await c.post("/v1/orders/o-1/ship", json={}, headers=ops), 409, "illegal_transition")
    assert illegal["order_status"] == "pending_payment"
    mismatch = await problem(await c.post("/v1/orders/o-2/payment", json={"payment_id": "p-1", "amount": 1},
                                          headers=pay), 409, "amount_mismatch")
    assert mismatch["total"] == 250
    assert (await c.post("/v1/orders/o-1/payment", json={"payment_id": "p-1", "amount": 0}, headers=pay)).status == 200
    await problem(await c.post("/v1/orders/o-1/payment", json={"payment_id": "p-2", "amount": 0}, headers=pay),
                  409, "payment_conflict")

    def in_sale(order_id, sale_id="s1", sku="HOT", user="u-1", **extra):
        return order_body(order_id, user, [{"sku": sku, "qty": 1, **extra}], sale_id=sale_id)

    await problem(await gw.post("/v1/orders", in_sale("s-2", "later")), 409, "sale_not_active")
    limit = await problem(await gw.post("/v1/orders", in_sale("s-3")), 409, "limit_exceeded")
    assert (limit["held"], limit["limit"]) == (1, 1)
    price = await problem(await gw.post("/v1/orders", in_sale("s-4", user="u-2", unit_price=1)), 409, "price_mismatch")
    assert price["sku"] == "HOT" and price["unit_price"] == 100
    await problem(await gw.post("/v1/orders", in_sale("s-5", sku="SKU-1", user="u-2")), 409, "sku_not_in_sale")
    await problem(await gw.post("/v1/orders", {**in_sale("s-6", user="u-2"), "channel": "app"}),
                  409, "channel_not_allowed")

    batch = await gw.post("/v1/orders/batch", {"orders": [order_body("o-1", items=[{"sku": "SKU-1", "qty": 3}])]})
    (result,) = (await batch.json())["results"]
    assert result["status"] == 409 and result["body"]["status"] == 409

    await redis.delete(keys.ready())
    not_ready = await gw.post("/v1/orders", order_body("o-5"))
    await problem(not_ready, 503, "not_ready")
    assert not_ready.headers["Retry-After"] == "5"


def concrete_errors():
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.GatewayError):
            yield cls


@pytest.mark.parametrize("cls", list(concrete_errors()), ids=lambda cls: cls.__name__)
def test_every_error_class_renders_its_status_as_a_number(cls):
    args = {errors.InsufficientStock: ("SKU-1", 2), errors.RateLimited: (1500,)}.get(cls, ("detail",))
    err = cls(*args)
    body = err.problem()
    assert body["status"] == cls.status and type(body["status"]) is int
    assert body["code"] == err.code
    assert set(STANDARD) <= set(body)


@pytest.mark.parametrize("member", ["type", "title", "status", "instance"])
def test_an_extra_may_not_take_a_standard_member(member):
    with pytest.raises(TypeError, match="reserved"):
        errors.IllegalTransition("cannot ship", **{member: "paid"})


def test_standard_members_win_over_extras_set_later():
    err = errors.Conflict("x", held=1)
    err.extra["status"] = "paid"
    assert err.problem()["status"] == 409 and err.problem()["held"] == 1
