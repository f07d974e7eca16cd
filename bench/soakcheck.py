"""The soak's verdict: what the clients were told against what PostgreSQL and Redis hold.

Run once the writer has drained, straight on the stores (not through the proxies). An
acknowledged order counts as lost when its row is missing or its lines or allocations differ
from the acknowledgement, duplicated when it was accepted (or lined) more than once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter, defaultdict
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from gateway import keys, lifecycle
from gateway.ops import audit, reconcile

Pair = tuple[str, str]
HOLDS_OR_SOLD = ("pending_payment", "paid", "shipped", "completed")  # statuses whose units left availability


@dataclasses.dataclass
class Acked:
    """What the clients were told: every 201/200 they got."""

    orders: dict[str, tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str, int], ...]]] = \
        dataclasses.field(default_factory=dict)  # order id -> (lines, allocations)
    transitions: dict[str, str] = dataclasses.field(default_factory=dict)  # order id -> status answered
    put_bound: Counter[Pair] = dataclasses.field(default_factory=Counter)  # units every restock tried to add


@dataclasses.dataclass
class Verdict:
    faults: int
    acknowledged: int
    lost: list[str]
    duplicated: list[str]
    oversold: list[dict[str, Any]]
    transitions_lost: list[tuple[str, str, str | None]]
    reconcile: dict[str, Any]
    audit_checked: int
    audit_broken: dict[str, Any] | None
    server_errors: int = 0  # 5xx other than 503 the clients saw: a bug whatever the stores hold
    serve_exits: int = 0  # times serve stopped by itself

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.oversold or self.transitions_lost or self.server_errors
                    or self.serve_exits or self.audit_broken) and self.reconcile["ok"] and not self.reconcile["lagging"]

    def line(self, seed: int) -> str:
        conservation = "conservation ok" if self.reconcile["ok"] and not self.reconcile["lagging"] else (
            f"conservation FAILED ({len(self.reconcile['drift'])} drift, "
            f"{len(self.reconcile['conservation'])} broken, lagging {self.reconcile['lagging']})")
        audit_word = "audit ok" if self.audit_broken is None else f"audit FAILED at event {self.audit_broken['id']}"
        text = (f"seed {seed}: {self.faults} faults, {self.acknowledged} acknowledged, {len(self.lost)} lost, "
                f"{len(self.duplicated)} duplicated, {len(self.oversold)} oversold, "
                f"{len(self.transitions_lost)} transitions lost, {conservation}, {audit_word}")
        if self.server_errors:
            text += f", {self.server_errors} server errors"
        if self.serve_exits:
            text += f", serve stopped by itself {self.serve_exits} time(s)"
        return text


LATER: dict[str, set[str]] = {}  # status -> itself and every status reachable from it


def _reachable(status: str) -> set[str]:
    if status not in LATER:
        seen, todo = {status}, [status]
        while todo:
            here = todo.pop()
            for (_, src), t in lifecycle.TABLE.items():
                if src == here and t.target not in seen:
                    seen.add(t.target)
                    todo.append(t.target)
        LATER[status] = seen
    return LATER[status]


async def drained(redis: aioredis.Redis, pool: asyncpg.Pool, ids: list[str], timeout: float) -> bool:
    """Poll until every stream is empty with nothing pending and no acknowledged order still waits
    for its payment or expiry in PostgreSQL; False at the deadline. Nothing reports it: poll."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pipe = redis.pipeline(transaction=False)
            for p in keys.SINGLE.all():
                pipe.xlen(keys.events(p))
                pipe.xpending(keys.events(p), keys.WRITER_GROUP)
            replies = await pipe.execute()
            empty = all(n == 0 for n in replies[::2]) and all(p["pending"] == 0 for p in replies[1::2])
            if empty and not await pool.fetchval(
                    "SELECT count(*) FROM orders WHERE status = 'pending_payment' AND order_id = ANY($1)", ids):
                return True
        except (OSError, aioredis.RedisError, asyncpg.PostgresError):
            pass  # a store still coming back
        await asyncio.sleep(0.25)
    return False


