"""Rate limits: token buckets in Redis, checked inside the scripts, set live.

Off unless set, so that a real sale is admitted. A limit is ``rate`` tokens a second with a
``burst`` of saved ones, per subject of its scope:

- ``orders:user``: order submissions per ``user_id`` (whoever sends them);
- ``orders:key``: order submissions per service key;
- ``payments:key``: payments per service key.

The limits live in one Redis hash that the reserve and transition scripts read on every call,
so a change applies to every process at once and the bucket costs no round trip of its own.
A service key is named in a bucket by a digest of it (``key_id``): never the key itself.
Only an order that would be new takes a token (a replay is answered as before); one refused
later for stock or by its sale has spent it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Literal

import redis.asyncio as aioredis

from gateway import keys

Scope = Literal["orders:user", "orders:key", "payments:key"]
SCOPES: tuple[Scope, ...] = ("orders:user", "orders:key", "payments:key")
MAX_RATE = 1_000_000.0
MAX_BURST = 1_000_000


@dataclasses.dataclass(frozen=True)
class Limit:
    rate: float  # tokens a second
    burst: int  # most tokens a bucket saves, and what a fresh one holds

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and 0 < self.rate <= MAX_RATE):
            raise ValueError(f"rate must be in (0, {MAX_RATE:g}] tokens a second")
        if not 1 <= self.burst <= MAX_BURST:
            raise ValueError(f"burst must be in 1..{MAX_BURST}")

    def encode(self) -> str:
        """The form the scripts parse: ``rate,burst``."""
        return f"{self.rate:g},{self.burst}"

    @classmethod
    def decode(cls, raw: bytes | str) -> Limit:
        text = raw.decode() if isinstance(raw, bytes) else raw
        rate, burst = text.split(",")
        return cls(float(rate), int(burst))


def key_id(key: str) -> str:
    """A service key's name in its buckets: 16 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


async def read(redis: aioredis.Redis, layout: keys.Partitions = keys.SINGLE) -> dict[str, Limit]:
    raw = await redis.hgetall(keys.rate_limits(layout.all()[0]))
    return {scope.decode(): Limit.decode(value) for scope, value in raw.items()}


async def put(redis: aioredis.Redis, scope: Scope, limit: Limit | None,
              layout: keys.Partitions = keys.SINGLE) -> None:
    """Set a scope's limit, or lift it (None), in every partition (each keeps its own buckets).
    Buckets already running keep their tokens."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    for p in layout.all():
        if limit is None:
            await redis.hdel(keys.rate_limits(p), scope)
        else:
            await redis.hset(keys.rate_limits(p), scope, limit.encode())
