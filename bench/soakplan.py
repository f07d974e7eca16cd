"""The soak's fault schedule, drawn from one seed: the same seed, faults and orders replay it.

Pure (no I/O), so a test can compare two draws. Every kind appears at least once when the
schedule has room; a short one still gets a writer SIGKILL, a store restart and a proxy
fault. The power cut is always last, near the end of the workload, so acknowledged orders
are in flight when everything dies.
"""

from __future__ import annotations

import dataclasses
import random

KINDS = (
    "writer_kill", "http_kill", "supervisor_kill", "writer_stop", "valkey_stop",
    "postgres_restart", "valkey_restart", "proxy_cut", "proxy_stall", "proxy_reset", "proxy_slow",
)
CORE = ("writer_kill", ("postgres_restart", "valkey_restart"), ("proxy_cut", "proxy_stall", "proxy_reset", "proxy_slow"))
LINKS = ("valkey", "postgres")
ORDER_RATE = 200.0  # orders a second by default: what 2 shared cores carry with the clients on them (fsync)
FAULT_ROOM = 8.0  # seconds of run per fault at least: a supervisor kill and its restart take ~5 s


@dataclasses.dataclass(frozen=True)
class Fault:
    at: float  # seconds after the workload starts
    kind: str
    link: str = ""  # proxy faults: "valkey" or "postgres"
    seconds: float = 0.0  # how long a stop, stall or slow lasts
    delay: float = 0.0  # slow: seconds added to each chunk

    def __str__(self) -> str:
        extra = f" {self.link}" if self.link else ""
        extra += f" for {self.seconds:.1f}s" if self.seconds else ""
        extra += f" +{self.delay * 1000:.0f}ms/chunk" if self.delay else ""
        return f"t+{self.at:6.1f}s {self.kind}{extra}"


def duration(faults: int, orders: int, rate: float = ORDER_RATE) -> float:
    """The planned run length: the orders at ``rate``, with room for every fault."""
    return round(max(orders / rate, faults * FAULT_ROOM, 10.0), 1)


def schedule(seed: int, faults: int, orders: int, rate: float = ORDER_RATE) -> list[Fault]:
    """``faults`` faults (at least 1: the power cut) over ``duration(...)`` seconds, sorted by time."""
    if faults < 1:
        raise ValueError("at least one fault: the power cut")
    rng = random.Random(seed)
    length = duration(faults, orders, rate)
    n = faults - 1
    if n >= len(KINDS):
        kinds = list(KINDS) + [rng.choice(KINDS) for _ in range(n - len(KINDS))]
    else:
        core = [c if isinstance(c, str) else rng.choice(c) for c in CORE][:n]
        kinds = core + [rng.choice(KINDS) for _ in range(n - len(core))]
    rng.shuffle(kinds)
    times = sorted(round(rng.uniform(0.05, 0.8) * length, 1) for _ in kinds)
    plan = [_fault(rng, at, kind) for at, kind in zip(times, kinds, strict=True)]
    plan.append(Fault(round(rng.uniform(0.85, 0.92) * length, 1), "power_cut"))
    return plan


def _fault(rng: random.Random, at: float, kind: str) -> Fault:
    if kind in ("writer_stop", "valkey_stop"):
        return Fault(at, kind, seconds=round(rng.uniform(1.0, 4.0), 1))
    if kind in ("proxy_cut", "proxy_reset"):
        return Fault(at, kind, link=rng.choice(LINKS))
    if kind == "proxy_stall":
        return Fault(at, kind, link=rng.choice(LINKS), seconds=round(rng.uniform(1.0, 4.0), 1))
    if kind == "proxy_slow":
        return Fault(at, kind, link=rng.choice(LINKS), seconds=round(rng.uniform(2.0, 5.0), 1),
                     delay=round(rng.uniform(0.005, 0.05), 3))
    return Fault(at, kind)
