"""What each route answers, as msgspec types: the OpenAPI document (gateway/web/openapi.py) is built from them.

Handlers build their answers as dicts (the order route cannot afford a Struct per answer);
these types describe those dicts exactly, and ``tests/test_fuzz.py`` holds every answer to
them. A member a handler leaves out when it has nothing to say is ``UNSET`` here, never
``None``: absent and null are different answers. ``forbid_unknown_fields`` makes the schema
say ``additionalProperties: false``, so an undocumented member fails the fuzz test.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType, field

from gateway.lifecycle import CANCEL_REASONS, STATUSES
from gateway.models import (
    BatchIn,
    CancelIn,
    Channel,
    Currency,
    EventType,
    InventoryAdjust,
    InventorySet,
    Item,
    NoteIn,
    OrderId,
    OrderIn,
    PaymentIn,
    PlanIn,
    QuarantineReplayIn,
    SaleId,
    ShipIn,
    ShipTo,
    Sku,
    UserId,
    WarehouseId,
    WarehouseIn,
    WebhookId,
    WebhookIn,
    WebhookReplayIn,
)
from gateway.sales import SaleIn
from gateway.web.docs import ASSETS

Status = Literal[STATUSES]
Strategy = Literal["priority", "region", "max_stock"]
Count = Annotated[int, Meta(ge=0)]
Time = Annotated[dt.datetime, Meta(tz=True)]  # RFC 3339 with its offset: format date-time
Units = int  # may be negative in a drift or conservation report: that is what it reports


class Out(Struct, forbid_unknown_fields=True):
    """A response body: every member it may carry is declared."""


class Allocation(Out):
    sku: str
    warehouse: str
    qty: int


class Order(Out):
    order_id: str
    status: Status
    user_id: str
    channel: Channel
    sale_id: str | None
    items: list[Item]
    allocations: list[Allocation]
    reserved_until: Time
    created_at: Time
    ship_to: ShipTo | UnsetType = UNSET
    currency: str | UnsetType = UNSET
    # every answer but the submit's (the hot path) carries these:
    total: int | None | UnsetType = UNSET  # minor units; null when a line has no price
    payment_id: str | None | UnsetType = UNSET
    cancel_reason: Literal[CANCEL_REASONS] | None | UnsetType = UNSET
    shipment: Shipment | None | UnsetType = UNSET  # null until shipped
    refund: RefundNote | None | UnsetType = UNSET  # null until a refund starts


class Problem(Struct):
    """RFC 9457 problem details; ``code`` is the stable machine-readable reason, ``status`` the HTTP status.

    The optional members are facts some codes add; other members may follow (RFC 9457 allows them).
    """

    type: str
    title: str
    status: int
    code: str
    detail: str
    sku: str | UnsetType = UNSET  # insufficient_stock, price_mismatch
    missing: int | UnsetType = UNSET  # insufficient_stock: units short
    held: int | UnsetType = UNSET  # limit_exceeded: units the user holds in the sale
    limit: int | UnsetType = UNSET  # limit_exceeded
    order_status: Status | UnsetType = UNSET  # illegal_transition
    total: int | UnsetType = UNSET  # amount_mismatch: the order total
    unit_price: int | UnsetType = UNSET  # price_mismatch: the sale's price
    currency: str | UnsetType = UNSET  # price_mismatch: the sale's currency
    warehouse: str | UnsetType = UNSET  # below_reserved
    reserved: int | UnsetType = UNSET  # below_reserved
    backend: Literal["redis", "postgres"] | UnsetType = UNSET  # backend_unavailable


class BatchResult(Out):
    order_id: str | None  # null when the entry had no string order_id
    status: int  # what a single submit would have answered
    # msgspec cannot take a union of untagged Structs; the schema names both (they are in the document anyway)
    body: Annotated[dict[str, Any], Meta(extra_json_schema={"anyOf": [{"$ref": "#/components/schemas/Order"},
                                                                      {"$ref": "#/components/schemas/Problem"}]})]


class BatchOut(Out):
    results: list[BatchResult]


class OrderList(Out):
    orders: list[Order]
    next: str | None  # pass back as ``cursor``; null on the last page


class WarehouseStock(Out):
    on_hand: int
    reserved: int
    available: int
    active: Literal[False] | UnsetType = UNSET  # only an inactive warehouse says so


class InventoryView(Out):
    sku: str
    warehouses: dict[str, WarehouseStock]
    on_hand: int
    reserved: int
    available: int  # in active warehouses only
    sales_per_minute: float | None
    sell_out_eta: Time | None
    forecast: Literal["unavailable"] | UnsetType = UNSET  # PostgreSQL was down: no forecast


class Warehouse(Out):
    warehouse_id: str
    region: str | None
    priority: int
    active: bool


class SaleView(Out):
    sale_id: str
    skus: list[str]
    starts_at: Time
    ends_at: Time
    per_user_limit: int
    sold: Count  # units sold in the sale, live
    remaining: Count  # units of its SKUs available in active warehouses
    channels: list[Channel] | UnsetType = UNSET
    reservation_ttl: int | UnsetType = UNSET
    strategy: Strategy | UnsetType = UNSET
    prices: dict[str, int] | UnsetType = UNSET
    currency: str | UnsetType = UNSET


class Shipment(Out):
    """The ship event's data."""

    carrier: str | UnsetType = UNSET
    tracking: str | UnsetType = UNSET


