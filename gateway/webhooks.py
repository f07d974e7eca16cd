"""Webhooks: admin endpoints, and the sender that POSTs each matching event, signed, at least once.

Per webhook, events go out in id order with one request in flight, and its cursor
(``webhooks.last_event_id``) passes an event only after a 2xx: a crash re-sends at most the
event in flight. Failures are retried with exponential back-off, and every attempt is a row
in ``webhook_attempts``. The sender runs beside the request path, on its own HTTP session,
and holds a pool connection only for a query, never across a request: a slow receiver
delays nothing but its own deliveries.

With several gateway processes, a webhook is delivered by the one process that holds its
session advisory lock ``(LOCK_CLASS, lock_key)`` on that sender's dedicated connection;
the locks go with the connection, so a dead process frees its webhooks for the others.
An admin's replay (``rewind``) sets the cursor from outside that lock; the sender moves the
cursor only from the value it left there, so it finds a replay instead of overwriting it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import time

import aiohttp
import asyncpg
import orjson

from gateway import feed, metrics
from gateway.errors import Invalid
from gateway.faults import log_retry

log = logging.getLogger(__name__)
LOCK_CLASS = 0x6F6D77  # two-key advisory locks: a space apart from the one-key locks in db and writer


class CursorMoved(Exception):
    """A replay (``rewind``) set the webhook's cursor while the sender was on an event: read again from it."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: str, timestamp: str | None, body: bytes, header: str | None, *,
                     tolerance: float | None = 300) -> bool:
    """True when ``header`` (X-OMS-Signature) signs ``timestamp.body`` (X-OMS-Timestamp) with ``secret``.

    False as well for a missing header, or a timestamp more than ``tolerance`` seconds from
    now, so a captured request cannot be replayed later; pass None to check the signature alone.
    """
    if timestamp is None or header is None:
        return False
    try:
        age = abs(time.time() - int(timestamp))
    except ValueError:
        return False
    if tolerance is not None and age > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body).encode(), header.encode())


@dataclasses.dataclass(frozen=True, slots=True)
class Hook:
    lock_key: int
    webhook_id: str
    url: str
    events: frozenset[str]
    secret: str = dataclasses.field(repr=False)
    cursor: int

    def wants(self, event_type: str) -> bool:
        return "*" in self.events or event_type in self.events


