"""Wire formats shared with the Lua scripts, each defined once on the Python side: script reply
codes, the allocation string, the stock hash's reserved fields and the warehouse encoding.

The scripts (lua/*.lua) write and read these by hand; their headers name the same codes.
The stream's field letters are read in one place only, ``gateway.writer.Rows``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class Reserve(IntEnum):
    """lua/reserve.lua: the batch's first element, then each order's."""

    BACKLOG_FULL = -3  # the batch: the stream holds OMS_MAX_BACKLOG entries
    NOT_READY = -2  # the batch: Redis lost its data or is being rebuilt
    STALE_WAREHOUSES = -1  # the batch: planned with an old warehouse version
    ACCEPTED = 1
    REPLAYED = 2
    MISMATCH = 3  # the order id with another payload
    SHORT = 4  # a line cannot be filled
    SALE_REFUSED = 5
    RATE_LIMITED = 6  # a rate limit (gateway/ratelimits.py): nothing taken
    ABORTED = 7  # the sweep gave up the order's parts in other partitions moments ago


class Hold(IntEnum):
    """lua/hold.lua."""

    NOT_READY = -2
    STALE_WAREHOUSES = -1
    DONE = 1
    MISMATCH = 3
    SHORT = 4
    RELEASED = 5  # a committed order's part, released: the primary's record answers


class Transition(IntEnum):
    """lua/transition.lua."""

    NOT_READY = -2
    NO_ORDER = 0
    DONE = 1
    PAYMENT_CONFLICT = 2
    ILLEGAL = 3
    EXPIRED = 4  # pay too late: the order expired
    NOT_DUE = 5  # expire before reserved_until
    RATE_LIMITED = 6  # pay: the payments:key limit (gateway/ratelimits.py); nothing changed


class Stock(IntEnum):
    """lua/stock.lua."""

    NOT_READY = -2
    BELOW_RESERVED = 0
    DONE = 1


class Move(IntEnum):
    """lua/move.lua."""

    NOT_READY = -2
    DONE = 1


class Repair(IntEnum):
    """lua/repair.lua."""

    CHANGED_MEANWHILE = 0
    DONE = 1
    NEGATIVE_AVAILABLE = 2


# The stock hash of a SKU: "<wh>" holds available units, "r:<wh>" reserved ones.
RESERVED_PREFIX = "r:"


def reserved_field(warehouse: str) -> str:
    return RESERVED_PREFIX + warehouse


# The warehouse table in Redis: "<priority>|<region>|<active 1/0>" (regions hold no "|").
def encode_warehouse(priority: int, region: str | None, active: bool) -> str:
    return f"{priority}|{region or ''}|{int(active)}"


def decode_warehouse(raw: str) -> tuple[int, str | None, bool]:
    priority, region, active = raw.split("|")
    return int(priority), region or None, active == "1"


# An order's allocation: "wh=qty,wh=qty;wh=qty" -- one ";"-group per line, in line order.
def parse_alloc(alloc: str) -> list[list[tuple[str, int]]]:
    """Per line, the (warehouse, units) it takes."""
    lines = []
    for group in alloc.split(";"):
        takes = []
        for part in group.split(","):
            wh, _, qty = part.partition("=")
            takes.append((wh, int(qty)))
        lines.append(takes)
    return lines


def alloc_rows(items: list[dict[str, Any]], alloc: str) -> list[dict[str, Any]]:
    """Allocation rows ``{sku, warehouse, qty}`` of an order's lines."""
    return [{"sku": item["sku"], "warehouse": wh, "qty": qty}
            for item, takes in zip(items, parse_alloc(alloc), strict=True) for wh, qty in takes]
