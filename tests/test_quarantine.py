"""The writer never blocks on one entry: what PostgreSQL refuses for its data, or what cannot
be read, goes to the quarantine with its error and an event; every other entry is written."""

from __future__ import annotations

import asyncio
import os
import sys

import orjson
import pytest

from gateway import keys
from gateway.web import appkeys as K
from tests.conftest import auth, order_body

SKU = "Q-1"


async def accepted_entry(redis, order_id: str, **payload_changes) -> bytes:
    """An ``order.accepted`` entry as lua/reserve.lua writes it, with what the payload should hold."""
    payload = {"order_id": order_id, "user_id": "u-1", "channel": "web", "items": [{"sku": SKU, "qty": 1}],
               **payload_changes}
    return await redis.xadd(keys.events(), {"t": "order.accepted", "o": order_id, "n": 1,
                                            "p": orjson.dumps(payload), "a": "W1=1", "c": 1764583200000,
                                            "u": 1764584100000})


async def order_ids(pg) -> list[str]:
    return [r["order_id"] for r in await pg.fetch("SELECT order_id FROM orders ORDER BY order_id")]


async def submit(gw, order_id: str, user_id: str = "u-1") -> None:
    resp = await gw.post("/v1/orders", order_body(order_id, user_id, [{"sku": SKU, "qty": 1}]))
    assert resp.status == 201, await resp.text()


@pytest.fixture
async def gw(make_gateway):
    gw = await make_gateway()
    await gw.set_stock(SKU, {"W1": 100})
    return gw


async def test_poisoned_entry_between_good_ones_is_quarantined_and_the_rest_lands(gw, redis, pg):
    for n in range(3):
        await submit(gw, f"good-{n}")
    await accepted_entry(redis, "poison-1", ship_to={"region": "\x00"})  # text refuses NUL
    for n in range(3, 6):
        await submit(gw, f"good-{n}")
    await gw.caught_up()

    assert await order_ids(pg) == [f"good-{n}" for n in range(6)]
    held = await pg.fetch("SELECT stream_id, type, order_id, error, replayed_at FROM quarantine")
    assert [(r["type"], r["order_id"], r["replayed_at"]) for r in held] == [("order.accepted", "poison-1", None)]
    assert "UntranslatableCharacter" in held[0]["error"] or "\\u0000" in held[0]["error"]
    event = await pg.fetchrow("SELECT order_id, data FROM order_events WHERE type = 'writer.quarantined'")
    assert event["order_id"] is None
    assert orjson.loads(event["data"])["order_id"] == "poison-1"
    assert await redis.xlen(keys.events()) == 0  # acknowledged and deleted like the rest

    stats = await (await gw.client.get("/v1/stats", headers=auth("k-ops"))).json()
    assert stats["quarantined"] == 1
    report = await (await gw.client.get("/v1/reconciliation", headers=auth("k-ops"))).json()
    assert report["ok"] is False
    assert [q["order_id"] for q in report["quarantined"]] == ["poison-1"]
    assert gw.app[K.WRITER].quarantined == 1


@pytest.mark.parametrize("fields", [
    pytest.param({"t": "order.accepted", "o": "broken-1"}, id="missing_fields"),
    pytest.param({"t": "order.accepted", "o": "broken-1", "n": 1, "p": b"{not json", "a": "W1=1", "c": 1, "u": 2},
                 id="payload_not_json"),
    pytest.param({"t": "order.paid", "o": "broken-1", "n": "two", "s": "paid", "d": "{}", "c": 1},
                 id="seq_not_a_number"),
    pytest.param({"t": b"\xff\xfe", "o": b"\x00"}, id="not_utf8"),
    pytest.param({"t": "inventory.moved", "s": SKU, "w": "W1", "d": str(2**70), "h": "1", "r": "count"},
                 id="delta_beyond_bigint"),
])
async def test_entry_that_cannot_be_written_never_stops_the_stream(gw, redis, pg, fields):
    await submit(gw, "before")
    await redis.xadd(keys.events(), fields)
    await submit(gw, "after")
    await gw.caught_up()
    assert await order_ids(pg) == ["after", "before"]
    assert await pg.fetchval("SELECT count(*) FROM quarantine") == 1
    assert await pg.fetchval("SELECT count(*) FROM order_events WHERE type = 'writer.quarantined'") == 1


