"""Prometheus metrics: every series the gateway exports, declared once, and how they are counted.

prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by ``serve`` for its
children) keeps each value in an mmap'd file behind a lock, so one labelled increment costs
4-5 µs: three per order would be 5% of the HTTP worker's 80 µs. What is counted per request
(requests, latency, order outcomes, script calls, batch sizes) is therefore kept in plain
Python here (``Tally``, ``Spread``: a dict increment, a bisect) and published to the library
in bulk every ``FLUSH`` seconds and before each scrape of the process answering it; a scrape
may see another worker's last second late. Per-batch figures (the writer, webhooks) go to
the library directly. Figures that are the same whoever asks (the stream, the quarantine,
hot SKUs' stock) are read from Redis and PostgreSQL at scrape time (gateway/scrape.py).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import REGISTRY, Metric
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ  # read by prometheus-client at its import too
FLUSH = 1.0  # seconds between publications of the per-process tallies
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
AGES = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

HTTP_REQUESTS = Counter("oms_http_requests", "HTTP requests answered", ["route", "method", "status"])
HTTP_DURATION = Histogram("oms_http_request_duration_seconds", "Time to answer an HTTP request",
                          ["route", "method"], buckets=LATENCY)
ORDERS = Counter("oms_orders", "Order submissions by outcome: accepted, replayed or the refusal's code",
                 ["outcome"])
SOLD_OUT = Counter("oms_sold_out_answers", "Refusals answered from the sold-out memory, with no script call")
TRANSITIONS = Counter("oms_order_transitions", "Order status changes made through the API", ["to"])
COALESCER_BATCH = Histogram("oms_coalescer_batch_size", "Orders per reserve script call", buckets=SIZES)
IN_FLIGHT = Gauge("oms_orders_in_flight", "Orders queued or being reserved", multiprocess_mode="livesum")
SCRIPT_DURATION = Histogram("oms_script_duration_seconds", "Redis script calls (one round trip, WAITAOF included)",
                            ["script"], buckets=LATENCY)
WRITER_BATCH = Histogram("oms_writer_batch_size", "Stream entries per writer commit", buckets=SIZES)
WRITER_COMMIT = Histogram("oms_writer_commit_duration_seconds", "Writer transactions, from the first insert "
                          "to the commit", buckets=LATENCY)
WRITER_ROWS = Counter("oms_writer_rows", "Rows the writer wrote to PostgreSQL", ["table"])
EXPIRED = Counter("oms_orders_expired", "Reservations that ran out and gave their stock back")
WEBHOOK_DELIVERIES = Counter("oms_webhook_deliveries", "Webhook delivery attempts", ["outcome"])
WEBHOOK_AGE = Histogram("oms_webhook_delivery_age_seconds", "Age of an event when its webhook delivery "
                        "succeeded", buckets=AGES)
BACKEND_ERRORS = Counter("oms_backend_errors", "Backend faults answered as 503 or retried in the background",
                         ["backend"])
BUILD = Gauge("oms_build_info", "The gateway's version", ["version", "python"], multiprocess_mode="max")
STARTED = Gauge("oms_start_time_seconds", "When this process started (unix time)", multiprocess_mode="liveall")

BUILD.labels(metadata.version("flashsale-gateway"), platform.python_version()).set(1)
STARTED.set(time.time())
# Counters with a known set of labels start at 0: a series born at 1 shows rate() no increase,
# so the board would miss the first backend fault or failed delivery.
BACKEND_ERRORS.labels("redis")
BACKEND_ERRORS.labels("postgres")
WEBHOOK_DELIVERIES.labels("delivered")
WEBHOOK_DELIVERIES.labels("failed")


class Tally:
    """Counts by label values for one counter, published as increments."""

    __slots__ = ("counter", "counts")

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.counts: dict[tuple[Any, ...], int] = {}

    def add(self, *labels: Any) -> None:
        self.counts[labels] = self.counts.get(labels, 0) + 1

    def publish(self) -> None:
        counts, self.counts = self.counts, {}
        for labels, n in counts.items():
            self.counter.labels(*map(str, labels)).inc(n)


class Spread:
    """Observations of one histogram series, bucketed here and published in bulk.

    prometheus-client has no bulk observe: ``publish`` adds to the child's bucket and sum
    values as ``Histogram.observe`` does (a value falls in the first bucket whose bound it
    does not exceed); ``tests/test_metrics.py`` checks the result against ``observe``.
    """

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, histogram: Histogram, *labels: str) -> None:
        self.child = histogram.labels(*labels) if labels else histogram
        self.bounds = self.child._upper_bounds
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def publish(self) -> None:
        counts, self.counts, total, self.total = self.counts, [0] * len(self.bounds), self.total, 0.0
        if not any(counts):
            return
        for bucket, n in zip(self.child._buckets, counts, strict=True):
            if n:
                bucket.inc(n)
        self.child._sum.inc(total)


_tallies: dict[Counter, Tally] = {}
_spreads: dict[tuple[Histogram, tuple[str, ...]], Spread] = {}


def tally(counter: Counter) -> Tally:
    """The one tally of ``counter`` in this process."""
    found = _tallies.get(counter)
    if found is None:
        found = _tallies[counter] = Tally(counter)
    return found


def spread(histogram: Histogram, *labels: str) -> Spread:
    """The one spread of this histogram series in this process."""
    found = _spreads.get((histogram, labels))
    if found is None:
        found = _spreads[histogram, labels] = Spread(histogram, *labels)
    return found


class Sampled:
    """A counter following a plain running total someone else keeps (``coalescer.sold_out_answers``)."""

    def __init__(self, counter: Counter, total: Callable[[], int]) -> None:
        self.counter, self.total = counter, total
        self.seen = total()

    def publish(self) -> None:
        now = self.total()
        if now > self.seen:
            self.counter.inc(now - self.seen)
        self.seen = now


class Publisher:
    """Publishes this process's tallies and samples every FLUSH seconds, and once more at close.

    ``samples`` are callables run at each publication: a Sampled's publish, a gauge's set.
    """

    def __init__(self, samples: Iterable[Callable[[], None]] = ()) -> None:
        self.samples = list(samples)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="metrics")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.publish()

    def publish(self) -> None:
        for sample in self.samples:
            sample()
        for t in _tallies.values():
            t.publish()
        for s in _spreads.values():
            s.publish()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH)
            self.publish()


def backend_error(backend: str | None) -> None:
    """Count a backend fault (gateway/faults.py names the backend)."""
    tally(BACKEND_ERRORS).add(backend or "unknown")


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def collected() -> list[Metric]:
    """The series every process counted (under serve, merged from the multiprocess files), or this one's."""
    if MULTIPROCESS:
        return list(MultiProcessCollector(None).collect())
    return list(REGISTRY.collect())


def exposition(extra: list[Metric]) -> bytes:
    """The text every scrape answers: all processes' series (or this one's) and ``extra``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*collected(), *extra]))  # type: ignore[arg-type]
    return generate_latest(registry)
