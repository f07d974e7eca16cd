"""Lua scripts: read from package files, loaded once at start, called by SHA; the one owner of
every script call (the coalescer's reserve, transitions, the expirer, stock changes, repair).

A NOSCRIPT reply (server restarted or flushed its script cache) reloads the script and
retries once. Redis connection errors and timeouts become ``BackendDown`` here
(gateway/faults.py), so no handler imports redis.
"""

from __future__ import annotations

import importlib.resources
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from gateway import metrics
from gateway.errors import BackendDown
from gateway.faults import unavailable
from gateway.redisconn import route

NAMES = ("reserve", "stock", "transition", "repair", "move", "hold", "abort")
PRELUDES = {"reserve": ("bucket",), "transition": ("bucket", "effect"), "hold": ("effect",)}  # Lua files put before a script
T = TypeVar("T")


def source(name: str) -> str:
    """The text loaded as script ``name``: its preludes (shared local functions), then its file."""
    files = importlib.resources.files("gateway.lua")
    return "".join(files.joinpath(f"{part}.lua").read_text() for part in (*PRELUDES.get(name, ()), name))


class Scripts:
    def __init__(self, redis: aioredis.Redis, replicas: int = 0) -> None:
        self.redis = redis
        self.replicas = replicas  # how many replicas must have a write in their AOF too (OMS_DURABILITY=replicated)
        # A replica may report its fsync only with its next periodic ack (once a second): a
        # replicated WAITAOF is given time for it, a local one needs none.
        self.wait_ms = 3000 if replicas else 1000
        self.sources = {name: source(name) for name in NAMES}
        self.shas: dict[str, str] = {}
        self._timings = {name: metrics.spread(metrics.SCRIPT_DURATION, name) for name in NAMES}

    async def load(self) -> None:
        for name, text in self.sources.items():
            self.shas[name] = await self.redis.script_load(text)

    @property
    def loaded(self) -> bool:
        return len(self.shas) == len(self.sources)

    async def call(self, name: str, keys: list[str], args: list[Any], *, wait_aof: bool = False) -> Any:
        """One call of script ``name``: its reply, or the error it raised (see ``call_many``)."""
        (reply,) = await self.call_many(name, [(keys, args)], wait_aof=wait_aof)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def call_many(self, name: str, calls: list[tuple[list[str], list[Any]]], *,
                        wait_aof: bool = False) -> list[Any]:
        """Calls of one script in one round trip; each reply, or the ResponseError it raised.

        A NOSCRIPT reply (the server restarted or flushed its scripts) loads the script again
        and sends those calls once more: a refused call did not run. With ``wait_aof`` a
        WAITAOF travels behind the calls (one fsync for all: a group commit), and BackendDown
        is raised unless Redis confirms its append-only file has them. A Redis fault (gone,
        timed out, loading, busy) is BackendDown too, so no caller maps redis errors itself.
        """
        replies = await self._send(name, calls, wait_aof)
        again = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if again:
            self.shas[name] = await self._redis_call(self.redis.script_load(self.sources[name]))
            for n, reply in zip(again, await self._send(name, [calls[n] for n in again], wait_aof), strict=True):
                replies[n] = reply
        return replies

    async def _send(self, name: str, calls: list[tuple[list[str], list[Any]]], wait_aof: bool) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for keys, args in calls:
            # execute_command, not evalsha: redis-py refuses pipe.evalsha in cluster mode, while the
            # command itself is routed by its keys' slot like any other
            pipe.execute_command("EVALSHA", self.shas[name], len(keys), *keys, *args)
        waits = self._waits(pipe, [ks[0] for ks, _ in calls] if wait_aof else [])
        started = time.perf_counter()
        replies = await self._redis_call(pipe.execute(raise_on_error=False))
        self._timings[name].observe(time.perf_counter() - started)
        self._confirm(replies, waits)
        for reply in replies:
            fault = unavailable(reply) if isinstance(reply, Exception) else None
            if fault is not None:
                raise fault from reply
        return replies

    def _waits(self, pipe: Any, written: list[str]) -> int:
        """Queue a WAITAOF behind the pipeline's commands to each node holding a key of
        ``written``, on the connection that sent them: WAITAOF covers that connection's writes,
        one per node (a batch over several partitions of a cluster reaches several)."""
        targets = {getattr(r.get("target_nodes"), "name", ""): r for r in (route(self.redis, k) for k in written)}
        for target in targets.values():
            pipe.execute_command("WAITAOF", 1, self.replicas, self.wait_ms, **target)
        return len(targets)

    def _confirm(self, replies: list[Any], waits: int) -> None:
        """Pop the WAITAOF replies off ``replies``: BackendDown unless each confirms the sync."""
        for _ in range(waits):
            acked = replies.pop()
            if isinstance(acked, Exception) or int(acked[0]) < 1 or int(acked[1]) < self.replicas:
                raise BackendDown("Redis did not confirm the append-only file was synced"
                                  + (" on a replica" if self.replicas else ""), backend="redis")

    async def execute(self, pipe: Any, durable: list[str] | None = None) -> list[Any]:
        """Run a pipeline of plain commands; a Redis fault is BackendDown, as for scripts.
        With ``durable``, keys the commands wrote, a WAITAOF confirms them as ``wait_aof`` does."""
        waits = self._waits(pipe, durable or [])
        replies = await self._redis_call(pipe.execute())
        self._confirm(replies, waits)
        return replies

    @staticmethod
    async def _redis_call(call: Awaitable[T]) -> T:
        try:
            return await call
        except (RedisError, OSError, RuntimeError) as exc:  # RuntimeError: uvloop's closed transport
            fault = unavailable(exc)
            if fault is None:
                raise
            raise fault from exc
