"""The order id is the idempotency key: same payload replays, another payload conflicts."""

from __future__ import annotations

import asyncio
from collections import Counter

from tests.conftest import auth, order_body


async def test_fifty_concurrent_submissions_reserve_once(gw, pg):
    await gw.set_stock("SKU-1", {"W1": 10})
    body = order_body("dup-1", items=[{"sku": "SKU-1", "qty": 2}])

    async def submit() -> tuple[int, dict]:
        resp = await gw.post("/v1/orders", body, auth("k-web"))
        return resp.status, await resp.json()

    answers = await asyncio.gather(*(submit() for _ in range(50)))
    assert Counter(s for s, _ in answers) == {201: 1, 200: 49}
    bodies = [b for _, b in answers]
    assert all(b == bodies[0] for b in bodies)
    assert (await gw.stock("SKU-1"))["available"] == 8

    await gw.caught_up()
    assert await pg.fetchval("SELECT count(*) FROM orders WHERE order_id = 'dup-1'") == 1
    assert await pg.fetchval("SELECT count(*) FROM order_events WHERE order_id = 'dup-1'") == 1


async def test_same_order_id_same_payload_replays(gw):
    await gw.set_stock("SKU-1", {"W1": 5})
    body = order_body("rep-1")
    first = await gw.post("/v1/orders", body)
    assert first.status == 201
    again = await gw.post("/v1/orders", body)
    assert again.status == 200
    assert await again.json() == await first.json()
    assert (await gw.stock("SKU-1"))["available"] == 4


async def test_same_order_id_field_order_and_spacing_do_not_matter(gw):
    await gw.set_stock("SKU-1", {"W1": 5})
    first = await gw.client.post("/v1/orders", headers=auth("k-admin"), data=(
        b'{"order_id":"rep-2","user_id":"u-1","channel":"web","items":[{"sku":"SKU-1","qty":1}]}'))
    assert first.status == 201
    again = await gw.client.post("/v1/orders", headers=auth("k-admin"), data=(
        b'{ "items": [ {"qty": 1, "sku": "SKU-1"} ], "channel": "web", "user_id": "u-1", "order_id": "rep-2" }'))
    assert again.status == 200


async def test_same_order_id_other_payload_conflicts_and_changes_nothing(gw, redis):
    await gw.set_stock("SKU-1", {"W1": 5})
    assert (await gw.post("/v1/orders", order_body("mm-1"))).status == 201
    other = await gw.post("/v1/orders", order_body("mm-1", items=[{"sku": "SKU-1", "qty": 3}]))
    assert other.status == 409
    assert other.content_type == "application/problem+json"
    assert (await other.json())["code"] == "idempotency_mismatch"
    assert (await gw.stock("SKU-1"))["available"] == 4
    got = await gw.client.get("/v1/orders/mm-1", headers=auth("k-ops"))
    assert (await got.json())["items"] == [{"sku": "SKU-1", "qty": 1}]


async def test_rejected_order_id_may_be_retried_after_restock(gw):
    await gw.set_stock("SKU-1", {"W1": 0})
    body = order_body("retry-1")
    first = await gw.post("/v1/orders", body)
    assert first.status == 409
    assert (await first.json())["code"] == "insufficient_stock"
    await gw.set_stock("SKU-1", {"W1": 1})
    assert (await gw.post("/v1/orders", body)).status == 201


async def test_past_the_window_an_old_id_is_new_to_redis_and_postgresql_quarantines_it(gw, pg, redis):
    """Where the promise ends (README, Guarantees): the record gone, as after OMS_IDEMPOTENCY_TTL,
    the same id reserves again; PostgreSQL keeps the first order and holds the second apart."""
    await gw.set_stock("SKU-1", {"W1": 10})
    body = order_body("old-1", items=[{"sku": "SKU-1", "qty": 2}])
    assert (await gw.post("/v1/orders", body, auth("k-web"))).status == 201
    await gw.caught_up()
    await gw.expire_record("old-1")
    assert (await gw.post("/v1/orders", body, auth("k-web"))).status == 201
    await gw.caught_up()
    assert await pg.fetchval("SELECT count(*) FROM orders WHERE order_id = 'old-1'") == 1
    assert await pg.fetchval("SELECT count(*) FROM order_events WHERE order_id = 'old-1'") == 1
    assert await pg.fetchval("SELECT count(*) FROM quarantine WHERE replayed_at IS NULL") == 1
    assert (await gw.stock("SKU-1"))["available"] == 6  # both reservations hold until they expire
