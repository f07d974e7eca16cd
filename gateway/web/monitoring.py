"""``GET /metrics``: the Prometheus text of every process of this gateway, for ops and admin keys."""

from __future__ import annotations

from aiohttp import web

from gateway import metrics, scrape
from gateway.web import appkeys as K
from gateway.web.common import principal


async def metrics_page(request: web.Request) -> web.Response:
    """This process publishes its tallies first, so what it counted itself is exact."""
    principal(request).require("ops")
    app = request.app
    app[K.PUBLISHER].publish()
    settings = app[K.SETTINGS]
    extra = await scrape.global_families(app[K.REDIS], app[K.PG], hot_skus=settings.metrics_hot_skus,
                                         window=settings.forecast_window, layout=settings.layout)
    return web.Response(body=metrics.exposition(extra), headers={"Content-Type": metrics.CONTENT_TYPE})