async def test_status_change_of_a_quarantined_order_waits_in_the_quarantine_too(gw, redis, pg):
    """A payment for an order whose acceptance is quarantined would otherwise wait for it forever."""
    await accepted_entry(redis, "poison-2", user_id="bad\x00user")
    await redis.xadd(keys.events(), {"t": "order.paid", "o": "poison-2", "n": 2, "s": "paid",
                                     "d": orjson.dumps({"payment_id": "p-1", "amount": 0}), "c": 1764583300000})
    await submit(gw, "after")
    await gw.caught_up()
    assert await order_ids(pg) == ["after"]
    held = await pg.fetch("SELECT type, order_id, error FROM quarantine ORDER BY id")
    assert [(r["type"], r["order_id"]) for r in held] == [("order.accepted", "poison-2"), ("order.paid", "poison-2")]
    assert "OrderQuarantined" in held[1]["error"]


async def cli(backends, *args: str) -> tuple[int, dict]:
    env = {**os.environ, "OMS_REDIS_URL": backends.redis_url, "OMS_DATABASE_URL": backends.database_url}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "quarantine", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode in (0, 1), err.decode()
    return proc.returncode, orjson.loads(out)


async def test_replay_after_a_fix_writes_the_order_and_its_payment(gw, redis, pg, backends):
    """A constraint PostgreSQL should never have had refuses one buyer's order; it is dropped
    (the fix), and the replay writes the order and then its payment, in stream order."""
    await pg.execute("ALTER TABLE orders ADD CONSTRAINT not_this_user CHECK (user_id <> 'victim')")
    try:
        await submit(gw, "held-1", "victim")
        pay = await gw.post("/v1/orders/held-1/payment", {"payment_id": "p-9", "amount": 0}, auth("k-pay"))
        assert pay.status == 200
        await submit(gw, "fine-1")
        await gw.caught_up()
        assert await order_ids(pg) == ["fine-1"]
        code, listed = await cli(backends, "list")
        assert code == 0
        assert [(e["type"], e["order_id"]) for e in listed["entries"]] == [
            ("order.accepted", "held-1"), ("order.paid", "held-1")]
        assert listed["entries"][0]["fields"]["o"] == "held-1"

        code, refused = await cli(backends, "replay")  # not fixed yet: both stay, nothing written
        assert code == 1 and len(refused["refused"]) == 2 and refused["replayed"] == []
    finally:
        await pg.execute("ALTER TABLE orders DROP CONSTRAINT not_this_user")

    code, replayed = await cli(backends, "replay")
    assert code == 0 and len(replayed["replayed"]) == 2 and replayed["refused"] == []
    row = await pg.fetchrow("SELECT status, payment_id FROM orders WHERE order_id = 'held-1'")
    assert (row["status"], row["payment_id"]) == ("paid", "p-9")
    assert await pg.fetchval("SELECT count(*) FROM quarantine WHERE replayed_at IS NULL") == 0
    report = await (await gw.client.get("/v1/reconciliation", headers=auth("k-ops"))).json()
    assert report["ok"] is True, report
    assert (await cli(backends, "replay"))[1] == {"replayed": [], "refused": []}  # nothing twice


async def test_replay_of_an_entry_that_is_still_bad_keeps_it_with_its_error(gw, redis, pg, backends):
    await accepted_entry(redis, "poison-3", ship_to={"region": "\x00"})
    await gw.caught_up()
    code, result = await cli(backends, "replay")
    assert code == 1
    assert [r["stream_id"] for r in result["refused"]] == [
        r["stream_id"] for r in await pg.fetch("SELECT stream_id FROM quarantine")]
    assert await order_ids(pg) == []


async def test_repair_refuses_while_an_order_is_quarantined(gw, redis, pg):
    """Redis holds the quarantined order's units; repairing from PostgreSQL would free them."""
    await pg.execute("ALTER TABLE orders ADD CONSTRAINT not_this_user CHECK (user_id <> 'victim')")
    try:
        await submit(gw, "held-2", "victim")
        await gw.caught_up()
    finally:
        await pg.execute("ALTER TABLE orders DROP CONSTRAINT not_this_user")
    resp = await gw.client.post("/v1/reconciliation/repair", headers=auth("k-admin"))
    result = await resp.json()
    assert result["ok"] is False
    assert {r["reason"] for r in result["refused"]} == {"quarantined"}
    assert (await gw.stock(SKU))["reserved"] == 1
