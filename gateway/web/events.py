"""``GET /v1/events``: the event feed (gateway/feed.py) paged by id."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import feed
from gateway.errors import Invalid
from gateway.web import appkeys as K
from gateway.web.common import DIGITS, json, principal

PARAMS = {"after": (0, 0, 2**63 - 1), "limit": (100, 1, 1000)}  # name: (default, min, max)


def query_int(query: Any, name: str) -> int:
    """One integer parameter within its bounds; absent or empty (``?after=``) means the default."""
    default, lo, hi = PARAMS[name]
    values = query.getall(name, [])
    if not values or values == [""]:
        return default
    raw = values[0]
    if len(values) > 1 or not DIGITS.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise Invalid(f"{name} must be given once, as an integer in {lo}..{hi}", code=f"invalid_{name}")
    return int(raw)


async def list_events(request: web.Request) -> web.Response:
    principal(request).require("ops")
    unknown = sorted(set(request.query) - PARAMS.keys())
    if unknown:
        raise Invalid(f"Unknown query parameter(s): {', '.join(unknown)}", code="unknown_parameter")
    after, limit = query_int(request.query, "after"), query_int(request.query, "limit")
    rows = await feed.read(request.app[K.PG], after, limit)
    return json({"events": [feed.item(r) for r in rows], "next": rows[-1]["id"] if rows else after})
