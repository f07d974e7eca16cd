"""GET /v1/orders: PostgreSQL's orders, newest first, filtered, paged by cursor, scoped to the caller."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from typing import Any

import pytest

from tests.conftest import as_user, auth, order_body

SKU = "SKU-1"
USERS = ("u-1", "u-2", "u-3", "u-4")
CHANNELS = ("web", "app")
SALES = ("s1", "s2", None)
COUNT = 40
GROUP = 8  # orders sent at once: the coalescer puts them in one script call, often the same millisecond


def spec(i: int) -> dict[str, Any]:
    extra: dict[str, Any] = {"channel": CHANNELS[(i // 4) % 2]}
    if SALES[i % 3] is not None:
        extra["sale_id"] = SALES[i % 3]
    return order_body(f"lo-{i:03d}", USERS[i % 4], **extra)


async def place(gw, count: int = COUNT) -> list[dict[str, Any]]:
    """Place ``count`` orders (several users, both channels, two sales and none) and wait for the writer."""
    await gw.set_stock(SKU, {"W1": 10_000})
    for sale_id in filter(None, SALES):
        resp = await gw.client.put(f"/v1/sales/{sale_id}", headers=auth("k-ops"), json={
            "skus": [SKU], "starts_at": "2000-01-01T00:00:00Z", "ends_at": "2100-01-01T00:00:00Z",
            "per_user_limit": 1000})
        assert resp.status in (200, 201), await resp.text()
    placed: list[dict[str, Any]] = []
    for start in range(0, count, GROUP):
        group = range(start, min(start + GROUP, count))
        resps = await asyncio.gather(*(gw.post("/v1/orders", spec(i)) for i in group))
        for resp in resps:
            assert resp.status == 201, await resp.text()
            placed.append(await resp.json())
    await gw.caught_up()
    return placed


def newest_first(orders: list[dict[str, Any]]) -> list[str]:
    """Order ids as the list must give them: created_at DESC, order_id DESC.

    ``lo-NNN`` ids sort alike in Python and in any PostgreSQL collation.
    """
    newest = sorted(orders, key=lambda o: (o["created_at"], o["order_id"]), reverse=True)
    return [o["order_id"] for o in newest]


async def listing(gw, headers: dict[str, str] | None = None, **params: Any) -> tuple[int, Any]:
    resp = await gw.client.get("/v1/orders", params={k.rstrip("_"): str(v) for k, v in params.items()},
                               headers=auth("k-ops") if headers is None else headers)
    return resp.status, await resp.json()


async def ids(gw, headers: dict[str, str] | None = None, **params: Any) -> list[str]:
    status, body = await listing(gw, headers, **params)
    assert status == 200, body
    assert body["next"] is None, "expected one page"
    return [o["order_id"] for o in body["orders"]]


async def walk(gw, headers: dict[str, str] | None = None, **params: Any) -> tuple[list[str], list[int]]:
    """Follow ``next`` to the end; returns every order id seen and each page's size."""
    seen: list[str] = []
    sizes: list[int] = []
    cursor = None
    while True:
        extra = {} if cursor is None else {"cursor": cursor}
        status, body = await listing(gw, headers, **params, **extra)
        assert status == 200, body
        sizes.append(len(body["orders"]))
        seen += [o["order_id"] for o in body["orders"]]
        cursor = body["next"]
        if cursor is None:
            return seen, sizes
        assert len(sizes) <= COUNT, "the cursor does not advance"


