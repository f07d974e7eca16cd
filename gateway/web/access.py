"""Request ids and access lines, for the error edge (gateway/web/edge.py) to apply.

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

import logging
import re
from collections.abc import Callable
from random import getrandbits, random

from aiohttp import web
from multidict import istr

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


def sampled(fraction: float | None) -> Callable[[int], bool]:
    """Whether an answer of this status gets an access line: every one (``fraction`` None), or
    the fraction of them, and every 5xx but 503."""
    if fraction is None:
        return lambda status: True
    return lambda status: (status >= 500 and status != 503) or (fraction > 0 and random() < fraction)


def line(request: web.Request, template: str | None, rid: str, status: int, duration: float) -> None:
    """The access line: the message for the text format, the fields for JSON."""
    if not log.isEnabledFor(logging.INFO):
        return
    method = request.method
    fields: dict[str, object] = {"method": method, "status": status, "duration": duration}
    if template is not None:
        fields["route"] = template
    log.info("%s %s %d %.6fs id=%s", method, template or "(no route)", status, duration, rid, extra=fields)
