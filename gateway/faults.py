"""Backend faults: which Redis and PostgreSQL errors mean "the store is sick", mapped in one place.

A store that is down, restarting, stalled past its timeout, loading its data or out of
connections is no fault of the client: the edge answers ``503 backend_unavailable`` with
``Retry-After``, and the next request finds the store again (redis-py reconnects, asyncpg's
pool replaces dead connections), so the gateway recovers by itself. Errors not listed here
are bugs and stay 500s. Handlers never import redis or asyncpg: the edge calls ``unavailable``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

import asyncpg
from redis import exceptions as redis_errors

from gateway import metrics
from gateway.errors import BackendDown

REDIS_FAULTS: tuple[type[BaseException], ...] = (redis_errors.ConnectionError, redis_errors.TimeoutError)
REDIS_BUSY = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY")
POSTGRES_FAULTS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # 08: lost, refused, does not exist
    asyncpg.InterfaceError,  # the connection or the pool closed under the call
    asyncpg.OperatorInterventionError,  # 57: shutting down, starting up (cannot connect now)
    asyncpg.InsufficientResourcesError,  # 53: too many connections, out of memory or disk
)
# A socket that would not connect (ConnectionRefusedError, a unix socket gone: FileNotFoundError)
# and a call past its timeout reach us unwrapped from both clients.
TRANSPORT_FAULTS: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)
# uvloop raises RuntimeError, not OSError, for a write on a transport the peer already reset
# (a proxy in front of the store accepts, then resets: MagicStack/uvloop#506); redis-py lets it through.
CLOSED_TRANSPORT = "the handler is closed"
T = TypeVar("T")


def unavailable(exc: BaseException) -> BackendDown | None:
    """The 503 that ``exc`` means, or None when it is no backend fault."""
    if isinstance(exc, REDIS_FAULTS):
        return BackendDown("Redis is unreachable, retry shortly", backend="redis")
    if isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(REDIS_BUSY):
        return BackendDown("Redis is loading or busy, retry shortly", backend="redis")
    if isinstance(exc, POSTGRES_FAULTS):
        return BackendDown("PostgreSQL is unreachable, retry shortly", backend="postgres")
    if isinstance(exc, TRANSPORT_FAULTS) or (isinstance(exc, RuntimeError) and CLOSED_TRANSPORT in str(exc)):
        return BackendDown("A backing store is unreachable, retry shortly")
    return None


def log_retry(logger: logging.Logger, exc: BaseException, message: str, *args: object) -> None:
    """A background task's failed step: a backend fault is one WARNING line (it repeats every
    pass while the store is down), anything else an ERROR with its traceback."""
    fault = unavailable(exc)
    if fault is None:
        logger.error(message, *args, exc_info=exc)
    else:
        metrics.backend_error(fault.extra.get("backend"))
        logger.warning(message + " (%s: %s)", *args, type(exc).__name__, exc)


async def unless_down(call: Awaitable[T], fallback: T) -> tuple[T, bool]:
    """``(result, True)``, or ``(fallback, False)`` while the store ``call`` needs is down:
    what can be answered without it still is."""
    try:
        return await call, True
    except Exception as exc:
        if unavailable(exc) is None:
            raise
        return fallback, False
