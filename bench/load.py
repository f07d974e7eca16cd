"""Load generators: wrk when installed, else a Python closed loop; and a Python open loop.

Every request is a new order for one unit of one SKU, the same body ``bench/order.lua``
sends, so the three targets see identical traffic.
"""

from __future__ import annotations

import asyncio
import gc
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

ORDER_LUA = Path(__file__).resolve().parent / "order.lua"
HEADERS = {"Authorization": "Bearer dev-admin-key", "Content-Type": "application/json"}
REQUEST = (b"POST /v1/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer dev-admin-key\r\n"
           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n")
CONNECTIONS = 64


def order_body(order_id: str, n: int, sku: str = "HOT") -> bytes:
    return (f'{{"order_id":"{order_id}","user_id":"u-{n % 5000}","channel":"web",'
            f'"items":[{{"sku":"{sku}","qty":1}}]}}').encode()


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def closed_loop(base_url: str, seconds: int, prefix: str) -> dict[str, Any]:
    """Max throughput with 64 connections: wrk (-t1 -c64) when installed, else Python."""
    if shutil.which("wrk"):
        return await _wrk(base_url, seconds)
    return await python_closed_loop(base_url, seconds, prefix)


async def _wrk(base_url: str, seconds: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", str(ORDER_LUA), base_url + "/",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await proc.communicate())[0].decode()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed:\n{out}")
    done = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)\b", out)
    if not done:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    elapsed = float(done[2]) * {"ms": 0.001, "s": 1, "m": 60}[done[3]]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    requests = int(done[1])
    failed = int(non2xx[1]) if non2xx else 0
    return {"tool": "wrk", "requests": requests, "ok": requests - failed, "seconds": elapsed,
            "socket_errors": sum(map(int, errors.groups())) if errors else 0}


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time: far cheaper than aiohttp's client,
    so the Python generators are not the bottleneck at the rates they are used for."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None

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
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", self.buffer[:end])
        size = end + 4 + (int(length[1]) if length else 0)
        if len(self.buffer) >= size and self.waiter:
            self.waiter.set_result(int(self.buffer[9:12]))
            del self.buffer[:size]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    async def post_order(self, order_id: str, n: int) -> int:
        """POST one order; the status code, 0 when the connection failed."""
        body = order_body(order_id, n)
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(REQUEST % len(body) + body)  # type: ignore[attr-defined]
        try:
            return await self.waiter
        except ConnectionError:
            return 0

    def close(self) -> None:
        self.transport.close()


async def python_closed_loop(base_url: str, seconds: int, prefix: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    statuses: Counter[int] = Counter()
    conns = [await Connection.open(base_url) for _ in range(CONNECTIONS)]

    async def worker(w: int, conn: Connection) -> None:
        n = 0
        while loop.time() < stop:
            n += 1
            statuses[await conn.post_order(f"{prefix}-{w}-{n}", n)] += 1

    start = time.perf_counter()
    stop = loop.time() + seconds
    await asyncio.gather(*(worker(w, c) for w, c in enumerate(conns)))
    elapsed = time.perf_counter() - start
    for conn in conns:
        conn.close()
    ok = sum(n for status, n in statuses.items() if 200 <= status < 400)
    return {"tool": "python", "requests": sum(statuses.values()), "ok": ok, "seconds": elapsed,
            "socket_errors": statuses[0]}


async def open_loop(base_url: str, rate: float, seconds: float, prefix: str,
                    connections: int = 256) -> dict[str, Any]:
    """Send at a fixed rate whatever the answers do; latency counts from each request's due time.

    Measuring from the schedule, not from the send, keeps a stalled server from hiding its
    stall (coordinated omission). ``send_lag`` says how late the generator itself sent: when
    its p99 is more than a few ms, the generator, not the server, was the bottleneck.
    """
    total = int(rate * seconds)
    latencies: list[float] = []
    lags: list[float] = []
    statuses: Counter[int] = Counter()
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await Connection.open(base_url))

    async def one(i: int, due: float) -> None:
        lags.append(time.perf_counter() - due)  # waiting for a free connection below is the server's doing
        conn = await idle.get()
        statuses[await conn.post_order(f"{prefix}-{i}", i)] += 1
        latencies.append(time.perf_counter() - due)
        idle.put_nowait(conn)

    tasks = []
    start = time.perf_counter() + 0.01
    i = 0
    gc.disable()  # a collection pause in the generator would count as server latency
    try:
        while i < total:
            now = time.perf_counter()
            while i < total and start + i / rate <= now:
                tasks.append(asyncio.create_task(one(i, start + i / rate)))
                i += 1
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        await asyncio.gather(*tasks)
    finally:
        gc.enable()
    while not idle.empty():
        idle.get_nowait().close()
    latencies.sort()
    lags.sort()
    ms = {f"p{q}": percentile(latencies, q / 100) * 1000 for q in (50, 90, 99, 99.9)}
    send_lag_p99 = percentile(lags, 0.99) * 1000
    return {"rate": rate, "seconds": seconds, "requests": total, "statuses": dict(statuses),
            "latency_ms": {**ms, "max": latencies[-1] * 1000}, "send_lag_p99_ms": send_lag_p99,
            "generator_behind": send_lag_p99 > 5}
