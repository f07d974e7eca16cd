"""``GET /v1/reconciliation`` and ``POST /v1/reconciliation/repair`` over gateway/ops/reconcile.py."""

from __future__ import annotations

from aiohttp import web

from gateway.errors import Forbidden
from gateway.ops.reconcile import reconcile, repair
from gateway.web import appkeys as K
from gateway.web.common import json, principal


async def get_reconciliation(request: web.Request) -> web.Response:
    principal(request).require("ops")
    return json(await reconcile(request.app[K.REDIS], request.app[K.PG], layout=request.app[K.SETTINGS].layout))


async def post_repair(request: web.Request) -> web.Response:
    if principal(request).role != "admin":
        raise Forbidden("Only admin may repair stock")
    app = request.app
    return json(await repair(app[K.REDIS], app[K.PG], app[K.SCRIPTS], layout=app[K.SETTINGS].layout))
