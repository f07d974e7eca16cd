"""Load generators: wrk when installed, else a Python closed loop; and a Python open loop.

Every request is a new order for one unit of one SKU, the same body ``bench/order.lua``
sends, so the three targets see identical traffic. ``python -m bench.load`` runs one open
loop and prints its raw samples as JSON: the overload phase runs several such processes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import gc
import json
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

ORDER_LUA = Path(__file__).resolve().parent / "order.lua"
HEADERS = {"Authorization": "Bearer dev-admin-key", "Content-Type": "application/json"}
REQUEST = (b"POST /v1/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer dev-admin-key\r\n"
           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n")
CONNECTIONS = 64
DRAIN_TIMEOUT = 30.0


def order_body(order_id: str, n: int, sku: str = "HOT") -> bytes:
    """One unit of ``sku``; ``*N`` spreads the orders over SKUs ``s0`` … ``s<N-1>`` (as order.lua)."""
    if sku.startswith("*"):
        sku = f"s{n % int(sku[1:])}"
    return (f'{{"order_id":"{order_id}","user_id":"u-{n % 5000}","channel":"web",'
            f'"items":[{{"sku":"{sku}","qty":1}}]}}').encode()


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def raise_fd_limit() -> None:
    """Overload needs thousands of connections: lift the soft descriptor limit to the hard one
    (children, the servers included, inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def closed_loop(base_url: str, seconds: int, prefix: str, sku: str = "HOT") -> dict[str, Any]:
    """Max throughput with 64 connections: wrk (-t1 -c64) when installed, else Python."""
    if shutil.which("wrk"):
        return await _wrk(base_url, seconds, sku)
    return await python_closed_loop(base_url, seconds, prefix, sku)


async def _wrk(base_url: str, seconds: int, sku: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", str(ORDER_LUA), base_url + "/",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "SKU": sku})
    out = (await proc.communicate())[0].decode()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed:\n{out}")
    return parse_wrk(out)


def parse_wrk(out: str) -> dict[str, Any]:
    """Requests, elapsed time, socket errors and the status counts order.lua prints."""
    done = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)\b", out)
    if not done:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    elapsed = float(done[2]) * {"ms": 0.001, "s": 1, "m": 60}[done[3]]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    statuses = {int(code): int(n) for code, n in re.findall(r"^status (\d+) (\d+)$", out, re.M)}
    return {"tool": "wrk", "requests": int(done[1]), "statuses": statuses, "ok": statuses.get(201, 0),
            "seconds": elapsed, "socket_errors": sum(map(int, errors.groups())) if errors else 0}


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time: far cheaper than aiohttp's client,
    so the Python generators are not the bottleneck at the rates they are used for.

    Two ways to wait for an answer: ``await post_order()`` (closed loops), or ``send_order()``
    with ``listener(connection, status)`` called from the protocol (the open loop: no task,
    future or queue per request, which made the generator use most of a core at 4,000/s).
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.listener: Callable[[Connection, int], None] | None = None
        self.current: tuple[int, float, float] | None = None  # the open loop's (index, due, sent)

    @classmethod
    async def open(cls, base_url: str) -> Connection:
        host, _, port = base_url.removeprefix("http://").partition(":")
        _, conn = await asyncio.get_running_loop().create_connection(cls, host, int(port))
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        at = self.buffer.find(b"\r\nContent-Length: ", 0, end)
        if at >= 0:
            length = int(self.buffer[at + 18: self.buffer.index(b"\r", at + 18)])
        else:
            found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", self.buffer[:end])
            length = int(found[1]) if found else 0
        size = end + 4 + length
        if len(self.buffer) >= size:
            status = int(self.buffer[9:12])
            del self.buffer[:size]
            self._answered(status)

    def _answered(self, status: int) -> None:
        if self.listener:
            if self.current:
                self.listener(self, status)
        elif self.waiter and not self.waiter.done():
            if status:
                self.waiter.set_result(status)
            else:
                self.waiter.set_exception(ConnectionError("connection closed"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._answered(0)

    def send_order(self, order_id: str, n: int, sku: str = "HOT") -> None:
        body = order_body(order_id, n, sku)
        self.transport.write(REQUEST % len(body) + body)  # type: ignore[attr-defined]

    async def post_order(self, order_id: str, n: int, sku: str = "HOT") -> int:
        """POST one order; the status code, 0 when the connection failed."""
        self.waiter = asyncio.get_running_loop().create_future()
        self.send_order(order_id, n, sku)
        try:
            return await self.waiter
        except ConnectionError:
            return 0

    def close(self) -> None:
        self.transport.close()


async def python_closed_loop(base_url: str, seconds: float, prefix: str, sku: str = "HOT") -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    statuses: Counter[int] = Counter()
    conns = [await Connection.open(base_url) for _ in range(CONNECTIONS)]

    async def worker(w: int, conn: Connection) -> None:
        n = 0
        while loop.time() < stop:
            n += 1
            statuses[await conn.post_order(f"{prefix}-{w}-{n}", n, sku)] += 1

    start = time.perf_counter()
    stop = loop.time() + seconds
    await asyncio.gather(*(worker(w, c) for w, c in enumerate(conns)))
    elapsed = time.perf_counter() - start
    for conn in conns:
        conn.close()
    errors = statuses.pop(0, 0)
    return {"tool": "python", "requests": sum(statuses.values()) + errors, "statuses": dict(statuses),
            "ok": statuses[201], "seconds": elapsed, "socket_errors": errors}


@dataclasses.dataclass
class Samples:
    """Raw open-loop results, mergeable across generator processes (seconds throughout)."""

    latencies: dict[int, list[float]] = dataclasses.field(default_factory=dict)  # from the due time
    wire: dict[int, list[float]] = dataclasses.field(default_factory=dict)  # from the actual send
    lags: list[float] = dataclasses.field(default_factory=list)
    waits: list[float] = dataclasses.field(default_factory=list)  # due time → a free connection
    send_span: float = 0.0  # from the first due time to the last send
    connections: int = 0
    unanswered: int = 0  # given up DRAIN_TIMEOUT s after the last send
    cpu_s: float = 0.0  # the generator processes' own CPU time

    def add(self, status: int, latency: float, wire: float) -> None:
        self.latencies.setdefault(status, []).append(latency)
        self.wire.setdefault(status, []).append(wire)

    def merge(self, other: Samples) -> None:
        for mine, theirs in ((self.latencies, other.latencies), (self.wire, other.wire)):
            for status, values in theirs.items():
                mine.setdefault(status, []).extend(values)
        self.lags += other.lags
        self.waits += other.waits
        self.send_span = max(self.send_span, other.send_span)
        self.connections += other.connections
        self.unanswered += other.unanswered
        self.cpu_s += other.cpu_s

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Samples:
        raw = json.loads(text)
        raw["latencies"] = {int(k): v for k, v in raw["latencies"].items()}
        raw["wire"] = {int(k): v for k, v in raw["wire"].items()}
        return cls(**raw)

    def summary(self, rate: float, seconds: float) -> dict[str, Any]:
        everything = sorted(v for values in self.latencies.values() for v in values)
        ms = {f"p{q}": percentile(everything, q / 100) * 1000 for q in (50, 90, 99, 99.9)}
        by_status = {}
        for status, values in sorted(self.latencies.items()):
            values.sort()
            by_status[status] = {f"p{q}": percentile(values, q / 100) * 1000 for q in (50, 99)}
            by_status[status]["max"] = values[-1] * 1000
            by_status[status]["wire_p99"] = percentile(sorted(self.wire[status]), 0.99) * 1000
        send_lag_p99 = percentile(sorted(self.lags), 0.99) * 1000
        pool_wait_p99 = percentile(sorted(self.waits), 0.99) * 1000
        requests = len(everything) + self.unanswered
        return {"rate": rate, "seconds": seconds, "requests": requests,
                "sent_per_s": requests / max(self.send_span, seconds),
                "statuses": {s: len(v) for s, v in sorted(self.latencies.items())}, "unanswered": self.unanswered,
                "latency_ms": {**ms, "max": percentile(everything, 1) * 1000}, "by_status_ms": by_status,
                "send_lag_p99_ms": send_lag_p99, "generator_behind": send_lag_p99 > 5,
                "pool_wait_p99_ms": pool_wait_p99, "connections": self.connections}


async def connect(base_url: str, n: int) -> list[Connection]:
    """``n`` keep-alive connections, opened one after another: a burst of connects overflows the
    server's listen backlog, and a dropped SYN costs a second or more, which would be measured."""
    return [await Connection.open(base_url) for _ in range(n)]


async def open_loop(base_url: str, rate: float, seconds: float, prefix: str, connections: int = 1024,
                    on_answer: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Send at a fixed rate whatever the answers do; latency counts from each request's due time.

    Measuring from the schedule, not from the send, keeps a stalled server from hiding its
    stall (coordinated omission); so does waiting for a free connection. ``send_lag`` says how
    late the generator itself sent: when its p99 is more than a few ms, the generator, not the
    server, was the bottleneck. ``on_answer(order_id, status)`` is called as each answer arrives.
    """
    conns = await connect(base_url, connections)
    samples = await schedule(conns, rate, seconds, prefix, time.perf_counter() + 0.01, on_answer)
    return samples.summary(rate, seconds)


async def schedule(conns: list[Connection], rate: float, seconds: float, prefix: str, start: float,
                   on_answer: Callable[[str, int], None] | None = None) -> Samples:
    """The open loop over ``conns`` from ``start`` (a perf_counter time); requests not answered
    ``DRAIN_TIMEOUT`` s after the last send are given up and counted as ``unanswered``.

    A request due while every connection is busy waits in ``queued`` and is sent the moment
    one answers; its latency still counts from its due time."""
    total = int(rate * seconds)
    samples = Samples(connections=len(conns))
    idle = collections.deque(conns)
    queued: collections.deque[tuple[int, float]] = collections.deque()
    finished = 0
    all_answered = asyncio.get_running_loop().create_future()
    clock = time.perf_counter

    def send(conn: Connection, i: int, due: float) -> None:
        sent = clock()
        samples.waits.append(sent - due)
        conn.current = (i, due, sent)
        conn.send_order(f"{prefix}-{i}", i)

    def answered(conn: Connection, status: int) -> None:
        nonlocal finished
        assert conn.current is not None
        i, due, sent = conn.current
        conn.current = None
        now = clock()
        samples.add(status, now - due, now - sent)
        finished += 1
        if on_answer:
            on_answer(f"{prefix}-{i}", status)
        if status:  # a failed connection leaves the pool
            if queued:
                send(conn, *queued.popleft())
            else:
                idle.append(conn)
        if finished == total and not all_answered.done():
            all_answered.set_result(None)

    for conn in conns:
        conn.listener = answered
    i = 0
    gc.disable()  # a collection pause in the generator would count as server latency
    try:
        while i < total:
            now = clock()
            while i < total and start + i / rate <= now:
                due = start + i / rate
                samples.lags.append(now - due)
                if idle:
                    send(idle.popleft(), i, due)
                else:
                    queued.append((i, due))
                i += 1
            # uvloop's timers have 1 ms resolution: a shorter sleep returns at once, and the
            # loop would spin a core. What came due meanwhile goes out together on waking.
            await asyncio.sleep(max(0.001, start + i / rate - clock()))
        samples.send_span = clock() - start
        if total:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(all_answered), timeout=DRAIN_TIMEOUT)
        samples.unanswered = total - finished
    finally:
        gc.enable()
        for conn in conns:
            conn.listener = None
            conn.close()
    return samples


async def open_loop_procs(base_url: str, rate: float, seconds: float, prefix: str, procs: int = 2,
                          connections: int = 3000, on_ready: Callable[[], None] | None = None) -> dict[str, Any]:
    """The open loop split over ``procs`` generator processes, each at ``rate / procs`` over its own
    ``connections``. Once every child has connected, ``on_ready()`` runs and they start together.

    Each child writes its samples to a file, not its stdout: read through uvloop's subprocess
    pipe, a large sample set once arrived cut after its first 64 KiB (a CI run), and the JSON broke."""
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        outs = [Path(tmp) / f"samples-{n}.json" for n in range(procs)]
        children = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.load", base_url, str(rate / procs), str(seconds), f"{prefix}-p{n}",
            "--connections", str(connections), "--out", str(out), cwd=Path(__file__).resolve().parent.parent,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE) for n, out in enumerate(outs)]
        await _run_children(children, on_ready)
        samples = Samples()
        for out in outs:
            samples.merge(Samples.from_json(out.read_text()))
    return {**samples.summary(rate, seconds), "processes": procs, "generator_cpu_s": samples.cpu_s}


async def _run_children(children: list[asyncio.subprocess.Process], on_ready: Callable[[], None] | None) -> None:
    """Wait for every child's ``ready``, start them together, and wait for each to exit cleanly."""
    try:
        for child in children:
            assert child.stdout is not None
            if await child.stdout.readline() != b"ready\n":
                raise RuntimeError(f"open-loop generator exited with {await child.wait()}")
        if on_ready:
            on_ready()
        start_at = f"{time.time() + 0.05}\n".encode()
        await asyncio.gather(*(child.communicate(start_at) for child in children))
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    for child in children:
        if child.returncode != 0:
            raise RuntimeError(f"open-loop generator exited with {child.returncode}")


async def child(args: argparse.Namespace) -> Samples:
    """Connect, say ready, read the wall-clock start time from stdin, run the schedule."""
    conns = await connect(args.url, args.connections)
    print("ready", flush=True)
    start_at = float(await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline))
    start = time.perf_counter() + max(0.0, start_at - time.time())
    samples = await schedule(conns, args.rate, args.seconds, args.prefix, start)
    samples.cpu_s = sum(os.times()[:2])
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description="One open loop; raw samples as JSON.")
    parser.add_argument("url")
    parser.add_argument("rate", type=float)
    parser.add_argument("seconds", type=float)
    parser.add_argument("prefix")
    parser.add_argument("--connections", type=int, default=1024)
    parser.add_argument("--out", type=Path, help="write the samples here instead of to stdout")
    args = parser.parse_args()
    raise_fd_limit()
    text = uvloop.run(child(args)).to_json()
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