def where(placed: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [o for o in placed if all(o.get(k) == v for k, v in match.items())]


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


async def settle(gw, placed: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """Pay every 5th order, cancel the next one (ops), and wait for the writer; returns (paid, cancelled)."""
    by_id = sorted(o["order_id"] for o in placed)
    paid = {order_id for i, order_id in enumerate(by_id) if i % 5 == 0}
    cancelled = {order_id for i, order_id in enumerate(by_id) if i % 5 == 1}
    for order_id in sorted(paid):
        resp = await gw.post(f"/v1/orders/{order_id}/payment", {"payment_id": f"pay-{order_id}", "amount": 0},
                             auth("k-pay"))
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["status"] == "paid"
    for order_id in sorted(cancelled):
        resp = await gw.post(f"/v1/orders/{order_id}/cancel", {"reason": "ops"}, auth("k-ops"))
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["status"] == "cancelled"
    await gw.caught_up()
    return paid, cancelled


# --- order, shape and pagination -------------------------------------------------------------


async def test_lists_every_order_newest_first_in_one_page_by_default(gw):
    placed = await place(gw)
    status, body = await listing(gw)
    assert status == 200
    assert set(body) == {"orders", "next"}
    assert body["next"] is None
    assert [o["order_id"] for o in body["orders"]] == newest_first(placed)


async def test_listed_order_is_the_order_as_created_with_what_happened_since(gw):
    placed = await place(gw, count=6)
    status, body = await listing(gw)
    assert status == 200
    by_id = {o["order_id"]: o for o in placed}
    assert len(body["orders"]) == 6
    nothing_yet = {"total": None, "payment_id": None, "cancel_reason": None, "shipment": None, "refund": None}
    for listed in body["orders"]:
        assert listed == {**by_id[listed["order_id"]], **nothing_yet}


async def test_cursor_walks_every_order_exactly_once_newest_first(gw):
    placed = await place(gw)
    seen, sizes = await walk(gw, limit=7)
    assert seen == newest_first(placed)
    assert len(seen) == len(set(seen)) == COUNT
    assert sizes == [7, 7, 7, 7, 7, 5]


async def test_cursor_breaks_ties_within_one_millisecond_by_order_id(gw):
    placed = await place(gw, count=16)
    # Orders of one coalesced batch share created_at; a page boundary inside such a run must not
    # skip or repeat any of them.
    assert len({o["created_at"] for o in placed}) < len(placed), "no two orders shared a millisecond"
    seen, sizes = await walk(gw, limit=1)
    assert seen == newest_first(placed)
    assert sizes == [1] * 16


async def test_page_exactly_as_long_as_the_rest_has_no_next(gw):
    placed = await place(gw)
    status, body = await listing(gw, limit=COUNT)
    assert status == 200
    assert len(body["orders"]) == COUNT
    assert body["next"] is None

    status, body = await listing(gw, limit=COUNT - 1)
    assert len(body["orders"]) == COUNT - 1 and body["next"] is not None
    status, rest = await listing(gw, limit=COUNT - 1, cursor=body["next"])
    assert status == 200
    assert [o["order_id"] for o in rest["orders"]] == newest_first(placed)[-1:]
    assert rest["next"] is None


async def test_limit_200_is_accepted(gw):
    placed = await place(gw, count=3)
    assert await ids(gw, limit=200) == newest_first(placed)


async def test_empty_database_lists_nothing(gw):
    status, body = await listing(gw)
    assert (status, body) == (200, {"orders": [], "next": None})


async def test_list_reads_postgresql_so_orders_appear_once_the_writer_caught_up(make_gateway):
    gw = await make_gateway(run_writer=False)
    await gw.set_stock(SKU, {"W1": 10})
    assert (await gw.post("/v1/orders", order_body("lo-late"))).status == 201
    assert await ids(gw) == []
    # The same order is listed once a writer has written it.
    writer = await make_gateway()
    await writer.caught_up()
    assert await ids(gw) == ["lo-late"]


# --- filters -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,value", [
    ("user_id", "u-2"), ("channel", "app"), ("channel", "web"), ("sale_id", "s1"), ("sale_id", "s2"),
])
async def test_single_filter_lists_only_matching_orders_newest_first(gw, name, value):
    placed = await place(gw)
    expected = newest_first(where(placed, **{name: value}))
    assert 0 < len(expected) < COUNT
    assert await ids(gw, **{name: value}) == expected


