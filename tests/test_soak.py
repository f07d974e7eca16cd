"""A short fault soak (bench/soak.py) in the suite: five faults, a power cut among them, and
nothing a client was told goes missing; the seed alone fixes the schedule."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bench.soakcheck import Acked, check
from bench.soakplan import CORE, schedule
from tests.conftest import order_body
from tests.test_make_run import ROOT

pytestmark = pytest.mark.slow
SEED, FAULTS, ORDERS = 4, 5, 3000
SUMMARY = re.compile(r"^seed (\d+): (\d+) faults, (\d+) acknowledged, (\d+) lost, (\d+) duplicated, (\d+) oversold, "
                     r"(\d+) transitions lost, (conservation ok), (audit ok)$")


def test_the_same_seed_gives_the_same_schedule():
    plan = schedule(SEED, FAULTS, ORDERS)
    assert plan == schedule(SEED, FAULTS, ORDERS)
    assert plan != schedule(SEED + 1, FAULTS, ORDERS)
    kinds = [f.kind for f in plan]
    assert len(plan) == FAULTS and kinds[-1] == "power_cut" and "power_cut" not in kinds[:-1]
    for need in CORE:  # a writer SIGKILL, a store restart and a proxy fault, however short the soak
        assert set(kinds) & ({need} if isinstance(need, str) else set(need))
    assert [f.at for f in plan] == sorted(f.at for f in plan)


@pytest.mark.timeout(240)
def test_a_short_soak_loses_nothing_it_acknowledged(tmp_path):
    run = subprocess.run([sys.executable, "-m", "bench.soak", "--seed", str(SEED), "--faults", str(FAULTS),
                          "--orders", str(ORDERS)], cwd=ROOT, capture_output=True, text=True, timeout=230)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    planned = [line.removeprefix("  plan ") for line in out.splitlines() if line.startswith("  plan ")]
    assert planned == [str(f) for f in schedule(SEED, FAULTS, ORDERS)]  # printed at the start, as drawn
    assert sum(line.startswith("  fired ") for line in out.splitlines()) == FAULTS
    last = out.strip().splitlines()[-1]
    match = SUMMARY.match(last)
    assert match, out
    seed, faults, acknowledged, lost, duplicated, oversold, transitions_lost = map(int, match.groups()[:7])
    assert (seed, faults) == (SEED, FAULTS)
    assert acknowledged > ORDERS // 4
    assert (lost, duplicated, oversold, transitions_lost) == (0, 0, 0, 0)


async def test_the_verdict_counts_what_the_stores_lack(gw, redis, pg):
    """The checks can fail: an order never sent, one stored with other allocations, a transition
    that did not happen and more units taken than were put are each counted."""
    await gw.set_stock("SOAK-T", {"W1": 10})
    for oid in ("v-1", "v-2"):
        resp = await gw.post("/v1/orders", order_body(oid, items=[{"sku": "SOAK-T", "qty": 2}]))
        assert resp.status == 201, await resp.text()
    await gw.caught_up()
    line = (("SOAK-T", 2),)
    acked = Acked(orders={"v-1": (line, (("SOAK-T", "W1", 2),)), "v-2": (line, (("SOAK-T", "W2", 2),)),
                          "v-ghost": (line, (("SOAK-T", "W1", 2),))},
                  transitions={"v-1": "paid"})
    acked.put_bound[("SOAK-T", "W1")] = 3  # the restocker's count says fewer units than the 4 taken
    verdict = await check(redis, pg, acked, faults=1)
    assert sorted(verdict.lost) == ["v-2", "v-ghost"]
    assert verdict.duplicated == []
    assert verdict.transitions_lost == [("v-1", "paid", "pending_payment")]
    assert [(o["sku"], o["warehouse"], o["taken"]) for o in verdict.oversold] == [("SOAK-T", "W1", 4)]
    assert verdict.reconcile["ok"] and verdict.audit_broken is None
    assert not verdict.ok
    assert verdict.line(9) == ("seed 9: 1 faults, 3 acknowledged, 2 lost, 0 duplicated, 1 oversold, "
                               "1 transitions lost, conservation ok, audit ok")
