"""Domain errors, each carrying its HTTP status and problem ``code``; rendered once at the edge.

GatewayError
 ├── BadRequest (400)           ├── Unauthorized (401)       ├── Forbidden (403)
 ├── NotFound (404)             ├── PayloadTooLarge (413)    ├── Invalid (422)
 ├── RateLimited (429, Retry-After)
 ├── Conflict (409): IdempotencyMismatch, InsufficientStock, BelowReserved, IllegalTransition,
 │     ReservationExpired, AmountMismatch, PaymentConflict, SaleNotActive, LimitExceeded,
 │     PriceMismatch
 └── Unavailable (503, Retry-After): Overloaded, BackendDown, BacklogFull, NotReady, ExportsBusy
"""

from __future__ import annotations

from typing import Any

# Members RFC 9457 defines (``status`` is the HTTP status code, a number) and our ``code``:
# an error's own facts go in members of their own (``order_status``, ``held``, ``limit``, ...).
RESERVED = frozenset({"type", "title", "status", "detail", "instance", "code"})


class GatewayError(Exception):
    status = 500
    code = "internal"
    title = "Internal error"
    retry_after: int | None = None  # seconds, sent as Retry-After

    def __init__(self, detail: str | None = None, *, code: str | None = None, **extra: Any) -> None:
        """``extra`` becomes members of the problem body; naming a reserved one is a TypeError."""
        if extra and not RESERVED.isdisjoint(extra):
            raise TypeError(f"problem members {sorted(RESERVED.intersection(extra))} are reserved")
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if code is not None:
            self.code = code
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        """The RFC 9457 body; the standard members and ``code`` win over any extra."""
        return {
            **self.extra,
            "type": f"urn:oms:problem:{self.code}",
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        }


class BadRequest(GatewayError):
    status, code, title = 400, "bad_request", "Bad request"


class Unauthorized(GatewayError):
    status, code, title = 401, "unauthorized", "Authentication required"


class Forbidden(GatewayError):
    status, code, title = 403, "forbidden", "Not allowed"


class NotFound(GatewayError):
    status, code, title = 404, "not_found", "Not found"


class MethodNotAllowed(GatewayError):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


class PayloadTooLarge(GatewayError):
    status, code, title = 413, "payload_too_large", "Request body too large"


class Invalid(GatewayError):
    status, code, title = 422, "invalid", "Invalid request"


class Conflict(GatewayError):
    status, code, title = 409, "conflict", "Conflict"


class IdempotencyMismatch(Conflict):
    code, title = "idempotency_mismatch", "Order id already used with another payload"


class InsufficientStock(Conflict):
    code, title = "insufficient_stock", "Not enough stock"

    def __init__(self, sku: str, missing: int) -> None:
        super().__init__(f"{sku}: {missing} more unit(s) needed", sku=sku, missing=missing)


class BelowReserved(Conflict):
    code, title = "below_reserved", "On hand would drop below reserved units"


class IllegalTransition(Conflict):
    code, title = "illegal_transition", "Not allowed from the order's current status"


class ReservationExpired(Conflict):
    code, title = "reservation_expired", "The reservation expired before payment"


class AmountMismatch(Conflict):
    code, title = "amount_mismatch", "Amount differs from the order total"


class PaymentConflict(Conflict):
    code, title = "payment_conflict", "The order was paid with another payment id"


class SaleNotActive(Conflict):
    code, title = "sale_not_active", "The sale is not running"


class LimitExceeded(Conflict):
    code, title = "limit_exceeded", "The per-user limit of this sale would be exceeded"


class PriceMismatch(Conflict):
    code, title = "price_mismatch", "Prices are the sale's to decide"


class RateLimited(GatewayError):
    status, code, title = 429, "rate_limited", "Too many requests; retry after Retry-After seconds"

    def __init__(self, wait_ms: int) -> None:
        super().__init__(f"Rate limited: a token is due in {wait_ms} ms")
        self.retry_after = max(1, -(-wait_ms // 1000))  # whole seconds, rounded up


class Unavailable(GatewayError):
    status, code, title = 503, "unavailable", "Service unavailable"
    retry_after = 1


class Overloaded(Unavailable):
    code, title = "overloaded", "Too many orders in flight, retry shortly"


class BackendDown(Unavailable):
    code, title = "backend_unavailable", "A backing store is unreachable"


class BacklogFull(Unavailable):
    code, title = "backlog_full", "PostgreSQL is behind by OMS_MAX_BACKLOG entries; retry with the same order_id"
    retry_after = 5


class NotReady(Unavailable):
    code, title = "not_ready", "Redis is being rebuilt from PostgreSQL, retry shortly"
    retry_after = 5


class ExportsBusy(Unavailable):
    code, title = "exports_busy", "As many CSV exports as OMS_MAX_EXPORTS are running; retry shortly"
    retry_after = 5
