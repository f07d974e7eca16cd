"""Who may do what: 401 for a caller who proves nothing, 403 for a known caller out of bounds,
404 for someone else's order, and a refused request changes nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from gateway import keys
from gateway.config import DEV_ADMIN_KEY, DEV_JWT_SECRET, ConfigError, Settings
from tests.conftest import API_KEYS, SECRET, as_user, auth, order_body, user_token

SKU = "SKU-1"
ORDER_KEYS = keys.pattern("order")
EXPIRY = keys.expiry()
EVENTS = keys.events()
WAREHOUSES = keys.warehouses()
OTHER_SECRET = "another-secret-that-is-long-enough-0123456789"
PROD_SECRET = "production-secret-0123456789abcdef"
PROD_KEYS = "admin=prod-admin-key-9f8e7d,storefront:web=prod-web-key-1a2b3c"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_token(header: dict[str, Any], claims: dict[str, Any], key: str | None = SECRET,
               digest: Any = hashlib.sha256) -> str:
    """A JWT built without PyJWT, so tokens it would refuse to make can still be sent."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = b"" if key is None else hmac.new(key.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url(signature)}"


def live(sub: Any = "u-1") -> dict[str, Any]:
    return {"sub": sub, "exp": int(time.time()) + 3600}


def tampered() -> str:
    """A genuine token for u-2 whose payload was swapped for u-1's, keeping u-2's signature."""
    header, _, signature = user_token("u-2").split(".")
    return f"{header}.{b64url(json.dumps(live('u-1')).encode())}.{signature}"


@pytest.fixture
async def gw(make_gateway):
    """A gateway without its writer: the events stream only grows, so its length shows any write."""
    return await make_gateway(run_writer=False)


async def snapshot(gw, redis) -> dict[str, Any]:
    return {"stock": await gw.stock(SKU), "events": await redis.xlen(EVENTS)}


async def unchanged(gw, redis, before: dict[str, Any]) -> None:
    """No stock moved, no event was written and no order was recorded."""
    assert await snapshot(gw, redis) == before
    assert await redis.keys(ORDER_KEYS) == []
    assert await redis.zcard(EXPIRY) == 0


async def assert_problem(resp, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert problem["status"] == status
    assert problem["code"] == code
    return problem


UNAUTHENTICATED = [
    pytest.param(None, "unauthorized", id="no_authorization_header"),
    pytest.param("Basic " + b64url(b"k-admin:"), "unauthorized", id="basic_scheme"),
    pytest.param("Token k-admin", "unauthorized", id="other_scheme_with_a_real_key"),
    pytest.param("k-admin", "unauthorized", id="key_without_scheme"),
    pytest.param("Bearer", "unauthorized", id="bearer_without_credentials"),
    pytest.param("Bearer k-nope", "invalid_token", id="unknown_key"),
    pytest.param(f"Bearer {DEV_ADMIN_KEY}", "invalid_token", id="dev_key_when_keys_are_configured"),
    pytest.param(f"Bearer {user_token('u-1', secret=OTHER_SECRET)}", "invalid_token",
                 id="token_signed_with_another_secret"),
    pytest.param(f"Bearer {tampered()}", "invalid_token", id="token_with_swapped_payload"),
    pytest.param(f"Bearer {user_token('u-1', ttl=-60)}", "token_expired", id="expired_token"),
    pytest.param(f"Bearer {hand_token({'alg': 'none', 'typ': 'JWT'}, live(), key=None)}", "invalid_token",
                 id="alg_none"),
    pytest.param(f"Bearer {hand_token({'alg': 'HS256', 'typ': 'JWT'}, {'sub': 'u-1'})}", "invalid_token",
                 id="token_without_exp"),
    pytest.param(f"Bearer {hand_token({'alg': 'HS256', 'typ': 'JWT'}, {'sub': 'u-1', 'exp': 'never'})}",
                 "invalid_token", id="exp_not_a_number"),
    pytest.param(f"Bearer {hand_token({'alg': 'HS256', 'typ': 'JWT'}, {'exp': live()['exp']})}",
                 "invalid_token", id="token_without_sub"),
    pytest.param(f"Bearer {hand_token({'alg': 'HS256', 'typ': 'JWT'}, live(sub=42))}", "invalid_token",
                 id="sub_not_a_string"),
    pytest.param(f"Bearer {hand_token({'alg': 'HS256', 'typ': 'JWT'}, live(sub=''))}", "invalid_token",
                 id="sub_empty"),
    pytest.param(f"Bearer {hand_token({'alg': 'HS512', 'typ': 'JWT'}, live(), digest=hashlib.sha512)}",
                 "invalid_token", id="hs512_with_the_right_secret"),
    pytest.param(f"Bearer {hand_token({'alg': 'RS256', 'typ': 'JWT'}, live())}", "invalid_token",
                 id="rs256_header_hmac_signed_with_the_secret"),
    pytest.param("Bearer not.a.jwt", "invalid_token", id="garbage_token"),
]


@pytest.mark.parametrize(("authorization", "code"), UNAUTHENTICATED)
async def test_order_without_valid_credentials_is_401_and_reserves_nothing(gw, redis, authorization, code):
    await gw.set_stock(SKU, {"W1": 5})
    before = await snapshot(gw, redis)
    headers = {"Authorization": authorization} if authorization is not None else {}
    resp = await gw.client.post("/v1/orders", json=order_body("auth-401"), headers=headers)
    await assert_problem(resp, 401, code)
    assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer")
    await unchanged(gw, redis, before)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/orders/o-1", None),
    ("GET", f"/v1/inventory/{SKU}", None),
    ("PUT", f"/v1/inventory/{SKU}", {"warehouses": {"W1": 99}}),
    ("POST", f"/v1/inventory/{SKU}/adjust", {"warehouse": "W1", "delta": 9, "reason": "restock"}),
    ("PUT", "/v1/warehouses/W9", {"priority": 1}),
])
async def test_every_v1_endpoint_refuses_a_request_without_credentials(gw, redis, method, path, body):
    await gw.set_stock(SKU, {"W1": 5})
    before = await snapshot(gw, redis)
    resp = await gw.client.request(method, path, json=body)
    await assert_problem(resp, 401, "unauthorized")
    await unchanged(gw, redis, before)
    assert not await redis.hexists(WAREHOUSES, "W9")


