"""The one URL table: every route, its method and its handler, each behind the error edge."""

from __future__ import annotations

from aiohttp import web

from gateway.models import NoteIn, ShipIn
from gateway.web import access, events, handlers, monitoring, reconciliation, webhooks
from gateway.web import appkeys as K
from gateway.web.edge import Handler, edge, no_route

ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/v1/orders", handlers.create_order),
    ("POST", "/v1/orders/batch", handlers.create_batch),
    ("GET", "/v1/orders", handlers.list_orders),
    ("GET", "/v1/orders/{order_id}", handlers.get_order),
    ("POST", "/v1/orders/{order_id}/payment", handlers.pay),
    ("POST", "/v1/orders/{order_id}/cancel", handlers.cancel),
    ("POST", "/v1/orders/{order_id}/ship", handlers.service_transition("ship", ShipIn)),
    ("POST", "/v1/orders/{order_id}/complete", handlers.service_transition("complete", NoteIn)),
    ("POST", "/v1/orders/{order_id}/refund", handlers.service_transition("refund", NoteIn)),
    ("POST", "/v1/orders/{order_id}/refund-confirm", handlers.service_transition("refund_confirm", NoteIn)),
    ("GET", "/v1/inventory/{sku}", handlers.get_inventory),
    ("PUT", "/v1/inventory/{sku}", handlers.put_inventory),
    ("POST", "/v1/inventory/{sku}/adjust", handlers.adjust_inventory),
    ("PUT", "/v1/warehouses/{warehouse_id}", handlers.put_warehouse_route),
    ("PUT", "/v1/sales/{sale_id}", handlers.put_sale_route),
    ("GET", "/v1/sales/{sale_id}", handlers.get_sale),
    ("POST", "/v1/allocations/plan", handlers.allocation_plan),
    ("GET", "/v1/stats", handlers.stats),
    ("GET", "/v1/events", events.list_events),
    ("GET", "/v1/webhooks", webhooks.list_webhooks),
    ("PUT", "/v1/webhooks/{webhook_id}", webhooks.put_webhook),
    ("DELETE", "/v1/webhooks/{webhook_id}", webhooks.delete_webhook),
    ("GET", "/v1/reconciliation", reconciliation.get_reconciliation),
    ("POST", "/v1/reconciliation/repair", reconciliation.post_repair),
    ("GET", "/healthz", handlers.healthz),
    ("GET", "/readyz", handlers.readyz),
    ("GET", "/metrics", monitoring.metrics_page),
]


def setup(app: web.Application) -> None:
    """Every route behind the edge; the order routes' access lines are sampled (gateway/web/access.py)."""
    sample = app[K.SETTINGS].access_log_sample
    for method, path, handler in ROUTES:
        quiet = (method, path) in access.ORDER_ROUTES
        app.router.add_route(method, path, edge(handler, path, method, sample if quiet else None))
    app.router.add_route("*", "/{path:.*}", no_route)  # last: it matches every path