class RefundNote(Out):
    """The refund event's data (an ops or payments cancel of a paid order gives only its reason)."""

    reason: str | UnsetType = UNSET
    amount: int | UnsetType = UNSET


class WarehouseList(Out):
    warehouses: list[Warehouse]  # by priority, then id


class SaleList(Out):
    sales: list[SaleView]  # latest start first, then by id


class InventoryList(Out):
    skus: list[InventoryView]  # sales_per_minute and sell_out_eta null: GET /v1/inventory/{sku} has them
    next: str | None


class OrderEvent(Out):
    seq: int
    type: EventType
    at: Time
    data: dict[str, Any]


class OrderEvents(Out):
    events: list[OrderEvent]


class Movement(Out):
    id: int
    warehouse: str
    delta: Units
    on_hand_after: int
    reason: str
    order_id: str | None
    at: Time


class MovementList(Out):
    movements: list[Movement]
    next: str | None


class Total(Out):
    currency: str | None  # null: orders without a currency
    count: Count
    amount: int


class Payment(Out):
    order_id: str
    payment_id: str | None
    amount: int | None
    currency: str | None
    at: Time
    user_id: str
    channel: Channel


class PaymentList(Out):
    payments: list[Payment]
    totals: list[Total]  # of everything the filters select, not of the page
    next: str | None


class Refund(Out):
    order_id: str
    amount: int | None  # the refund's own amount, else what was paid
    currency: str | None
    reason: str | None
    at: Time
    status: Literal["refunding", "refunded"]


class RefundList(Out):
    refunds: list[Refund]
    totals: list[Total]
    next: str | None


Page = Annotated[int, Meta(ge=1, le=200)]
Cursor = Annotated[str, Meta(min_length=1, max_length=200)]


class InventoryQuery(Struct, forbid_unknown_fields=True):
    """``GET /v1/inventory``: SKUs in order, from a prefix."""

    prefix: Sku | UnsetType = UNSET
    limit: Page = 50
    cursor: Cursor | UnsetType = UNSET


class MovementQuery(Struct, forbid_unknown_fields=True):
    """``GET /v1/inventory/{sku}/movements``: a warehouse, a time range on ``at``, the page."""

    warehouse: WarehouseId | UnsetType = UNSET
    from_: dt.datetime | UnsetType = field(default=UNSET, name="from")
    to: dt.datetime | UnsetType = UNSET
    limit: Page = 50
    cursor: Cursor | UnsetType = UNSET


