"""Every Redis key the gateway uses, built here and nowhere else.

All keys one script call touches share the hash tag of their inventory partition, so the
scripts run unchanged on Redis/Valkey Cluster. Today there is one partition, ``{p0}``:
``partition()`` is the single place that maps orders and SKUs to a partition when the
stock is split across slots.

Key (tag ``{p}``)                  type     holds / lifetime
oms:{p}:stock:<sku>                hash     ``<wh>`` available, ``r:<wh>`` reserved; forever
oms:{p}:order:<order_id>           hash     payload, allocations, status, times; idempotency TTL
oms:{p}:holders:<sku>              zset     order ids with a record naming the SKU, scored by the
                                            record's expiry (ms); trimmed as orders are added
oms:{p}:expiry                     zset     pending order ids scored by reserved_until (ms)
oms:{p}:events                     stream   events for the writers (deleted once written)
oms:{p}:warehouses                 hash     ``<wh>`` -> "priority|region|active"; forever
oms:{p}:wh_version                 string   bumped on every warehouse change
oms:{p}:sale:<sale_id>             hash     sale rules and live ``sold`` units; forever
oms:{p}:sales                      set      every sale id
oms:{p}:stockstate:<sku>           string   ok, low_stock or sold_out: the last state announced
oms:{p}:ready                      string   present while Redis holds the whole state (not lost or rebuilding)
oms:{p}:sale_version               string   bumped on every sale change
oms:{p}:sale:<sale_id>:u:<user>    hash     ``units`` a user holds in the sale; sale lifetime
oms:restock                        channel  pub/sub: a SKU (or ``*``) that may have units again
"""

from __future__ import annotations

PREFIX = "oms"
WRITER_GROUP = "writers"
RESTOCK = f"{PREFIX}:restock"  # a pub/sub channel, not a key: every process hears it (gateway/soldout.py)


def partition(_order_or_sku: str = "") -> str:
    return "{p0}"


def stock(sku: str, p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:stock:{sku}"


def stock_pattern(p: str = "{p0}") -> str:
    """SCAN pattern for every stock hash of a partition (SKUs hold no glob characters)."""
    return stock("*", p)


def order(order_id: str, p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:order:{order_id}"


def holders(sku: str, p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:holders:{sku}"


def expiry(p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:expiry"


def events(p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:events"


def warehouses(p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:warehouses"


def wh_version(p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:wh_version"


def sale(sale_id: str, p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:sale:{sale_id}"


def sales(p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:sales"


def sale_version(p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:sale_version"


def sale_user(sale_id: str, user_id: str, p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:sale:{sale_id}:u:{user_id}"


def stock_state(sku: str, p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:stockstate:{sku}"


def ready(p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:ready"


def all_partitions() -> list[str]:
    return ["{p0}"]