class Sender:
    """One supervising task that claims webhooks, and one delivery task per webhook it holds.

    ``base`` and ``cap`` bound the back-off between attempts (seconds), ``poll`` is how
    often an idle sender looks for new webhooks and events, ``timeout`` caps one request,
    and ``grace`` how long ``close`` lets requests in flight finish before cancelling them.
    """

    def __init__(self, pool: asyncpg.Pool, dsn: str, *, base: float = 0.2, cap: float = 30.0,
                 poll: float = 0.2, timeout: float = 10.0, batch: int = 100, grace: float = 5.0) -> None:
        self.pool = pool
        self.dsn = dsn
        self.base, self.cap, self.poll = base, cap, poll
        self.timeout, self.batch, self.grace = timeout, batch, grace
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._workers: dict[int, asyncio.Task[None]] = {}  # lock_key -> its delivery task
        self._conn: asyncpg.Connection | None = None  # holds this process's webhook locks
        self._http: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout),
                                           headers={"User-Agent": "oms-webhooks/1"})
        self._task = asyncio.get_running_loop().create_task(self._run(), name="webhooks")

    async def close(self) -> None:
        """Stop claiming and sending; cancel what still runs ``grace`` seconds on. Safe twice.

        A request cut off here was not acknowledged, so it is sent again later: at least once.
        """
        self._stop.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        if self._task is not None:
            # The supervisor first: once it is out, no delivery starts after the list below.
            await asyncio.wait([self._task], timeout=self.grace)
        tasks = [t for t in (self._task, *self._workers.values()) if t is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()
        if self._http is not None:
            await self._http.close()
        if self._conn is not None:
            await self._conn.close()  # releases every lock this sender held
            self._conn = None

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if the sender closes; True when it is closing."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _backoff(self, failures: int) -> float:
        return min(self.cap, self.base * 2 ** min(failures - 1, 30))

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self._claim()
            except Exception as exc:
                log_retry(log, exc, "webhooks: claiming failed, retrying")
            await self._pause(self.poll)

    async def _claim(self) -> None:
        """Start a delivery task for each webhook whose lock this process can take."""
        if self._conn is not None and self._conn.is_closed():
            await self._lost_locks()
        for key, task in list(self._workers.items()):
            if task.done():  # its webhook was deleted
                del self._workers[key]
                assert self._conn is not None  # a delivery runs only while its lock is held
                await self._conn.fetchval("SELECT pg_advisory_unlock($1, $2)", LOCK_CLASS, key)
        for row in await self.pool.fetch("SELECT lock_key FROM webhooks"):
            key = row["lock_key"]
            if key in self._workers:
                continue
            if self._conn is None:
                self._conn = await asyncpg.connect(self.dsn)
            locked = await self._conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_CLASS, key)
            if locked and not self._stop.is_set():
                self._workers[key] = asyncio.get_running_loop().create_task(
                    self._deliver(key), name=f"webhook:{key}")

    async def _lost_locks(self) -> None:
        """The lock connection died, and another process may hold our webhooks now: stop at once."""
        log.warning("webhooks: lock connection lost, stopping %d deliveries", len(self._workers))
        for task in self._workers.values():
            task.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        self._workers.clear()
        self._conn = None

    async def _load(self, key: int) -> Hook | None:
        row = await self.pool.fetchrow(
            "SELECT webhook_id, url, events, secret, last_event_id FROM webhooks WHERE lock_key = $1", key)
        if row is None:
            return None
        return Hook(key, row["webhook_id"], row["url"], frozenset(row["events"]), row["secret"],
                    row["last_event_id"])

    async def _deliver(self, key: int) -> None:
        """Send the webhook's events, batch after batch, until it is deleted or the sender closes."""
        failures = 0
        while not self._stop.is_set():
            try:
                hook = await self._load(key)
                if hook is None:
                    return
                rows = await feed.read(self.pool, hook.cursor, self.batch)
                if not rows:
                    await self._pause(self.poll)
                    continue
                for row in rows:
                    if hook.wants(row["type"]):
                        sent = await self._send(hook, row)
                        if sent is None:
                            return
                        hook = dataclasses.replace(sent, cursor=row["id"])
                await self.pool.execute(  # past the events this webhook does not want, unless rewound meanwhile
                    "UPDATE webhooks SET last_event_id = $2 WHERE lock_key = $1 AND last_event_id = $3",
                    key, rows[-1]["id"], hook.cursor)
                failures = 0
            except CursorMoved:
                continue
            except Exception as exc:
                failures += 1
                log_retry(log, exc, "webhook #%s: delivery failed, retrying", key)
                await self._pause(self._backoff(failures))

    async def _send(self, hook: Hook, row: asyncpg.Record) -> Hook | None:
        """POST one event until a 2xx; None once the webhook is gone or the sender closes.

        ``hook.cursor`` is where the cursor stands before this event; a 2xx moves it to the
        event only from there, and a cursor found elsewhere (a replay moved it) raises
        ``CursorMoved``. The webhook is read again before each retry: a corrected URL or a
        new secret applies to the next attempt.
        """
        body = orjson.dumps(feed.item(row))
        while not self._stop.is_set():
            status, error, ms = await self._post(hook, row["id"], body)
            booked = await self._record(hook, row["id"], status, error, ms)
            if booked is None:
                return None
            attempt, advanced = booked
            if status is not None and 200 <= status < 300:
                metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
                metrics.WEBHOOK_AGE.observe(max(time.time() - row["at_ms"] / 1000, 0.0))
                if not advanced:
                    raise CursorMoved
                return hook
            metrics.WEBHOOK_DELIVERIES.labels("failed").inc()
            if await self._pause(self._backoff(attempt)):
                return None
            reloaded = await self._load(hook.lock_key)
            if reloaded is None:
                return None
            if reloaded.cursor != hook.cursor:
                raise CursorMoved
            hook = reloaded
        return None

    async def _post(self, hook: Hook, event_id: int, body: bytes) -> tuple[int | None, str | None, int]:
        """(status, None) for any answer, (None, error) when none came; and the time taken in ms."""
        assert self._http is not None
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-OMS-Event-Id": str(event_id),
                   "X-OMS-Timestamp": timestamp, "X-OMS-Signature": sign(hook.secret, timestamp, body)}
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            async with self._http.post(hook.url, data=body, headers=headers, allow_redirects=False) as resp:
                status = resp.status
        except TimeoutError:
            error = f"timeout after {self.timeout:g} s"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        return status, error, round((time.monotonic() - started) * 1000)

    async def _record(self, hook: Hook, event_id: int, status: int | None, error: str | None,
                      ms: int) -> tuple[int, bool] | None:
        """Book the attempt and, on a 2xx, move the cursor from ``hook.cursor`` to the event:
        the attempt's number and whether the cursor moved, or None if the webhook is gone."""
        try:
            row = await self.pool.fetchrow(
                """WITH attempt AS (
                     INSERT INTO webhook_attempts
                       (webhook_id, lock_key, event_id, attempt, status, error, duration_ms)
                     SELECT $1, $2, $3, coalesce(max(attempt), 0) + 1, $4, $5, $6
                     FROM webhook_attempts WHERE lock_key = $2 AND event_id = $3
                     RETURNING attempt
                   ), advance AS (
                     UPDATE webhooks SET last_event_id = $3
                     WHERE lock_key = $2 AND last_event_id = $7 AND $4 BETWEEN 200 AND 299
                     RETURNING 1
                   )
                   SELECT attempt, EXISTS (SELECT 1 FROM advance) AS advanced FROM attempt""",
                hook.webhook_id, hook.lock_key, event_id, status, error, ms, hook.cursor,
            )
        except asyncpg.ForeignKeyViolationError:  # deleted while we were sending
            return None
        return row["attempt"], row["advanced"]


