"""``GET /v1/stats/stream``: the live figures and stock alerts as server-sent events (aiohttp-sse).

The figures and the feed tailing are gateway/livestats.py's; this module checks the request,
opens the stream and writes what that yields. A stream ends when the client goes (a write
fails, or the test server cancels the handler) or the app shuts down (``end_streams``, an
``on_shutdown`` hook: aiohttp waits for running handlers before the pools close).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from typing import Any

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from gateway.errors import Invalid
from gateway.livestats import Live
from gateway.web import appkeys as K
from gateway.web.common import DIGITS, known_params, principal

log = logging.getLogger(__name__)
NUMBER = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?([eE][-+]?[0-9]{1,3})?")  # no sign, no _, no nan or inf
INTERVAL = (0.2, 10.0)


def interval_of(query: Any) -> float:
    """Seconds between stats events: a plain number in 0.2..10, given at most once; default 1."""
    values = query.getall("interval", [])
    if not values:
        return 1.0
    lo, hi = INTERVAL
    raw = values[0]
    seconds = float(raw) if len(values) == 1 and NUMBER.fullmatch(raw) else math.nan
    if not lo <= seconds <= hi:  # nan fails both comparisons
        raise Invalid(f"interval must be given once, as seconds in {lo:g}..{hi:g}", code="invalid_interval")
    return seconds


def last_event_id(request: web.Request) -> int | None:
    """The feed id an EventSource reconnecting sends back (the id of the last stock event it got)."""
    raw = request.headers.get("Last-Event-ID", "")
    if not raw:
        return None
    if not DIGITS.fullmatch(raw) or int(raw) > 2**63 - 1:
        raise Invalid("Last-Event-ID must be a feed id, as a stock event carries it", code="invalid_last_event_id")
    return int(raw)


async def stats_stream(request: web.Request) -> web.StreamResponse:
    """Everything that can refuse (credentials, query, a PostgreSQL the feed's end cannot be
    read from) does so before the first byte, as problem+json; later faults are events."""
    principal(request).require("ops")
    known_params(request.query, ("interval",))
    interval = interval_of(request.query)
    app = request.app
    live = Live(app[K.REDIS], app[K.PG], window=app[K.SETTINGS].forecast_window,
                publish=app[K.PUBLISHER].publish, after=last_event_id(request), layout=app[K.SETTINGS].layout)
    await live.start()
    streams = app[K.LIVE]
    with streams.opened():
        resp = EventSourceResponse()
        await resp.prepare(request)
        async with resp:
            try:
                async with contextlib.aclosing(live.events(interval, streams.closing)) as events:
                    async for event, event_id, data in events:
                        await resp.send(data, id=event_id, event=event)
            except (ConnectionResetError, TimeoutError):  # the client went, or stopped reading (send_timeout)
                pass
            except Exception:  # the headers are out: a problem body can no longer be sent
                log.exception("live stream ended by an error")
    return resp


async def end_streams(app: web.Application) -> None:
    app[K.LIVE].close()
