"""The audit trail: order_events form one hash chain; `gateway.audit.verify` and
`python -m gateway audit verify` find it intact after real traffic and name the first row
that was changed, deleted around or forged by hand."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.chain import GENESIS, event_hash
from gateway.ops.audit import verify
from tests.conftest import as_user, auth, order_body

ROOT = Path(__file__).resolve().parents[1]
SKU = "SKU-1"
ORDERS = [f"au-{i:02d}" for i in range(10)]


async def ok(resp) -> dict[str, Any]:
    assert resp.status in (200, 201), await resp.text()
    return await resp.json()


async def workload(gw) -> None:
    """Accept 10 orders, pay 5, ship and complete one, cancel pending and paid ones, all through the API.

    The writer catches up between phases, so the chain spans several writer batches.
    """
    await gw.set_stock(SKU, {"W1": 100, "W2": 100})
    for i, order_id in enumerate(ORDERS):
        channel = "web" if i % 2 else "app"
        await ok(await gw.post("/v1/orders", order_body(order_id, f"u-{i % 3}", channel=channel,
                                                        items=[{"sku": SKU, "qty": 1 + i % 3}])))
    await gw.caught_up()
    for order_id in ORDERS[:5]:
        await ok(await gw.post(f"/v1/orders/{order_id}/payment",
                               {"payment_id": f"pay-{order_id}", "amount": 0}, auth("k-pay")))
    await gw.caught_up()
    async def act(order_id: str, action: str, body: dict[str, Any], headers: dict[str, str]) -> str:
        return (await ok(await gw.post(f"/v1/orders/{order_id}/{action}", body, headers)))["status"]

    assert await act("au-00", "ship", {"carrier": "sf"}, auth("k-ops")) == "shipped"
    assert await act("au-00", "complete", {}, auth("k-ops")) == "completed"
    assert await act("au-01", "cancel", {"reason": "ops"}, auth("k-ops")) == "refunding"
    for order_id in ORDERS[5:7]:
        assert await act(order_id, "cancel", {"reason": "ops"}, auth("k-ops")) == "cancelled"
    assert await act("au-07", "cancel", {"reason": "customer"}, as_user("u-1")) == "cancelled"
    await gw.caught_up()


# 10 accepted + 5 paid + shipped + completed + refunding + 3 cancelled
WORKLOAD_EVENTS = 21


@pytest.fixture
async def chain(gw, pg) -> list[dict[str, Any]]:
    """The chain after the workload: every order_events row in id order."""
    await workload(gw)
    return await rows(pg)


async def rows(pg) -> list[dict[str, Any]]:
    return [dict(r) for r in await pg.fetch(
        """SELECT id, stream_id, order_id, seq, type, data::text AS data, prev_hash, hash
           FROM order_events ORDER BY id""")]


async def cli(backends) -> tuple[int, str]:
    """Run `python -m gateway audit verify` against the test servers; (exit code, stdout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")}
    env.update(OMS_DATABASE_URL=backends.database_url, OMS_REDIS_URL=backends.redis_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "audit", "verify", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + "\n[stderr]\n" + err.decode()


async def assert_broken_at(pg, backends, event_id: int, checked_before: int) -> None:
    """Both verify() and the CLI name ``event_id`` as the first broken event."""
    checked, broken = await verify(pg)
    assert broken is not None, "tampering went unnoticed"
    assert broken["id"] == event_id
    assert checked == checked_before
    small = await verify(pg, batch=2)  # the same answer when the walk spans many fetches
    assert small == (checked, broken)
    code, out = await cli(backends)
    assert code == 1, out
    match = re.search(r"BROKEN at event id (\d+)\b", out)
    assert match, out
    assert int(match.group(1)) == event_id


def middle(chain: list[dict[str, Any]], kind: str) -> tuple[int, dict[str, Any]]:
    """Index and row of the first event of ``kind`` that is neither the first nor the last row."""
    for i, row in enumerate(chain[1:-1], start=1):
        if row["type"] == kind:
            return i, row
    raise AssertionError(f"no {kind} event in the middle of the chain")


# --- intact ------------------------------------------------------------------------------------


async def test_empty_chain_verifies(pg):
    assert await verify(pg) == (0, None)


async def test_chain_after_mixed_workload_verifies(chain, pg):
    assert len(chain) == WORKLOAD_EVENTS
    assert await pg.fetchval("SELECT count(*) FROM order_events") == WORKLOAD_EVENTS
    assert {r["type"] for r in chain} == {"order.accepted", "order.paid", "order.shipped", "order.completed",
                                          "order.refunding", "order.cancelled"}
    assert await verify(pg) == (WORKLOAD_EVENTS, None)
    assert await verify(pg, batch=3) == (WORKLOAD_EVENTS, None)


async def test_cli_reports_intact_chain_and_exits_0(chain, backends):
    code, out = await cli(backends)
    assert code == 0, out
    assert "intact" in out
    assert f"{len(chain)} event(s) verified" in out


async def test_each_row_links_to_the_one_before_from_genesis(chain):
    assert chain[0]["prev_hash"] == GENESIS == "0" * 64
    for before, row in zip(chain, chain[1:], strict=False):
        assert row["prev_hash"] == before["hash"], row["id"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", r["hash"]) for r in chain)
    assert len({r["hash"] for r in chain}) == len(chain)


async def test_each_hash_covers_its_row_and_the_previous_hash(chain, pg):
    at = {r["id"]: r["at_ms"] for r in await pg.fetch(
        "SELECT id, (extract(epoch FROM at) * 1000)::bigint AS at_ms FROM order_events")}
    for row in chain:
        assert row["hash"] == event_hash(row["prev_hash"], row["stream_id"], row["order_id"], row["seq"],
                                         row["type"], at[row["id"]], orjson.loads(row["data"]))


async def test_events_of_each_order_are_numbered_in_chain_order(chain):
    seqs: dict[str, list[int]] = {}
    for row in chain:
        seqs.setdefault(row["order_id"], []).append(row["seq"])
    assert set(seqs) == set(ORDERS)
    for order_id, numbers in seqs.items():
        assert numbers == list(range(1, len(numbers) + 1)), order_id


async def test_chain_stays_intact_with_two_writers_appending_at_once(make_gateway, pg):
    a, b = await make_gateway(), await make_gateway()
    await a.set_stock(SKU, {"W1": 1000})

    async def send(gw, path: str, body: dict[str, Any], key: str = "k-admin") -> None:
        await ok(await gw.post(path, body, auth(key)))

    await asyncio.gather(*(send(gw, "/v1/orders", order_body(f"{p}-{i:02d}", f"u-{i % 4}"))
                           for gw, p in ((a, "wa"), (b, "wb")) for i in range(25)))
    await asyncio.gather(*(send(gw, f"/v1/orders/{p}-{i:02d}/payment",
                                {"payment_id": f"p-{p}-{i}", "amount": 0}, "k-pay")
                           for gw, p in ((a, "wa"), (b, "wb")) for i in range(0, 25, 2)))
    await asyncio.gather(a.caught_up(), b.caught_up())
    total = await pg.fetchval("SELECT count(*) FROM order_events")
    assert total == 50 + 26
    assert await verify(pg) == (total, None)


# --- tampered ----------------------------------------------------------------------------------


async def test_changed_event_data_breaks_the_chain_at_that_event(chain, pg, backends):
    i, row = middle(chain, "order.cancelled")
    assert "reason" in await pg.fetchval("SELECT data FROM order_events WHERE id = $1", row["id"])
    await pg.execute("""UPDATE order_events SET data = jsonb_set(data, '{reason}', '"x"') WHERE id = $1""",
                     row["id"])
    await assert_broken_at(pg, backends, row["id"], i)


@pytest.mark.parametrize("kind,change", [
    pytest.param("order.paid", "type = 'order.cancelled'", id="type"),
    pytest.param("order.paid", "seq = seq + 100", id="seq"),
    pytest.param("order.paid", "at = at + interval '1 millisecond'", id="at_one_ms_later"),
    pytest.param("order.paid", "at = at - interval '1 day'", id="at_backdated"),
    pytest.param("order.paid", "order_id = 'au-09'", id="order_id"),
    pytest.param("order.paid", "stream_id = stream_id || '9'", id="stream_id"),
    pytest.param("order.accepted", "data = jsonb_set(data, '{order,items,0,qty}', '999')", id="accepted_qty"),
    pytest.param("order.paid", """data = data || '{"extra": true}'""", id="data_key_added"),
    pytest.param("order.paid", "prev_hash = repeat('0', 64)", id="prev_hash"),
    pytest.param("order.paid", "hash = repeat('f', 64)", id="hash"),
])
async def test_changed_event_column_breaks_the_chain_at_that_event(chain, pg, backends, kind, change):
    i, row = middle(chain, kind)
    status = await pg.execute(f"UPDATE order_events SET {change} WHERE id = $1", row["id"])
    assert status == "UPDATE 1"
    await assert_broken_at(pg, backends, row["id"], i)


async def test_changed_event_with_its_hash_recomputed_breaks_the_chain_at_the_next_event(chain, pg, backends):
    i, row = middle(chain, "order.cancelled")
    at_ms = await pg.fetchval(
        "SELECT (extract(epoch FROM at) * 1000)::bigint FROM order_events WHERE id = $1", row["id"])
    forged = {"reason": "customer"}
    digest = event_hash(row["prev_hash"], row["stream_id"], row["order_id"], row["seq"], row["type"], at_ms,
                        forged)
    await pg.execute("UPDATE order_events SET data = $2::jsonb, hash = $3 WHERE id = $1",
                     row["id"], '{"reason": "customer"}', digest)
    await assert_broken_at(pg, backends, chain[i + 1]["id"], i + 1)


async def test_deleted_middle_event_breaks_the_chain_at_the_event_after_it(chain, pg, backends):
    i = len(chain) // 2
    assert await pg.execute("DELETE FROM order_events WHERE id = $1", chain[i]["id"]) == "DELETE 1"
    await assert_broken_at(pg, backends, chain[i + 1]["id"], i)


async def test_deleted_first_event_breaks_the_chain_at_the_new_first_event(chain, pg, backends):
    assert await pg.execute("DELETE FROM order_events WHERE id = $1", chain[0]["id"]) == "DELETE 1"
    await assert_broken_at(pg, backends, chain[1]["id"], 0)


async def test_swapped_events_break_the_chain_at_the_first_of_them(chain, pg, backends):
    i = len(chain) // 2
    first, second = chain[i], chain[i + 1]
    async with pg.acquire() as conn, conn.transaction():
        swap = "UPDATE order_events SET id = $2 WHERE id = -$1::bigint"
        await conn.execute("UPDATE order_events SET id = -id WHERE id = ANY($1::bigint[])",
                           [first["id"], second["id"]])
        await conn.execute(swap, first["id"], second["id"])
        await conn.execute(swap, second["id"], first["id"])
    await assert_broken_at(pg, backends, first["id"], i)


@pytest.mark.parametrize("prev", [
    pytest.param("last", id="linked_to_the_real_last_hash"),
    pytest.param("made_up", id="made_up_prev_hash"),
])
async def test_forged_event_appended_at_the_end_is_named(chain, pg, backends, prev):
    last = chain[-1]
    prev_hash = last["hash"] if prev == "last" else "ab" * 32
    forged_id = await pg.fetchval(
        """INSERT INTO order_events (stream_id, order_id, seq, type, at, data, prev_hash, hash)
           VALUES ('9999999999999-0', 'au-09', 2, 'order.paid', now(),
                   '{"payment_id": "forged", "amount": 0}', $1, $2) RETURNING id""",
        prev_hash, "c0ffee" + "0" * 58)
    assert forged_id > last["id"]
    await assert_broken_at(pg, backends, forged_id, len(chain))


async def test_chain_verifies_again_once_the_tampered_row_is_restored(chain, pg, backends):
    i, row = middle(chain, "order.cancelled")
    original = await pg.fetchval("SELECT data FROM order_events WHERE id = $1", row["id"])
    await pg.execute("""UPDATE order_events SET data = jsonb_set(data, '{reason}', '"x"') WHERE id = $1""",
                     row["id"])
    assert (await verify(pg))[1]["id"] == row["id"]
    await pg.execute("UPDATE order_events SET data = $2::jsonb WHERE id = $1", row["id"], original)
    assert await verify(pg) == (len(chain), None)
    code, out = await cli(backends)
    assert code == 0 and "intact" in out, out


async def test_deleted_newest_event_is_detected(chain, pg):
    await pg.execute("DELETE FROM order_events WHERE id = $1", chain[-1]["id"])
    _, broken = await verify(pg)
    assert broken is not None


async def test_sub_millisecond_change_to_event_time_is_detected(chain, pg):
    i, row = middle(chain, "order.paid")
    await pg.execute("UPDATE order_events SET at = at + interval '400 microseconds' WHERE id = $1", row["id"])
    _, broken = await verify(pg)
    assert broken is not None and broken["id"] == row["id"]


async def test_deleted_order_row_is_reported_by_the_rows_it_leaves_behind(chain, pg, backends):
    """No foreign keys hold lines, allocations and events to their order (they cost the writer
    a quarter of its rate): verify reports the rows left without their order instead."""
    order_id = chain[0]["order_id"]
    await pg.execute("DELETE FROM orders WHERE order_id = $1", order_id)
    checked, broken = await verify(pg)
    assert checked == len(chain)  # the chain itself is intact
    assert broken is not None and broken["order_id"] == order_id
    assert broken["type"] in {f"{t} row without its order" for t in ("order_items", "allocations", "order_events")}
    code, out = await cli(backends)
    assert code == 1 and order_id in out and "without its order" in out, out
