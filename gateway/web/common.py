"""What every handler shares: JSON answers, the caller, checked path ids, answers without a sick store."""

from __future__ import annotations

import re
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from gateway.errors import Invalid
from gateway.faults import unavailable
from gateway.models import valid
from gateway.web import appkeys as K
from gateway.web.auth import Principal

DIGITS = re.compile(r"[0-9]{1,19}")  # a non-negative integer as a query gives it: no sign, no _, ASCII only
T = TypeVar("T")


def json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def principal(request: web.Request) -> Principal:
    return request.app[K.AUTH].authenticate(request.headers.get("Authorization"))


def path_id(request: web.Request, name: str, type_: Any) -> str:
    """A path segment that meets its body field's constraints (models.py), else 422."""
    value = request.match_info[name]
    if not valid(value, type_):
        raise Invalid(f"{name} is malformed", code=f"invalid_{name}")
    return value


async def unless_down(call: Awaitable[T], fallback: T) -> tuple[T, bool]:
    """``(result, True)``, or ``(fallback, False)`` while the store ``call`` needs is down:
    what can be answered without it still is."""
    try:
        return await call, True
    except Exception as exc:
        if unavailable(exc) is None:
            raise
        return fallback, False