async def test_combined_filters_all_apply(gw):
    placed = await place(gw)
    expected = newest_first(where(placed, user_id="u-1", channel="app", sale_id="s2"))
    assert expected
    assert await ids(gw, user_id="u-1", channel="app", sale_id="s2") == expected


async def test_filters_with_no_match_list_nothing(gw):
    await place(gw, count=8)
    assert await ids(gw, user_id="nobody") == []
    assert await ids(gw, channel="store") == []
    assert await ids(gw, sale_id="s9") == []


async def test_cursor_pages_a_filtered_list_without_leaving_the_filter(gw):
    placed = await place(gw)
    expected = newest_first(where(placed, channel="web"))
    seen, sizes = await walk(gw, channel="web", limit=3)
    assert seen == expected
    assert sum(sizes) == len(expected) == 20


async def test_status_filter_follows_payments_and_cancellations(gw):
    placed = await place(gw)
    paid, cancelled = await settle(gw, placed)
    by_status = {"paid": paid, "cancelled": cancelled,
                 "pending_payment": {o["order_id"] for o in placed} - paid - cancelled}
    for status, expected_ids in by_status.items():
        expected = newest_first([o for o in placed if o["order_id"] in expected_ids])
        status_code, body = await listing(gw, status=status)
        assert status_code == 200
        assert [o["order_id"] for o in body["orders"]] == expected, status
        assert {o["status"] for o in body["orders"]} == {status}
    assert await ids(gw, status="shipped") == []


async def test_status_combined_with_user_and_channel(gw):
    placed = await place(gw)
    paid, _ = await settle(gw, placed)
    for user in USERS:
        for channel in CHANNELS:
            expected = newest_first([o for o in where(placed, user_id=user, channel=channel)
                                     if o["order_id"] in paid])
            assert await ids(gw, status="paid", user_id=user, channel=channel) == expected


async def test_status_filter_pages_by_cursor(gw):
    placed = await place(gw)
    paid, cancelled = await settle(gw, placed)
    seen, _ = await walk(gw, status="cancelled", limit=3)
    assert seen == newest_first([o for o in placed if o["order_id"] in cancelled])
    pending = [o for o in placed if o["order_id"] not in paid | cancelled]
    seen, _ = await walk(gw, status="pending_payment", channel="app", limit=7)
    assert seen == newest_first(where(pending, channel="app"))


# --- time range ----------------------------------------------------------------------------------