async def attempts(pool: asyncpg.Pool, webhook_id: str, limit: int) -> tuple[int, list[asyncpg.Record]] | None:
    """The webhook's cursor and its ``limit`` newest delivery attempts; None when there is no such webhook."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT lock_key, last_event_id FROM webhooks WHERE webhook_id = $1", webhook_id)
        if row is None:
            return None
        rows = await conn.fetch(
            """SELECT event_id, attempt, status, error, duration_ms,
                      (extract(epoch FROM at) * 1000)::bigint AS at_ms
               FROM webhook_attempts WHERE lock_key = $1 ORDER BY id DESC LIMIT $2""",
            row["lock_key"], limit)
    return row["last_event_id"], rows


async def rewind(pool: asyncpg.Pool, webhook_id: str, from_event_id: int, columns: str) -> asyncpg.Record | None:
    """Deliver again from ``from_event_id`` on: the cursor goes to the event before it. The
    webhook's ``columns``, or None when there is no such webhook; 422 past the feed's end + 1.

    Safe while a sender delivers: it moves the cursor only from where it left it
    (``Sender._record``), so it finds the new cursor and starts from there.
    """
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"""UPDATE webhooks SET last_event_id = $2 - 1, updated_at = now() WHERE webhook_id = $1
                RETURNING (SELECT coalesce(max(id), 0) FROM order_events) AS feed_end, {columns}""",
            webhook_id, from_event_id)
        if row is not None and from_event_id > row["feed_end"] + 1:
            raise Invalid(f"from_event_id is past the feed's end ({row['feed_end']})", code="invalid_from_event_id")
    return row
