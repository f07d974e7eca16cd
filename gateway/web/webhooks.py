"""Webhook admin endpoints: ``PUT``, ``GET`` and ``DELETE /v1/webhooks``; gateway/webhooks.py delivers."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web
from yarl import URL

from gateway.errors import Forbidden, Invalid, NotFound
from gateway.models import WebhookId, WebhookIn, decode, iso_ms
from gateway.web import appkeys as K
from gateway.web.common import json, path_id, principal

VIEW = """webhook_id, url, events, last_event_id,
          (extract(epoch FROM created_at) * 1000)::bigint AS created_ms,
          (extract(epoch FROM updated_at) * 1000)::bigint AS updated_ms"""


def admin_only(request: web.Request) -> None:
    """Admin and nobody else: ``Principal.require`` would let admin stand in for ops."""
    who = principal(request)
    if who.role != "admin":
        raise Forbidden(f"role {who.role!r} may not manage webhooks")


def view(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": row["webhook_id"], "url": row["url"], "events": row["events"],
            "last_event_id": row["last_event_id"], "created_at": iso_ms(row["created_ms"]),
            "updated_at": iso_ms(row["updated_ms"])}


def checked_url(raw: str) -> str:
    try:
        url = URL(raw)
    except ValueError:
        url = URL()
    if url.scheme not in ("http", "https") or not url.host or any(c.isspace() for c in raw):
        raise Invalid("url must be an absolute http:// or https:// URL", code="invalid_url")
    return raw


async def put_webhook(request: web.Request) -> web.Response:
    """Create (201) or replace (200); a new webhook starts after the newest event, not at the first."""
    admin_only(request)
    webhook_id = path_id(request, "webhook_id", WebhookId)
    body = decode(await request.read(), WebhookIn)
    url = checked_url(body.url)
    events = ["*"] if "*" in body.events else sorted(set(body.events))
    row = await request.app[K.PG].fetchrow(
        f"""INSERT INTO webhooks (webhook_id, url, events, secret, last_event_id)
            VALUES ($1, $2, $3, $4, (SELECT coalesce(max(id), 0) FROM order_events))
            ON CONFLICT (webhook_id) DO UPDATE
              SET url = excluded.url, events = excluded.events, secret = excluded.secret,
                  updated_at = now()
            RETURNING (xmax = 0) AS created, {VIEW}""",
        webhook_id, url, events, body.secret,
    )
    return json(view(row), 201 if row["created"] else 200)


async def list_webhooks(request: web.Request) -> web.Response:
    admin_only(request)
    rows = await request.app[K.PG].fetch(f"SELECT {VIEW} FROM webhooks ORDER BY webhook_id")
    return json({"webhooks": [view(r) for r in rows]})


async def delete_webhook(request: web.Request) -> web.Response:
    admin_only(request)
    webhook_id = path_id(request, "webhook_id", WebhookId)
    if await request.app[K.PG].fetchval(
        "DELETE FROM webhooks WHERE webhook_id = $1 RETURNING true", webhook_id
    ) is None:
        raise NotFound("No such webhook")
    return web.Response(status=204)