def ascending(placed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(placed, key=lambda o: (o["created_at"], o["order_id"]))


def parse(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


async def test_from_is_inclusive_and_to_is_exclusive(gw):
    placed = await place(gw)
    asc = ascending(placed)
    lo, hi = asc[10]["created_at"], asc[30]["created_at"]
    expected = newest_first([o for o in placed if lo <= o["created_at"] < hi])
    assert 0 < len(expected) < COUNT
    assert await ids(gw, from_=lo, to=hi) == expected
    assert asc[10]["order_id"] in expected
    assert asc[30]["order_id"] not in expected


async def test_from_alone_and_to_alone_split_the_orders(gw):
    placed = await place(gw)
    cut = ascending(placed)[20]["created_at"]
    later = await ids(gw, from_=cut)
    earlier = await ids(gw, to=cut)
    assert later == newest_first([o for o in placed if o["created_at"] >= cut])
    assert earlier == newest_first([o for o in placed if o["created_at"] < cut])
    assert later + earlier == newest_first(placed)


async def test_time_range_accepts_any_utc_offset(gw):
    placed = await place(gw)
    asc = ascending(placed)
    lo, hi = parse(asc[5]["created_at"]), parse(asc[35]["created_at"])
    in_utc = await ids(gw, from_=asc[5]["created_at"], to=asc[35]["created_at"])
    east = dt.timezone(dt.timedelta(hours=8))
    west = dt.timezone(dt.timedelta(hours=-5, minutes=-30))
    shifted = await ids(gw, from_=lo.astimezone(east).isoformat(), to=hi.astimezone(west).isoformat())
    assert shifted == in_utc
    lo_s, hi_s = asc[5]["created_at"], asc[35]["created_at"]
    assert in_utc == newest_first([o for o in placed if lo_s <= o["created_at"] < hi_s])


async def test_time_range_with_filters_and_cursor(gw):
    placed = await place(gw)
    asc = ascending(placed)
    lo, hi = asc[8]["created_at"], asc[36]["created_at"]
    expected = newest_first([o for o in where(placed, channel="web") if lo <= o["created_at"] < hi])
    seen, _ = await walk(gw, channel="web", from_=lo, to=hi, limit=2)
    assert seen == expected


async def test_empty_time_range_lists_nothing(gw):
    placed = await place(gw, count=8)
    t = ascending(placed)[4]["created_at"]
    assert await ids(gw, from_=t, to=t) == []
    assert await ids(gw, from_="2100-01-01T00:00:00Z") == []
    assert await ids(gw, to="2000-01-01T00:00:00Z") == []


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("params,code", [
    pytest.param({"limit": "0"}, "invalid_limit", id="limit_0"),
    pytest.param({"limit": "201"}, "invalid_limit", id="limit_201"),
    pytest.param({"limit": "-1"}, "invalid_limit", id="limit_negative"),
    pytest.param({"limit": "x"}, "invalid_limit", id="limit_x"),
    pytest.param({"limit": "7.5"}, "invalid_limit", id="limit_fraction"),
    pytest.param({"limit": ""}, "invalid_limit", id="limit_empty"),
    pytest.param({"status": "shipping"}, "invalid_status", id="status_unknown"),
    pytest.param({"status": "PAID"}, "invalid_status", id="status_wrong_case"),
    pytest.param({"status": ""}, "invalid_status", id="status_empty"),
    pytest.param({"cursor": "not-a-cursor"}, "invalid_cursor", id="cursor_garbage"),
    pytest.param({"cursor": "!!!"}, "invalid_cursor", id="cursor_not_base64"),
    pytest.param({"cursor": b64("abc|lo-001")}, "invalid_cursor", id="cursor_time_not_a_number"),
    pytest.param({"cursor": b64("99999999999999999999|lo-001")}, "invalid_cursor",
                 id="cursor_time_out_of_range"),
    pytest.param({"cursor": b64("9" * 400 + "|lo-001")}, "invalid_cursor", id="cursor_time_overflows_float"),
    pytest.param({"cursor": ""}, "invalid_cursor", id="cursor_empty"),
    pytest.param({"from": "yesterday"}, "invalid_from", id="from_words"),
    pytest.param({"from": "2026-13-01T00:00:00Z"}, "invalid_from", id="from_month_13"),
    pytest.param({"to": "2026-11-11T25:00:00Z"}, "invalid_to", id="to_hour_25"),
    pytest.param({"to": "1731283200"}, "invalid_to", id="to_epoch_seconds"),
    pytest.param({"from": "0001-01-01T00:00:00+01:00"}, "invalid_from", id="from_before_year_1_in_utc"),
    pytest.param({"to": "9999-12-31T23:59:59-01:00"}, "invalid_to", id="to_after_year_9999_in_utc"),
])
async def test_bad_query_is_422_problem(gw, params, code):
    await place(gw, count=2)
    resp = await gw.client.get("/v1/orders", params=params, headers=auth("k-ops"))
    assert resp.status == 422, await resp.text()
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert problem["code"] == code
    assert problem["status"] == 422


@pytest.mark.parametrize("headers,scope", [(as_user("u-1"), {"user_id": "u-2"}), (auth("k-web"), {"channel": "app"})],
                         ids=["user_asking_for_another_user", "storefront_asking_for_another_channel"])
@pytest.mark.parametrize("params,code", [({"cursor": ""}, "invalid_cursor"), ({"from": "yesterday"}, "invalid_from"),
                                         ({"to": ""}, "invalid_to")], ids=["cursor", "from", "to"])
async def test_bad_query_is_422_even_where_the_callers_scope_lists_nothing(gw, headers, scope, params, code):
    """Found by tests/test_fuzz.py: the empty answer for another's scope came before the time and cursor checks."""
    resp = await gw.client.get("/v1/orders", params={**scope, **params}, headers=headers)
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["code"] == code


# --- who sees what -------------------------------------------------------------------------------


async def test_user_token_lists_only_its_own_orders(gw):
    placed = await place(gw)
    for user in USERS:
        assert await ids(gw, as_user(user)) == newest_first(where(placed, user_id=user))
        assert await ids(gw, as_user(user), user_id=user) == newest_first(where(placed, user_id=user))


async def test_user_token_asking_for_another_user_gets_an_empty_list(gw):
    await place(gw)
    status, body = await listing(gw, as_user("u-1"), user_id="u-2")
    assert (status, body) == (200, {"orders": [], "next": None})


async def test_user_without_orders_gets_an_empty_list(gw):
    await place(gw, count=8)
    assert await ids(gw, as_user("u-9")) == []


async def test_user_token_filters_and_pages_within_its_own_orders(gw):
    placed = await place(gw)
    paid, _ = await settle(gw, placed)
    mine = where(placed, user_id="u-3")
    seen, _ = await walk(gw, as_user("u-3"), limit=2)
    assert seen == newest_first(mine)
    assert await ids(gw, as_user("u-3"), channel="app") == newest_first(where(mine, channel="app"))
    assert await ids(gw, as_user("u-3"), status="paid") == newest_first(
        [o for o in mine if o["order_id"] in paid])


@pytest.mark.parametrize("key,channel", [("k-web", "web"), ("k-app", "app")])
async def test_storefront_key_lists_only_its_channel(gw, key, channel):
    placed = await place(gw)
    assert await ids(gw, auth(key)) == newest_first(where(placed, channel=channel))
    assert await ids(gw, auth(key), channel=channel) == newest_first(where(placed, channel=channel))
    assert await ids(gw, auth(key), user_id="u-2") == newest_first(
        where(placed, channel=channel, user_id="u-2"))
    seen, _ = await walk(gw, auth(key), limit=7)
    assert seen == newest_first(where(placed, channel=channel))


@pytest.mark.parametrize("key,other", [("k-web", "app"), ("k-app", "web")])
async def test_storefront_key_asking_for_another_channel_gets_an_empty_list(gw, key, other):
    await place(gw)
    status, body = await listing(gw, auth(key), channel=other)
    assert (status, body) == (200, {"orders": [], "next": None})


@pytest.mark.parametrize("key", ["k-ops", "k-admin"])
async def test_ops_and_admin_list_every_order(gw, key):
    placed = await place(gw)
    seen, _ = await walk(gw, auth(key), limit=7)
    assert seen == newest_first(placed)


async def test_payments_key_is_forbidden(gw):
    await place(gw, count=2)
    resp = await gw.client.get("/v1/orders", headers=auth("k-pay"))
    assert resp.status == 403
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == "forbidden"


@pytest.mark.parametrize("headers", [
    pytest.param({}, id="no_header"),
    pytest.param(auth("no-such-key"), id="unknown_key"),
    pytest.param({"Authorization": "Basic azphZG1pbg=="}, id="basic_scheme"),
])
async def test_listing_without_valid_credentials_is_401(gw, headers):
    await place(gw, count=2)
    resp = await gw.client.get("/v1/orders", headers=headers)
    assert resp.status == 401
    assert resp.content_type == "application/problem+json"
