"""The writer: moves events from the Redis stream into PostgreSQL, in batches.

Each batch is one transaction (orders, lines, allocations, events, ledger, stream offset);
entries are acknowledged and deleted from the stream only after it committed. A writer
that dies leaves its entries pending; any writer claims them after ``claim_idle_ms``
(XAUTOCLAIM). Every insert is keyed by the stream entry id or the order id, so an entry
delivered twice is written once.

No entry can stop the stream: a batch PostgreSQL refuses for its data (``DATA_FAULTS``, not
a lost connection) is halved until the entries at fault stand alone, and each of those, like
an entry that cannot be read at all, goes to the ``quarantine`` table with its error and a
``writer.quarantined`` event, while the rest is written (gateway/quarantine.py replays them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway import keys, metrics, partitions, stockwatch
from gateway.chain import GENESIS, canonical, chain_hash
from gateway.db import EVENTS_LOCK
from gateway.faults import log_retry
from gateway.models import CONTROL
from gateway.wire import parse_alloc

log = logging.getLogger(__name__)
RETRY, MAX_RETRY = 0.5, 2.0  # seconds before a failed batch is tried again, doubling while it keeps failing
PARTITIONS_EVERY = 3600.0  # seconds between checks that the coming months have their partitions
MS = "(timestamptz 'epoch' + {} * interval '1 millisecond')"  # exact, unlike to_timestamp(ms / 1000.0)

Entry = tuple[bytes, dict[bytes, bytes]]


class WriterCrash(BaseException):
    """Raised by a fault hook to stop a writer dead, as a killed process would."""


class OrderNotWrittenYet(Exception):
    """A status event arrived for an order whose ``order.accepted`` another writer holds, read
    but not committed (the group hands entries to whichever writer asks). The batch is rolled
    back and retried, so the status is applied after the order row exists, never dropped."""

    def __init__(self, order_ids: list[str]) -> None:
        super().__init__(f"orders not in PostgreSQL yet: {', '.join(order_ids[:5])}")


class OrderQuarantined(Exception):
    """A status event for an order whose ``order.accepted`` is in the quarantine: it waits
    there too (a data fault), and a replay in quarantine order writes the order first."""

    def __init__(self, order_ids: list[str]) -> None:
        super().__init__(f"the order is quarantined: {', '.join(order_ids[:5])}")


class DuplicateEvent(Exception):
    """An order's event number is taken by another entry: an order id accepted again after its
    idempotency record expired. No unique index can say so across the monthly partitions of
    ``order_events`` (migration 008), so the writer checks, under the writers' lock."""

    def __init__(self, order_id: str, seq: int) -> None:
        super().__init__(f"order {order_id!r} already has event {seq} from another entry")


# PostgreSQL refused the rows for what they hold: the same batch fails the same way every
# time, so its entries at fault are found and set aside. Anything else (a lost connection,
# a timeout, a restart) is retried whole.
DATA_FAULTS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, asyncpg.ProgramLimitExceededError,
               OrderQuarantined, DuplicateEvent)
_UNPRINTABLE = re.compile(f"[{CONTROL}]")


def printable(value: bytes | str | None, limit: int = 1000) -> str | None:
    """Text PostgreSQL and a log line take: control characters (NUL too) become U+FFFD."""
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return _UNPRINTABLE.sub("\ufffd", text[:limit])


def pack(fields: dict[bytes, bytes]) -> bytes:
    """A stream entry as the quarantine keeps it: JSON of latin-1 strings, so every byte comes
    back exactly (NUL and invalid UTF-8 included)."""
    return orjson.dumps({k.decode("latin-1"): v.decode("latin-1") for k, v in fields.items()})


def unpack(entry: bytes) -> dict[bytes, bytes]:
    return {k.encode("latin-1"): v.encode("latin-1") for k, v in orjson.loads(entry).items()}


