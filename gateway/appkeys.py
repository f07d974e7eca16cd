"""Typed application keys: every resource the app holds, declared once."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from gateway.auth import Authenticator
from gateway.coalescer import Coalescer
from gateway.config import Settings
from gateway.inventory import WarehouseCache
from gateway.scripts import Scripts
from gateway.writer import Writer

SETTINGS = web.AppKey("settings", Settings)
AUTH = web.AppKey("auth", Authenticator)
REDIS = web.AppKey("redis", aioredis.Redis)
SCRIPTS = web.AppKey("scripts", Scripts)
PG = web.AppKey("pg", asyncpg.Pool)
WAREHOUSES = web.AppKey("warehouses", WarehouseCache)
COALESCER = web.AppKey("coalescer", Coalescer)
WRITER = web.AppKey("writer", Writer)
