"""Monthly partitions of orders and order_events (migration 008, gateway/partitions.py): made
ahead, rows never refused for a missing month, an order id still unique across months."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from gateway import partitions
from gateway.writer import PARTITIONS_EVERY, DuplicateEvent, Rows, Writer

ROOT = Path(__file__).resolve().parents[1]
FAR = dt.date(2031, 5, 1)  # a month no other test writes in


def ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.UTC).timestamp() * 1000)


def accepted(stream_id: str, order_id: str, created_ms: int) -> dict[bytes, bytes]:
    payload = {"order_id": order_id, "user_id": "u-1", "channel": "web", "items": [{"sku": "P-1", "qty": 1}]}
    fields = {"t": "order.accepted", "o": order_id, "n": "1", "p": orjson.dumps(payload).decode(), "a": "W1=1",
              "c": str(created_ms), "u": str(created_ms + 900_000)}
    return {k.encode(): v.encode() for k, v in fields.items()}


async def write(pg, stream_id: str, fields: dict[bytes, bytes]) -> None:
    rows = Rows.of([(stream_id.encode(), fields)])
    async with pg.acquire() as conn, conn.transaction():
        await rows.insert(conn)


async def part_of(pg, table: str, where: str, *args: object) -> list[str]:
    return [r["p"] for r in await pg.fetch(f"SELECT tableoid::regclass::text AS p FROM {table} WHERE {where}", *args)]


@pytest.fixture
async def far_month(pg):
    """Drops the far month's partitions afterwards: later runs on this database start without them."""
    yield FAR
    for table, _ in partitions.TABLES:
        await pg.execute(f"DROP TABLE IF EXISTS {partitions.name(table, FAR)}")


def test_months_are_this_one_and_the_next_ones_across_a_year_end():
    assert partitions.months(dt.date(2026, 12, 31), 2) == [dt.date(2026, 12, 1), dt.date(2027, 1, 1),
                                                          dt.date(2027, 2, 1)]
    assert partitions.months(dt.date(2027, 1, 31), 1) == [dt.date(2027, 1, 1), dt.date(2027, 2, 1)]


async def test_the_coming_months_exist_after_migrating(pg):
    async with pg.acquire() as conn:
        names = {r["name"] for r in await partitions.listing(conn)}
    today = dt.datetime.now(dt.UTC).date()
    for month in partitions.months(today):
        assert {partitions.name(t, month) for t, _ in partitions.TABLES} <= names
    assert {"orders_default", "order_events_default"} <= names
    assert await partitions.ensure(pg) == []  # nothing missing: nothing made, no lock taken


async def test_a_row_for_a_month_without_partition_is_kept_and_moves_in_when_the_month_is_made(pg, far_month):
    await write(pg, f"{ms(FAR)}-0", accepted(f"{ms(FAR)}-0", "far-1", ms(FAR)))
    assert await part_of(pg, "orders", "order_id = $1", "far-1") == ["orders_default"]
    assert await part_of(pg, "order_events", "order_id = $1", "far-1") == ["order_events_default"]

    made = await partitions.ensure(pg, today=far_month, ahead=0)
    assert made == ["orders_2031_05", "order_events_2031_05"]
    assert await part_of(pg, "orders", "order_id = $1", "far-1") == ["orders_2031_05"]
    assert await part_of(pg, "order_events", "order_id = $1", "far-1") == ["order_events_2031_05"]
    assert await pg.fetchval("SELECT count(*) FROM orders_default") == 0
    assert await partitions.ensure(pg, today=far_month, ahead=0) == []  # made once


async def test_an_order_id_accepted_again_in_another_month_stays_one_row(pg):
    """Its key is (order_id, created_at), so only the writer's checks keep the id unique: an id
    re-accepted after its idempotency record expired must not become a second order, and its
    event is refused as the unique key (order_id, seq) refused it before (the writer then
    quarantines the entry: tests/test_idempotency.py)."""
    today = dt.datetime.now(dt.UTC).date()
    first, later = partitions.months(today, 1)
    await write(pg, f"{ms(first)}-0", accepted(f"{ms(first)}-0", "twice-1", ms(first)))
    with pytest.raises(DuplicateEvent, match="'twice-1' already has event 1"):
        await write(pg, f"{ms(later)}-0", accepted(f"{ms(later)}-0", "twice-1", ms(later)))
    batch = Rows.of([(f"{ms(later)}-{n}".encode(), accepted(f"{ms(later)}-{n}", "twice-2", ms(later)))
                     for n in (1, 2)])
    with pytest.raises(DuplicateEvent):  # twice in one batch
        async with pg.acquire() as conn, conn.transaction():
            await batch.insert(conn)
    assert await pg.fetchval("SELECT count(*) FROM orders WHERE order_id = 'twice-2'") == 0
    rows = await pg.fetch("SELECT created_at FROM orders WHERE order_id = 'twice-1'")
    assert [r["created_at"] for r in rows] == [dt.datetime(first.year, first.month, 1, 12, tzinfo=dt.UTC)]
    assert await pg.fetchval("SELECT count(*) FROM order_items WHERE order_id = 'twice-1'") == 1


async def test_the_writer_makes_a_missing_coming_month_itself(pg, redis):
    coming = partitions.months(dt.datetime.now(dt.UTC).date())[-1]
    names = [partitions.name(t, coming) for t, _ in partitions.TABLES]
    for table in names:  # empty: two months ahead
        await pg.execute(f"DROP TABLE {table}")
    writer = Writer(redis, pg)
    assert await writer._ensure_partitions() == PARTITIONS_EVERY
    assert await pg.fetchval("SELECT count(to_regclass('public.' || t)) FROM unnest($1::text[]) AS t", names) == 2


def test_cli_partitions_lists_each_month_and_makes_none_when_all_exist(backends, pg):
    env = {"OMS_DATABASE_URL": backends.database_url, "OMS_REDIS_URL": backends.redis_url, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "gateway", "partitions"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "made 0 partition(s)"
    month = partitions.months(dt.datetime.now(dt.UTC).date())[0]
    assert any(line.split()[:2] == ["orders", partitions.name("orders", month)] for line in lines)
    assert any(line.split()[:2] == ["order_events", "order_events_default"] and "DEFAULT" in line for line in lines)