FORBIDDEN = [
    pytest.param("POST", "/v1/orders", order_body("f-1", user_id="u-1"), as_user("u-2"),
                 id="user_orders_for_another_user"),
    pytest.param("POST", "/v1/orders", order_body("f-2", channel="app"), auth("k-web"),
                 id="web_storefront_orders_on_app"),
    pytest.param("POST", "/v1/orders", order_body("f-3"), auth("k-app"),
                 id="app_storefront_orders_on_web"),
    pytest.param("POST", "/v1/orders", order_body("f-4"), auth("k-pay"), id="payments_key_orders"),
    pytest.param("POST", "/v1/orders", order_body("f-5"), auth("k-ops"), id="ops_key_orders"),
    pytest.param("PUT", f"/v1/inventory/{SKU}", {"warehouses": {"W1": 99}}, as_user("u-1"),
                 id="user_sets_inventory"),
    pytest.param("GET", f"/v1/inventory/{SKU}", None, as_user("u-1"), id="user_reads_inventory"),
    pytest.param("POST", f"/v1/inventory/{SKU}/adjust", {"warehouse": "W1", "delta": 9, "reason": "restock"},
                 as_user("u-1"), id="user_adjusts_inventory"),
    pytest.param("PUT", "/v1/warehouses/W9", {"priority": 1}, as_user("u-1"), id="user_puts_warehouse"),
    pytest.param("PUT", f"/v1/inventory/{SKU}", {"warehouses": {"W1": 99}}, auth("k-pay"),
                 id="payments_key_sets_inventory"),
    pytest.param("POST", f"/v1/inventory/{SKU}/adjust", {"warehouse": "W1", "delta": 9, "reason": "restock"},
                 auth("k-pay"), id="payments_key_adjusts_inventory"),
    pytest.param("PUT", "/v1/warehouses/W9", {"priority": 1}, auth("k-pay"),
                 id="payments_key_puts_warehouse"),
    pytest.param("PUT", f"/v1/inventory/{SKU}", {"warehouses": {"W1": 99}}, auth("k-web"),
                 id="storefront_sets_inventory"),
    pytest.param("GET", f"/v1/inventory/{SKU}", None, auth("k-web"), id="storefront_reads_inventory"),
    pytest.param("POST", f"/v1/inventory/{SKU}/adjust", {"warehouse": "W1", "delta": 9, "reason": "restock"},
                 auth("k-app"), id="storefront_adjusts_inventory"),
    pytest.param("PUT", "/v1/warehouses/W9", {"priority": 1}, auth("k-web"), id="storefront_puts_warehouse"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers"), FORBIDDEN)
async def test_known_caller_out_of_bounds_is_403_and_changes_nothing(gw, redis, pg, method, path, body,
                                                                      headers):
    await gw.set_stock(SKU, {"W1": 5})
    before = await snapshot(gw, redis)
    resp = await gw.client.request(method, path, json=body, headers=headers)
    await assert_problem(resp, 403, "forbidden")
    await unchanged(gw, redis, before)
    assert not await redis.hexists(WAREHOUSES, "W9")
    assert await pg.fetchval("SELECT count(*) FROM warehouses WHERE warehouse_id = 'W9'") == 0


@pytest.mark.parametrize(("method", "path", "body", "headers", "status"), [
    pytest.param("POST", "/v1/orders", order_body("ok-1", user_id="u-1"), as_user("u-1"), 201,
                 id="user_orders_for_itself"),
    pytest.param("POST", "/v1/orders", order_body("ok-2"), auth("k-web"), 201, id="web_storefront_on_web"),
    pytest.param("POST", "/v1/orders", order_body("ok-3", channel="app"), auth("k-app"), 201,
                 id="app_storefront_on_app"),
    pytest.param("POST", "/v1/orders", order_body("ok-4", channel="store"), auth("k-admin"), 201,
                 id="admin_orders_on_any_channel"),
    pytest.param("PUT", f"/v1/inventory/{SKU}", {"warehouses": {"W1": 7}}, auth("k-ops"), 200,
                 id="ops_sets_inventory"),
    pytest.param("POST", f"/v1/inventory/{SKU}/adjust", {"warehouse": "W1", "delta": 2, "reason": "restock"},
                 auth("k-admin"), 200, id="admin_adjusts_inventory"),
    pytest.param("PUT", "/v1/warehouses/W9", {"priority": 1}, auth("k-ops"), 201, id="ops_puts_warehouse"),
])
async def test_the_right_caller_is_let_through(gw, method, path, body, headers, status):
    await gw.set_stock(SKU, {"W1": 5})
    resp = await gw.client.request(method, path, json=body, headers=headers)
    assert resp.status == status, await resp.text()


@pytest.fixture
async def web_order(gw) -> str:
    """An order of user u-1 placed through the web storefront."""
    await gw.set_stock(SKU, {"W1": 5})
    resp = await gw.post("/v1/orders", order_body("read-1", user_id="u-1"), auth("k-web"))
    assert resp.status == 201, await resp.text()
    return "read-1"


@pytest.mark.parametrize("headers", [
    pytest.param(as_user("u-2"), id="another_user"),
    pytest.param(auth("k-app"), id="storefront_of_another_channel"),
])
async def test_someone_elses_order_reads_as_not_found(gw, web_order, headers):
    resp = await gw.client.get(f"/v1/orders/{web_order}", headers=headers)
    problem = await assert_problem(resp, 404, "not_found")
    missing = await gw.client.get("/v1/orders/no-such-order", headers=headers)
    assert await missing.json() == problem  # a probe cannot tell "not yours" from "not there"


@pytest.mark.parametrize("headers", [
    pytest.param(as_user("u-1"), id="owner"),
    pytest.param(auth("k-web"), id="storefront_of_its_channel"),
    pytest.param(auth("k-ops"), id="ops"),
    pytest.param(auth("k-admin"), id="admin"),
])
async def test_order_is_readable_by_owner_its_storefront_ops_and_admin(gw, web_order, headers):
    resp = await gw.client.get(f"/v1/orders/{web_order}", headers=headers)
    assert resp.status == 200, await resp.text()
    order = await resp.json()
    assert (order["order_id"], order["user_id"], order["channel"]) == (web_order, "u-1", "web")


def test_production_refuses_to_start_without_keys_and_secret():
    with pytest.raises(ConfigError, match="OMS_API_KEYS"):
        Settings.from_env({"OMS_ENV": "production"})


@pytest.mark.parametrize("environ", [
    pytest.param({"OMS_API_KEYS": PROD_KEYS}, id="keys_without_secret"),
    pytest.param({"OMS_JWT_SECRET": PROD_SECRET}, id="secret_without_keys"),
    pytest.param({"OMS_API_KEYS": PROD_KEYS, "OMS_JWT_SECRET": DEV_JWT_SECRET}, id="dev_secret"),
    pytest.param({"OMS_API_KEYS": f"{PROD_KEYS},admin={DEV_ADMIN_KEY}", "OMS_JWT_SECRET": PROD_SECRET},
                 id="dev_admin_key_among_keys"),
    pytest.param({"OMS_API_KEYS": PROD_KEYS, "OMS_JWT_SECRET": "s" * 31}, id="secret_shorter_than_32_bytes"),
])
def test_production_refuses_development_or_weak_credentials(environ):
    with pytest.raises(ConfigError):
        Settings.from_env({"OMS_ENV": "production", **environ})


def test_production_with_configured_credentials_starts_without_dev_credentials():
    settings = Settings.from_env({"OMS_ENV": "production", "OMS_API_KEYS": PROD_KEYS,
                                  "OMS_JWT_SECRET": PROD_SECRET})
    assert settings.production
    assert settings.dev_credentials is False
    assert settings.jwt_secret == PROD_SECRET
    assert set(settings.api_keys) == {"prod-admin-key-9f8e7d", "prod-web-key-1a2b3c"}


def test_development_without_credentials_falls_back_to_dev_credentials():
    settings = Settings.from_env({})
    assert settings.dev_credentials is True
    assert (set(settings.api_keys), settings.jwt_secret) == ({DEV_ADMIN_KEY}, DEV_JWT_SECRET)


@pytest.mark.parametrize("environ", [
    pytest.param({"OMS_ENV": "production", "OMS_API_KEYS": PROD_KEYS, "OMS_JWT_SECRET": PROD_SECRET},
                 id="production"),
    pytest.param({"OMS_API_KEYS": API_KEYS, "OMS_JWT_SECRET": SECRET}, id="configured_development"),
    pytest.param({}, id="dev_credentials"),
])
def test_settings_repr_shows_no_secret_or_key(environ):
    settings = Settings.from_env(environ)
    for text in (repr(settings), str(settings), f"{settings}"):
        assert settings.jwt_secret not in text
        for key in settings.api_keys:
            assert key not in text

