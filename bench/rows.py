"""When orders reach PostgreSQL: catching up, the writer's drain rate, 201 → visible row, COPY."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import asyncpg
import orjson

from bench.load import percentile
from gateway.chain import GENESIS, chain_hash
from gateway.writer import Rows

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


async def wait_rows(conn: asyncpg.Connection, target: int, interval: float = 0.05) -> None:
    """Until ``orders`` holds ``target`` rows (count(*) scans the table: poll gently)."""
    while await conn.fetchval("SELECT count(*) FROM orders") < target:
        await asyncio.sleep(interval)


class Visibility:
    """Time from each 201 to its row being visible in PostgreSQL.

    A poller asks every ``interval`` s for the answered ids not yet seen. A row counts as seen
    when the poll that found it returns, so each delay is an upper bound, late by at most one
    poll period (reported as ``poll_ms``).
    """

    def __init__(self, conn: asyncpg.Connection, interval: float = 0.01, table: str = "orders") -> None:
        self.conn, self.interval = conn, interval
        self.query = f"SELECT order_id FROM {table} WHERE order_id = ANY($1::text[])"
        self.pending: dict[str, float] = {}
        self.delays: list[float] = []
        self.polls: list[float] = []  # start time of each poll

    def answered(self, order_id: str, status: int) -> None:
        if status == 201:
            self.pending[order_id] = time.perf_counter()

    async def poll(self) -> None:
        self.polls.append(time.perf_counter())
        if self.pending:
            found = await self.conn.fetch(self.query, list(self.pending))
            now = time.perf_counter()
            self.delays += [now - self.pending.pop(row["order_id"]) for row in found]

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set."""
        while not stop.is_set():
            await self.poll()
            await asyncio.sleep(self.interval)

    async def finish(self, timeout: float) -> None:
        """Poll until every answered order is seen, or ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            await self.poll()
            await asyncio.sleep(self.interval)

    def summary(self) -> dict[str, Any]:
        delays = sorted(self.delays)
        gaps = [b - a for a, b in zip(self.polls, self.polls[1:], strict=False)]
        return {"seen": len(delays), "missing": len(self.pending),
                "poll_ms": 1000 * sum(gaps) / max(len(gaps), 1),
                **{f"p{q}_ms": percentile(delays, q / 100) * 1000 for q in (50, 99)},
                "max_ms": delays[-1] * 1000 if delays else float("nan")}


async def watch_drain(conn: asyncpg.Connection, first: str, last: str, target: int, start_rows: int,
                      interval: float = 0.01) -> dict[str, Any]:
    """The writer's drain rate over a backlog between two marker orders, ``first`` and ``last``.

    ``start_rows`` is the count before the writer started: the rate counts every backlog row,
    even when a loaded machine polls so late that ``first`` and the whole backlog land in one
    commit. The clock starts when ``first``
    appears (its batch's own time is not counted), by primary key (cheap, unlike count(*));
    when ``last`` appears, a count(*) says whether all ``target`` rows are in (the writer went
    in stream order); if not, count(*) is polled until they are.
    """
    seen = "SELECT 1 FROM orders WHERE order_id = $1"
    while not await conn.fetchval(seen, first):
        await asyncio.sleep(interval)
    start = time.perf_counter()
    while not await conn.fetchval(seen, last):
        await asyncio.sleep(interval)
    in_order = await conn.fetchval("SELECT count(*) FROM orders") >= target
    if not in_order:
        await wait_rows(conn, target)
    elapsed = max(time.perf_counter() - start, interval)  # one poll at least: never a division by zero
    rows = target - start_rows
    return {"rows": rows, "seconds": elapsed, "rows_per_s": rows / elapsed, "in_stream_order": in_order}


def batch(tag: str, n: int) -> Rows:
    """A writer batch of ``n`` accepted one-line orders, as the stream delivers them."""
    rows = Rows()
    now = int(time.time() * 1000)
    for i in range(n):
        order_id = f"{tag}-{i}"
        payload = orjson.dumps({"order_id": order_id, "user_id": f"u-{i % 5000}", "channel": "web",
                                "items": [{"sku": "HOT", "qty": 1}]}).decode()
        rows.add(f"{now}-{i}", {"t": "order.accepted", "o": order_id, "n": "1", "p": payload, "a": "W1=1",
                                "c": str(now), "u": str(now + 900_000)})
    return rows


def ts(ms: int) -> dt.datetime:
    return EPOCH + dt.timedelta(milliseconds=ms)


def copy_records(rows: Rows) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
    """Each table's columns and records for a batch, as COPY takes them (hash chain precomputed)."""
    events, prev = [], GENESIS
    for sid, order_id, seq, kind, at, data in rows.events:
        digest = chain_hash(prev, sid, order_id or "", seq or 0, kind, at, data.encode())
        events.append((sid, order_id, seq, kind, ts(at), data, prev, digest))
        prev = digest
    return {
        "orders": (["order_id", "user_id", "channel", "sale_id", "status", "ship_to", "currency", "payload",
                    "reserved_until", "created_at", "updated_at"],
                   [(o, u, ch, s, st, sh, cur, p, ts(ru), ts(c), ts(c))
                    for o, u, ch, s, st, sh, cur, p, ru, c in rows.orders]),
        "order_items": (["order_id", "line_no", "sku", "qty", "unit_price"], rows.items),
        "allocations": (["order_id", "sku", "warehouse", "qty"], rows.allocs),
        "order_events": (["stream_id", "order_id", "seq", "type", "at", "data", "prev_hash", "hash"], events),
    }


async def copy_rate(database_url: str, orders: int) -> dict[str, Any]:
    """Raw asyncpg COPY of the rows the writer writes for ``orders`` orders (the order, its line,
    allocation and event), into scratch tables shaped like the real ones, in one transaction;
    and, for comparison with earlier runs, COPY of the order rows alone."""
    tables = copy_records(batch(f"copy-{time.time_ns()}", orders))
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE SCHEMA IF NOT EXISTS naive; " + "".join(
            f"DROP TABLE IF EXISTS naive.copy_{t}; CREATE TABLE naive.copy_{t} (LIKE public.{t} INCLUDING ALL);"
            for t in tables))
        start = time.monotonic()
        async with conn.transaction():
            for table, (columns, records) in tables.items():
                await conn.copy_records_to_table(f"copy_{table}", schema_name="naive", records=records,
                                                 columns=columns)
        elapsed = time.monotonic() - start
        await conn.execute("TRUNCATE naive.copy_orders")
        columns, records = tables["orders"]
        start = time.monotonic()
        await conn.copy_records_to_table("copy_orders", schema_name="naive", records=records, columns=columns)
        alone = time.monotonic() - start
        await conn.execute("".join(f"DROP TABLE naive.copy_{t};" for t in tables))
    finally:
        await conn.close()
    return {"rows": orders, "seconds": elapsed, "rows_per_s": orders / elapsed,
            "tables": list(tables), "orders_only_rows_per_s": orders / alone}
