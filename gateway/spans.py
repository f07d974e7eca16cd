"""Orders whose lines span inventory partitions: reserved part by part, all or nothing.

The order lives in its first line's partition, the *primary*; each other partition keeps a
*hold* of its lines (lua/hold.lua). The coalescer takes the holds first (in one round trip,
their WAITAOFs with them), then reserves the primary's lines with the holds' allocations
(lua/reserve.lua ``spans``), and commits the holds once the primary has the order. When a
hold or the primary refuses, the holds this attempt took are given back (compensation), and
the client sees one refusal; before that, the primary is asked (and tombstoned for a moment)
so a concurrent attempt with the same payload that got the order keeps them. A tombstone
names the generation of each part given back: a reserve counting on that generation is
refused, while a retry takes the part again as a newer one and goes through. (One that
refused every attempt renewed itself on each and refused a client retrying within its
life for good: seen after a failover.)

A process that dies midway leaves holds taken and never committed. Each expirer pass
``sweep``\\ s them: past ``STALE_MS`` it asks the primary (lua/abort.lua) whether it has the
order; if not, a tombstone there refuses a reserve still on its way (503, retry), and the
holds are given back. A transition of the order in its primary lists it in that
partition's ``remote`` set; the caller then lets each hold follow the new status (released
or shipped, once), and the sweep does it for a caller that died.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway import keys
from gateway.errors import BackendDown, NotReady
from gateway.scripts import Scripts
from gateway.wire import Hold

STALE_MS = 5000  # holds not committed after this lost their process (or it is very slow)
TOMBSTONE_S = 30  # how long the primary refuses an order id whose holds the sweep gave back
GIVE_BACK_S = 2  # the same after a refusal: a concurrent attempt's reserve would be on its way already
HOLDING = ("pending_payment", "paid")  # an order in these holds its parts' stock
GIVEN_BACK = "given_back"  # hold.lua settle's status for a part whose order the primary does not have


def parts_of(layout: keys.Partitions, skus: list[str], user_id: str) -> dict[str, list[int]]:
    """Partition -> the indexes of the order's lines there; the first line's partition first."""
    found: dict[str, list[int]] = {}
    for j, sku in enumerate(skus):
        found.setdefault(layout.target([sku], user_id), []).append(j)
    return found


def given(gens: dict[str, int]) -> str:
    """lua/abort.lua's "tag=gen,...": the parts that go back, each with its generation."""
    return ",".join(f"{p}={gen}" for p, gen in gens.items())


def hold_call(step: str, order_id: str, payload: str, p: str, lines: list[list[Any]], *, arg: str = "",
              version: int = 0, lives: int = 0, anew: bool = False) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of one lua/hold.lua call in partition ``p``; ``lines`` are [sku, qty, prefs]."""
    ks = [keys.hold(order_id, p), keys.holds(p), keys.ready(p), keys.wh_version(p), keys.events(p)]
    ks += [keys.stock(line[0], p) for line in lines]
    ks += [keys.holders(line[0], p) for line in lines]
    return ks, [step, order_id, payload, arg, orjson.dumps(lines).decode(), version, lives, keys.RESTOCK,
                "anew" if anew else ""]


def _lines(payload: dict[str, Any], idx: list[int]) -> list[list[Any]]:
    return [[payload["items"][j]["sku"], payload["items"][j]["qty"], []] for j in idx]


async def settle(scripts: Scripts, layout: keys.Partitions, order_id: str, payload: dict[str, Any],
                 status: str, primary: str, *, lives: int, only: tuple[str, str] | None = None) -> None:
    """Let every hold of the order follow its ``status``, then take it off the primary's list.
    ``lives``: seconds a part's record lives once released or shipped, as the order's record
    (OMS_IDEMPOTENCY_TTL); ``only``: (partition, the payload as its hold keeps it), the one
    hold to settle."""
    parts = parts_of(layout, [item["sku"] for item in payload["items"]], payload["user_id"])
    raw = only[1] if only else orjson.dumps(payload).decode()
    calls = [hold_call("settle", order_id, raw, p, _lines(payload, idx), arg=status, lives=lives)
             for p, idx in parts.items() if p != primary and (only is None or p == only[0])]
    for reply in await scripts.call_many("hold", calls) if calls else []:
        if isinstance(reply, Exception):
            raise reply
        if int(reply[0]) == Hold.NOT_READY:
            raise NotReady()
    await scripts.redis.zrem(keys.remote(primary), order_id)


async def sweep(scripts: Scripts, layout: keys.Partitions, p: str, *, lives: int) -> int:
    """Finish what dead processes left in partition ``p``: holds never committed, and orders
    whose holds were not told their status; returns how many orders it settled."""
    redis = scripts.redis
    sec, usec = await redis.time()
    due = sec * 1000 + usec // 1000 - STALE_MS
    done = 0
    for raw_id in await redis.zrangebyscore(keys.holds(p), "-inf", due):
        order_id = raw_id.decode()
        payload, primary, gen = await redis.hmget(keys.hold(order_id, p), "p", "m", "g")
        if payload is None:
            await redis.zrem(keys.holds(p), order_id)
            continue
        order, home = orjson.loads(payload), primary.decode()
        kept = await scripts.call("abort", [keys.order(order_id, home)], [TOMBSTONE_S, given({p: int(gen or 0)}), payload])
        if int(kept):  # the order, with this payload: every part follows its status
            status = await redis.hget(keys.order(order_id, home), "s")
            await settle(scripts, layout, order_id, order, (status or b"cancelled").decode(), home, lives=lives)
        else:  # no order of this payload: this part goes back (another partition's sweep finds its own)
            await settle(scripts, layout, order_id, order, GIVEN_BACK, home, lives=lives, only=(p, payload.decode()))
        await redis.zrem(keys.holds(p), order_id)
        done += 1
    for raw_id in await redis.zrangebyscore(keys.remote(p), "-inf", due):
        order_id = raw_id.decode()
        payload, status = await redis.hmget(keys.order(order_id, p), "p", "s")
        if payload is None:
            await redis.zrem(keys.remote(p), order_id)
            continue
        await settle(scripts, layout, order_id, orjson.loads(payload), status.decode(), p, lives=lives)
        done += 1
    return done


def aborted() -> BackendDown:
    return BackendDown("the order's parts in other partitions were given up moments ago; "
                       "retry with the same order_id shortly", backend="redis")
