"""The order state machine, as one table: action -> (from statuses, to status, event, stock effect).

Stock effects: ``release`` gives reserved units back to availability (cancel, expiry,
refund before shipping); ``ship`` removes them from on hand and reserved together; ``none``
leaves stock alone. The transition script applies the effect atomically with the status.
"""

from __future__ import annotations

import dataclasses

STATUSES = ("pending_payment", "paid", "shipped", "completed", "cancelled", "refunding", "refunded")
CANCEL_REASONS = ("customer", "ops", "expired", "payment_failed")


@dataclasses.dataclass(frozen=True)
class Transition:
    action: str
    sources: tuple[str, ...]
    target: str
    event: str
    stock: str = "none"  # none | release | ship


TABLE: dict[tuple[str, str], Transition] = {}


def _add(action: str, sources: tuple[str, ...], target: str, event: str, stock: str = "none") -> None:
    for source in sources:
        TABLE[(action, source)] = Transition(action, sources, target, event, stock)


_add("pay", ("pending_payment",), "paid", "order.paid")
_add("cancel", ("pending_payment",), "cancelled", "order.cancelled", "release")
_add("expire", ("pending_payment",), "cancelled", "order.cancelled", "release")
_add("cancel", ("paid",), "refunding", "order.refunding", "release")
_add("ship", ("paid",), "shipped", "order.shipped", "ship")
_add("complete", ("shipped",), "completed", "order.completed")
_add("refund", ("paid",), "refunding", "order.refunding", "release")
_add("refund", ("shipped", "completed"), "refunding", "order.refunding")
_add("refund_confirm", ("refunding",), "refunded", "order.refunded")

ACTIONS = tuple(sorted({a for a, _ in TABLE}))
# Where an action leads: an order already there answers 200 as it is, with no new event.
DONE = {a: frozenset(t.target for (act, _), t in TABLE.items() if act == a) for a in ACTIONS}


def rules(action: str) -> str:
    """The action's rows as the transition script reads them: ``src>dst>event>stock;...``."""
    return ";".join(f"{src}>{t.target}>{t.event}>{t.stock}" for (act, src), t in TABLE.items() if act == action)


def transition(action: str, status: str) -> Transition | None:
    """The legal transition of ``action`` from ``status``, or None when it is illegal."""
    return TABLE.get((action, status))
