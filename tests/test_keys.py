"""Redis keys are injective: no two (kind, ids) give the same key, whatever the ids hold."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from gateway import keys
from tests.conftest import auth, order_body

BUILDERS = {
    "stock": keys.stock, "order": keys.order, "holders": keys.holders, "expiry": keys.expiry,
    "events": keys.events, "warehouses": keys.warehouses, "wh_version": keys.wh_version, "sale": keys.sale,
    "sales": keys.sales, "sale_version": keys.sale_version, "sale_user": keys.sale_user,
    "stockstate": keys.stock_state, "ready": keys.ready, "ratelimits": keys.rate_limits, "bucket": keys.bucket,
    "locator": keys.locator, "transfer": keys.transfer, "transfers": keys.transfers, "received": keys.received,
    "hold": keys.hold, "holds": keys.holds, "remote": keys.remote,
}
# Characters that mean something in a key (separator, hash tag, glob, digits of a length
# prefix) or in the kind words, and any other character a user id may hold.
HOSTILE = st.sampled_from(list(":{}*?[]\\0129u_sale") + ["é", "中", "🛒"]) | st.characters(exclude_categories=("Cc", "Cs"))
ids = st.text(HOSTILE, max_size=12)
kinds = st.sampled_from(sorted(keys.KINDS))


@st.composite
def inputs(draw):
    kind = draw(kinds)
    return kind, tuple(draw(ids) for _ in range(keys.KINDS[kind]))


def key_of(kind: str, key_ids: tuple[str, ...]) -> str:
    return BUILDERS[kind](*key_ids)


def test_every_kind_has_a_builder():
    assert set(BUILDERS) == set(keys.KINDS)


@given(inputs(), inputs())
def test_different_inputs_never_give_the_same_key(a, b):
    assert (key_of(*a) == key_of(*b)) == (a == b)


def readings(key: str):
    """Every (kind, ids) whose ids are the key's ``:``-separated pieces, cut anywhere: the
    inputs a naive join of kind and ids would confuse with each other."""
    pieces = key.removeprefix(f"{keys.PREFIX}:{keys.ONE}:").split(":")
    for kind, arity in keys.KINDS.items():
        if pieces[0] != kind or (arity == 0) != (len(pieces) == 1):
            continue
        rest = pieces[1:]
        if arity == 1:
            yield kind, (":".join(rest),)
        elif arity == 2:
            for cut in range(1, len(rest)):
                yield kind, (":".join(rest[:cut]), ":".join(rest[cut:]))
        else:
            yield kind, ()


@given(inputs())
def test_no_other_reading_of_a_key_gives_it(a):
    key = key_of(*a)
    for other in readings(key):
        assert key_of(*other) != key or other == a


@given(inputs())
def test_every_key_parses_back_to_its_kind_and_ids(a):
    kind, key_ids = a
    key = key_of(kind, key_ids)
    assert keys.parse(key) == (kind, "{p0}", key_ids)
    assert keys.parse(key.encode()) == (kind, "{p0}", key_ids)


@given(inputs())
def test_the_partition_tag_is_the_first_hash_tag(a):
    key = key_of(*a)
    start = key.index("{")
    assert key[start:key.index("}", start) + 1] == keys.ONE


@given(inputs())
def test_a_scan_pattern_matches_its_own_kind_only(a):
    kind, key_ids = a
    key = key_of(kind, key_ids)
    for other, arity in keys.KINDS.items():
        if arity:
            prefix = keys.pattern(other).removesuffix("*")
            assert key.startswith(prefix) == (other == kind)


def test_the_reported_collision_is_gone():
    assert keys.sale("kc:u:bob") != keys.sale_user("kc", "bob")
    assert keys.sale_user("a:1", "b") != keys.sale_user("a", "1:b")


def test_single_id_keys_keep_their_format():
    """Existing deployments keep their stock, orders and sales across the upgrade."""
    assert keys.stock("SKU-1") == "oms:{p0}:stock:SKU-1"
    assert keys.order("web:1") == "oms:{p0}:order:web:1"
    assert keys.sale("s11") == "oms:{p0}:sale:s11"
    assert keys.ready() == "oms:{p0}:ready"


def at(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat()


async def test_a_sale_named_like_a_users_counter_leaves_that_counter_alone(gw, redis):
    """Sale ``kc:u:bob`` and user ``bob``'s units in sale ``kc`` used to share one hash: an
    order of bob's in ``kc`` put an expiry on the other sale's rules, and writing that
    sale's rules wiped bob's units, so he could buy past his limit."""
    await gw.set_stock("HOT", {"W1": 10})
    window = {"starts_at": at(-60), "ends_at": at(3600)}
    for sale_id, limit in (("kc", 1), ("kc:u:bob", 5)):
        resp = await gw.client.put(f"/v1/sales/{sale_id}", headers=auth("k-ops"),
                                   json={"skus": ["HOT"], "per_user_limit": limit, **window})
        assert resp.status == 201, await resp.text()

    def in_sale(order_id, sale_id):
        return order_body(order_id, "bob", [{"sku": "HOT", "qty": 1}], sale_id=sale_id)

    assert (await gw.post("/v1/orders", in_sale("kc-1", "kc"))).status == 201
    assert await redis.ttl(keys.sale("kc:u:bob")) == -1  # the other sale's rules live on
    resp = await gw.client.put("/v1/sales/kc:u:bob", headers=auth("k-ops"),
                               json={"skus": ["HOT"], "per_user_limit": 4, **window})
    assert resp.status == 200
    again = await gw.post("/v1/orders", in_sale("kc-2", "kc"))
    assert again.status == 409 and (await again.json())["code"] == "limit_exceeded"
    other = await gw.post("/v1/orders", in_sale("kcub-1", "kc:u:bob"))
    assert other.status == 201
    views = [await (await gw.client.get(f"/v1/sales/{s}", headers=auth("k-ops"))).json() for s in ("kc", "kc:u:bob")]
    assert [v["sold"] for v in views] == [1, 1]
    assert views[1]["per_user_limit"] == 4


def test_one_partition_is_p0_for_everything():
    layout = keys.Partitions()
    assert layout.all() == (keys.ONE,) == ("{p0}",)
    assert {layout.of_sku("a:b"), layout.of_sku("x"), layout.home("o-1"), layout.target(["a", "b:c"], "u")} == {"{p0}"}
    assert layout.mark == "1"  # what ready markers held before partitions existed


@pytest.mark.parametrize("count", [2, 3, 4, 7, 16, 64])
def test_partition_i_lies_in_the_ith_of_n_equal_slot_ranges(count):
    tags = keys.Partitions(count).all()
    assert len(set(tags)) == count
    for i, tag in enumerate(tags):
        slot = key_slot(keys.stock("x", tag).encode())
        assert i * REDIS_CLUSTER_HASH_SLOTS // count <= slot < (i + 1) * REDIS_CLUSTER_HASH_SLOTS // count
        assert keys.parse(keys.order("o:1", tag)) == ("order", tag, ("o:1",))


def test_a_sku_goes_with_its_group_and_an_order_of_two_groups_spans():
    layout = keys.Partitions(16)
    assert layout.of_sku("s11:tv") == layout.of_sku("s11:phone") == layout.of_sku("s11")
    groups = {layout.of_sku(f"g{n}:x") for n in range(200)}
    assert len(groups) == 16  # CRC-32 spreads groups over every partition
    a, b = next((f"g{n}:x", f"g{m}/x") for n in range(50) for m in range(50)
                if layout.of_sku(f"g{n}:x") != layout.of_sku(f"g{m}/x"))
    with pytest.raises(keys.SpansPartitions):
        layout.target([a, b], "u-1")
    assert layout.target([a, a.replace(":x", ":y")], "u-1") == layout.of_sku(a)
    whole = keys.Partitions(16, "")  # no separator: each SKU is its own group
    assert len({whole.of_sku(f"s11:{n}") for n in range(200)}) == 16
    assert keys.Partitions(16, "-").of_sku("s11-tv") == keys.Partitions(16, "-").of_sku("s11-phone")
    assert layout.mark == "16|:" and whole.mark == "16|"


def test_a_hot_skus_buckets_spread_and_each_user_has_one():
    layout = keys.Partitions(16, ":", (("s11:tv", 4), ("s11:phone", 4), ("solo", 2)))
    tv = layout.places("s11:tv")
    assert len(set(tv)) == 4 and tv[0] == layout.of_sku("s11:tv")
    assert [layout.all().index(p) for p in tv] == [(layout.all().index(tv[0]) + 4 * j) % 16 for j in range(4)]
    assert layout.places("s11:phone") == tv  # same group, same buckets: a sale of both fits
    assert layout.common(["s11:tv", "s11:radio"]) == (tv[0],)  # with a plain SKU of the group: its partition
    users = {layout.target(["s11:tv"], f"u-{n}") for n in range(100)}
    assert users == set(tv)  # users spread over the buckets
    assert all(layout.target(["s11:tv", "s11:phone"], f"u-{n}") == layout.target(["s11:tv"], f"u-{n}")
               for n in range(100))
    assert layout.mark == "16|:|s11:phone=4|s11:tv=4|solo=2"
