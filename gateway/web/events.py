"""``GET /v1/events``: the event feed (gateway/feed.py) paged by id."""

from __future__ import annotations

from aiohttp import web

from gateway import feed
from gateway.web import appkeys as K
from gateway.web.common import json, known_params, principal, query_int

PARAMS = {"after": (0, 0, 2**63 - 1), "limit": (100, 1, 1000)}  # name: (default, min, max)


async def list_events(request: web.Request) -> web.Response:
    principal(request).require("ops")
    known_params(request.query, PARAMS)
    after, limit = (query_int(request.query, name, *PARAMS[name]) for name in ("after", "limit"))
    rows = await feed.read(request.app[K.PG], after, limit)
    return json({"events": [feed.item(r) for r in rows], "next": rows[-1]["id"] if rows else after})