async def check(redis: aioredis.Redis, pool: asyncpg.Pool, acked: Acked, faults: int) -> Verdict:
    ids = list(acked.orders)
    status = {r["order_id"]: r["status"] for r in
              await pool.fetch("SELECT order_id, status FROM orders WHERE order_id = ANY($1)", ids)}
    lines: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for r in await pool.fetch("SELECT order_id, sku, qty FROM order_items WHERE order_id = ANY($1)", ids):
        lines[r["order_id"]].append((r["sku"], r["qty"]))
    allocs: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    for r in await pool.fetch("SELECT order_id, sku, warehouse, qty FROM allocations WHERE order_id = ANY($1)", ids):
        allocs[r["order_id"]].append((r["sku"], r["warehouse"], r["qty"]))
    accepted = {r["order_id"]: r["n"] for r in await pool.fetch(
        "SELECT order_id, count(*) AS n FROM order_events WHERE type = 'order.accepted' AND order_id = ANY($1) "
        "GROUP BY order_id", ids)}

    lost, duplicated = [], []
    for oid, (want_lines, want_allocs) in acked.orders.items():
        got_lines, got_allocs = sorted(lines.get(oid, [])), sorted(allocs.get(oid, []))
        if accepted.get(oid, 0) > 1 or len(got_lines) > len(want_lines):
            duplicated.append(oid)
        elif oid not in status or got_lines != sorted(want_lines) or got_allocs != sorted(want_allocs):
            lost.append(oid)

    transitions_lost = [(oid, target, status.get(oid)) for oid, target in acked.transitions.items()
                        if status.get(oid) not in _reachable(target)]

    oversold = await _oversold(redis, pool, acked)
    report = await reconcile.reconcile(redis, pool, wait=30.0)
    checked, broken = await audit.verify(pool)
    return Verdict(faults, len(acked.orders), lost, duplicated, oversold, transitions_lost, report, checked, broken)


async def _oversold(redis: aioredis.Redis, pool: asyncpg.Pool, acked: Acked) -> list[dict[str, Any]]:
    """Pairs with negative stock anywhere, or more units held or sold than were ever put there
    (by the ledger, and by the restocker's own count of what it tried to add)."""
    on_hand = {(r["sku"], r["warehouse"]): r["on_hand"] for r in
               await pool.fetch("SELECT sku, warehouse, on_hand FROM inventory")}
    put = {(r["sku"], r["warehouse"]): r["put"] for r in await pool.fetch(
        "SELECT sku, warehouse, sum(delta) FILTER (WHERE delta > 0) AS put FROM inventory_movements "
        "GROUP BY sku, warehouse")}
    taken = {(r["sku"], r["warehouse"]): r["taken"] for r in await pool.fetch(
        """SELECT a.sku, a.warehouse, sum(a.qty) AS taken FROM allocations a JOIN orders o USING (order_id)
           WHERE o.status = ANY($1::text[]) GROUP BY a.sku, a.warehouse""", list(HOLDS_OR_SOLD))}
    redis_side = await reconcile._redis_stock(redis, keys.SINGLE)
    bad = []
    for pair in sorted(on_hand.keys() | put.keys() | taken.keys() | redis_side.keys() | acked.put_bound.keys()):
        available, reserved = redis_side.get(pair, (0, 0))
        units = min(put.get(pair) or 0, acked.put_bound.get(pair, 0))
        row = {"sku": pair[0], "warehouse": pair[1], "on_hand": on_hand.get(pair, 0), "put": put.get(pair) or 0,
               "put_bound": acked.put_bound.get(pair, 0), "taken": taken.get(pair, 0),
               "redis_available": available, "redis_reserved": reserved}
        if on_hand.get(pair, 0) < 0 or available < 0 or reserved < 0 or taken.get(pair, 0) > units:
            bad.append(row)
    return bad
