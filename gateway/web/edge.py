"""The error edge: every error a client can cause becomes problem+json, in one place.

It wraps each handler when its route is added (``edge(handler)``) instead of being an
aiohttp middleware: an app with any middleware runs two extra coroutine layers on every
request (the middleware and aiohttp's ``_fix_request_current_app``), a few per cent of
the order route's CPU. Requests no route matches reach ``no_route``, added last.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from gateway import metrics
from gateway.errors import (
    BackendDown,
    BadRequest,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from gateway.faults import unavailable
from gateway.ops.logjson import REQUEST_ID
from gateway.web import access
from gateway.web import appkeys as K

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem_response(err: GatewayError, headers: dict[str, str] | None = None) -> web.Response:
    """The problem+json answer; a 401 names its scheme (RFC 9110 requires it), a 429 or 503 when to retry."""
    headers = dict(headers or {})
    if err.retry_after is not None:
        headers["Retry-After"] = str(err.retry_after)
    elif isinstance(err, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return web.Response(
        body=orjson.dumps(err.problem()), status=err.status,
        content_type="application/problem+json", headers=headers,
    )


_reported: dict[str | None, float] = {}


def report(fault: BackendDown, exc: BaseException) -> None:
    """Count the fault; one WARNING a second per backend while it is down, not one per request of a sale."""
    backend = fault.extra.get("backend")
    metrics.backend_error(backend)
    now = time.monotonic()
    if now - _reported.get(backend, -1.0) >= 1.0:
        _reported[backend] = now
        log.warning("answering 503: %s (%s: %s)", fault.detail, type(exc).__name__, exc)


def edge(handler: Handler, route: str | None = None, method: str = "*", sample: float | None = None) -> Handler:
    """``handler`` with its errors rendered as problem+json, never a traceback, and with what every
    answer carries: its request id (the header and, while it runs, ``REQUEST_ID`` for the log),
    its count and latency under the route template (gateway/metrics.py: a dict increment and a
    bisect) and its access line (every answer, or the ``sample`` fraction: gateway/web/access.py).

    One wrapper for all of it: each coroutine layer costs the order route ~0.15 µs. ``route``
    None is ``no_route``, counted as ``unmatched``: a client's path never becomes a label.
    """
    requests = metrics.tally(metrics.HTTP_REQUESTS)
    label = route or "unmatched"
    latency = metrics.spread(metrics.HTTP_DURATION, label, method)
    logs = access.sampled(sample)

    def finish(request: web.Request, rid: str, status: int, started: float) -> None:
        requests.add(label, method, status)
        elapsed = time.perf_counter() - started
        latency.observe(elapsed)
        if logs(status):
            access.line(request, route, rid, status, elapsed)

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        rid = access.request_id(request)
        token = REQUEST_ID.set(rid)
        try:
            try:
                response = await handler(request)
            except GatewayError as err:
                # A refusal the coalescer settled on a future comes back as the future's exception
                # while the handler's frame still holds that future: exception -> traceback ->
                # frame -> future -> exception is a cycle only the collector frees. Each refused
                # order left ~24 such objects: a 30 ms collection each 2,000 refusals.
                err.__traceback__ = None
                response = problem_response(err)
            except web.HTTPRequestEntityTooLarge:
                response = problem_response(PayloadTooLarge(f"Body exceeds {request.app[K.SETTINGS].max_body} bytes"))
            except web.HTTPException as exc:  # for aiohttp to render
                exc.headers[access.HEADER] = rid
                finish(request, rid, exc.status, started)
                raise
            except Exception as exc:
                response = unexpected(request, exc)
            if not response.prepared:  # a streamed response sent its headers already
                response.headers[access.HEADER] = rid
            finish(request, rid, response.status, started)
            return response
        finally:
            REQUEST_ID.reset(token)

    return wrapped


def unexpected(request: web.Request, exc: Exception) -> web.Response:
    """A client gone mid-body, a sick backend (503), or a bug (500, logged with its traceback)."""
    transport = request.transport
    if isinstance(exc, ConnectionResetError) and (transport is None or transport.is_closing()):
        # the client left mid-body: nobody to answer, nothing done
        log.info("client left during %s %s", request.method, request.path)
        return problem_response(BadRequest("The connection closed before the body arrived", code="client_closed"))
    fault = unavailable(exc)
    if fault is None:
        log.exception("unhandled error on %s %s", request.method, request.path, exc_info=exc)
        return problem_response(GatewayError("Internal error"))
    report(fault, exc)
    return problem_response(fault)


@edge
async def no_route(request: web.Request) -> web.StreamResponse:
    """404, or 405 naming the allowed methods when the path exists with other methods."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is request.match_info.route.resource:
            continue
        match, methods = await resource.resolve(request)
        if match is None:
            allowed |= methods
    if allowed:
        return problem_response(MethodNotAllowed(f"{request.method} is not allowed on {request.path}"),
                                {"Allow": ",".join(sorted(allowed))})
    raise NotFound(f"No route for {request.path}")
