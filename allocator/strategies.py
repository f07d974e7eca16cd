"""Warehouse preference orders by strategy."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

DEFAULT_PRIORITY = 100
STRATEGIES = ("priority", "region", "max_stock")


@dataclasses.dataclass(frozen=True, slots=True)
class Warehouse:
    id: str
    priority: int = DEFAULT_PRIORITY
    region: str | None = None
    active: bool = True


def preference(
    warehouses: Iterable[Warehouse], strategy: str = "priority", region: str | None = None
) -> tuple[str, ...]:
    """Active warehouse ids, most preferred first; inactive ones are never offered.

    ``priority``: lower priority number first, ties by id. ``region``: warehouses in
    ``region`` first, then as ``priority``; with no region it is ``priority``.
    ``max_stock`` needs live stock: its base order is ``priority``, and the reserve script
    (or ``policy.plan``) reorders by availability.
    """
    active = [w for w in warehouses if w.active]
    if strategy in ("priority", "max_stock") or region is None:
        active.sort(key=lambda w: (w.priority, w.id))
    elif strategy == "region":
        active.sort(key=lambda w: (w.region != region, w.priority, w.id))
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    return tuple(w.id for w in active)
