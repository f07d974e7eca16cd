"""Every Redis key the gateway uses, built here and nowhere else.

All keys one script call touches share the hash tag of their inventory partition, so the
scripts run unchanged on Redis/Valkey Cluster. ``Partitions`` is the one place that maps
SKUs, sales and orders to partitions (``OMS_PARTITIONS``, default 1: everything in ``{p0}``):

- a SKU belongs to the partition of its *group*, the SKU up to its first
  ``OMS_PARTITION_SEP`` (default ``:``; the whole SKU when it has none), by CRC-32 of the
  group modulo the number of partitions: ``s11:tv`` and ``s11:phone`` share a partition;
- a sale belongs to the partition of its SKUs, which must share one;
- an order belongs to the partition of its lines' SKUs, where its record, expiry entry and
  events live; one whose lines span partitions lives in its first line's (the *primary*),
  and each other partition keeps a ``hold`` of its lines (gateway/spans.py); its *home*, by CRC-32 of the order id, holds a
  ``locator`` naming that partition, so a lifecycle call finds it by id alone and the same
  id cannot be taken again in another partition;
- what every script reads (warehouses, versions, the ready marker, rate limits) is kept in
  every partition alike;
- a hot SKU (``OMS_HOT_SKUS=sku=K,...``) keeps its stock in K *buckets*, one hash in each of
  K partitions spread from its group's (``places``); an order of it goes to its user's
  bucket (so a sale's per-user count stays in one place), which pulls units from the others
  when it runs short (gateway/buckets.py).

With more than one partition, partition i's tag is the first ``{p<i>}``, ``{p<i>.1}``,
``{p<i>.2}``, … whose cluster slot lies in the i-th of N equal slot ranges, so a cluster
whose primaries own equal slot ranges (``valkey-cli --cluster create`` makes them so) holds
N/primaries partitions on each.

Key (tag ``{p}``)                       type     holds / lifetime
oms:{p}:stock:<sku>                     hash     ``<wh>`` available, ``r:<wh>`` reserved; forever
oms:{p}:order:<order_id>                hash     payload, allocations, status, times; idempotency TTL
oms:{p}:holders:<sku>                   zset     order ids with a record naming the SKU, scored by the
                                                 record's expiry (ms); trimmed as orders are added
oms:{p}:expiry                          zset     pending order ids scored by reserved_until (ms)
oms:{p}:events                          stream   events for the writers (deleted once written)
oms:{p}:warehouses                      hash     ``<wh>`` -> "priority|region|active"; forever
oms:{p}:wh_version                      string   bumped on every warehouse change
oms:{p}:sale:<sale_id>                  hash     sale rules and live ``sold`` units; forever
oms:{p}:sales                           set      every sale id
oms:{p}:stockstate:<sku>                string   ok, low_stock or sold_out: the worst state announced
                                                 since the SKU was last above the low-stock threshold
oms:{p}:ready                           string   present while Redis holds the whole state (not lost or rebuilding)
oms:{p}:sale_version                    string   bumped on every sale change
oms:{p}:sale_user:<n>:<sale_id>:<user>  hash     ``units`` a user holds in the sale; sale lifetime
oms:{p}:ratelimits                      hash     ``<scope>`` -> "rate,burst" (gateway/ratelimits.py); forever
oms:{p}:locator:<order_id>              string   the partition holding the order, in its home; record lifetime
oms:{p}:transfer:<id>                   string   "to|sku|wh|qty": units taken out of this bucket, not yet given
oms:{p}:transfers                       zset     ids of this bucket's transfers in flight, scored by start (ms)
oms:{p}:received:<id>                   string   a transfer this bucket was given (so it is given once); a day
oms:{p}:hold:<order_id>                 hash     a secondary partition's part of an order over several: payload,
                                                 allocation, held/released/shipped, primary; record lifetime
oms:{p}:holds                           zset     order ids of parts taken here, not yet known committed (ms)
oms:{p}:remote                          zset     orders of this primary whose parts must follow a status (ms)
oms:{p}:bucket:<n>:<scope>:<who>        hash     a token bucket: ``t`` tokens at ``at`` (ms); until full again
oms:restock                             channel  pub/sub: a SKU (or ``*``) that may have units again

Keys are injective: no two (kind, partition, ids) give the same key, whatever the ids hold
(order, sale and SKU ids may contain ``:``; user ids any non-control character, ``{``,
``}``, ``:`` and ``*`` included). The rule that makes it so:

- a key is ``oms:``, the partition tag, ``:``, the kind word, then ``:<id>`` per id;
- kind words are fixed, distinct, hold no ``:``, and each kind has a fixed number of ids
  (``KINDS``), so the text between the tag and the next ``:`` (or the end) names the kind;
- every id but the last is written ``<n>:<id>``, n being its length in UTF-8 bytes in
  decimal; the last id runs to the end of the key, as it is.

So ``parse`` reads any key back into (kind, partition, ids). Single-id keys are written as
they always were; only ``sale_user`` and ``bucket`` (two ids) carry a length. The tag is a ``{...}``
without ``:``, ``{`` or ``}`` inside and comes first, so it is the key's cluster hash tag
whatever braces an id holds. SCAN patterns come from ``pattern(kind)``, never from an id,
so glob characters in ids do not matter.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Iterable

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

PREFIX = "oms"
WRITER_GROUP = "writers"
RESTOCK = f"{PREFIX}:restock"  # a pub/sub channel, not a key: every process hears it (gateway/soldout.py)

# kind word -> number of ids
KINDS = {
    "stock": 1, "order": 1, "holders": 1, "expiry": 0, "events": 0, "warehouses": 0, "wh_version": 0,
    "sale": 1, "sales": 0, "sale_version": 0, "sale_user": 2, "stockstate": 1, "ready": 0,
    "ratelimits": 0, "bucket": 2, "locator": 1, "transfer": 1, "transfers": 0, "received": 1,
    "hold": 1, "holds": 0, "remote": 0,
}
ONE = "{p0}"


class SpansPartitions(ValueError):
    """The SKUs of one order or sale belong to more than one partition."""


@functools.lru_cache(maxsize=64)
def _tags(count: int) -> tuple[str, ...]:
    if count == 1:
        return (ONE,)
    tags = []
    for i in range(count):
        lo, hi = i * REDIS_CLUSTER_HASH_SLOTS // count, (i + 1) * REDIS_CLUSTER_HASH_SLOTS // count
        name, j = f"p{i}", 0
        while not lo <= key_slot(name.encode()) < hi:
            j += 1
            name = f"p{i}.{j}"
        tags.append("{" + name + "}")
    return tuple(tags)


@dataclasses.dataclass(frozen=True)
class Partitions:
    """How SKUs, sales and orders map to inventory partitions (hash tags); see the module text."""

    count: int = 1
    sep: str = ":"
    hot: tuple[tuple[str, int], ...] = ()  # (sku, buckets) of each hot SKU

    @property
    def mark(self) -> str:
        """What the ready markers hold: the layout Redis was filled with ("1" for one partition)."""
        if self.count == 1:
            return "1"
        return f"{self.count}|{self.sep}" + "".join(f"|{sku}={k}" for sku, k in sorted(self.hot))

    def all(self) -> tuple[str, ...]:
        return _tags(self.count)

    def _of(self, text: str) -> str:
        if self.count == 1:
            return ONE
        return _tags(self.count)[zlib.crc32(text.encode()) % self.count]

    def of_sku(self, sku: str) -> str:
        return self._of(sku.split(self.sep, 1)[0] if self.sep else sku)

    def places(self, sku: str) -> tuple[str, ...]:
        """The partitions holding the SKU's stock: its group's, or a hot SKU's K buckets, every
        (count // K)-th partition from its group's."""
        home = self.of_sku(sku)
        k = dict(self.hot).get(sku, 1)
        if k == 1:
            return (home,)
        tags, start = _tags(self.count), _tags(self.count).index(home)
        return tuple(tags[(start + j * (self.count // k)) % self.count] for j in range(k))

    def common(self, skus: Iterable[str]) -> tuple[str, ...]:
        """The partitions holding stock of every one of these SKUs; SpansPartitions when none does."""
        found: tuple[str, ...] | None = None
        for sku in skus:
            places = self.places(sku)
            found = places if found is None else tuple(p for p in found if p in places)
            if not found:
                raise SpansPartitions(sku)
        return found or (ONE,)

    def target(self, skus: Iterable[str], user_id: str) -> str:
        """The partition an order of these SKUs lives in: the one they share, or among buckets the
        user's (CRC-32 of the user id), so a user's orders and sale counts meet in one place."""
        found = self.common(skus)
        return found[0] if len(found) == 1 else found[zlib.crc32(user_id.encode()) % len(found)]

    def home(self, order_id: str) -> str:
        """The partition holding the order id's locator."""
        return self._of(order_id)


SINGLE = Partitions()  # the default layout: one partition, ``{p0}``


def stock(sku: str, p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:stock:{sku}"


def stock_pattern(p: str = "{p0}") -> str:
    """SCAN pattern for every stock hash of a partition."""
    return pattern("stock", p)


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
    return f"{PREFIX}:{p}:sale_user:{len(sale_id.encode())}:{sale_id}:{user_id}"


def rate_limits(p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:ratelimits"


def bucket(scope: str, who: str, p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:bucket:{len(scope.encode())}:{scope}:{who}"


def stock_state(sku: str, p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:stockstate:{sku}"


def transfer(transfer_id: str, p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:transfer:{transfer_id}"


def transfers(p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:transfers"


def received(transfer_id: str, p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:received:{transfer_id}"


def hold(order_id: str, p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:hold:{order_id}"


def holds(p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:holds"


def remote(p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:remote"


def locator(order_id: str, p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:locator:{order_id}"


def ready(p: str = "{p0}") -> str:
    return f"{PREFIX}:{p}:ready"


def pattern(kind: str, p: str = "{p0}") -> str:
    """SCAN pattern matching every key of ``kind`` (one with ids) in a partition, and no other."""
    if not KINDS.get(kind):
        raise ValueError(f"{kind!r} is not a kind with ids")
    return f"{PREFIX}:{p}:{kind}:*"


def all_pattern() -> str:
    """SCAN pattern matching every key the gateway writes (pub/sub channels are not keys)."""
    return f"{PREFIX}:*"


def parse(key: str | bytes) -> tuple[str, str, tuple[str, ...]]:
    """(kind, partition, ids) of a key built here; ``ValueError`` for any other string."""
    raw = key.encode() if isinstance(key, str) else key
    head, sep, rest = raw.partition(b":")
    tag_end = rest.find(b"}")
    if head != PREFIX.encode() or not sep or not rest.startswith(b"{") or tag_end < 2:
        raise ValueError(f"not a gateway key: {key!r}")
    p, rest = rest[:tag_end + 1].decode(), rest[tag_end + 1:]
    if any(c in p[1:-1] for c in ":{"):
        raise ValueError(f"bad partition tag in {key!r}")
    if not rest.startswith(b":"):
        raise ValueError(f"no kind in {key!r}")
    kind_b, sep, rest = rest[1:].partition(b":")
    kind = kind_b.decode()
    arity = KINDS.get(kind)
    if arity is None or (arity == 0) != (not sep):
        raise ValueError(f"unknown kind or arity in {key!r}")
    ids: list[str] = []
    for _ in range(arity - 1):
        n, sep, rest = rest.partition(b":")
        if not sep or not n.isdigit() or (len(n) > 1 and n.startswith(b"0")):
            raise ValueError(f"bad id length in {key!r}")
        size = int(n)
        if len(rest) <= size or rest[size:size + 1] != b":":
            raise ValueError(f"id shorter than its length in {key!r}")
        ids.append(rest[:size].decode())
        rest = rest[size + 1:]
    if arity:
        ids.append(rest.decode())
    return kind, p, tuple(ids)