def stream_id(entry_id: bytes, partition: str) -> str:
    """An entry's id in PostgreSQL (the writers' idempotence key): unique across partitions,
    whose streams make the same ids in the same millisecond, so those of a partition other
    than ``{p0}`` carry it after the id (``1733-0@{p1.3}``: its time still leads)."""
    return entry_id.decode() if partition == keys.ONE else f"{entry_id.decode()}@{partition}"


def describe(exc: BaseException) -> str:
    return printable(f"{type(exc).__name__}: {exc}") or ""


class Writer:
    def __init__(
        self,
        redis: aioredis.Redis,
        pool: asyncpg.Pool,
        *,
        batch: int = 2000,
        block_ms: int = 100,
        claim_idle_ms: int = 30000,
        name: str | None = None,
        low_stock: int = 10,
        fault: Callable[[str], None] | None = None,
        partition: str = keys.ONE,
    ) -> None:
        self.redis = redis
        self.partition = partition
        self.pool = pool
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self.fault = fault
        self.low_stock = low_stock
        self.written = 0
        self.deferred = 0  # batches rolled back for OrderNotWrittenYet
        self.quarantined = 0
        self.retries = 0  # batches that failed on a store and were tried again
        self._idle_ticks = 0
        self._waiting = 0  # callers in wait_idle or close: reads stop blocking while there are any
        self._held: set[bytes] = set()  # ids of the entries in this writer's batches in flight
        self._stopping = False
        self._tick = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self.run(), name=f"writer:{self.name}")
        return self._task

    async def close(self, drain: bool = True) -> None:
        """Stop the writer after its current batch; with ``drain`` first wait until it is idle.

        A stop flag, not a cancel: a cancel can land inside a blocking XREADGROUP, and the
        redis client does not always let it through.
        """
        self._waiting += 1  # so the last read before the stop does not block either
        try:
            if self._task and not self._task.done() and drain:
                await self.wait_idle()
            self._stopping = True
            if self._task:
                done, _ = await asyncio.wait([self._task], timeout=self.block_ms / 1000 + 5)
                if not done:
                    self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        finally:
            self._waiting -= 1

    async def wait_idle(self) -> None:
        """Return once a full pass after this call began found nothing to claim, read or pending.

        Pending counts: a dead writer's entries are out of reach of claim and read until
        ``claim_idle_ms`` has passed, and idle must not mean they were left behind.

        Meanwhile the stream reads do not block: a blocked read ends only when Valkey next
        checks its timeouts (100 ms apart here), and two passes of those made every stop of a
        gateway wait about half a second. A pass that finds entries pending elsewhere waits
        ``block_ms`` before the next one.
        """
        self._waiting += 1
        try:
            async with self._tick:
                target = self._idle_ticks + 2
                await self._tick.wait_for(lambda: self._idle_ticks >= target or self._task is None
                                          or self._task.done())
        finally:
            self._waiting -= 1

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(keys.events(self.partition), keys.WRITER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        stream = keys.events(self.partition)
        backlog = True  # first re-deliver our own pending entries (a restart under the same name)
        regroup = True
        committing: asyncio.Task[None] | None = None
        failures = 0  # in a row: the pause grows while a store stays away
        partitions_due = 0.0
        try:
            while not self._stopping:
                if time.monotonic() >= partitions_due:
                    partitions_due = time.monotonic() + await self._ensure_partitions()
                try:
                    if regroup:
                        await self.ensure_group()
                        regroup = False
                    claimed = await self._claim(stream)
                    if claimed:
                        committing = await self._hand_over(committing, stream, claimed)
                    if backlog:  # a read from "0" returns our pending entries, the batch in flight too
                        await _finished(committing)
                        committing = None
                    read = await self.redis.xreadgroup(
                        keys.WRITER_GROUP, self.name, {stream: "0" if backlog else ">"},
                        count=self.batch, block=None if backlog or self._waiting else self.block_ms,
                    )
                    entries = read[0][1] if read else []
                    if backlog and not entries:
                        backlog = False
                    if entries:
                        committing = await self._hand_over(committing, stream, entries)
                    else:
                        await _finished(committing)
                        committing = None
                        if not claimed and not backlog and await self._settled(stream):
                            async with self._tick:
                                self._idle_ticks += 1
                                self._tick.notify_all()
                        elif self._waiting and not backlog:  # a read that did not block: no spinning
                            await asyncio.sleep(self.block_ms / 1000)
                    failures = 0
                except (asyncio.CancelledError, WriterCrash):
                    raise
                except Exception as exc:
                    if committing:  # its failure, if any, is this one or is retried with the rest
                        with contextlib.suppress(Exception):
                            await committing
                        committing = None
                    self._held.clear()  # nothing in flight now; the backlog read brings ours back
                    backlog = True
                    if isinstance(exc, OrderNotWrittenYet):
                        self.deferred += 1
                        log.info("writer %s: %s; retrying after the other writer's commit", self.name, exc)
                        await asyncio.sleep(0.1)
                    elif isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                        log.warning("writer %s: the stream's group is gone (Redis lost data?); recreating it",
                                    self.name)
                        regroup = True
                    else:
                        failures += 1
                        self.retries += 1
                        pause = min(RETRY * 2 ** (failures - 1), MAX_RETRY)
                        log_retry(log, exc, "writer %s: batch failed, retrying in %.1f s", self.name, pause)
                        await asyncio.sleep(pause)
            await _finished(committing)
        except WriterCrash:
            async with self._tick:
                self._tick.notify_all()
            raise
        finally:
            if committing and not committing.done():
                committing.cancel()

    async def _ensure_partitions(self) -> float:
        """Seconds until the next check: an hour, or a minute after a failure (rows meanwhile
        go to the default partition, so a failure here never holds up a batch)."""
        try:
            made = await partitions.ensure(self.pool)
        except Exception as exc:
            log_retry(log, exc, "writer %s: could not make the coming months' partitions; again in 60 s", self.name)
            return 60.0
        if made:
            log.info("writer %s: made partitions %s", self.name, ", ".join(made))
        return PARTITIONS_EVERY

    async def _hand_over(self, committing: asyncio.Task[None] | None, stream: str,
                         entries: list[Entry]) -> asyncio.Task[None]:
        """Build the next batch's rows while the previous one commits, then start its commit.

        One batch in flight at most, committed in stream order: Python's share of a batch
        (decoding, rows, hashing input) overlaps PostgreSQL's.
        """
        self._held.update(e[0] for e in entries)
        rows = Rows.of(entries, self.partition)
        await _finished(committing)
        return asyncio.get_running_loop().create_task(self._write(stream, entries, rows))

    async def _settled(self, stream: str) -> bool:
        """No entry pending in the group: none in another writer's batch, none left by a dead one."""
        return (await self.redis.xpending(stream, keys.WRITER_GROUP))["pending"] == 0

    async def _claim(self, stream: str) -> list[Entry]:
        """Entries idle past ``claim_idle_ms``, but not our own in flight: a commit slower than
        that made them look abandoned, and the writer took its own batch a second time
        instead of reading on (seen in tests, whose claim_idle_ms is 200 ms)."""
        reply = await self.redis.xautoclaim(
            stream, keys.WRITER_GROUP, self.name, self.claim_idle_ms, "0-0", count=self.batch
        )
        return [e for e in reply[1] if e[0] not in self._held]

    async def _write(self, stream: str, entries: list[Entry], rows: Rows) -> None:
        ids = [e[0] for e in entries]
        try:
            try:
                await self._commit(stream, entries, rows)
            except DATA_FAULTS as exc:
                await self._isolate(stream, entries, exc)
            pipe = self.redis.pipeline(transaction=False)
            pipe.xack(stream, keys.WRITER_GROUP, *ids)
            pipe.xdel(stream, *ids)
            await pipe.execute()
            self.written += len(entries)
        finally:
            self._held.difference_update(ids)

    async def _isolate(self, stream: str, entries: list[Entry], exc: BaseException) -> None:
        """Halve a refused batch until each entry at fault stands alone; quarantine those.

        One bad entry among 2,000 costs about 22 more transactions, once. Halves commit in
        stream order, so an order still comes before its status changes.
        """
        if len(entries) == 1:
            entry_id, fields = entries[0]
            error = describe(exc)
            rows = Rows()
            rows.quarantine(stream_id(entry_id, self.partition), fields, error)
            await self._commit(stream, entries, rows)
            log.warning("writer %s: entry %s quarantined: %s", self.name, entry_id.decode(), error)
            return
        mid = len(entries) // 2
        for part in (entries[:mid], entries[mid:]):
            try:
                await self._commit(stream, part, Rows.of(part, self.partition))
            except DATA_FAULTS as err:
                await self._isolate(stream, part, err)

    async def _commit(self, stream: str, entries: list[Entry], rows: Rows) -> None:
        """One transaction for the rows, stream offset included; then remember the stock alerts."""
        first_id = entries[0][0].decode()
        alert_rows, states = await stockwatch.alerts(self.redis, self.partition, sorted(rows.skus), self.low_stock, first_id,
                                                     int(first_id.split("-")[0]))
        rows.events.extend(alert_rows)
        started = time.perf_counter()
        async with self.pool.acquire() as conn, conn.transaction():
            await rows.insert(conn)
            await conn.execute(
                """INSERT INTO stream_offsets (stream, last_id) VALUES ($1, $2)
                   ON CONFLICT (stream) DO UPDATE SET last_id = excluded.last_id, updated_at = now()""",
                stream, entries[-1][0].decode(),
            )
            if self.fault:
                self.fault("before_commit")
        if self.fault:
            self.fault("after_commit")
        metrics.WRITER_COMMIT.observe(time.perf_counter() - started)
        metrics.WRITER_BATCH.observe(len(entries))
        for table, n in rows.counts().items():
            if n:
                metrics.WRITER_ROWS.labels(table).inc(n)
        self.quarantined += len(rows.held)
        await stockwatch.remember(self.redis, self.partition, states)


class Rows:
    """Column arrays for one batch, inserted with ``unnest`` (one statement per table).

    Event data is kept in canonical JSON, the audit chain's hashing input, so that only the
    hash itself is computed under the lock.
    """

    def __init__(self) -> None:
        self.orders: list[tuple[Any, ...]] = []
        self.items: list[tuple[Any, ...]] = []
        self.allocs: list[tuple[Any, ...]] = []
        self.events: list[tuple[Any, ...]] = []
        self.moves: list[tuple[Any, ...]] = []
        self.status: dict[str, tuple[Any, ...]] = {}
        self.skus: set[str] = set()  # whose availability this batch changed
        self.held: list[tuple[Any, ...]] = []  # quarantine rows

    def counts(self) -> dict[str, int]:
        """Rows per table this batch writes (status changes update ``orders`` rows)."""
        return {"orders": len(self.orders) + len(self.status), "order_items": len(self.items),
                "allocations": len(self.allocs), "order_events": len(self.events),
                "inventory_movements": len(self.moves), "quarantine": len(self.held)}

    @classmethod
    def of(cls, entries: list[Entry], partition: str = keys.ONE) -> Rows:
        rows = cls()
        for entry_id, fields in entries:
            if fields:  # empty: deleted from the stream after its write; only the ack is left
                rows.read(stream_id(entry_id, partition), fields)
        return rows

    def read(self, stream_id: str, fields: dict[bytes, bytes]) -> None:
        """Add one raw stream entry; one that cannot be read is quarantined instead, whole."""
        lists = (self.orders, self.items, self.allocs, self.events, self.moves)
        sizes = [len(rows) for rows in lists]
        try:
            self.add(stream_id, {k.decode(): v.decode() for k, v in fields.items()})
        except (KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:  # ValueError: also JSON, UTF-8
            for rows, size in zip(lists, sizes, strict=True):
                del rows[size:]
            self.quarantine(stream_id, fields, "unreadable entry: " + describe(exc))

    def quarantine(self, stream_id: str, fields: dict[bytes, bytes], error: str) -> None:
        """Set an entry aside with its error, and announce it in the feed (no order_id: the order
        may not be in PostgreSQL; the data names it)."""
        entry = pack(fields)
        kind, order_id = printable(fields.get(b"t"), 64), printable(fields.get(b"o"), 128)
        self.held.append((stream_id, kind, order_id, entry, error))
        data = canonical({"stream_id": stream_id, "type": kind, "order_id": order_id, "error": error})
        at = int(stream_id.split("-")[0])
        self.events.append((f"{stream_id}:quarantined", None, None, "writer.quarantined", at, data.decode()))

    def add(self, stream_id: str, f: dict[str, str]) -> None:
        kind = f["t"]
        if kind == "order.accepted":
            self._accepted(stream_id, f)
        elif kind == "inventory.moved":
            at = int(stream_id.split("-")[0])
            self.skus.add(f["s"])
            self.moves.append(
                (stream_id, f["s"], f["w"], int(f["d"]), int(f["h"]), f["r"], f.get("o"), at)
            )
        elif kind.startswith("order."):
            self._status(stream_id, kind, f)
        else:
            log.warning("writer: unknown event type %r in %s, skipped", kind, stream_id)

    def _status(self, stream_id: str, kind: str, f: dict[str, str]) -> None:
        order_id, seq, at, data = f["o"], int(f["n"]), int(f["c"]), orjson.loads(f["d"])
        self.events.append((stream_id, order_id, seq, kind, at, canonical(data).decode()))
        entry = (order_id, f["s"], seq, at, data.get("payment_id"),
                 data.get("reason") if f["s"] == "cancelled" else None)
        latest = self.status.get(order_id)
        if latest is not None:  # one row per order: the newest change, with what an older one set
            newer, older = (entry, latest) if latest[2] < seq else (latest, entry)
            entry = (*newer[:4], newer[4] or older[4], newer[5] or older[5])
        self.status[order_id] = entry

    def _accepted(self, stream_id: str, f: dict[str, str]) -> None:
        order_id, payload = f["o"], orjson.loads(f["p"])
        created, until = int(f["c"]), int(f["u"])
        ship_to = orjson.dumps(payload["ship_to"]).decode() if "ship_to" in payload else None
        self.orders.append((
            order_id, payload["user_id"], payload["channel"], payload.get("sale_id"),
            "pending_payment", ship_to, payload.get("currency"), f["p"], until, created,
        ))
        allocations = []
        for line_no, (item, takes) in enumerate(zip(payload["items"], parse_alloc(f["a"]), strict=True)):
            self.items.append((order_id, line_no, item["sku"], item["qty"], item.get("unit_price")))
            self.skus.add(item["sku"])
            for wh, qty in takes:
                self.allocs.append((order_id, item["sku"], wh, qty))
                allocations.append({"sku": item["sku"], "warehouse": wh, "qty": qty})
        data = canonical({"order": payload, "allocations": allocations, "reserved_until_ms": until})
        self.events.append((stream_id, order_id, int(f["n"]), "order.accepted", created, data.decode()))

    async def insert(self, conn: asyncpg.Connection) -> None:
        # One writer transaction at a time, whole: event ids then commit in chain order, a
        # status update never misses an order row that another writer is committing, and the
        # NOT EXISTS below keeps an order id unique across the monthly partitions (whose key
        # is (order_id, created_at): migration 008).
        await conn.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_LOCK)
        fresh: set[str] = set()  # orders whose row this batch inserted
        if self.orders:
            fresh = {r["order_id"] for r in await conn.fetch(
                f"""INSERT INTO orders (order_id, user_id, channel, sale_id, status, ship_to, currency,
                                       payload, reserved_until, created_at, updated_at)
                   SELECT o, u, ch, s, st, sh::jsonb, cur, p::jsonb,
                          {MS.format("ru")}, {MS.format("c")}, {MS.format("c")}
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                               $7::text[], $8::text[], $9::bigint[], $10::bigint[])
                        AS t(o, u, ch, s, st, sh, cur, p, ru, c)
                   WHERE NOT EXISTS (SELECT 1 FROM orders x WHERE x.order_id = t.o)
                   ON CONFLICT DO NOTHING
                   RETURNING order_id""",
                *_columns(self.orders, 10),
            )}
            await conn.execute(
                """INSERT INTO order_items (order_id, line_no, sku, qty, unit_price)
                   SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::int[], $5::bigint[])
                   ON CONFLICT DO NOTHING""",
                *_columns(self.items, 5),
            )
            await conn.execute(
                """INSERT INTO allocations (order_id, sku, warehouse, qty)
                   SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[])
                   ON CONFLICT DO NOTHING""",
                *_columns(self.allocs, 4),
            )
        if self.status:
            ids = list(self.status)
            found = {r["order_id"] for r in await conn.fetch(
                "SELECT order_id FROM orders WHERE order_id = ANY($1::text[])", ids)}
            if len(found) < len(ids):
                missing = [o for o in ids if o not in found]
                held = [r["order_id"] for r in await conn.fetch(
                    "SELECT order_id FROM quarantine WHERE order_id = ANY($1::text[]) AND replayed_at IS NULL",
                    missing)]
                if held:
                    raise OrderQuarantined(held)
                raise OrderNotWrittenYet(missing)
            await conn.execute(
                f"""UPDATE orders o SET status = x.s, last_seq = x.n, updated_at = {MS.format("x.a")},
                          payment_id = coalesce(x.pid, o.payment_id),
                          cancel_reason = coalesce(x.cr, o.cancel_reason)
                   FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::text[], $6::text[])
                        AS x(o, s, n, a, pid, cr)
                   WHERE o.order_id = x.o AND o.last_seq < x.n""",
                *_columns(list(self.status.values()), 6),
            )
        if self.held:
            await conn.execute(
                """INSERT INTO quarantine (stream_id, type, order_id, entry, error)
                   SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[])
                   ON CONFLICT (stream_id) DO NOTHING""",
                *_columns(self.held, 5),
            )
        if self.events:
            await self._append_events(conn, fresh)
        if self.moves:
            # Only ledger rows inserted now (not re-deliveries) move the inventory table.
            await conn.execute(
                f"""WITH ins AS (
                     INSERT INTO inventory_movements
                       (stream_id, sku, warehouse, delta, on_hand_after, reason, order_id, at)
                     SELECT sid, s, w, d, h, r, o, {MS.format("a")}
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                                 $6::text[], $7::text[], $8::bigint[])
                          WITH ORDINALITY AS x(sid, s, w, d, h, r, o, a, ord)
                     ORDER BY ord
                     ON CONFLICT (stream_id) DO NOTHING
                     RETURNING sku, warehouse, delta)
                   INSERT INTO inventory (sku, warehouse, on_hand)
                   SELECT sku, warehouse, sum(delta) FROM ins GROUP BY sku, warehouse
                   ORDER BY sku, warehouse  -- one lock order for every writer: no deadlock
                   ON CONFLICT (sku, warehouse) DO UPDATE
                     SET on_hand = inventory.on_hand + excluded.on_hand, updated_at = now()""",
                *_columns(self.moves, 8),
            )


    async def _append_events(self, conn: asyncpg.Connection, fresh: set[str]) -> None:
        """Append new events to the hash chain, skipping re-deliveries, in stream order.

        An entry's event keeps its time when delivered again, so the look for re-deliveries
        reads only the months the batch's times fall in."""
        times = [e[4] for e in self.events]
        known = {r["stream_id"] for r in await conn.fetch(
            f"""SELECT stream_id FROM order_events
                WHERE stream_id = ANY($1::text[]) AND at >= {MS.format("$2::bigint")} AND at <= {MS.format("$3::bigint")}""",
            [e[0] for e in self.events], min(times), max(times))}
        prev = await conn.fetchval("SELECT hash FROM order_events ORDER BY id DESC LIMIT 1") or GENESIS
        rows = []
        for sid, order_id, seq, kind, at, data in self.events:
            if sid in known:
                continue
            known.add(sid)
            digest = chain_hash(prev, sid, order_id or "", seq or 0, kind, at, data.encode())
            rows.append((sid, order_id, seq, kind, at, data, prev, digest))
            prev = digest
        if rows:
            await _check_numbers(conn, rows, fresh)
            await conn.execute(
                f"""INSERT INTO order_events (stream_id, order_id, seq, type, at, data, prev_hash, hash)
                    SELECT sid, o, n, t, {MS.format("a")}, d::jsonb, ph, h
                    FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::bigint[], $6::text[],
                                $7::text[], $8::text[]) WITH ORDINALITY AS x(sid, o, n, t, a, d, ph, h, ord)
                    ORDER BY ord""",
                *_columns(rows, 8),
            )


async def _check_numbers(conn: asyncpg.Connection, rows: list[tuple[Any, ...]], fresh: set[str]) -> None:
    """DuplicateEvent when a new event's (order_id, seq) is in the batch twice or already written.

    A new ``order.accepted`` needs no look: its order row is new with it (``fresh``), and no
    event of an order precedes its row; if the row was there, the order was accepted before."""
    pairs: set[tuple[str, int]] = set()
    look: list[tuple[str, int]] = []
    for _, order_id, seq, kind, *_ in rows:
        if order_id is not None:
            if (order_id, seq) in pairs or (kind == "order.accepted" and order_id not in fresh):
                raise DuplicateEvent(order_id, seq)
            pairs.add((order_id, seq))
            if kind != "order.accepted":
                look.append((order_id, seq))
    if look:
        taken = await conn.fetchrow(
            """SELECT e.order_id, e.seq FROM order_events e
               JOIN unnest($1::text[], $2::int[]) AS x(o, n) ON e.order_id = x.o AND e.seq = x.n LIMIT 1""",
            *_columns(look, 2))
        if taken is not None:
            raise DuplicateEvent(taken["order_id"], taken["seq"])


async def _finished(task: asyncio.Task[None] | None) -> None:
    """Wait for a batch's commit, raising what it raised; ``None`` is nothing in flight."""
    if task:
        await task


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows, strict=True)]


class Writers:
    """One writer per inventory partition's stream (gateway/keys.py), started, stopped and
    counted as one; with one partition, one writer."""

    def __init__(self, redis: aioredis.Redis, pool: asyncpg.Pool, layout: keys.Partitions, **options: Any) -> None:
        self.each = [Writer(redis, pool, partition=p, **options) for p in layout.all()]

    async def ensure_group(self) -> None:
        for writer in self.each:
            await writer.ensure_group()

    def start(self) -> asyncio.Future[list[None]]:
        """Start them all; the future fails as soon as one of them does."""
        return asyncio.ensure_future(asyncio.gather(*(writer.start() for writer in self.each)))

    async def close(self, drain: bool = True) -> None:
        await asyncio.gather(*(writer.close(drain) for writer in self.each))

    async def wait_idle(self) -> None:
        await asyncio.gather(*(writer.wait_idle() for writer in self.each))

    @property
    def written(self) -> int:
        return sum(writer.written for writer in self.each)

    @property
    def quarantined(self) -> int:
        return sum(writer.quarantined for writer in self.each)

    @property
    def retries(self) -> int:
        return sum(writer.retries for writer in self.each)

    @property
    def deferred(self) -> int:
        return sum(writer.deferred for writer in self.each)
