"""Orders after acceptance: reading them, and moving them through the state machine.

Redis holds the live record (status, allocations, event count); PostgreSQL holds every
order for good. A transition reads the record's payload for its stock keys, then one
script call checks the state machine and applies status, stock and event together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis

from gateway import keys, lifecycle, metrics, spans
from gateway.errors import (
    AmountMismatch,
    IllegalTransition,
    NotFound,
    NotReady,
    PaymentConflict,
    RateLimited,
    ReservationExpired,
)
from gateway.models import decode_order, encode, render_order
from gateway.scripts import Scripts
from gateway.wire import Transition

RECORD_FIELDS = ("p", "a", "c", "u", "s", "pid", "cr", "sh", "rf")  # see lua/transition.lua
TRANSITIONS = metrics.tally(metrics.TRANSITIONS)  # by the status reached


def total(payload: dict[str, Any]) -> int | None:
    """The order total in minor units, or None when any line has no price."""
    prices = [item.get("unit_price") for item in payload["items"]]
    if any(p is None for p in prices):
        return None
    return sum(p * item["qty"] for p, item in zip(prices, payload["items"], strict=True))


ORDER_SELECT = """
    SELECT o.order_id, o.payload::text AS payload, o.status, o.last_seq, o.payment_id, o.cancel_reason,
           (extract(epoch FROM o.created_at) * 1000)::bigint AS created_ms,
           (extract(epoch FROM o.reserved_until) * 1000)::bigint AS until_ms,
           coalesce((SELECT string_agg(g, ';' ORDER BY line_no) FROM (
               SELECT i.line_no, string_agg(a.warehouse || '=' || a.qty, ',' ORDER BY a.warehouse) AS g
               FROM order_items i JOIN allocations a ON a.order_id = i.order_id AND a.sku = i.sku
               WHERE i.order_id = o.order_id GROUP BY i.line_no) lines), '') AS alloc,
           (SELECT e.data::text FROM order_events e WHERE e.order_id = o.order_id AND e.type = 'order.shipped'
            ORDER BY e.seq DESC LIMIT 1) AS shipment,
           (SELECT e.data::text FROM order_events e WHERE e.order_id = o.order_id AND e.type = 'order.refunding'
            ORDER BY e.seq DESC LIMIT 1) AS refund
    FROM orders o"""


def detailed(view: dict[str, Any], payload: dict[str, Any], payment_id: str | None, cancel_reason: str | None,
             shipment: str | None, refund: str | None) -> dict[str, Any]:
    """The order view with what happened to it since: the answer of every read and transition.

    ``shipment`` and ``refund`` are the data of the ship and refund events as JSON text, or
    None while the order has had none. The submit answer goes without (the hot path).
    """
    view.update(total=total(payload), payment_id=payment_id, cancel_reason=cancel_reason,
                shipment=None if shipment is None else orjson.loads(shipment),
                refund=None if refund is None else orjson.loads(refund))
    return view


def row_view(row: asyncpg.Record) -> dict[str, Any]:
    payload = orjson.loads(row["payload"])
    view = render_order(payload, row["alloc"], row["created_ms"], row["until_ms"], row["status"])
    return detailed(view, payload, row["payment_id"], row["cancel_reason"], row["shipment"], row["refund"])


async def pg_record(pool: asyncpg.Pool, order_id: str) -> dict[str, Any] | None:
    """The order as PostgreSQL has it, shaped like the Redis record (strings throughout)."""
    row = await pool.fetchrow(ORDER_SELECT + " WHERE o.order_id = $1", order_id)
    return None if row is None else record_of(row)


def record_of(row: asyncpg.Record) -> dict[str, str]:
    """The Redis order record (see lua/transition.lua) from an ``ORDER_SELECT`` row."""
    canonical = encode(decode_order(row["payload"].encode()))  # jsonb reformats; the key needs the exact bytes
    record = {"p": canonical.decode(), "a": row["alloc"], "c": str(row["created_ms"]),
              "u": str(row["until_ms"]), "s": row["status"], "n": str(row["last_seq"])}
    if row["payment_id"]:
        record["pid"] = row["payment_id"]
    if row["cancel_reason"]:
        record["cr"] = row["cancel_reason"]
    if row["shipment"] is not None:
        record["sh"] = row["shipment"]
    if row["refund"] is not None:
        record["rf"] = row["refund"]
    return record


async def locate(redis: aioredis.Redis, layout: keys.Partitions, order_id: str) -> str:
    """The partition whose record of the order Redis holds, or (none holding it) its home.

    The home partition knows by the order's locator (gateway/keys.py), in one round trip; an
    order without one there (a record made again from PostgreSQL) is looked for in every
    partition.
    """
    if layout.count == 1:
        return keys.ONE
    home = layout.home(order_id)
    pipe = redis.pipeline(transaction=False)
    pipe.exists(keys.order(order_id, home))
    pipe.get(keys.locator(order_id, home))
    here, at = await pipe.execute()
    if here:
        return home
    if at is not None:
        return str(at.decode())
    pipe = redis.pipeline(transaction=False)
    for p in layout.all():
        pipe.exists(keys.order(order_id, p))
    return next((p for p, there in zip(layout.all(), await pipe.execute(), strict=True) if there), home)


async def load_order(redis: aioredis.Redis, pool: asyncpg.Pool, order_id: str,
                     layout: keys.Partitions = keys.SINGLE) -> dict[str, Any] | None:
    """The order as it is now: Redis while it holds the record, else PostgreSQL."""
    p = await locate(redis, layout, order_id)
    raw = await redis.hmget(keys.order(order_id, p), *RECORD_FIELDS)
    if raw[0] is not None:
        record = {f: v.decode() for f, v in zip(RECORD_FIELDS, raw, strict=True) if v is not None}
    else:
        found = await pg_record(pool, order_id)
        if found is None:
            return None
        record = found
    payload = orjson.loads(record["p"])
    view = render_order(payload, record["a"], int(record["c"]), int(record["u"]), record["s"])
    return detailed(view, payload, record.get("pid"), record.get("cr"), record.get("sh"), record.get("rf"))


async def owner(redis: aioredis.Redis, pool: asyncpg.Pool, order_id: str,
                layout: keys.Partitions = keys.SINGLE) -> tuple[str, str] | None:
    """(user_id, channel) of the order, or None when there is none: PostgreSQL first, then the live
    record of an order the writer has not written yet."""
    row = await pool.fetchrow("SELECT user_id, channel FROM orders WHERE order_id = $1", order_id)
    if row is not None:
        return row["user_id"], row["channel"]
    raw = await redis.hget(keys.order(order_id, await locate(redis, layout, order_id)), "p")
    if raw is None:
        return None
    payload = orjson.loads(raw)
    return payload["user_id"], payload["channel"]


async def change(
    scripts: Scripts, pool: asyncpg.Pool, order_id: str, action: str, data: dict[str, Any], *,
    record_ttl: int, visible: Callable[[str, str], bool], user_only: bool = False, payment_id: str = "",
    amount: int | None = None, reason: str = "", key_id: str = "", layout: keys.Partitions = keys.SINGLE,
) -> dict[str, Any]:
    """Apply ``action`` to the order; returns the order as it now is.

    ``visible(user_id, channel)`` says whether the caller may see the order (404 when not);
    ``user_only`` limits a buyer to the transitions from ``pending_payment``. 409 ``illegal_transition`` (the order's
    status in ``order_status``), ``reservation_expired``, ``amount_mismatch`` or
    ``payment_conflict``, each changing nothing except that a payment arriving after
    ``reserved_until`` expires the order on the spot. Repeating a transition that already happened answers the order
    as it is and writes no event.
    """
    redis = scripts.redis
    hydrate = ""
    p = await locate(redis, layout, order_id)
    raw = await redis.hget(keys.order(order_id, p), "p")
    if raw is None:
        record = await pg_record(pool, order_id)
        if record is None:
            raise NotFound("No such order")
        raw, hydrate = record["p"].encode(), orjson.dumps(record).decode()
    payload = orjson.loads(raw)
    parts = spans.parts_of(layout, [item["sku"] for item in payload["items"]], payload["user_id"])
    if hydrate:  # made again in its primary partition (gateway/spans.py), where its stock is
        p = next(iter(parts))
        if len(parts) > 1:
            record = orjson.loads(hydrate)
            record["x"] = ",".join(list(parts)[1:])
            hydrate = orjson.dumps(record).decode()
    if not visible(payload["user_id"], payload["channel"]):
        raise NotFound("No such order")
    if action == "pay":
        expected = total(payload)
        if expected is not None and amount != expected:
            raise AmountMismatch(f"amount {amount} differs from the order total {expected}", total=expected)
    ks, args = transition_call(order_id, payload, action, data, payment_id=payment_id, reason=reason,
                               hydrate=hydrate, record_ttl=record_ttl, user_only=user_only, key_id=key_id, p=p,
                               layout=layout)
    try:
        status, changed = check_reply(await scripts.call("transition", ks, args), action)
    except ReservationExpired:  # expired on the spot by a late payment: its holds follow now
        if len(parts) > 1:
            await spans.settle(scripts, layout, order_id, payload, "cancelled", p, lives=record_ttl)
        raise
    if changed:
        TRANSITIONS.add(status)
        if len(parts) > 1:  # its holds elsewhere follow (the sweep does, should this process die)
            await spans.settle(scripts, layout, order_id, payload, status, p, lives=record_ttl)
    order = await load_order(redis, pool, order_id, layout)
    assert order is not None
    return order


def transition_call(
    order_id: str, payload: dict[str, Any], action: str, data: dict[str, Any], *, payment_id: str = "",
    reason: str = "", hydrate: str = "", record_ttl: int, user_only: bool = False, key_id: str = "",
    p: str = keys.ONE, layout: keys.Partitions = keys.SINGLE,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of one transition script call in the order's partition ``p``; ``key_id``
    names the service key whose payments:key bucket a payment takes a token from. A line held
    in another partition (gateway/spans.py) is named "" for the script to leave alone."""
    sale_id = payload.get("sale_id") or ""
    ks = [keys.order(order_id, p), keys.events(p), keys.expiry(p), keys.sale(sale_id, p),
          keys.sale_user(sale_id, payload["user_id"], p), keys.ready(p), keys.rate_limits(p),
          keys.bucket("payments:key", key_id or "-", p), keys.remote(p)]
    ks.extend(keys.stock(item["sku"], p) for item in payload["items"])
    skus = [item["sku"] for item in payload["items"]]
    here = set(spans.parts_of(layout, skus, payload["user_id"]).get(p, range(len(skus)))) \
        if layout.count > 1 else set(range(len(skus)))
    rules = lifecycle.rules(action)
    if user_only:  # a buyer may only cancel an order that is not paid yet
        rules = ";".join(r for r in rules.split(";") if r.startswith("pending_payment>"))
    args = [action, order_id, rules, ",".join(sorted(lifecycle.DONE[action])),
            orjson.dumps(data).decode(), payment_id, "1" if sale_id else "0", record_ttl, reason, hydrate, keys.RESTOCK]
    args.extend(sku if j in here else "" for j, sku in enumerate(skus))
    return ks, args


def check_reply(reply: list[Any], action: str) -> tuple[str, bool]:
    """(status, changed) from the script's reply, or the domain error it means."""
    code = Transition(int(reply[0]))
    if code is Transition.DONE:
        return reply[1].decode(), bool(int(reply[2]))
    if code is Transition.NOT_READY:
        raise NotReady()
    if code is Transition.NO_ORDER:
        raise NotFound("No such order")
    if code is Transition.PAYMENT_CONFLICT:
        raise PaymentConflict("The order is already paid with another payment id")
    if code is Transition.ILLEGAL:
        status = reply[1].decode()
        raise IllegalTransition(f"cannot {action} an order that is {status}", order_status=status)
    if code is Transition.EXPIRED:
        raise ReservationExpired("The reservation expired; the order is cancelled and its stock released")
    if code is Transition.RATE_LIMITED:
        raise RateLimited(int(reply[1]))
    raise IllegalTransition("the reservation has not expired yet", order_status="pending_payment")
