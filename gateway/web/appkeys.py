"""Typed application keys: every resource the app holds, declared once."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from gateway.coalescer import Coalescer
from gateway.config import Settings
from gateway.inventory import WarehouseCache
from gateway.livestats import Streams
from gateway.metrics import Publisher
from gateway.sales import SaleCache
from gateway.scripts import Scripts
from gateway.web.auth import Authenticator
from gateway.writer import Writer

if TYPE_CHECKING:  # these modules import this one for their handlers and tasks
    from gateway.expirer import Expirer
    from gateway.webhooks import Sender

SETTINGS = web.AppKey("settings", Settings)
AUTH = web.AppKey("auth", Authenticator)
REDIS = web.AppKey("redis", aioredis.Redis)
SCRIPTS = web.AppKey("scripts", Scripts)
PG = web.AppKey("pg", asyncpg.Pool)
WAREHOUSES = web.AppKey("warehouses", WarehouseCache)
COALESCER = web.AppKey("coalescer", Coalescer)
WRITER = web.AppKey("writer", Writer)
EXPIRER: web.AppKey[Expirer] = web.AppKey("expirer")
SALES = web.AppKey("sales", SaleCache)
WEBHOOKS: web.AppKey[Sender] = web.AppKey("webhooks")
PUBLISHER = web.AppKey("publisher", Publisher)
EXPORTS = web.AppKey("exports", asyncio.Semaphore)  # CSV exports running: each holds a pool connection
LIVE = web.AppKey("live", Streams)  # the open /v1/stats/stream streams