class MoneyQuery(Struct, forbid_unknown_fields=True):
    """``GET /v1/payments`` and ``/v1/refunds``: a time range on the event, a currency, the page."""

    from_: dt.datetime | UnsetType = field(default=UNSET, name="from")
    to: dt.datetime | UnsetType = UNSET
    currency: Currency | UnsetType = UNSET
    limit: Page = 50
    cursor: Cursor | UnsetType = UNSET


class OrderExportQuery(Struct, forbid_unknown_fields=True):
    """``GET /v1/exports/orders.csv``: the filters of ``GET /v1/orders``, without the page."""

    user_id: UserId | UnsetType = UNSET
    status: Status | UnsetType = UNSET
    channel: Channel | UnsetType = UNSET
    sale_id: SaleId | UnsetType = UNSET
    from_: dt.datetime | UnsetType = field(default=UNSET, name="from")
    to: dt.datetime | UnsetType = UNSET


class MoneyExportQuery(Struct, forbid_unknown_fields=True):
    from_: dt.datetime | UnsetType = field(default=UNSET, name="from")
    to: dt.datetime | UnsetType = UNSET
    currency: Currency | UnsetType = UNSET


class MovementExportQuery(Struct, forbid_unknown_fields=True):
    """``GET /v1/exports/movements.csv``: one SKU's ledger, or every SKU's."""

    sku: Sku | UnsetType = UNSET
    warehouse: WarehouseId | UnsetType = UNSET
    from_: dt.datetime | UnsetType = field(default=UNSET, name="from")
    to: dt.datetime | UnsetType = UNSET


class Unfilled(Out):
    sku: str
    qty: int  # units missing


class Plan(Out):
    allocations: list[Allocation]
    unfilled: list[Unfilled]


class StatsScope(Out):
    worker: list[str]  # the answering worker's own figures
    # "global" is a keyword: the field is named in the JSON only
    global_: list[str] = field(name="global")


class Stats(Out):
    pid: int  # the worker that answered
    scope: StatsScope
    orders_in_flight: Count
    reserve_batches: Count
    sold_out_answers: Count
    orders_expired: Count
    stream_length: Count
    writer_pending: int | None  # null before the writer group exists
    writer_lag: int | None
    quarantined: int | None  # null while PostgreSQL is down
    window_seconds: int
    skus: list[InventoryView]
    unavailable: list[Literal["postgres"]] | UnsetType = UNSET


class Event(Out):
    id: int
    type: EventType
    order_id: str | None  # null for inventory events
    seq: int | None  # the event's number within its order
    at: Time
    data: dict[str, Any]


class EventList(Out):
    events: list[Event]
    next: int  # pass back as ``after``


class Webhook(Out):
    id: str
    url: str
    events: list[str]
    last_event_id: int
    created_at: Time
    updated_at: Time


class WebhookList(Out):
    webhooks: list[Webhook]


class StockFigures(Out):
    on_hand: Units
    reserved: Units
    available: Units


class Drift(Out):
    sku: str
    warehouse: str
    redis: StockFigures
    postgres: StockFigures


class ConservationBreak(Out):
    sku: str
    warehouse: str
    store: Literal["redis", "postgres"]
    on_hand: Units
    reserved: Units
    available: Units


class HeldEntry(Out):
    id: int
    stream_id: str
    type: str | None
    order_id: str | None
    error: str


class Reconciliation(Out):
    ok: bool
    lagging: bool  # no quiet moment came: in-flight orders may look like drift
    checked: Count
    drift: list[Drift]
    conservation: list[ConservationBreak]
    quarantined: list[HeldEntry]


class Repaired(Out):
    sku: str
    warehouse: str
    before: StockFigures
    after: StockFigures


class Refused(Out):
    sku: str
    warehouse: str
    redis: StockFigures
    postgres: StockFigures
    reason: Literal["lagging", "quarantined", "changed_meanwhile", "postgres_negative_available"]


class RepairOut(Out):
    ok: bool
    lagging: bool
    repaired: list[Repaired]
    refused: list[Refused]


class HotSku(Out):
    sku: str
    available: int  # in active warehouses
    sales_per_minute: float  # over the forecast window
    sell_out_eta: Time | None  # null when sold out


