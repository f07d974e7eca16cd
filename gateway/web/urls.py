"""The one URL table: every route, its handler, and what the OpenAPI document says of it.

``setup`` registers each route behind the error edge; gateway/web/openapi.py builds the
document from the same rows, so a route cannot exist without its description. A row names
who may call it (``roles``; none: no credentials), its body and query types, what it answers
on success (status: response type, or None for no body) in ``media``, and the problem codes
it adds to those every route of its kind answers (openapi.py, ``COMMON``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from gateway.models import (
    BatchIn,
    CancelIn,
    InventoryAdjust,
    InventorySet,
    NoteIn,
    OrderIn,
    PaymentIn,
    PlanIn,
    QuarantineReplayIn,
    ShipIn,
    WarehouseIn,
    WebhookIn,
    WebhookReplayIn,
)
from gateway.sales import SaleIn
from gateway.web import (
    access,
    console,
    docs,
    events,
    exports,
    handlers,
    health,
    lists,
    live,
    monitoring,
    reconciliation,
    webhooks,
)
from gateway.web import appkeys as K
from gateway.web import schemas as S
from gateway.web.edge import Handler, edge, no_route

OPS = ("ops", "admin")
FULFIL = ("ops", "payments", "admin")
ORDER_REFUSALS = ("forbidden", "idempotency_mismatch", "insufficient_stock", "limit_exceeded", "sale_not_active",
                  "price_mismatch", "sku_not_in_sale", "channel_not_allowed", "duplicate_sku", "overloaded",
                  "not_ready", "rate_limited", "backlog_full", "spans_partitions")
TRANSITION = ("forbidden", "not_found", "illegal_transition", "not_ready")
FINANCE = ("payments", "ops", "admin")
MONEY_CODES = ("forbidden", "unknown_parameter", "invalid_from", "invalid_to", "invalid_currency", "invalid_limit", "invalid_cursor")
EXPORT_MONEY_CODES = ("forbidden", "unknown_parameter", "invalid_from", "invalid_to", "invalid_currency", "exports_busy")
CSV = ("text/csv",)


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    roles: tuple[str, ...] = ()  # who may call it; empty: anyone, without credentials
    body: type | None = None
    body_required: bool = True
    query: type | None = None  # a Struct whose fields are the query parameters
    ok: dict[int, Any] = dataclasses.field(default_factory=lambda: {200: None})
    # of the success answers; a non-JSON route names its type and keeps ok={200: None}, e.g.
    # Route("GET", "/metrics", metrics, "Prometheus metrics", "operations", OPS, media=("text/plain; version=0.0.4",))
    media: tuple[str, ...] = ("application/json",)
    codes: tuple[str, ...] = ()
    description: str = ""


ROUTES: list[Route] = [
    Route("POST", "/v1/orders", handlers.create_order, "Submit an order", "orders",
          ("storefront", "user", "admin"), OrderIn, ok={201: S.Order, 200: S.Order}, codes=ORDER_REFUSALS,
          description="201 when new, 200 when the same order_id with the same payload is replayed. A storefront "
                      "key orders on its own channel, a user token for its own user_id."),
    Route("POST", "/v1/orders/batch", handlers.create_batch, "Submit up to 500 orders, each on its own", "orders",
          ("storefront", "ops", "admin"), BatchIn, ok={200: S.BatchOut}, codes=("forbidden",),
          description="Each entry is an order (OrderIn) validated and reserved on its own; `status` and `body` "
                      "are what a single submit would answer, in request order."),
    Route("GET", "/v1/orders", lists.list_orders, "List orders, newest first", "orders",
          ("user", "storefront", "ops", "admin"), query=S.OrderQuery, ok={200: S.OrderList},
          codes=("forbidden", "invalid_limit", "invalid_user_id", "invalid_status", "invalid_channel",
                 "invalid_sale_id", "invalid_from", "invalid_to", "invalid_cursor"),
          description="A user sees its own orders, a storefront its channel's."),
    Route("GET", "/v1/orders/{order_id}", handlers.get_order, "Read an order", "orders",
          ("user", "storefront", "ops", "payments", "admin"), ok={200: S.Order}, codes=("not_found",),
          description="404, never 403, for an order the caller may not see: ids cannot be probed. Carries "
                      "`total`, `payment_id`, `cancel_reason`, `shipment` and `refund` (null until they apply)."),
    Route("POST", "/v1/orders/{order_id}/payment", handlers.pay, "Record the payment", "transitions",
          ("payments", "admin"), PaymentIn, ok={200: S.Order},
          codes=(*TRANSITION, "reservation_expired", "amount_mismatch", "payment_conflict", "rate_limited")),
    Route("POST", "/v1/orders/{order_id}/cancel", handlers.cancel, "Cancel an order", "transitions",
          ("user", "ops", "payments", "admin"), CancelIn, ok={200: S.Order}, codes=TRANSITION,
          description="A buyer cancels its own unpaid order, with reason `customer`."),
    Route("POST", "/v1/orders/{order_id}/ship", handlers.service_transition("ship", ShipIn), "Ship", "transitions",
          FULFIL, ShipIn, body_required=False, ok={200: S.Order}, codes=TRANSITION),
    Route("POST", "/v1/orders/{order_id}/complete", handlers.service_transition("complete", NoteIn), "Complete",
          "transitions", FULFIL, NoteIn, body_required=False, ok={200: S.Order}, codes=TRANSITION),
    Route("POST", "/v1/orders/{order_id}/refund", handlers.service_transition("refund", NoteIn), "Start a refund",
          "transitions", FULFIL, NoteIn, body_required=False, ok={200: S.Order}, codes=TRANSITION),
    Route("POST", "/v1/orders/{order_id}/refund-confirm", handlers.service_transition("refund_confirm", NoteIn),
          "Confirm a refund", "transitions", FULFIL, NoteIn, body_required=False, ok={200: S.Order},
          codes=TRANSITION),
    Route("GET", "/v1/inventory/{sku}", handlers.get_inventory, "Stock of a SKU per warehouse", "inventory", OPS,
          ok={200: S.InventoryView}, codes=("forbidden", "invalid_sku")),
    Route("PUT", "/v1/inventory/{sku}", handlers.put_inventory, "Set on hand per warehouse", "inventory", OPS,
          InventorySet, ok={200: S.InventoryView}, codes=("forbidden", "invalid_sku", "below_reserved", "not_ready")),
    Route("POST", "/v1/inventory/{sku}/adjust", handlers.adjust_inventory, "Adjust on hand by a delta", "inventory",
          OPS, InventoryAdjust, ok={200: S.InventoryView},
          codes=("forbidden", "invalid_sku", "invalid_delta", "below_reserved", "not_ready")),
    Route("PUT", "/v1/warehouses/{warehouse_id}", handlers.put_warehouse_route, "Create or update a warehouse",
          "inventory", OPS, WarehouseIn, ok={201: S.Warehouse, 200: S.Warehouse},
          codes=("forbidden", "invalid_warehouse_id")),
    Route("PUT", "/v1/sales/{sale_id}", handlers.put_sale_route, "Create or update a sale", "sales", OPS, SaleIn,
          ok={201: S.SaleView, 200: S.SaleView},
          codes=("forbidden", "invalid_sale_id", "invalid_time", "invalid_window", "invalid_prices",
                 "duplicate_sku", "sale_spans_partitions", "sale_moves_partition")),
    Route("GET", "/v1/sales/{sale_id}", handlers.get_sale, "A sale with live sold and remaining units", "sales",
          OPS, ok={200: S.SaleView}, codes=("forbidden", "invalid_sale_id", "not_found")),
    Route("GET", "/v1/warehouses", lists.list_warehouses, "Warehouses by priority, then id", "inventory", OPS,
          ok={200: S.WarehouseList}, codes=("forbidden",),
          description="The table allocation uses, a warehouse that stock named without configuring it included."),
    Route("GET", "/v1/sales", lists.list_sales, "Every sale with live sold and remaining units", "sales", OPS,
          ok={200: S.SaleList}, codes=("forbidden",)),
    Route("GET", "/v1/inventory", lists.list_inventory, "SKUs with stock, in SKU order, with live figures",
          "inventory", OPS, query=S.InventoryQuery, ok={200: S.InventoryList},
          codes=("forbidden", "unknown_parameter", "invalid_limit", "invalid_prefix", "invalid_cursor"),
          description="SKUs PostgreSQL holds stock rows for; the figures are Redis's. No forecast: "
                      "`sales_per_minute` and `sell_out_eta` are null (GET /v1/inventory/{sku} has them)."),
    Route("GET", "/v1/inventory/{sku}/movements", lists.list_movements, "The SKU's stock ledger, newest first",
          "inventory", OPS, query=S.MovementQuery, ok={200: S.MovementList},
          codes=("forbidden", "unknown_parameter", "invalid_sku", "invalid_warehouse", "invalid_from", "invalid_to",
                 "invalid_limit", "invalid_cursor")),
    Route("GET", "/v1/orders/{order_id}/events", lists.order_events, "The order's timeline", "orders",
          ("user", "storefront", "ops", "payments", "admin"), ok={200: S.OrderEvents}, codes=("not_found",),
          description="The order's events as PostgreSQL has them, by seq; the same visibility as the order."),
    Route("GET", "/v1/payments", lists.list_payments, "Payments, newest first, with totals per currency",
          "finance", FINANCE, query=S.MoneyQuery, ok={200: S.PaymentList}, codes=MONEY_CODES,
          description="`totals` cover everything the filters select, not the page."),
    Route("GET", "/v1/refunds", lists.list_refunds, "Refunds, newest first, with totals per currency", "finance",
          FINANCE, query=S.MoneyQuery, ok={200: S.RefundList}, codes=MONEY_CODES,
          description="A refund is the order's refund event; without an amount of its own it gives back what "
                      "was paid. `totals` cover everything the filters select, not the page."),
    Route("GET", "/v1/exports/orders.csv", exports.orders_csv, "Orders as CSV, streamed", "finance",
          ("user", "storefront", "ops", "admin"), query=S.OrderExportQuery, media=CSV,
          codes=("forbidden", "unknown_parameter", "invalid_user_id", "invalid_status", "invalid_channel",
                 "invalid_sale_id", "invalid_from", "invalid_to", "exports_busy"),
          description="The filters and scope of GET /v1/orders (without its page), every matching order."),
    Route("GET", "/v1/exports/payments.csv", exports.payments_csv, "Payments as CSV, streamed", "finance", FINANCE,
          query=S.MoneyExportQuery, media=CSV, codes=EXPORT_MONEY_CODES),
    Route("GET", "/v1/exports/refunds.csv", exports.refunds_csv, "Refunds as CSV, streamed", "finance", FINANCE,
          query=S.MoneyExportQuery, media=CSV, codes=EXPORT_MONEY_CODES),
    Route("GET", "/v1/exports/movements.csv", exports.movements_csv, "The stock ledger as CSV, streamed",
          "finance", OPS, query=S.MovementExportQuery, media=CSV,
          codes=("forbidden", "unknown_parameter", "invalid_sku", "invalid_warehouse", "invalid_from", "invalid_to",
                 "exports_busy")),
    Route("POST", "/v1/allocations/plan", handlers.allocation_plan, "Plan an allocation, reserving nothing",
          "inventory", OPS, PlanIn, ok={200: S.Plan}, codes=("forbidden", "duplicate_sku")),
    Route("GET", "/v1/stats", handlers.stats, "Live counters and the forecast of the SKUs selling most",
          "operations", OPS, ok={200: S.Stats}, codes=("forbidden",)),
    Route("GET", "/v1/events", events.list_events, "The event feed in commit order", "events", OPS,
          query=S.EventQuery, ok={200: S.EventList},
          codes=("forbidden", "unknown_parameter", "invalid_after", "invalid_limit")),
    Route("GET", "/v1/webhooks", webhooks.list_webhooks, "List webhooks", "events", ("admin",),
          ok={200: S.WebhookList}, codes=("forbidden",)),
    Route("PUT", "/v1/webhooks/{webhook_id}", webhooks.put_webhook, "Create or replace a webhook", "events",
          ("admin",), WebhookIn, ok={201: S.Webhook, 200: S.Webhook},
          codes=("forbidden", "invalid_webhook_id", "invalid_url")),
    Route("DELETE", "/v1/webhooks/{webhook_id}", webhooks.delete_webhook, "Delete a webhook", "events", ("admin",),
          ok={204: None}, codes=("forbidden", "invalid_webhook_id", "not_found")),
    Route("GET", "/v1/reconciliation", reconciliation.get_reconciliation, "Redis against PostgreSQL",
          "operations", OPS, ok={200: S.Reconciliation}, codes=("forbidden",)),
    Route("POST", "/v1/reconciliation/repair", reconciliation.post_repair, "Rewrite drifted Redis stock",
          "operations", ("admin",), ok={200: S.RepairOut}, codes=("forbidden", "not_ready")),
    Route("GET", "/v1/stats/stream", live.stats_stream, "Live figures and stock alerts (server-sent events)",
          "operations", OPS, query=S.StreamQuery, media=("text/event-stream",),
          codes=("forbidden", "unknown_parameter", "invalid_interval", "invalid_last_event_id"),
          description="A stream of server-sent events until the client leaves. `event: stats` at once and every "
                      "`interval` seconds, data `#/components/schemas/LiveStats`: `{at, seconds, accepted, accepted_per_s, refused: "
                      "{code: n}, refused_per_s, p50_ms, p99_ms, in_flight, writer_lag, writer_pending, "
                      "stream_length, hot: [{sku, available, sales_per_minute, sell_out_eta}], unavailable?}`, "
                      "the gateway's figures over all HTTP workers since the event before (`unavailable` names "
                      "a store that is down: the stream goes on). `event: stock` for each `inventory.low_stock` "
                      "or `inventory.sold_out` the feed commits after the stream opened, data `#/components/schemas/StockEvent`: "
                      "`{id, type, sku, available, at}`, SSE id the feed id: a client sending it back as "
                      "`Last-Event-ID` resumes after it. 503 when PostgreSQL is down and no `Last-Event-ID` "
                      "says where to start."),
    Route("GET", "/v1/quarantine", health.list_quarantine, "Writer entries PostgreSQL refused", "operations", OPS,
          ok={200: S.QuarantineList}, codes=("forbidden",)),
    Route("POST", "/v1/quarantine/replay", health.replay_quarantine, "Write quarantined entries again",
          "operations", ("admin",), QuarantineReplayIn, body_required=False, ok={200: S.QuarantineReplay},
          codes=("forbidden",),
          description="After a fix: every open entry, oldest first, or those of `ids`. An entry refused again "
                      "stays open with its new error."),
    Route("GET", "/v1/webhooks/{webhook_id}/attempts", health.webhook_attempts, "A webhook's delivery attempts",
          "events", ("admin",), query=S.AttemptQuery, ok={200: S.AttemptList},
          codes=("forbidden", "invalid_webhook_id", "not_found", "unknown_parameter", "invalid_limit")),
    Route("POST", "/v1/webhooks/{webhook_id}/replay", health.replay_webhook, "Deliver again from an event on",
          "events", ("admin",), WebhookReplayIn, ok={200: S.Webhook},
          codes=("forbidden", "invalid_webhook_id", "not_found", "invalid_from_event_id"),
          description="Sets the cursor to `from_event_id` - 1 (back, or forward past a receiver's poison "
                      "event); the sender goes on from there, even with an event in flight."),
    Route("GET", "/v1/whoami", console.whoami, "Who the bearer is", "console",
          ("user", "storefront", "ops", "payments", "admin"), ok={200: S.Whoami},
          description="The role of a service key (and a storefront key's channel) or a user token's user id; "
                      "the console reads it to decide what to show."),
    Route("GET", "/console", console.index, "The ops console", "console", media=("text/html",),
          description="The console's page (no-cache); without a build, a page saying how to build it "
                      "(`make console`). It holds no data: its API calls carry the credentials."),
    Route("GET", "/console/assets/{console_asset}", console.asset, "The console's built files", "console",
          media=tuple(sorted(set(console.ASSET_TYPES.values()))), codes=("not_found",),
          description="Content-hashed names, cached for a year (immutable)."),
    Route("GET", r"/console/{console_page:[\s\S]*}", console.page, "A client-side route of the console", "console",
          media=("text/html",), codes=("not_found",),
          description="The console's page, which routes itself; 404 under `assets/`."),
    Route("GET", "/healthz", handlers.healthz, "Liveness", "operations", ok={200: S.Health}),
    Route("GET", "/readyz", handlers.readyz, "Readiness: Redis, PostgreSQL, scripts", "operations",
          ok={200: S.Readiness, 503: S.Readiness}),
    Route("GET", "/metrics", monitoring.metrics_page, "Prometheus metrics of every process", "operations", OPS,
          media=("text/plain; version=0.0.4",), codes=("forbidden",),
          description="Prometheus text: the figures of every worker of this gateway (README, Metrics)."),
    Route("GET", "/openapi.json", docs.spec, "This document", "operations", ok={200: dict}),
    Route("GET", "/docs", docs.page, "The API reference (Swagger UI)", "operations", media=("text/html",)),
    Route("GET", "/docs/static/{asset}", docs.asset, "The reference page's assets", "operations",
          media=tuple(sorted(set(docs.ASSETS.values()))), codes=("not_found",)),
]


def setup(app: web.Application) -> None:
    """Every route behind the edge; the order routes' access lines are sampled (gateway/web/access.py)."""
    sample = app[K.SETTINGS].access_log_sample
    for r in ROUTES:
        quiet = (r.method, r.path) in access.ORDER_ROUTES
        app.router.add_route(r.method, r.path, edge(r.handler, r.path, r.method, sample if quiet else None))
    app.router.add_route("*", "/{path:.*}", no_route)  # last: it matches every path
