"""When orders reach PostgreSQL: catching up, the writer's drain rate, 201 → visible row, COPY."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import asyncpg

from bench.load import percentile


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


async def watch_drain(conn: asyncpg.Connection, first: str, last: str, target: int,
                      interval: float = 0.01) -> dict[str, Any]:
    """The writer's drain rate over a backlog between two marker orders, ``first`` and ``last``.

    Polls by primary key (cheap, unlike count(*)). When ``first`` appears, one count(*) fixes
    the rows already written; when ``last`` appears, another says whether all ``target`` rows
    are in (the writer went in stream order); if not, count(*) is polled until they are.
    """
    seen = "SELECT 1 FROM orders WHERE order_id = $1"
    while not await conn.fetchval(seen, first):
        await asyncio.sleep(interval)
    start = time.perf_counter()
    start_rows = await conn.fetchval("SELECT count(*) FROM orders")
    while not await conn.fetchval(seen, last):
        await asyncio.sleep(interval)
    in_order = await conn.fetchval("SELECT count(*) FROM orders") >= target
    if not in_order:
        await wait_rows(conn, target)
    elapsed = time.perf_counter() - start
    rows = target - start_rows
    return {"rows": rows, "seconds": elapsed, "rows_per_s": rows / elapsed, "in_stream_order": in_order}


async def copy_rate(database_url: str, rows: int) -> dict[str, Any]:
    """Raw asyncpg COPY of ``rows`` order rows into a scratch table shaped like ``orders``."""
    now = dt.datetime.now(dt.UTC)
    columns = ["order_id", "user_id", "channel", "status", "payload", "reserved_until", "created_at", "updated_at"]
    records = [(f"copy-{i}", f"u-{i % 5000}", "web", "pending_payment",
                f'{{"order_id":"copy-{i}","items":[{{"sku":"HOT","qty":1}}]}}', now, now, now)
               for i in range(rows)]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE SCHEMA IF NOT EXISTS naive; DROP TABLE IF EXISTS naive.copy_probe;"
                           "CREATE TABLE naive.copy_probe (LIKE public.orders INCLUDING ALL)")
        start = time.monotonic()
        await conn.copy_records_to_table("copy_probe", schema_name="naive", records=records, columns=columns)
        elapsed = time.monotonic() - start
        await conn.execute("DROP TABLE naive.copy_probe")
    finally:
        await conn.close()
    return {"rows": rows, "seconds": elapsed, "rows_per_s": rows / elapsed}