class LiveStats(Out):
    """The data of a ``stats`` event of ``GET /v1/stats/stream``: the gateway's figures (all HTTP
    workers) since the event before; the first event of a stream covers the moment it opened."""

    at: Time
    seconds: float  # the time since the event before, which the counts cover
    accepted: Count  # orders accepted in that time
    accepted_per_s: float
    refused: dict[str, int]  # order refusals by problem code, only codes seen in that time
    refused_per_s: dict[str, float]
    p50_ms: float | None  # POST /v1/orders latency in that time; null without requests
    p99_ms: float | None
    in_flight: Count  # orders queued or being reserved, summed over the workers
    writer_lag: int | None  # entries no writer has read yet; null while Redis is down
    writer_pending: int | None  # entries a writer has read and not yet committed
    stream_length: int | None  # entries not yet written to PostgreSQL
    hot: list[HotSku]  # the forecast window's best sellers (ranked every 5 s); empty while a store is down
    unavailable: list[Literal["postgres", "redis"]] | UnsetType = UNSET  # the stores that failed this tick


class StockEvent(Out):
    """The data of a ``stock`` event of ``GET /v1/stats/stream``; its SSE id is ``id``."""

    id: int  # the feed id (GET /v1/events)
    type: Literal["inventory.low_stock", "inventory.sold_out"]
    sku: str
    available: int
    at: Time


# The data of each event a text/event-stream route sends: no route answers them as a body, so the
# document lists them in its components (gateway/web/openapi.py) for the route's description to name.
STREAMED = [LiveStats, StockEvent]


class StreamQuery(Struct, forbid_unknown_fields=True):
    """``GET /v1/stats/stream``: seconds between stats events."""

    interval: Annotated[float, Meta(ge=0.2, le=10)] = 1.0


class QuarantineEntry(Out):
    id: int
    stream_id: str
    type: str | None
    order_id: str | None
    error: str
    quarantined_at: Time
    fields: dict[str, str]  # the raw entry; bytes that are not UTF-8 shown as U+FFFD


class QuarantineList(Out):
    entries: list[QuarantineEntry]  # open entries, oldest first, the first 1000
    count: Count  # every open entry


class QuarantineReplayed(Out):
    id: int
    stream_id: str


class QuarantineRefused(Out):
    id: int
    stream_id: str
    error: str  # why PostgreSQL refused it again; the entry stays open


class QuarantineReplay(Out):
    replayed: list[QuarantineReplayed]
    refused: list[QuarantineRefused]


class Attempt(Out):
    event_id: int
    attempt: int  # 1 for the first try of this event
    status: int | None  # the receiver's HTTP status; null when none came
    error: str | None  # why none came: refused, timeout, ...
    at: Time
    duration_ms: int


class AttemptList(Out):
    attempts: list[Attempt]  # newest first
    failing: bool  # the newest attempt got no 2xx
    last_event_id: int  # the cursor: delivered (or passed over) through this feed id


class AttemptQuery(Struct, forbid_unknown_fields=True):
    """``GET /v1/webhooks/{webhook_id}/attempts``: how many of the newest attempts."""

    limit: Annotated[int, Meta(ge=1, le=200)] = 50


class Whoami(Out):
    """``GET /v1/whoami``: who the bearer is, for the console to choose what to show."""

    role: Literal["admin", "ops", "payments", "storefront", "user"]
    channel: Channel | UnsetType = UNSET  # a storefront key's
    user_id: UserId | UnsetType = UNSET  # a user token's


class Health(Out):
    status: Literal["ok"]
    worker: int  # the process id of the worker that answered


class Workers(Out):
    """What serve's supervisor reports of one role (gateway/ops/workerstate.py)."""

    expected: Count
    running: Count
    restarts: Count
    restarting: Count
    last_exit: int | None


class Readiness(Out):
    ready: bool  # Redis and the scripts: order intake needs nothing else
    redis: bool
    postgres: bool
    scripts: bool
    degraded: list[str]  # what is missing without stopping intake: "postgres", a worker role
    workers: dict[str, Workers] | UnsetType = UNSET  # under serve only


