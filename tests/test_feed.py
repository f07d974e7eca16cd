"""The event feed: every event once, in id (commit) order, paged with ``next``; ops and admin only."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from tests.conftest import as_user, auth, order_body

AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


async def place(gw, n: int) -> list[dict[str, Any]]:
    """``n`` accepted orders, written to PostgreSQL; their 201 bodies."""
    await gw.set_stock("SKU-1", {"W1": n + 1000})  # never low: the feed holds only order events here
    resps = await asyncio.gather(*(gw.post("/v1/orders", order_body(f"feed-{i}"), auth("k-web"))
                                   for i in range(n)))
    assert [r.status for r in resps] == [201] * n
    await gw.caught_up()
    return [await r.json() for r in resps]


async def feed(gw, query: str = "", key: str = "k-ops") -> dict[str, Any]:
    resp = await gw.client.get(f"/v1/events{query}", headers=auth(key))
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_pages_follow_next_through_every_event_once_in_id_order(gw):
    orders = await place(gw, 250)
    seen: list[dict[str, Any]] = []
    sizes = []
    after = 0
    while True:
        page = await feed(gw, f"?after={after}&limit=100")
        sizes.append(len(page["events"]))
        if not page["events"]:
            assert page["next"] == after
            break
        assert page["next"] == page["events"][-1]["id"]
        seen += page["events"]
        after = page["next"]
    assert sizes == [100, 100, 50, 0]
    ids = [e["id"] for e in seen]
    assert ids == sorted(set(ids))
    assert sorted(e["order_id"] for e in seen) == sorted(o["order_id"] for o in orders)


async def test_without_parameters_the_feed_starts_at_the_first_event_with_100(gw):
    await place(gw, 150)
    first = await feed(gw)
    assert len(first["events"]) == 100
    assert first["next"] == first["events"][-1]["id"]
    assert await feed(gw, "?after=&limit=") == first  # the documented form, left empty
    rest = await feed(gw, f"?after={first['next']}")
    assert len(rest["events"]) == 50
    assert rest["events"][0]["id"] > first["next"]


async def test_event_names_its_type_order_seq_time_and_data(gw):
    [order] = await place(gw, 1)
    [event] = (await feed(gw))["events"]
    assert set(event) == {"id", "type", "order_id", "seq", "at", "data"}
    assert (event["type"], event["order_id"], event["seq"]) == ("order.accepted", order["order_id"], 1)
    assert AT.match(event["at"])
    assert event["at"] == order["created_at"]
    assert event["data"]["order"]["order_id"] == order["order_id"]


async def test_limit_takes_its_bounds_and_past_the_end_the_page_is_empty(gw):
    await place(gw, 3)
    one = await feed(gw, "?limit=1")
    assert len(one["events"]) == 1
    everything = await feed(gw, "?limit=1000")
    assert len(everything["events"]) == 3
    last = everything["next"]
    assert await feed(gw, f"?after={last}") == {"events": [], "next": last}
    assert await feed(gw, f"?after={last + 1000}") == {"events": [], "next": last + 1000}


@pytest.mark.parametrize("query, code", [
    pytest.param("?limit=0", "invalid_limit", id="limit_zero"),
    pytest.param("?limit=1001", "invalid_limit", id="limit_over_1000"),
    pytest.param("?limit=-1", "invalid_limit", id="limit_negative"),
    pytest.param("?limit=ten", "invalid_limit", id="limit_not_a_number"),
    pytest.param("?limit=1.5", "invalid_limit", id="limit_fraction"),
    pytest.param("?limit=%201", "invalid_limit", id="limit_with_space"),
    pytest.param("?limit=1&limit=2", "invalid_limit", id="limit_twice"),
    pytest.param("?after=-1", "invalid_after", id="after_negative"),
    pytest.param("?after=abc", "invalid_after", id="after_not_a_number"),
    pytest.param("?after=9223372036854775808", "invalid_after", id="after_beyond_bigint"),
    pytest.param("?cursor=5", "unknown_parameter", id="unknown_parameter"),
])
async def test_bad_parameters_are_422_problems(gw, query, code):
    resp = await gw.client.get(f"/v1/events{query}", headers=auth("k-ops"))
    assert resp.status == 422
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == code


@pytest.mark.parametrize("headers, status", [
    pytest.param({}, 401, id="no_credentials"),
    pytest.param(auth("k-web"), 403, id="storefront"),
    pytest.param(auth("k-pay"), 403, id="payments"),
    pytest.param(as_user("u-1"), 403, id="user"),
    pytest.param(auth("k-ops"), 200, id="ops"),
    pytest.param(auth("k-admin"), 200, id="admin"),
])
async def test_only_ops_and_admin_read_the_feed(gw, headers, status):
    resp = await gw.client.get("/v1/events", headers=headers)
    assert resp.status == status
