"""Request ids and access lines, wrapped around each handler outside the error edge.

Every response carries ``X-Request-ID``: the client's when it is 1-128 characters of
``[A-Za-z0-9._:-]`` (so a hostile header never reaches a log line), else a fresh random one.
While the handler runs, ``REQUEST_ID`` holds it and every JSON log line carries it.

One INFO line on ``gateway.access`` per request (method, route template, status, duration),
except on the order routes, where a sale sends thousands a second and a line costs about a
quarter of the HTTP worker's CPU per order (README, Logs): there only a fraction
``OMS_ACCESS_LOG_SAMPLE`` (default 0) is logged, plus every 5xx but 503, which is load
shedding or a store that is down (already reported once a second by the edge).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import time
from random import getrandbits, random
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
    """The client's id when sane, else 16 random hex digits: no coordination between workers,
    and unlike a counter they tell a client nothing about traffic. Not a secret, so the
    process's Mersenne Twister (seeded from urandom) will do: 0.13 us against urandom's 0.40."""
    given = request.headers.get(HEADER)
    if given is not None and SANE_ID.match(given):
        return given
    return getrandbits(64).to_bytes(8).hex()


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """What the access line needs of the one route a wrapper serves (``urls.setup`` wraps each
    handler for one route of one app), learnt at its first request instead of at every one."""

    template: str | None
    sample: float | None  # None: every request logged; else the fraction of answers below 500 (and 503s)

    @classmethod
    def of(cls, request: web.Request) -> Route:
        route = request.match_info.route
        template = route.resource.canonical  # type: ignore[union-attr]
        quiet = (route.method, template) in ORDER_ROUTES
        return cls(template, request.app[K.SETTINGS].access_log_sample if quiet else None)

    def logs(self, status: int) -> bool:
        sample = self.sample
        return sample is None or (status >= 500 and status != 503) or (sample > 0 and random() < sample)


UNMATCHED = Route(None, None)


def logged(handler: Handler, *, matched: bool = True) -> Handler:
    """``handler`` with a request id and an access line; ``matched=False`` for ``no_route``,
    which has no route template to report (and serves every app: nothing to learn)."""
    route = None if matched else UNMATCHED

    @functools.wraps(handler)
    async def traced(request: web.Request) -> web.StreamResponse:
        nonlocal route
        started = time.perf_counter()
        rid = request_id(request)
        token = REQUEST_ID.set(rid)
        try:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # the edge lets these through for aiohttp to render
                exc.headers[HEADER] = rid
                route = route or Route.of(request)
                if route.logs(exc.status):
                    access(request, route, rid, exc.status, started)
                raise
            if not response.prepared:  # a streamed response sent its headers already
                response.headers[HEADER] = rid
            route = route or Route.of(request)
            if route.logs(response.status):
                access(request, route, rid, response.status, started)
            return response
        finally:
            REQUEST_ID.reset(token)

    return traced


def access(request: web.Request, route: Route, rid: str, status: int, started: float) -> None:
    """The access line: the message for the text format, the fields for JSON."""
    if not log.isEnabledFor(logging.INFO):
        return
    duration = time.perf_counter() - started
    method = request.method
    fields: dict[str, object] = {"method": method, "status": status, "duration": duration}
    if route.template is not None:
        fields["route"] = route.template
    log.info("%s %s %d %.6fs id=%s", method, route.template or "(no route)", status, duration, rid, extra=fields)
