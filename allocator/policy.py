"""The split policy ``fewest_splits``, in Python: the reference the reserve script must match.

For an order whose lines each have a candidate list (warehouse, available) in preference
order:
1. if one warehouse can fill every line, all lines come from the first such warehouse in
   the first line's candidate order;
2. else each line comes whole from one warehouse if one can fill it, preferring one that
   an earlier line of the order already uses, then candidate order;
3. else the line is split across warehouses in candidate order.
A line that all candidates together cannot fill makes the order short: nothing is taken.
``max_stock`` reorders each line's candidates by availability, most first, ties kept in
preference order, before the policy runs.
"""

from __future__ import annotations

from collections.abc import Sequence

Candidates = Sequence[tuple[str, int]]  # (warehouse, available) in preference order
Plan = list[list[tuple[str, int]]]  # per line: (warehouse, qty) taken


def order_candidates(candidates: Candidates, max_stock: bool) -> list[tuple[str, int]]:
    ranked = list(candidates)
    if max_stock:
        ranked = [c for _, c in sorted(enumerate(ranked), key=lambda ic: (-ic[1][1], ic[0]))]
    return ranked


def in_order(need: int, candidates: Candidates) -> list[tuple[str, int]]:
    """``need`` units taken warehouse by warehouse in candidate order (fewer when they run out)."""
    takes = []
    for wh, a in candidates:
        if need == 0:
            break
        if a > 0:
            take = min(a, need)
            takes.append((wh, take))
            need -= take
    return takes


def plan(needs: Sequence[int], candidates: Sequence[Candidates], max_stock: bool = False
         ) -> tuple[Plan | None, tuple[int, int] | None]:
    """(plan, None) when every line can be filled, else (None, (line index, units missing))."""
    cands = [order_candidates(c, max_stock) for c in candidates]
    avail = [dict(c) for c in cands]
    for j, need in enumerate(needs):
        total = sum(a for _, a in cands[j])
        if total < need:
            return None, (j, need - total)
    if cands:
        for wh, _ in cands[0]:
            if all(avail[j].get(wh, 0) >= need for j, need in enumerate(needs)):
                return [[(wh, need)] for need in needs], None
    used: list[str] = []
    out: Plan = []
    for j, need in enumerate(needs):
        whole = [wh for wh, a in cands[j] if a >= need]
        if whole:
            wh = next((w for w in whole if w in used), whole[0])
            out.append([(wh, need)])
        else:
            out.append(in_order(need, cands[j]))
        used.extend(wh for wh, _ in out[-1] if wh not in used)
    return out, None
