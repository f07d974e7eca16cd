"""What every handler shares: JSON answers, the caller, checked path ids."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import Invalid
from gateway.models import valid
from gateway.web import appkeys as K
from gateway.web.auth import Principal

DIGITS = re.compile(r"[0-9]{1,19}")  # a non-negative integer as a query gives it: no sign, no _, ASCII only


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


def known_params(query: Any, allowed: Collection[str]) -> None:
    """422 ``unknown_parameter`` for a query parameter the route does not take: a typo is not ignored."""
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise Invalid(f"Unknown query parameter(s): {', '.join(unknown)}", code="unknown_parameter")


def query_int(query: Any, name: str, default: int, lo: int, hi: int) -> int:
    """One integer parameter within ``lo..hi``; absent or empty (``?after=``) means the default."""
    values = query.getall(name, [])
    if not values or values == [""]:
        return default
    raw = values[0]
    if len(values) > 1 or not DIGITS.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise Invalid(f"{name} must be given once, as an integer in {lo}..{hi}", code=f"invalid_{name}")
    return int(raw)
