"""Request ids and access lines, wrapped around each handler outside the error edge.

Every response carries ``X-Request-ID``: the client's when it is 1-128 characters of
``[A-Za-z0-9._:-]`` (so a hostile header never reaches a log line), else a fresh random one.
While the handler runs, ``REQUEST_ID`` holds it and every JSON log line carries it.

One INFO line on ``gateway.access`` per request (method, route template, status, duration),
except on the order routes, where a sale sends thousands a second and the line would cost
more than the rest of the wrapper together (README, Logs): there only a fraction
``OMS_ACCESS_LOG_SAMPLE`` (default 0) is logged, plus every 5xx but 503, which is load
shedding or a store that is down (already reported once a second by the edge).
"""

from __future__ import annotations

import functools
import logging
import os
import random
import re
import time
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import istr

from gateway.ops.logjson import REQUEST_ID
from gateway.web import appkeys as K

if TYPE_CHECKING:  # the edge imports this module to wrap its handlers
    from gateway.web.edge import Handler

HEADER = istr("X-Request-ID")
SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")
ORDER_ROUTES = frozenset({("POST", "/v1/orders"), ("POST", "/v1/orders/batch")})
log = logging.getLogger("gateway.access")


def request_id(request: web.Request) -> str:
    """The client's id when sane, else 16 random hex digits: unique across workers and restarts
    without coordination, and unlike a counter they tell a client nothing about traffic."""
    given = request.headers.get(HEADER)
    if given is not None and SANE_ID.match(given):
        return given
    return os.urandom(8).hex()


def logged(handler: Handler, *, matched: bool = True) -> Handler:
    """``handler`` with a request id and an access line; ``matched=False`` for ``no_route``,
    which has no route template to report."""

    @functools.wraps(handler)
    async def traced(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        rid = request_id(request)
        token = REQUEST_ID.set(rid)
        try:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # the edge lets these through for aiohttp to render
                exc.headers[HEADER] = rid
                access(request, rid, exc.status, started, matched)
                raise
            if not response.prepared:  # a streamed response sent its headers already
                response.headers[HEADER] = rid
            access(request, rid, response.status, started, matched)
            return response
        finally:
            REQUEST_ID.reset(token)

    return traced


def access(request: web.Request, rid: str, status: int, started: float, matched: bool) -> None:
    """The access line of one request, unless it is an order route's and not sampled."""
    if not log.isEnabledFor(logging.INFO):
        return
    method = request.method
    route = request.match_info.route.resource.canonical if matched else None  # type: ignore[union-attr]
    if (method, route) in ORDER_ROUTES and not (status >= 500 and status != 503):
        sample = request.app[K.SETTINGS].access_log_sample
        if not sample or random.random() >= sample:
            return
    duration = time.perf_counter() - started
    fields: dict[str, object] = {"method": method, "status": status, "duration": duration}
    if route is not None:
        fields["route"] = route
    # the text format shows only the message: it names the request id too
    log.info("%s %s %d %.6fs id=%s", method, route or "(no route)", status, duration, rid, extra=fields)
