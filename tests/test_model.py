"""Model-based test: a Hypothesis state machine drives the real gateway and a Python model side by side.

Rules submit orders (several users and SKUs, multi-line, some in a sale with a per-user
limit and a 1 s reservation), race buyers for the last units, replay orders, pay, cancel,
expire, restock, adjust, ship, complete, refund and confirm refunds across three
warehouses. Every answer is checked against what the model predicts; after every step the
stock views, the no-oversell bound and the sale limits are; after every run PostgreSQL
(statuses, events, allocations, on hand) and the reconciliation report are.

Hypothesis runs rules synchronously, so the machine runs in a worker thread and hands each
step's coroutine to the test's event loop, where the in-process gateway serves it. The
expirer's background task is stopped: orders expire only when a rule calls
``expire_due()`` or pays too late, so the model knows when expiry may happen.
``MODEL_EXAMPLES`` and ``MODEL_STEPS`` run more; ``MODEL_NOSHRINK=1`` skips shrinking.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import dataclasses
import datetime as dt
import functools
import itertools
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, note
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from allocator.policy import in_order, plan
from gateway import keys, spans
from gateway.web import appkeys as K
from tests.conftest import as_user, auth, order_body

EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", "20"))
STEPS = int(os.environ.get("MODEL_STEPS", "50"))
# MODEL_NOSHRINK=1 reports the first failing run as found: quicker while a failure is being looked at
PHASES = [p for p in Phase if not (p is Phase.shrink and os.environ.get("MODEL_NOSHRINK"))]
WAREHOUSES = {"W1": 2, "W2": 1, "W3": 3}  # id -> priority, so preference is not id order
PREFERENCE = sorted(WAREHOUSES, key=lambda w: (WAREHOUSES[w], w))
SKUS = ("A", "B", "C")  # prefixed per run; A and B are in the sale
SALE_SKUS = ("A", "B")
PRICES = {"A": 300, "B": 500, "C": 700}
USERS = ("u1", "u2", "u3")
LIMIT = 3  # units per user in the sale
SALE_TTL = 1  # seconds: sale orders expire within a run
DEFAULT_TTL = 900
NAPS = 1  # waits for a sale reservation to lapse, per run (each up to SALE_TTL)
SLACK_MS = 5  # clock reads around a call: closer to the deadline than this, either outcome is right
HOLDING = ("pending_payment", "paid")
SOLD = ("paid", "shipped", "completed")

# The lifecycle as DESIGN.md draws it: action -> {from: (to, stock effect)}.
LIFECYCLE = {
    "pay": {"pending_payment": ("paid", "none")},
    "cancel": {"pending_payment": ("cancelled", "release"), "paid": ("refunding", "release")},
    "ship": {"paid": ("shipped", "ship")},
    "complete": {"shipped": ("completed", "none")},
    "refund": {"paid": ("refunding", "release"), "shipped": ("refunding", "none"),
               "completed": ("refunding", "none")},
    "refund_confirm": {"refunding": ("refunded", "none")},
}
# Where an action leads: repeating it there answers 200 with the order as it is.
DONE = {action: {to for to, _ in moves.values()} for action, moves in LIFECYCLE.items()}
ENDPOINT = {"pay": "payment", "cancel": "cancel", "ship": "ship", "complete": "complete",
            "refund": "refund", "refund_confirm": "refund-confirm"}
_runs = itertools.count()


def now_ms() -> int:
    return int(time.time() * 1000)


def ms(stamp: str) -> int:
    return round(dt.datetime.fromisoformat(stamp).timestamp() * 1000)


def allocation_of(view: dict[str, Any]) -> dict[str, dict[str, int]]:
    """sku -> warehouse -> units, from an order view's allocation rows (each row once)."""
    alloc: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for row in view["allocations"]:
        assert row["warehouse"] not in alloc[row["sku"]], view
        alloc[row["sku"]][row["warehouse"]] = row["qty"]
    return dict(alloc)


@dataclasses.dataclass
class Spec:
    """One submission: what the client sends and what the gateway should make of it."""

    body: dict[str, Any]
    user: str
    sale: bool
    lines: list[tuple[str, int]]
    headers: dict[str, str]
    items: list[dict[str, Any]]  # as the gateway answers them: sale lines carry the sale's price
    total: int | None

    @property
    def order_id(self) -> str:
        return self.body["order_id"]


