"""What a scrape reads at scrape time: figures that are the same whichever worker answers.

The stream's length, pending entries and lag, the quarantine and the hot SKUs' stock live in
Redis and PostgreSQL, not in any process; the worker answering ``/metrics`` reads them then.
Hot SKUs are the ``OMS_METRICS_HOT_SKUS`` best sellers (20 by default) of the forecast window:
the ``sku`` label's cardinality never exceeds that.
"""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway import keys, quarantine, stockwatch
from gateway.faults import unless_down
from gateway.inventory import stock_views
from gateway.ops import workerstate


async def global_families(redis: aioredis.Redis, pool: asyncpg.Pool, *, hot_skus: int,
                          window: int, layout: keys.Partitions = keys.SINGLE) -> list[Metric]:
    """The figures every process would answer alike, read now; a store that is down leaves its out."""
    families, _ = await unless_down(_stream(redis, layout), [])
    held, _ = await unless_down(quarantine.count(pool), None)
    if held is not None:
        families.append(_gauge("oms_quarantined_entries", "Writer entries held in the quarantine", held))
    if hot_skus:
        families += (await unless_down(_hot(redis, pool, hot_skus, window, layout), []))[0]
    return families + workers()


def workers() -> list[Metric]:
    """What serve's supervisor reports of its workers (gateway/ops/workerstate.py); nothing outside serve."""
    state = workerstate.read()
    if state is None:
        return []
    restarts = CounterMetricFamily("oms_worker_restarts", "Workers restarted after they exited", labels=["role"])
    running = GaugeMetricFamily("oms_workers_running", "Worker processes running", labels=["role"])
    for role, w in sorted(state.items()):
        restarts.add_metric([role], w["restarts"])
        running.add_metric([role], w["running"])
    return [restarts, running]


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _entry_ms(entry_id: bytes) -> int:
    return int(entry_id.split(b"-")[0])


async def stream_state(redis: aioredis.Redis, layout: keys.Partitions = keys.SINGLE) -> dict[str, float]:
    """Length, pending and lag of the event streams (summed over the partitions; ages the
    oldest), ages by Redis' clock (stream ids carry it)."""
    total = {"length": 0, "pending": 0, "oldest_pending_age": 0.0, "lag": 0, "lag_seconds": 0.0}
    for p in layout.all():
        stream = keys.events(p)
        pipe = redis.pipeline(transaction=False)
        pipe.time()
        pipe.xlen(stream)
        pipe.xinfo_groups(stream)
        pipe.xpending(stream, keys.WRITER_GROUP)
        pipe.xrange(stream, count=1)  # written entries are deleted: the first one left waits the longest
        (sec, usec), length, groups, pending, first = await pipe.execute()
        now_ms = sec * 1000 + usec // 1000
        group = next((g for g in groups if g["name"] == keys.WRITER_GROUP.encode()), {})
        oldest_pending = (now_ms - _entry_ms(pending["min"])) / 1000 if pending["pending"] else 0.0
        oldest = (now_ms - _entry_ms(first[0][0])) / 1000 if first else 0.0
        total["length"] += length
        total["pending"] += pending["pending"]
        total["lag"] += group.get("lag") or 0
        total["oldest_pending_age"] = max(total["oldest_pending_age"], oldest_pending)
        total["lag_seconds"] = max(total["lag_seconds"], oldest)
    return total


async def _stream(redis: aioredis.Redis, layout: keys.Partitions) -> list[Metric]:
    state = await stream_state(redis, layout)
    return [
        _gauge("oms_stream_length", "Entries in the event stream, not yet written", state["length"]),
        _gauge("oms_stream_pending", "Entries a writer has read and not yet acknowledged", state["pending"]),
        _gauge("oms_stream_oldest_pending_age_seconds", "Age of the oldest entry a writer holds",
               state["oldest_pending_age"]),
        _gauge("oms_writer_lag_entries", "Entries no writer has read yet", state["lag"]),
        _gauge("oms_writer_lag_seconds", "Age of the oldest entry not yet written to PostgreSQL",
               state["lag_seconds"]),
    ]


async def _hot(redis: aioredis.Redis, pool: asyncpg.Pool, limit: int, window: int,
               layout: keys.Partitions) -> list[Metric]:
    """Stock and sell-out ETA of the ``limit`` best-selling SKUs of the last ``window`` seconds."""
    selling = await stockwatch.hot(pool, window, limit)
    views = await stock_views(redis, [s.sku for s in selling], layout)
    available = GaugeMetricFamily("oms_stock_available", "Available units of a hot SKU", labels=["sku"])
    eta = GaugeMetricFamily("oms_stock_sell_out_eta_seconds", "Seconds until a hot SKU sells out at its rate "
                            "over the forecast window", labels=["sku"])
    for hot, view in zip(selling, views, strict=True):
        available.add_metric([hot.sku], view["available"])
        if hot.per_second > 0:
            eta.add_metric([hot.sku], view["available"] / hot.per_second)
    return [available, eta]
