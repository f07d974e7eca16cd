"""A short fault soak (bench/soak.py) in the suite: five faults, a power cut among them, and
nothing a client was told goes missing; the seed alone fixes the schedule."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bench.soakplan import CORE, schedule
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
