"""Hot-SKU stock buckets: one SKU's units spread over K partitions, moved between them safely.

A hot SKU (``OMS_HOT_SKUS``) has a stock hash in each of its places (gateway/keys.py). Stock
changes land in its first bucket and are then spread evenly; an order goes to its user's
bucket, and when that runs short the coalescer pulls units from the others and tries again,
so the SKU answers sold out only once no bucket has the units.

A move is three script steps (lua/move.lua): ``out`` takes units from the source and records
the transfer there, ``in`` gives them to the destination once (a marker there), ``done``
drops the record. A process that dies between them leaves the record: ``recover`` (each
expirer pass) gives what is older than ``STALE_MS`` again (a repeat gives nothing) and drops
it. Units are never in two buckets, and never lost: in flight, the record holds them.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from gateway import keys
from gateway.errors import NotReady
from gateway.scripts import Scripts
from gateway.soldout import restocked
from gateway.wire import RESERVED_PREFIX, Move

STALE_MS = 2000  # a transfer older than this lost its process: recover gives it again


def _keys(sku: str, transfer_id: str, p: str) -> list[str]:
    return [keys.stock(sku, p), keys.transfer(transfer_id, p), keys.transfers(p), keys.received(transfer_id, p),
            keys.ready(p)]


async def _step(scripts: Scripts, sku: str, p: str, step: str, transfer_id: str, wh: str, units: int,
                record: str = "") -> int:
    reply = await scripts.call("move", _keys(sku, transfer_id, p), [step, transfer_id, wh, units, record])
    if int(reply[0]) == Move.NOT_READY:
        raise NotReady()
    return int(reply[1])


async def move(scripts: Scripts, sku: str, wh: str, units: int, source: str, to: str) -> int:
    """Move up to ``units`` available units of ``sku`` in ``wh`` from bucket ``source`` to ``to``;
    returns how many moved."""
    transfer_id = f"{int(time.time() * 1000)}-{uuid.uuid4().hex[:12]}"
    taken = await _step(scripts, sku, source, "out", transfer_id, wh, units, f"{to}|{sku}|{wh}|")
    if taken:
        await _step(scripts, sku, to, "in", transfer_id, wh, taken)
        await _step(scripts, sku, source, "done", transfer_id, wh, 0)
    return taken


async def in_flight(redis: Any, p: str) -> list[tuple[str, str, str, str, int]]:
    """(transfer id, to, sku, warehouse, units) of every transfer out of bucket ``p`` not done yet."""
    ids = [i.decode() for i in await redis.zrange(keys.transfers(p), 0, -1)]
    if not ids:
        return []
    pipe = redis.pipeline(transaction=False)
    for transfer_id in ids:
        pipe.get(keys.transfer(transfer_id, p))
    found = []
    for transfer_id, raw in zip(ids, await pipe.execute(), strict=True):
        if raw is not None:
            to, sku, wh, units = raw.decode().split("|")
            found.append((transfer_id, to, sku, wh, int(units)))
    return found


async def recover(scripts: Scripts, p: str) -> int:
    """Finish the transfers out of bucket ``p`` that a dead process left; returns how many."""
    stale = await scripts.redis.zrangebyscore(keys.transfers(p), "-inf", int(time.time() * 1000) - STALE_MS)
    if not stale:
        return 0
    done = 0
    for transfer_id, to, sku, wh, units in await in_flight(scripts.redis, p):
        if transfer_id.encode() in stale:
            await _step(scripts, sku, to, "in", transfer_id, wh, units)
            await _step(scripts, sku, p, "done", transfer_id, wh, 0)
            await restocked(scripts.redis, sku)
            done += 1
    return done


async def available(redis: Any, layout: keys.Partitions, sku: str) -> dict[str, dict[str, int]]:
    """Bucket -> warehouse -> available units of ``sku``."""
    pipe = redis.pipeline(transaction=False)
    for p in layout.places(sku):
        pipe.hgetall(keys.stock(sku, p))
    return {p: {f.decode(): int(v) for f, v in raw.items() if not f.startswith(RESERVED_PREFIX.encode())}
            for p, raw in zip(layout.places(sku), await pipe.execute(), strict=True)}


async def spread(scripts: Scripts, layout: keys.Partitions, sku: str) -> int:
    """Even out the SKU's available units over its buckets, warehouse by warehouse; returns units moved."""
    buckets = await available(scripts.redis, layout, sku)
    moved = 0
    for wh in sorted({w for units in buckets.values() for w in units}):
        have = {p: units.get(wh, 0) for p, units in buckets.items()}
        total, k = sum(have.values()), len(have)
        want = {p: total // k + (1 if n < total % k else 0) for n, p in enumerate(have)}
        givers = [p for p in have if have[p] > want[p]]
        for to in (p for p in have if have[p] < want[p]):
            while have[to] < want[to] and givers:
                source = givers[0]
                units = min(have[source] - want[source], want[to] - have[to])
                taken = await move(scripts, sku, wh, units, source, to)
                have[source] -= taken
                have[to] += taken
                moved += taken
                if have[source] <= want[source] or not taken:
                    givers.pop(0)
    if moved:
        await restocked(scripts.redis, sku)
    return moved


async def pull(scripts: Scripts, layout: keys.Partitions, sku: str, to: str, need: int) -> int:
    """Bring at least ``need`` units of ``sku`` into bucket ``to`` from the others, half of what
    each has (the fullest first), so a drained bucket does not come back for every order;
    returns units moved (0: the other buckets have none)."""
    buckets = await available(scripts.redis, layout, sku)
    moved = 0
    for source in sorted((p for p in buckets if p != to), key=lambda p: -sum(buckets[p].values())):
        for wh, units in sorted(buckets[source].items(), key=lambda item: -item[1]):
            if units > 0 and moved < need:
                moved += await move(scripts, sku, wh, max(math.ceil(units / 2), need - moved), source, to)
    if moved:
        await restocked(scripts.redis, sku)
    return moved


async def gather(scripts: Scripts, layout: keys.Partitions, sku: str) -> dict[str, int]:
    """Move every available unit of the SKU's other buckets into its first (before a stock
    change lands there); returns warehouse -> the units still on hand elsewhere (reserved there)."""
    first, *others = layout.places(sku)
    buckets = await available(scripts.redis, layout, sku)
    for source in others:
        for wh, units in buckets[source].items():
            if units > 0:
                await move(scripts, sku, wh, units, source, first)
    pipe = scripts.redis.pipeline(transaction=False)
    for p in others:
        pipe.hgetall(keys.stock(sku, p))
    held: dict[str, int] = {}
    for raw in await pipe.execute():
        for field, value in raw.items():
            wh = field.decode().removeprefix(RESERVED_PREFIX)
            held[wh] = held.get(wh, 0) + int(value)
    return held
