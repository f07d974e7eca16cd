"""Delivery health for operators: the writer's quarantine (gateway/quarantine.py) and each
webhook's delivery attempts, with the admin's replays of both."""

from __future__ import annotations

from aiohttp import web

from gateway import quarantine, webhooks
from gateway.errors import Forbidden, NotFound
from gateway.models import QuarantineReplayIn, WebhookId, WebhookReplayIn, decode, iso_ms
from gateway.web import appkeys as K
from gateway.web.common import json, known_params, path_id, principal, query_int
from gateway.web.handlers import optional_body
from gateway.web.webhooks import VIEW, admin_only, view


async def list_quarantine(request: web.Request) -> web.Response:
    principal(request).require("ops")
    pool = request.app[K.PG]
    return json({"entries": await quarantine.open_entries(pool), "count": await quarantine.count(pool)})


async def replay_quarantine(request: web.Request) -> web.Response:
    """Write the open entries again after a fix (all, or those of ``ids``); what is refused again stays."""
    if principal(request).role != "admin":
        raise Forbidden("Only admin may replay the quarantine")
    body = await optional_body(request, QuarantineReplayIn)
    return json(await quarantine.replay(request.app[K.PG], body.ids))


async def webhook_attempts(request: web.Request) -> web.Response:
    admin_only(request)
    webhook_id = path_id(request, "webhook_id", WebhookId)
    known_params(request.query, ("limit",))
    found = await webhooks.attempts(request.app[K.PG], webhook_id, query_int(request.query, "limit", 50, 1, 200))
    if found is None:
        raise NotFound("No such webhook")
    cursor, rows = found
    return json({
        "attempts": [{"event_id": r["event_id"], "attempt": r["attempt"], "status": r["status"], "error": r["error"],
                      "at": iso_ms(r["at_ms"]), "duration_ms": r["duration_ms"]} for r in rows],
        "failing": bool(rows) and not (rows[0]["status"] is not None and 200 <= rows[0]["status"] < 300),
        "last_event_id": cursor,
    })


async def replay_webhook(request: web.Request) -> web.Response:
    """The webhook, its cursor set back (or forward) so delivery goes on from ``from_event_id``."""
    admin_only(request)
    webhook_id = path_id(request, "webhook_id", WebhookId)
    body = decode(await request.read(), WebhookReplayIn)
    row = await webhooks.rewind(request.app[K.PG], webhook_id, body.from_event_id, VIEW)
    if row is None:
        raise NotFound("No such webhook")
    return json(view(row))