class OrderQuery(OrderExportQuery, forbid_unknown_fields=True):
    """``GET /v1/orders``: the export's filters and time range on ``created_at``, and the page."""

    limit: Annotated[int, Meta(ge=1, le=200)] = 50
    cursor: Annotated[str, Meta(min_length=1, max_length=200)] | UnsetType = UNSET


class EventQuery(Struct, forbid_unknown_fields=True):
    """``GET /v1/events``: the id to read after and the page size; no other parameter is taken."""

    # empty (``?after=&limit=``, the form the docs show) means the default
    after: Annotated[int, Meta(ge=0, le=2**63 - 1)] | Literal[""] = 0
    limit: Annotated[int, Meta(ge=1, le=1000)] | Literal[""] = 100


# The type of each path parameter, by name: the body field it names.
PATH_TYPES: dict[str, Any] = {"order_id": OrderId, "sku": Sku, "sale_id": SaleId, "warehouse_id": WarehouseId,
                              "webhook_id": WebhookId, "asset": Literal[tuple(ASSETS)],
                              "console_asset": Annotated[str, Meta(min_length=1, max_length=128,
                                                                   pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]*\Z")],
                              "console_page": str}  # a client-side route of the console: any path

ORDER_IN = {"order_id": "web-20261111-000042", "user_id": "u-981", "channel": "web", "sale_id": "s11",
            "items": [{"sku": "SKU-1", "qty": 1}], "ship_to": {"region": "east"}}
ORDER = {"order_id": "web-20261111-000042", "status": "pending_payment", "user_id": "u-981", "channel": "web",
         "sale_id": "s11", "items": [{"sku": "SKU-1", "qty": 1}],
         "allocations": [{"sku": "SKU-1", "warehouse": "W1", "qty": 1}],
         "reserved_until": "2026-11-11T00:15:00.000Z", "created_at": "2026-11-11T00:00:00.123Z",
         "ship_to": {"region": "east"}}
# One example per body type, and for the order's answer; tests/test_openapi.py decodes each with its type.
EXAMPLES: dict[type, Any] = {
    OrderIn: ORDER_IN,
    Order: ORDER,
    BatchIn: {"orders": [ORDER_IN, {**ORDER_IN, "order_id": "web-20261111-000043", "user_id": "u-982"}]},
    BatchOut: {"results": [
        {"order_id": "web-20261111-000042", "status": 201, "body": ORDER},
        {"order_id": "web-20261111-000043", "status": 409, "body": {
            "type": "urn:oms:problem:insufficient_stock", "title": "Not enough stock", "status": 409,
            "code": "insufficient_stock", "detail": "SKU-1: 1 more unit(s) needed", "sku": "SKU-1", "missing": 1}},
    ]},
    PaymentIn: {"payment_id": "pay-7731", "amount": 4990},
    CancelIn: {"reason": "customer"},
    ShipIn: {"carrier": "DHL", "tracking": "JD014600006281"},
    NoteIn: {"reason": "damaged in transit", "amount": 4990},
    InventorySet: {"warehouses": {"W1": 100, "W2": 40}},
    InventoryAdjust: {"warehouse": "W1", "delta": -2, "reason": "damaged"},
    WarehouseIn: {"region": "east", "priority": 1, "active": True},
    SaleIn: {"skus": ["SKU-1"], "starts_at": "2026-11-11T00:00:00Z", "ends_at": "2026-11-12T00:00:00Z",
             "per_user_limit": 2, "channels": ["web", "app"], "prices": {"SKU-1": 4990}, "currency": "EUR"},
    PlanIn: {"items": [{"sku": "SKU-1", "qty": 3}], "ship_to": {"region": "east"}, "strategy": "region"},
    WebhookIn: {"url": "https://erp.example.com/hooks/oms", "events": ["order.paid", "order.cancelled"],
                "secret": "whsec-0123456789abcdef"},
    WebhookReplayIn: {"from_event_id": 1042},
    QuarantineReplayIn: {"ids": [7, 8]},
}
