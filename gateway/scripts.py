"""Lua scripts: read from package files, loaded once at start, called by SHA.

A NOSCRIPT reply (server restarted or flushed its script cache) reloads the script and
retries once. Redis connection errors and timeouts become ``BackendDown`` here
(gateway/faults.py), so no handler imports redis.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from gateway.faults import unavailable

NAMES = ("reserve", "stock", "transition", "repair")


def source(name: str) -> str:
    return importlib.resources.files("gateway.lua").joinpath(f"{name}.lua").read_text()


class Scripts:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.sources = {name: source(name) for name in NAMES}
        self.shas: dict[str, str] = {}

    async def load(self) -> None:
        for name, text in self.sources.items():
            self.shas[name] = await self.redis.script_load(text)

    @property
    def loaded(self) -> bool:
        return len(self.shas) == len(self.sources)

    async def call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        try:
            try:
                return await self.redis.evalsha(self.shas[name], len(keys), *keys, *args)
            except NoScriptError:
                self.shas[name] = await self.redis.script_load(self.sources[name])
                return await self.redis.evalsha(self.shas[name], len(keys), *keys, *args)
        except (RedisError, OSError) as exc:
            fault = unavailable(exc)
            if fault is None:
                raise
            raise fault from exc
