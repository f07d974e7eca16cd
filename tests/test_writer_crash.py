"""A writer killed mid-stream loses no order and writes none twice.

The gateway runs without its own writer; the tests place orders, then run writers by hand
with a fault hook that kills one (``WriterCrash``) at a chosen point of a chosen batch:
inside the transaction before COMMIT, or after COMMIT before XACK. A writer reads its next
batch while one commits, so a dead writer leaves up to two batches pending. Another writer, or the
same one restarted, must then leave every accepted order in PostgreSQL exactly once, the
ledger and the inventory table counted once, and the stream empty with nothing pending.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway import keys
from gateway.ops.audit import verify
from gateway.writer import Writer, WriterCrash
from tests.conftest import auth, order_body

STREAM = keys.events()
BATCH = 50
CLAIM_IDLE_MS = 150

Entries = list[tuple[bytes, dict[bytes, bytes]]]


def crash_on(stage: str, call: int) -> Callable[[str], None]:
    """A fault hook that kills the writer the ``call``-th time it reaches ``stage``."""
    seen = 0

    def hook(at: str) -> None:
        nonlocal seen
        if at == stage:
            seen += 1
            if seen == call:
                raise WriterCrash(f"killed at {stage} of batch {call}")

    return hook


@pytest.fixture
async def writers(redis, pg) -> AsyncIterator[Callable[..., Writer]]:
    """Writers built by the test; any still running at the end is stopped without draining."""
    made: list[Writer] = []

    def make(name: str, *, fault: Callable[[str], None] | None = None,
             claim_idle_ms: int = CLAIM_IDLE_MS) -> Writer:
        writer = Writer(redis, pg, batch=BATCH, claim_idle_ms=claim_idle_ms, name=name, fault=fault)
        made.append(writer)
        return writer

    yield make
    for writer in made:
        await writer.close(drain=False)


async def stock_up(gw) -> None:
    await gw.set_stock("HOT", {"W1": 100, "W2": 400})
    await gw.set_stock("ACC", {"W2": 300})


async def place_orders(gw, prefix: str, n: int) -> dict[str, dict[str, Any]]:
    """Submit ``n`` two-line orders at once; returns the 201 bodies by order id."""

    async def one(i: int) -> dict[str, Any]:
        items = [{"sku": "HOT", "qty": 1 + i % 2}, {"sku": "ACC", "qty": 1}]
        resp = await gw.post("/v1/orders", order_body(f"{prefix}-{i}", f"u-{i}", items))
        assert resp.status == 201, await resp.text()
        return await resp.json()

    return {b["order_id"]: b for b in await asyncio.gather(*(one(i) for i in range(n)))}


async def killed(task: asyncio.Task[None]) -> None:
    with pytest.raises(WriterCrash):
        await asyncio.wait_for(task, timeout=30)


async def caught_up(*running: Writer) -> None:
    await asyncio.wait_for(asyncio.gather(*(w.wait_idle() for w in running)), timeout=30)


async def pending_ids(redis, consumer: str) -> list[bytes]:
    rows = await redis.xpending_range(STREAM, keys.WRITER_GROUP, min="-", max="+", count=10_000,
                                      consumername=consumer)
    return [r["message_id"] for r in rows]


def order_ids(entries: Entries) -> set[str]:
    return {f[b"o"].decode() for _, f in entries if f[b"t"] == b"order.accepted"}


async def pg_order_ids(pg) -> set[str]:
    return {r["order_id"] for r in await pg.fetch("SELECT order_id FROM orders")}


async def assert_each_order_once(gw, redis, pg, orders: dict[str, dict[str, Any]], moves: int) -> None:
    """Every accepted order, line, allocation and event once; the ledger and inventory counted once."""
    assert await pg_order_ids(pg) == set(orders)
    assert await pg.fetchval("SELECT count(*) FROM orders") == len(orders)

    items = await pg.fetch("SELECT order_id, sku, qty FROM order_items")
    assert sorted(tuple(r) for r in items) == sorted(
        (oid, i["sku"], i["qty"]) for oid, o in orders.items() for i in o["items"])

    allocs = await pg.fetch("SELECT order_id, sku, warehouse, qty FROM allocations")
    assert sorted(tuple(r) for r in allocs) == sorted(
        (oid, a["sku"], a["warehouse"], a["qty"]) for oid, o in orders.items() for a in o["allocations"])

    events = await pg.fetch("SELECT order_id, seq, type FROM order_events WHERE type LIKE 'order.%'")
    assert Counter(r["order_id"] for r in events) == Counter(set(orders))
    assert {(r["seq"], r["type"]) for r in events} == {(1, "order.accepted")}

    assert await pg.fetchval("SELECT count(*) FROM inventory_movements") == moves
    for sku in ("HOT", "ACC"):
        view = await gw.stock(sku)
        rows = await pg.fetch("SELECT warehouse, on_hand FROM inventory WHERE sku = $1", sku)
        assert dict(rows) == {wh: w["on_hand"] for wh, w in view["warehouses"].items()}
        ledger = await pg.fetch(
            "SELECT warehouse, sum(delta) FROM inventory_movements WHERE sku = $1 GROUP BY warehouse", sku)
        assert dict(ledger) == dict(rows)

    assert await redis.xlen(STREAM) == 0
    assert (await redis.xpending(STREAM, keys.WRITER_GROUP))["pending"] == 0


async def test_writer_killed_before_commit_writes_nothing_of_its_batch_and_another_writer_claims_it(
    make_gateway, redis, pg, writers
):
    gw = await make_gateway(run_writer=False)
    await stock_up(gw)
    orders = await place_orders(gw, "bc", 250)
    entries: Entries = await redis.xrange(STREAM)
    assert len(entries) == 253

    dead = writers("w-dead", fault=crash_on("before_commit", 3))
    await killed(dead.start())
    # pending: its batch and the next one, read while that batch was committing
    held = await pending_ids(redis, "w-dead")
    assert held == [e[0] for e in entries[2 * BATCH: 4 * BATCH]]
    assert await pg_order_ids(pg) == order_ids(entries[: 2 * BATCH])

    heir = writers("w-heir")
    heir.start()
    await caught_up(heir)
    assert heir.written == len(entries) - 2 * BATCH  # the dead writer's batch and the rest
    await assert_each_order_once(gw, redis, pg, orders, moves=3)


async def test_writer_killed_between_commit_and_ack_is_redelivered_without_duplicates(
    make_gateway, redis, pg, writers
):
    gw = await make_gateway(run_writer=False)
    await stock_up(gw)
    orders = await place_orders(gw, "ac-a", 120)
    await gw.set_stock("HOT", {"W2": 600})  # an inventory.moved entry inside the third batch
    orders |= await place_orders(gw, "ac-b", 130)
    entries: Entries = await redis.xrange(STREAM)
    crashed = entries[2 * BATCH: 3 * BATCH]
    assert any(f[b"t"] == b"inventory.moved" for _, f in crashed)

    dead = writers("w-dead", fault=crash_on("after_commit", 3))
    await killed(dead.start())
    assert await pending_ids(redis, "w-dead") == [e[0] for e in entries[2 * BATCH: 4 * BATCH]]
    assert await pg_order_ids(pg) == order_ids(entries[: 3 * BATCH])  # committed, not acknowledged
    assert await pg.fetchval("SELECT on_hand FROM inventory WHERE sku = 'HOT' AND warehouse = 'W2'") == 600

    heir = writers("w-heir")
    heir.start()
    await caught_up(heir)
    assert heir.written == len(entries) - 2 * BATCH
    await assert_each_order_once(gw, redis, pg, orders, moves=4)
    assert (await gw.stock("HOT"))["warehouses"]["W2"]["on_hand"] == 600


@pytest.mark.parametrize("stage", ["before_commit", "after_commit"])
async def test_writer_restarted_under_same_name_rereads_its_pending_entries_without_claim_delay(
    make_gateway, redis, pg, writers, stage
):
    gw = await make_gateway(run_writer=False)
    await stock_up(gw)
    orders = await place_orders(gw, "rs", 200)

    first = writers("w-1", fault=crash_on(stage, 2))
    await killed(first.start())
    assert len(await pending_ids(redis, "w-1")) == 2 * BATCH  # its batch and the one read ahead

    # An hour of claim delay: only its own backlog read can bring those entries back in time.
    again = writers("w-1", claim_idle_ms=3_600_000)
    again.start()
    await caught_up(again)
    await assert_each_order_once(gw, redis, pg, orders, moves=3)
    consumers = await redis.xinfo_consumers(STREAM, keys.WRITER_GROUP)
    assert [c["name"] for c in consumers] == [b"w-1"]


async def test_a_commit_slower_than_the_claim_delay_does_not_make_a_writer_take_its_own_batch_again(
    make_gateway, redis, pg, writers
):
    """The batch read ahead waits while the one before commits; past claim_idle_ms it looked
    abandoned, and the writer claimed and wrote it a second time (a CI-load flake before)."""
    gw = await make_gateway(run_writer=False)
    await stock_up(gw)
    await place_orders(gw, "slow", 150)
    entries: Entries = await redis.xrange(STREAM)
    stalled = False

    def slow_first_commit(at: str) -> None:
        nonlocal stalled
        if at == "before_commit" and not stalled:
            stalled = True
            time.sleep(3 * CLAIM_IDLE_MS / 1000)  # the whole loop stands still, as under a heavy load

    writer = writers("w-slow", fault=slow_first_commit)
    writer.start()
    await caught_up(writer)
    assert stalled
    assert writer.written == len(entries)  # each entry once: none claimed back from itself
    assert await redis.xlen(STREAM) == 0


async def test_two_writers_at_once_write_each_order_once(make_gateway, redis, pg, writers):
    gw = await make_gateway(run_writer=False)
    await stock_up(gw)
    pair = [writers("w-a"), writers("w-b")]
    for writer in pair:
        writer.start()
    orders = await place_orders(gw, "tw-a", 150)
    await gw.set_stock("HOT", {"W2": 700})
    orders |= await place_orders(gw, "tw-b", 150)

    await caught_up(*pair)
    await assert_each_order_once(gw, redis, pg, orders, moves=4)
    assert sum(w.written for w in pair) >= len(orders) + 4


async def test_one_of_two_writers_killed_mid_stream_survivor_claims_its_batch(
    make_gateway, redis, pg, writers
):
    gw = await make_gateway(run_writer=False)
    await stock_up(gw)
    orders = await place_orders(gw, "ks", 300)

    doomed = writers("w-doomed", fault=crash_on("before_commit", 1))
    survivor = writers("w-survivor")
    doomed_task = doomed.start()
    survivor.start()
    await killed(doomed_task)
    await caught_up(survivor)
    await assert_each_order_once(gw, redis, pg, orders, moves=3)


async def test_payments_and_cancels_in_later_batches_land_after_their_orders(make_gateway, redis, pg, writers):
    """Batches commit in stream order although the next one is read while one commits: every
    status update finds its order row, and the audit chain verifies."""
    gw = await make_gateway(run_writer=False)
    await stock_up(gw)
    orders = await place_orders(gw, "po", 150)
    ids = sorted(orders)
    expected = {}
    for n, order_id in enumerate(ids):
        if n % 3 == 2:
            continue
        path, body, key = (("payment", {"payment_id": f"pay-{n}", "amount": 100}, "k-pay")
                           if n % 3 == 0 else ("cancel", {"reason": "ops"}, "k-ops"))
        resp = await gw.post(f"/v1/orders/{order_id}/{path}", body, auth(key))
        assert resp.status == 200, await resp.text()
        expected[order_id] = "paid" if n % 3 == 0 else "cancelled"
    assert await redis.xlen(STREAM) > 4 * BATCH

    writer = writers("w-order")
    writer.start()
    await caught_up(writer)
    rows = await pg.fetch("SELECT order_id, status, last_seq FROM orders")
    assert {r["order_id"]: r["status"] for r in rows} == {o: expected.get(o, "pending_payment") for o in ids}
    assert all(r["last_seq"] == (2 if r["order_id"] in expected else 1) for r in rows)
    assert await verify(pg) == (await pg.fetchval("SELECT count(*) FROM order_events"), None)


async def test_payment_read_by_one_writer_while_another_holds_the_order_waits_for_it(
    make_gateway, redis, pg, writers
):
    """The group gives the order to one writer and its payment to another: the payment's batch is
    rolled back and retried until the order row exists, so the status is never dropped."""
    gw = await make_gateway(run_writer=False)
    await stock_up(gw)
    await place_orders(gw, "held", 1)
    holder = writers("w-holder", claim_idle_ms=3_600_000)
    await holder.ensure_group()
    held = await redis.xreadgroup(keys.WRITER_GROUP, "w-holder", {STREAM: ">"})  # read, not committed
    assert "held-0" in order_ids(held[0][1])
    resp = await gw.post("/v1/orders/held-0/payment", {"payment_id": "pay-held", "amount": 100}, auth("k-pay"))
    assert resp.status == 200, await resp.text()

    payer = writers("w-payer", claim_idle_ms=3_600_000)
    payer.start()

    async def deferred_twice() -> None:  # it tried, found no order row, rolled back, tries again
        while payer.deferred < 2:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(deferred_twice(), timeout=10)
    assert await pg.fetchval("SELECT count(*) FROM order_events WHERE order_id = 'held-0'") == 0

    holder.start()  # re-reads its pending entries first and writes the order
    await caught_up(holder, payer)
    row = await pg.fetchrow("SELECT status, last_seq, payment_id FROM orders WHERE order_id = 'held-0'")
    assert tuple(row) == ("paid", 2, "pay-held")
    assert await verify(pg) == (await pg.fetchval("SELECT count(*) FROM order_events"), None)