@dataclasses.dataclass
class Order:
    spec: Spec
    view: dict[str, Any]  # the 201 answer: allocations and times stay as they were
    alloc: dict[str, dict[str, int]]
    until: int
    status: str = "pending_payment"
    reason: str | None = None
    payment_id: str | None = None
    shipment: dict[str, Any] | None = None  # the ship event's data
    refund: dict[str, Any] | None = None  # the data of the event that started the refund
    events: int = 1
    counts: bool = True  # its units count against the user's sale limit

    @property
    def order_id(self) -> str:
        return self.spec.order_id


def on_loop(method: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """A coroutine method as a plain one: Hypothesis' thread runs it on the gateway's loop."""

    @functools.wraps(method)
    def run(self: GatewayMachine, *args: Any, **kwargs: Any) -> Any:
        return self.run(method(self, *args, **kwargs))

    return run


# Choices among what the model holds are drawn as plain integers, whatever the state, and
# mapped onto it in the rule: the gateway may decide races and deadlines differently when
# Hypothesis replays a run, and draws that depended on the state would then differ too
# (FlakyStrategyDefinition). For the same reason rules return early instead of having
# preconditions on such state.
INDEX = st.integers(0, 255)
MOSTLY = st.integers(0, 3)  # 0: any, else prefer what fits


def chosen(items: list[Any], index: int) -> Any:
    return items[index % len(items)]


def pick(orders: dict[str, Order], wanted: Callable[[Order], bool], mostly: int, index: int) -> Order:
    """An order, mostly one that ``wanted`` (so transitions happen), sometimes any (so illegal ones do)."""
    fitting = sorted(oid for oid, o in orders.items() if wanted(o))
    o = orders[chosen(fitting if fitting and mostly else sorted(orders), index)]
    note(f"order {o.order_id} ({o.status})")
    return o


class GatewayMachine(RuleBasedStateMachine):
    def __init__(self, loop: asyncio.AbstractEventLoop, gw: Any, pg: Any) -> None:
        super().__init__()
        self.loop, self.gw, self.pg = loop, gw, pg
        self.ns = f"m{next(_runs)}"
        # the sale's SKUs share a group (one partition, as a sale must); C is a group of its own,
        # so with several partitions (make test-cluster) an order of C and A may span two
        self.skus = {s: f"{self.ns}:{s}" if s in SALE_SKUS else f"{self.ns}-{s}" for s in SKUS}
        self.users = {u: f"{self.ns}-{u}" for u in USERS}
        self.sale_id = f"{self.ns}-sale"
        self.strategy = "priority"
        self.on_hand: collections.Counter[tuple[str, str]] = collections.Counter()
        self.reserved: collections.Counter[tuple[str, str]] = collections.Counter()
        self.supplied: collections.Counter[str] = collections.Counter()  # net units put on hand by ops
        self.shipped: collections.Counter[str] = collections.Counter()
        self.orders: dict[str, Order] = {}
        self.refused: dict[str, Spec] = {}
        self.ids = itertools.count()
        self.naps = 0
        self.ready = False

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    async def request(self, method: str, path: str, body: Any = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any]:
        resp = await self.gw.client.request(method, path, json=body, headers=headers or auth("k-ops"))
        return resp.status, await resp.json()

    # --- the model ---------------------------------------------------------------------------

    def available(self, sku: str, wh: str) -> int:
        return self.on_hand[(sku, wh)] - self.reserved[(sku, wh)]

    def availability(self) -> dict[tuple[str, str], int]:
        return {(sku, wh): self.available(sku, wh) for sku in self.skus.values() for wh in WAREHOUSES}

    def held(self, user: str) -> int:
        return sum(q for o in self.orders.values() if o.spec.sale and o.counts and o.spec.user == user
                   for _, q in o.spec.lines)

    def view(self, o: Order, *, submit: bool = False) -> dict[str, Any]:
        """The order as the gateway answers it; a read or transition adds what happened since
        the submit, a submit (a replay) answers without it."""
        base = {**o.view, "status": o.status}
        if submit:
            return base
        return {**base, "total": o.spec.total, "payment_id": o.payment_id, "cancel_reason": o.reason,
                "shipment": o.shipment, "refund": o.refund}

    def spec(self, user: str, lines: list[tuple[str, int]], *, sale: bool, priced: bool, via: str) -> Spec:
        user_id = self.users[user]
        sent = [{"sku": self.skus[s], "qty": q, **({"unit_price": PRICES[s]} if priced and not sale else {})}
                for s, q in lines]
        items = [{"sku": self.skus[s], "qty": q, **({"unit_price": PRICES[s]} if priced or sale else {})}
                 for s, q in lines]
        extra = {"sale_id": self.sale_id} if sale else {}
        body = order_body(f"{self.ns}-o{next(self.ids)}", user_id, sent, **extra)
        headers = as_user(user_id) if via == "user" else auth("k-web")
        total = sum(PRICES[s] * q for s, q in lines) if priced or sale else None
        return Spec(body, user_id, sale, [(self.skus[s], q) for s, q in lines], headers, items, total)

    def refusals(self, spec: Spec) -> list[tuple[str, dict[str, Any]]]:
        """The refusals the gateway may answer, empty when it must accept.

        The reserve script checks the sale's limit, then stock, and names the first short
        line; but a process answers an order for a SKU with nothing left at all from its
        sold-out memory before any script runs, naming that SKU, so either is right. An order
        across partitions (make test-cluster) names the short line of the part that refused
        first, which may be any.
        """
        short = []
        for sku, qty in spec.lines:
            have = sum(self.available(sku, wh) for wh in WAREHOUSES)
            if have < qty:
                short.append((sku, qty, have))
        sold_out = [("insufficient_stock", {"sku": sku, "missing": qty}) for sku, qty, have in short if not have]
        if spec.sale:
            held, units = self.held(spec.user), sum(q for _, q in spec.lines)
            if held + units > LIMIT:
                return [("limit_exceeded", {"held": held, "limit": LIMIT}), *sold_out]
        named = short if self.spans(spec) else short[:1]
        return [("insufficient_stock", {"sku": sku, "missing": qty - have}) for sku, qty, have in named] + sold_out

    def spans(self, spec: Spec) -> bool:
        """Whether the order's lines span inventory partitions (gateway/spans.py)."""
        try:
            self.gw.layout.target([sku for sku, _ in spec.lines], spec.user)
        except keys.SpansPartitions:
            return True
        return False

    def planned(self, spec: Spec) -> dict[str, dict[str, int]]:
        """The allocation the reference split policy makes from the model's stock; across
        partitions it plans the primary's lines, and each hold's line takes warehouse by
        warehouse in preference order."""
        lines = spec.lines
        if self.spans(spec):
            primary = next(iter(spans.parts_of(self.gw.layout, [sku for sku, _ in lines], spec.user).values()))
            lines = [lines[j] for j in primary]
        cands = [[(wh, self.available(sku, wh)) for wh in PREFERENCE] for sku, _ in lines]
        max_stock = spec.sale and self.strategy == "max_stock"
        taken, short = plan([q for _, q in lines], cands, max_stock)
        assert short is None and taken is not None
        found = {sku: dict(takes) for (sku, _), takes in zip(lines, taken, strict=True)}
        for sku, qty in spec.lines:
            if sku not in found:
                found[sku] = dict(in_order(qty, [(wh, self.available(sku, wh)) for wh in PREFERENCE]))
        return found

    def accept(self, spec: Spec, status: int, view: Any, before: dict[tuple[str, str], int],
               expected: dict[str, dict[str, int]] | None = None) -> None:
        """Check a 201 and book it: the allocation must be legal against ``before`` (and ``expected``)."""
        assert status == 201, (status, view)
        assert view["order_id"] == spec.order_id and view["status"] == "pending_payment", view
        assert (view["user_id"], view["channel"], view["sale_id"]) == (
            spec.user, "web", self.sale_id if spec.sale else None), view
        assert view["items"] == spec.items, view
        until = ms(view["reserved_until"])
        assert until - ms(view["created_at"]) == (SALE_TTL if spec.sale else DEFAULT_TTL) * 1000, view
        alloc = allocation_of(view)
        assert set(alloc) == {sku for sku, _ in spec.lines}, view  # all or nothing
        for sku, qty in spec.lines:
            assert sum(alloc[sku].values()) == qty, view
            for wh, q in alloc[sku].items():
                assert wh in WAREHOUSES and 0 < q <= before[(sku, wh)], (view, before)
        if expected is not None:
            assert alloc == expected, (alloc, expected)
        for sku, takes in alloc.items():
            for wh, q in takes.items():
                self.reserved[(sku, wh)] += q
        self.orders[spec.order_id] = Order(spec, view, alloc, until)
        self.refused.pop(spec.order_id, None)

    def move(self, o: Order, target: str, effect: str, reason: str | None = None) -> None:
        for sku, takes in o.alloc.items():
            for wh, q in takes.items():
                if effect in ("release", "ship"):
                    self.reserved[(sku, wh)] -= q
                if effect == "ship":
                    self.on_hand[(sku, wh)] -= q
                    self.shipped[sku] += q
        if effect == "release" and o.spec.sale:
            o.counts = False  # cancelled or expired units count again as unused
        o.status, o.events = target, o.events + 1
        if target == "cancelled":
            o.reason = reason

    # --- set-up ------------------------------------------------------------------------------

    @initialize(levels=st.fixed_dictionaries({s: st.dictionaries(st.sampled_from(sorted(WAREHOUSES)),
                                                                 st.integers(0, 4), min_size=1, max_size=3) for s in SKUS}),
                strategy=st.sampled_from(["priority", "max_stock"]))
    @on_loop
    async def small_stock_and_a_sale(self, levels: dict[str, dict[str, int]], strategy: str) -> None:
        self.strategy = strategy
        for s, warehouses in levels.items():
            await self.gw.set_stock(self.skus[s], warehouses)
            for wh, n in warehouses.items():
                self.on_hand[(self.skus[s], wh)] = n
                self.supplied[self.skus[s]] += n
        now = dt.datetime.now(dt.UTC)
        sale = {"skus": [self.skus[s] for s in SALE_SKUS], "per_user_limit": LIMIT, "reservation_ttl": SALE_TTL,
                "starts_at": (now - dt.timedelta(minutes=1)).isoformat(),
                "ends_at": (now + dt.timedelta(hours=1)).isoformat(), "strategy": strategy,
                "prices": {self.skus[s]: PRICES[s] for s in SALE_SKUS}}
        status, answer = await self.request("PUT", f"/v1/sales/{self.sale_id}", sale)
        assert status == 201, answer
        self.ready = True

    # --- submits and replays -----------------------------------------------------------------

    async def memory_caught_up(self) -> None:
        """Wait until the gateway's sold-out memory keeps no SKU the model sees units of.

        Units that came back (a cancel, an expiry, a restock, a hold given back) publish the
        SKU, and the memory forgets it when the message arrives (gateway/soldout.py). On a
        cluster the message crosses the cluster bus to the subscriber's node, a moment after
        the answer that gave the units back; an order sent in that moment may be refused from
        the memory. A flag also lapses by itself after its ttl, which no message marks, hence
        the short waits."""
        memory = self.gw.app[K.COALESCER].soldout

        def stale() -> list[str]:
            return [sku for sku in self.skus.values()
                    if memory.remembers(sku) and sum(self.available(sku, wh) for wh in WAREHOUSES)]

        async with asyncio.timeout(5):
            while stale():
                memory.forgot.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(memory.forgot.wait(), 0.1)

    async def submit(self, spec: Spec) -> None:
        """One submit alone: the model predicts the answer exactly, allocation included."""
        await self.memory_caught_up()
        expected = self.refusals(spec)
        before = self.availability()
        status, answer = await self.request("POST", "/v1/orders", spec.body, spec.headers)
        if not expected:
            self.accept(spec, status, answer, before, self.planned(spec))
            return
        assert status == 409, (expected, status, answer)
        assert any(answer["code"] == code and {k: answer.get(k) for k in facts} == facts
                   for code, facts in expected), (expected, answer)
        self.refused[spec.order_id] = spec

    @rule(user=st.sampled_from(USERS),
          lines=st.lists(st.tuples(st.sampled_from(SKUS), st.integers(1, 2)), min_size=1, max_size=3,
                         unique_by=lambda line: line[0]),
          priced=st.booleans(), via=st.sampled_from(["user", "storefront"]))
    @on_loop
    async def submit_order(self, user: str, lines: list[tuple[str, int]], priced: bool, via: str) -> None:
        await self.submit(self.spec(user, lines, sale=False, priced=priced, via=via))

    @rule(user=st.sampled_from(USERS),
          lines=st.lists(st.tuples(st.sampled_from(SALE_SKUS), st.integers(1, 2)), min_size=1, max_size=2,
                         unique_by=lambda line: line[0]),
          via=st.sampled_from(["user", "storefront"]))
    @on_loop
    async def submit_in_sale(self, user: str, lines: list[tuple[str, int]], via: str) -> None:
        await self.submit(self.spec(user, lines, sale=True, priced=False, via=via))

    @rule(mostly=MOSTLY, index=INDEX)
    def retry_refused_order(self, mostly: int, index: int) -> None:
        """A refused order id holds nothing: the same payload later is a new submit (mostly one
        that fits now)."""
        if not self.refused:
            return
        fits = sorted(oid for oid, spec in self.refused.items() if not self.refusals(spec))
        oid = chosen(fits if fits and mostly else sorted(self.refused), index)
        note(f"retry {oid}")
        self.run(self.submit(self.refused[oid]))

    @rule(sku=st.sampled_from(SKUS),
          buyers=st.lists(st.tuples(st.sampled_from(USERS), st.integers(1, 2), st.booleans()), min_size=2,
                          max_size=4),
          duplicate=st.booleans(), replay_index=st.none() | INDEX)
    def buyers_race_for_the_last_units(self, sku: str, buyers: list[tuple[str, int, bool]],
                                       duplicate: bool, replay_index: int | None) -> None:
        replay = None
        if self.orders and replay_index is not None:
            replay = self.orders[chosen(sorted(self.orders), replay_index)]
            note(f"replay {replay.order_id} among them")
        self.run(self.race(sku, buyers, duplicate, replay))

    async def race(self, sku: str, buyers: list[tuple[str, int, bool]], duplicate: bool,
                   replay: Order | None) -> None:
        """Concurrent submits (one sent twice, a replay among them): the model cannot know their
        order, so it checks the outcome is one some order of them gives."""
        specs = [self.spec(user, [(sku, qty)], sale=sale and sku in SALE_SKUS, priced=False, via="user")
                 for user, qty, sale in buyers]
        sends = specs + ([specs[0]] if duplicate else []) + ([replay.spec] if replay else [])
        await self.memory_caught_up()
        before = self.availability()
        answers = await asyncio.gather(*(self.request("POST", "/v1/orders", s.body, s.headers) for s in sends))
        if replay:
            assert answers[-1] == (200, self.view(replay, submit=True)), answers[-1]
        results = list(answers[:len(specs)])
        if duplicate:
            (s1, a1), (s2, a2) = results[0], answers[len(specs)]
            if 201 in (s1, s2):
                assert sorted((s1, s2)) == [200, 201] and a1 == a2, (results[0], answers[len(specs)])
                results[0] = (201, a1)
            else:
                assert s1 == s2 == 409 and a2["code"] in ("insufficient_stock", "limit_exceeded"), (a1, a2)
        refused = []
        for spec, (status, answer) in zip(specs, results, strict=True):
            if status == 201:
                self.accept(spec, status, answer, before)
            else:
                refused.append((spec, status, answer))
                self.refused[spec.order_id] = spec
        for (s, wh), n in self.availability().items():
            assert n >= 0, (s, wh, n, before)  # the winners together took no more than there was
        for spec, status, answer in refused:  # each loser was refused for a reason true when it ran
            (line_sku, qty), = spec.lines
            assert status == 409, answer
            if answer["code"] == "limit_exceeded":
                assert spec.sale and self.held(spec.user) + qty > LIMIT and answer["limit"] == LIMIT, answer
            else:
                assert answer["code"] == "insufficient_stock", answer
                assert sum(self.available(line_sku, wh) for wh in WAREHOUSES) < qty, answer

    @rule(index=INDEX, how=st.sampled_from(["same", "storefront", "other payload"]))
    def replay_order(self, index: int, how: str) -> None:
        if self.orders:
            self.run(self.replay(pick(self.orders, bool, 0, index), how))

    async def replay(self, o: Order, how: str) -> None:
        """Same payload (from the owner or its storefront): 200 and the order as it is; another: 409."""
        if how == "other payload":
            body = copy.deepcopy(o.spec.body)
            body["items"][0]["qty"] += 1
            status, answer = await self.request("POST", "/v1/orders", body, o.spec.headers)
            assert status == 409 and answer["code"] == "idempotency_mismatch", answer
            return
        status, answer = await self.request("POST", "/v1/orders", o.spec.body,
                                            o.spec.headers if how == "same" else auth("k-web"))
        assert (status, answer) == (200, self.view(o, submit=True)), (status, answer)

    # --- transitions -------------------------------------------------------------------------

    async def transition(self, o: Order, action: str, body: dict[str, Any], headers: dict[str, str], *,
                         owner: bool = False, reason: str | None = None) -> None:
        """Drive ``action``: 200 to where the lifecycle leads, 200 unchanged if already there, else 409."""
        status, answer = await self.request("POST", f"/v1/orders/{o.order_id}/{ENDPOINT[action]}", body, headers)
        move = LIFECYCLE[action].get(o.status)
        if owner and o.status != "pending_payment":
            move = None  # a buyer may only cancel what is not paid yet
        if o.status in DONE[action]:
            assert (status, answer) == (200, self.view(o)), (action, o.status, status, answer)
        elif move is None:
            assert status == 409 and answer["code"] == "illegal_transition", (action, o.status, answer)
            assert answer["order_status"] == o.status, answer
        else:
            target, effect = move
            assert status == 200 and answer["status"] == target, (action, o.status, status, answer)
            self.move(o, target, effect, reason)
            if action == "ship":
                o.shipment = body
            if target == "refunding":
                o.refund = body
            assert answer == self.view(o), answer

    async def payment(self, o: Order, amount: str, pid: str) -> None:
        payment_id = f"{o.order_id}-{pid}"
        if o.spec.total is None:
            paid = 12345  # an order without prices takes any amount
        else:
            paid = o.spec.total + (1 if amount == "wrong" else 0)
        t0 = now_ms()
        status, answer = await self.request("POST", f"/v1/orders/{o.order_id}/payment",
                                            {"payment_id": payment_id, "amount": paid}, auth("k-pay"))
        t1 = now_ms()
        if o.spec.total is not None and paid != o.spec.total:
            assert status == 409 and answer["code"] == "amount_mismatch" and answer["total"] == o.spec.total, answer
        elif o.status == "cancelled" and o.reason == "expired":
            assert status == 409 and answer["code"] == "reservation_expired", answer
        elif o.status == "paid":
            if payment_id == o.payment_id:
                assert (status, answer) == (200, self.view(o)), answer
            else:
                assert status == 409 and answer["code"] == "payment_conflict", answer
        elif o.status == "pending_payment":
            late = o.until <= t0 - SLACK_MS
            in_time = o.until > t1 + SLACK_MS
            if status == 200 and not late:
                self.move(o, "paid", "none")
                o.payment_id = payment_id
                assert answer == self.view(o), answer
            else:
                assert not in_time and status == 409 and answer["code"] == "reservation_expired", (o.until, t0, answer)
                self.move(o, "cancelled", "release", "expired")  # the late payment expired it on the spot
        else:
            assert status == 409 and answer["code"] == "illegal_transition", answer
            assert answer["order_status"] == o.status, answer

    @rule(who=st.sampled_from(["owner", "owner", "k-ops", "k-pay", "stranger"]),
          reason=st.sampled_from(["ops", "payment_failed", "customer"]), mostly=MOSTLY, index=INDEX,
          other=st.integers(0, 1))
    def cancel(self, who: str, reason: str, mostly: int, index: int, other: int) -> None:
        """The owner (reason customer, pending only), ops or payments cancel; another user sees nothing."""
        if not self.orders:
            return
        if who == "stranger":
            o = pick(self.orders, bool, 0, index)
            self.run(self.stranger(o, chosen([u for u in self.users.values() if u != o.spec.user], other)))
        elif who == "owner":
            o = pick(self.orders, lambda o: o.status == "pending_payment", mostly, index)
            self.run(self.transition(o, "cancel", {"reason": "customer"}, as_user(o.spec.user), owner=True,
                                     reason="customer"))
        else:
            o = pick(self.orders, lambda o: o.status in LIFECYCLE["cancel"], mostly, index)
            self.run(self.transition(o, "cancel", {"reason": reason}, auth(who), reason=reason))

    async def stranger(self, o: Order, user: str) -> None:
        """Another user's order is 404 to read and to cancel, never 403, and nothing changes."""
        status, _ = await self.request("POST", f"/v1/orders/{o.order_id}/cancel", {"reason": "customer"},
                                       as_user(user))
        assert status == 404
        status, _ = await self.request("GET", f"/v1/orders/{o.order_id}", headers=as_user(user))
        assert status == 404
        status, answer = await self.request("GET", f"/v1/orders/{o.order_id}", headers=as_user(o.spec.user))
        assert (status, answer) == (200, self.view(o)), answer

    @rule(action=st.sampled_from(["pay", "ship", "complete", "refund", "refund_confirm"]),
          key=st.sampled_from(["k-ops", "k-pay"]), with_note=st.booleans(),
          amount=st.sampled_from(["right", "right", "wrong"]), pid=st.sampled_from(["p0", "p1"]),
          mostly=MOSTLY, index=INDEX, then=st.lists(INDEX, max_size=2))
    def advance(self, action: str, key: str, with_note: bool, amount: str, pid: str, mostly: int, index: int,
                then: list[int]) -> None:
        """Pay (right or wrong amount, one of two payment ids), ship, complete, refund, confirm a
        refund (ops or payments, with or without a note); mostly an action some order is ready
        for, then the legal ones ``then`` picks for the same order, so runs reach shipped,
        completed and refunded."""
        if not self.orders:
            return
        ready = [a for a in ENDPOINT if a != "cancel" and any(o.status in LIFECYCLE[a] for o in self.orders.values())]
        if ready and mostly:
            action = chosen(ready, index)
        o = pick(self.orders, lambda o: o.status in LIFECYCLE[action] or action == "pay" and o.status == "paid",
                 mostly, index)
        for hop in [None, *then]:
            if hop is not None:
                legal = [a for a in ENDPOINT if a != "cancel" and o.status in LIFECYCLE[a]]
                if not legal:
                    break
                action = chosen(legal, hop)
            note(f"{action} {o.order_id}")
            if action == "pay":
                self.run(self.payment(o, amount, pid))
            else:
                body = {"ship": {"carrier": "SF", "tracking": "SF1"}, "refund": {"reason": "damaged"}}.get(action, {})
                self.run(self.transition(o, action, body if with_note else {}, auth(key)))

    # --- expiry ------------------------------------------------------------------------------

    async def expire_due(self) -> None:
        """One expirer pass: orders past their deadline are cancelled (expired), no others."""
        pending = [o for o in self.orders.values() if o.status == "pending_payment"]
        expirer = self.gw.app[K.EXPIRER]
        t0 = now_ms()
        while await expirer.expire_due() == expirer.batch:
            pass
        t1 = now_ms()
        for o in pending:
            status, answer = await self.request("GET", f"/v1/orders/{o.order_id}")
            assert status == 200, answer
            if o.until <= t0 - SLACK_MS:
                assert answer["status"] == "cancelled", (o.until, t0, answer)
            elif o.until > t1 + SLACK_MS:
                assert answer["status"] == "pending_payment", (o.until, t1, answer)
            if answer["status"] == "cancelled":
                self.move(o, "cancelled", "release", "expired")
            assert answer == self.view(o), answer

    @rule()
    @on_loop
    async def expirer_pass(self) -> None:
        await self.expire_due()

    @rule()
    @on_loop
    async def sale_reservation_lapses(self) -> None:
        """Expiry is time passing, no event to await: wait out the earliest sale reservation."""
        due = min((o.until for o in self.orders.values() if o.spec.sale and o.status == "pending_payment"),
                  default=None)
        if self.naps >= NAPS or due is None:
            return
        self.naps += 1
        await asyncio.sleep(max(0.0, (due - now_ms() + 2 * SLACK_MS) / 1000))
        await self.expire_due()

    # --- inventory ---------------------------------------------------------------------------

    def check_view(self, sku: str, view: dict[str, Any]) -> None:
        for wh in WAREHOUSES:
            got = view["warehouses"].get(wh, {"on_hand": 0, "reserved": 0, "available": 0})
            assert got["on_hand"] == got["available"] + got["reserved"], (wh, view)
            assert got["available"] >= 0 and got["reserved"] >= 0, (wh, view)
            expected = (self.on_hand[(sku, wh)], self.reserved[(sku, wh)])
            assert (got["on_hand"], got["reserved"]) == expected, (wh, expected, view)

    @rule(sku=st.sampled_from(SKUS),
          levels=st.dictionaries(st.sampled_from(sorted(WAREHOUSES)), st.integers(0, 4), min_size=1, max_size=3))
    @on_loop
    async def restock(self, sku: str, levels: dict[str, int]) -> None:
        """PUT on hand: all or nothing, refused at the first warehouse that would drop below reserved."""
        sku = self.skus[sku]
        status, answer = await self.request("PUT", f"/v1/inventory/{sku}", {"warehouses": levels})
        below = next((wh for wh, n in levels.items() if n < self.reserved[(sku, wh)]), None)
        if below is not None:
            assert status == 409 and answer["code"] == "below_reserved", answer
            assert (answer["warehouse"], answer["reserved"]) == (below, self.reserved[(sku, below)]), answer
            return
        assert status == 200, answer
        for wh, n in levels.items():
            self.supplied[sku] += n - self.on_hand[(sku, wh)]
            self.on_hand[(sku, wh)] = n
        self.check_view(sku, answer)

    @rule(sku=st.sampled_from(SKUS), wh=st.sampled_from(sorted(WAREHOUSES)),
          delta=st.integers(-3, 4).filter(bool), reason=st.sampled_from(["receipt", "damage", "count"]),
          below_reserved=st.booleans(), index=INDEX)
    def adjust(self, sku: str, wh: str, delta: int, reason: str, below_reserved: bool, index: int) -> None:
        """A ledger adjustment; or a write-off of one unit more than is available, which must be refused."""
        held = sorted(k for k, n in self.reserved.items() if n)
        if below_reserved and held:
            at = chosen(held, index)
            note(f"write off {at}")
            self.run(self.adjust_by(*at, -(self.available(*at) + 1), "damage"))
        else:
            self.run(self.adjust_by(self.skus[sku], wh, delta, reason))

    async def adjust_by(self, sku: str, wh: str, delta: int, reason: str) -> None:
        status, answer = await self.request("POST", f"/v1/inventory/{sku}/adjust",
                                            {"warehouse": wh, "delta": delta, "reason": reason})
        if self.on_hand[(sku, wh)] + delta < self.reserved[(sku, wh)]:
            assert status == 409 and answer["code"] == "below_reserved", answer
            assert (answer["warehouse"], answer["reserved"]) == (wh, self.reserved[(sku, wh)]), answer
            return
        assert status == 200, answer
        self.on_hand[(sku, wh)] += delta
        self.supplied[sku] += delta
        self.check_view(sku, answer)

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    @on_loop
    async def stock_is_conserved_and_nothing_is_oversold(self) -> None:
        holding: collections.Counter[tuple[str, str]] = collections.Counter()
        units: collections.Counter[tuple[str, str]] = collections.Counter()  # sku, "sold" or "pending"
        for o in self.orders.values():
            for sku, takes in o.alloc.items():
                for wh, q in takes.items():
                    holding[(sku, wh)] += q if o.status in HOLDING else 0
                units[(sku, "sold")] += sum(takes.values()) if o.status in SOLD else 0
                units[(sku, "pending")] += sum(takes.values()) if o.status == "pending_payment" else 0
        assert +self.reserved == +holding, (self.reserved, holding)  # the model's own books agree
        for sku in self.skus.values():
            view = await self.gw.stock(sku)
            self.check_view(sku, view)
            assert view["on_hand"] == self.supplied[sku] - self.shipped[sku], (view, self.supplied[sku])
            assert self.shipped[sku] + view["reserved"] <= self.supplied[sku], view
            assert units[(sku, "sold")] + units[(sku, "pending")] <= self.supplied[sku], (units, view)

    @invariant()
    @on_loop
    async def sale_limits_hold(self) -> None:
        if not self.ready:
            return
        held = {user: self.held(user) for user in self.users.values()}
        assert all(n <= LIMIT for n in held.values()), held
        status, view = await self.request("GET", f"/v1/sales/{self.sale_id}")
        assert status == 200 and view["sold"] == sum(held.values()), (view, held)

    def teardown(self) -> None:
        if self.ready:
            self.run(self.postgres_agrees())

    async def postgres_agrees(self) -> None:
        """Once the writer caught up: statuses, events, allocations and on hand as the model has them."""
        for o in self.orders.values():
            status, answer = await self.request("GET", f"/v1/orders/{o.order_id}")
            assert (status, answer) == (200, self.view(o)), answer
        await self.gw.caught_up()
        like = f"{self.ns}-%"
        rows = await self.pg.fetch("SELECT order_id, status, cancel_reason, payment_id FROM orders "
                                   "WHERE order_id LIKE $1", like)
        assert {r["order_id"]: (r["status"], r["cancel_reason"], r["payment_id"]) for r in rows} == {
            oid: (o.status, o.reason, o.payment_id) for oid, o in self.orders.items()}
        events = await self.pg.fetch("SELECT order_id, count(*) AS n FROM order_events WHERE order_id LIKE $1 "
                                     "GROUP BY order_id", like)
        assert {r["order_id"]: r["n"] for r in events} == {oid: o.events for oid, o in self.orders.items()}
        allocs = await self.pg.fetch("SELECT order_id, sku, warehouse, qty FROM allocations WHERE order_id LIKE $1",
                                     like)
        assert sorted(tuple(r) for r in allocs) == sorted(
            (oid, sku, wh, q) for oid, o in self.orders.items() for sku, takes in o.alloc.items()
            for wh, q in takes.items())
        stock = await self.pg.fetch("SELECT sku, warehouse, on_hand FROM inventory WHERE sku = ANY($1::text[])",
                                    list(self.skus.values()))
        assert {(r["sku"], r["warehouse"]): r["on_hand"] for r in stock if r["on_hand"]} == +self.on_hand
        status, report = await self.request("GET", "/v1/reconciliation")
        assert status == 200 and report["ok"] and not report.get("lagging"), report


@pytest.mark.slow
@pytest.mark.timeout(max(180, EXAMPLES * STEPS // 5))
async def test_gateway_agrees_with_a_model_of_stock_orders_and_limits(make_gateway, pg):
    gw = await make_gateway()
    await gw.app[K.EXPIRER].close()  # expiry only when a rule asks for it
    for wid, priority in WAREHOUSES.items():
        resp = await gw.client.put(f"/v1/warehouses/{wid}", json={"priority": priority, "active": True},
                                   headers=auth("k-ops"))
        assert resp.status == 201, await resp.text()
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(
        run_state_machine_as_test, lambda: GatewayMachine(loop, gw, pg),
        settings=hypothesis_settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                                     phases=PHASES))
