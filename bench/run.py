"""``make bench``: the gateway against the framework ceiling and the obvious design.

Starts embedded Valkey + PostgreSQL under a temporary directory (or uses OMS_REDIS_URL /
OMS_DATABASE_URL), then runs, one after the other: bench/ceiling.py, bench/naive.py and
``python -m gateway serve`` with closed-loop rounds; against the gateway also a sold-out
SKU, open loops from 25% to 300% of its best rate, OMS_DURABILITY=async, and the writer
draining a backlog; then a raw COPY for comparison with the writer; last, the gateway's rounds
on a Valkey Cluster (bench/cluster.py). Prints the table and writes
bench/results/latest.{json,md,png}. bench/README.md says what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio
import uvloop
from rich.console import Console

from bench import cluster, procs
from bench.load import HEADERS, closed_loop, open_loop, open_loop_procs, order_body, raise_fd_limit
from bench.report import report
from bench.rows import Visibility, copy_rate, wait_rows, watch_drain
from gateway import keys
from gateway.ops.embedded import EmbeddedPostgres, EmbeddedValkey

ROOT = Path(__file__).resolve().parent.parent
STOCK = 10_000_000
VISIBILITY_SHARE = 0.8  # the open loop at 80% of the best rate also measures 201 → row (P6)


@dataclasses.dataclass
class Options:
    seconds: int = 5  # wrk takes whole seconds
    rounds: int = 2
    warmup: int = 3  # 0: none
    open_seconds: float = 5
    open_connections: int = 1024  # per open loop below the overload
    loads: tuple[float, ...] = (0.25, 0.5, VISIBILITY_SHARE, 1.0)  # open loops, shares of the best rate
    overload: float = 3.0
    overload_procs: int = 2
    overload_connections: int = 6000  # more than the gateway's in-flight limit (4096 when measured)
    cluster: bool = True  # the closed-loop rounds again on a Valkey Cluster (--no-cluster: not)


@dataclasses.dataclass
class Servers:
    """Where Redis and PostgreSQL are; their pids when they are ours (else their CPU is n/a)."""

    redis_url: str
    database_url: str
    redis_pid: int | None = None
    postgres_pid: int | None = None
    others: dict[str, int] = dataclasses.field(default_factory=dict)  # more servers' pids, by name: CPU counted


@dataclasses.dataclass
class Server:
    base: str
    pid: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def server(name: str, cmd: list[str], port: int, logs: Path, env: dict[str, str] | None = None,
                 ready: str = "") -> AsyncIterator[Server]:
    """Run ``cmd`` until the block ends, once ``ready`` answers (or the port accepts)."""
    base = f"http://127.0.0.1:{port}"
    with (logs / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        await wait_ready(proc, base, ready, logs / f"{name}.log")
        yield Server(base, proc.pid)
    finally:
        proc.terminate()  # the gateway drains its queue and writer on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: children too
            proc.wait()


async def wait_ready(proc: subprocess.Popen[bytes], base: str, path: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(base + (path or "/")) as resp:
                    if resp.status == 200 or not path:  # any answer means listening
                        return
            await asyncio.sleep(0.1)  # another process: readiness can only be polled
    raise RuntimeError(f"{proc.args} not ready in {timeout}s:\n{log.read_text()[-2000:]}")


Wrap = Callable[[Awaitable[dict[str, Any]]], Awaitable[dict[str, Any]]]


async def measure(base: str, opts: Options, label: str, wrap: Wrap | None = None) -> list[dict[str, Any]]:
    """A warm-up, then ``opts.rounds`` closed-loop rounds; ``wrap`` runs around each round."""
    if opts.warmup:
        await closed_loop(base, opts.warmup, f"{label}-warm")
    rounds = []
    for n in range(opts.rounds):
        load = closed_loop(base, opts.seconds, f"{label}-{n}")
        rounds.append(await (wrap(load) if wrap else load))
    for r in rounds:
        r["orders_per_s"] = r["ok"] / r["seconds"]
    return rounds


def best(rounds: list[dict[str, Any]]) -> float:
    return max(r["orders_per_s"] for r in rounds)


@dataclasses.dataclass
class Ledger:
    """Orders rows and HOT units reserved when the bench began: every unit reserved since is one
    row the writer owes PostgreSQL (Redis outlives gateway restarts, so this spans them)."""

    rows: int
    reserved: int


@dataclasses.dataclass
class Gateway:
    """A running gateway, with an HTTP session and a PostgreSQL connection to watch it by."""

    server: Server
    servers: Servers
    session: aiohttp.ClientSession
    conn: asyncpg.Connection

    @property
    def base(self) -> str:
        return self.server.base

    async def put_stock(self, sku: str, qty: int) -> None:
        async with self.session.put(f"{self.base}/v1/inventory/{sku}", json={"warehouses": {"W1": qty}},
                                    headers=HEADERS) as resp:
            assert resp.status == 200, await resp.text()

    async def reserved(self, sku: str = "HOT") -> int:
        async with self.session.get(f"{self.base}/v1/inventory/{sku}", headers=HEADERS) as resp:
            return (await resp.json())["reserved"]

    async def post_order(self, order_id: str) -> int:
        async with self.session.post(self.base + "/v1/orders", data=order_body(order_id, 0), headers=HEADERS) as resp:
            return resp.status

    async def ledger(self) -> Ledger:
        return Ledger(await self.conn.fetchval("SELECT count(*) FROM orders"), await self.reserved())

    async def owed(self, ledger: Ledger) -> int:
        """How many rows ``orders`` must hold once the writer has caught up."""
        return ledger.rows + await self.reserved() - ledger.reserved

    async def caught_up(self, ledger: Ledger, timeout: float = 120) -> None:
        await asyncio.wait_for(wait_rows(self.conn, await self.owed(ledger)), timeout)

    async def appendfsync(self) -> str:
        """Valkey's appendfsync while this gateway runs: does OMS_DURABILITY change it?"""
        return await appendfsync(self.servers.redis_url)

    def cpu(self) -> dict[str, float | None]:
        snap = procs.cpu_snapshot(self.server.pid, self.servers.redis_pid, self.servers.postgres_pid)
        return {**snap, **{name: procs.cpu_seconds(pid) for name, pid in self.servers.others.items()}}


async def appendfsync(url: str) -> str:
    """The appendfsync of the one Valkey server at ``url`` (CONFIG GET through a cluster client
    would ask any node)."""
    client = redis.asyncio.from_url(url)
    try:
        return (await client.config_get("appendfsync")).get("appendfsync", "unknown")
    except redis.RedisError as exc:  # CONFIG may be disabled on a managed server
        return f"unknown ({exc})"
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def gateway(servers: Servers, workdir: Path, name: str, **env: str) -> AsyncIterator[Gateway]:
    """``python -m gateway serve`` as ``make run`` starts it (fsync, writer on) unless ``env`` says otherwise."""
    port = free_port()
    env = {"OMS_REDIS_URL": servers.redis_url, "OMS_DATABASE_URL": servers.database_url,
           "OMS_PORT": str(port), "OMS_DATA_DIR": str(workdir / "gw"), "OMS_DURABILITY": "fsync", **env}
    async with (server(name, [sys.executable, "-m", "gateway", "serve"], port, workdir, env, ready="/readyz") as srv,
                aiohttp.ClientSession() as session):
        conn = await asyncpg.connect(servers.database_url)
        try:
            yield Gateway(srv, servers, session, conn)
        finally:
            await conn.close()


async def gateway_rounds(gw: Gateway, ledger: Ledger, opts: Options, label: str = "gw") -> list[dict[str, Any]]:
    """Closed-loop rounds; around each, the CPU every process spent from the round's start until
    PostgreSQL holds the round's orders, and how long the writer took after the last answer."""

    async def with_writer(load: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        await gw.caught_up(ledger)
        before = gw.cpu()
        result = await load
        end = time.monotonic()
        await gw.caught_up(ledger)
        result["writer_lag_s"] = time.monotonic() - end
        result["cpu_s"] = procs.cpu_used(before, gw.cpu())
        return result

    return await measure(gw.base, opts, label, with_writer)


def cpu_per_1000(rounds: list[dict[str, Any]]) -> dict[str, float | None]:
    """CPU seconds per 1000 accepted orders by process role, over all measured rounds."""
    orders = sum(r["ok"] for r in rounds)
    per: dict[str, float | None] = {}
    for name in rounds[0]["cpu_s"]:
        used = [r["cpu_s"].get(name) for r in rounds]
        per[name] = None if None in used else 1000 * sum(used) / orders
    return per


async def visible_open_loop(gw: Gateway, rate: float, seconds: float, prefix: str,
                            connections: int) -> dict[str, Any]:
    """The open loop while a poller times each 201 until its row is visible in PostgreSQL (P6)."""
    vis, stop = Visibility(gw.conn), asyncio.Event()
    poller = asyncio.create_task(vis.run(stop))
    try:
        result = await open_loop(gw.base, rate, seconds, prefix, connections, on_answer=vis.answered)
    finally:
        stop.set()
        await poller
    await vis.finish(timeout=60)
    result["visibility"] = vis.summary()
    return result


async def latency_curve(gw: Gateway, ledger: Ledger, rate: float, opts: Options, run_id: str) -> dict[str, Any]:
    """Open loops at each share of ``rate``, the writer caught up between them."""
    curve = {}
    for share in opts.loads:
        prefix = f"{run_id}-ol{share * 100:.0f}"
        if share == VISIBILITY_SHARE:
            curve[share] = await visible_open_loop(gw, rate * share, opts.open_seconds, prefix, opts.open_connections)
        else:
            curve[share] = await open_loop(gw.base, rate * share, opts.open_seconds, prefix, opts.open_connections)
        curve[share]["share"] = share
        await gw.caught_up(ledger)
    return curve


async def peak_of(sample: Callable[[], int], stop: asyncio.Event, interval: float = 0.05) -> int:
    peak = sample()
    while not stop.is_set():
        await asyncio.sleep(interval)
        peak = max(peak, sample())
    return peak


async def overload(gw: Gateway, ledger: Ledger, rate: float, opts: Options, run_id: str) -> dict[str, Any]:
    """The open loop at ``opts.overload`` × ``rate`` from several generator processes (one Python
    process cannot send that fast), over more connections than the gateway admits in flight; the
    gateway's RSS before, with the connections open, at its peak, and once caught up (P5)."""
    rss = functools.partial(procs.gateway_rss, gw.server.pid)
    marks: dict[str, Any] = {"before": rss()}
    stop = asyncio.Event()

    def ready() -> None:
        marks.update(connected=rss(), cpu=gw.cpu())

    sampler = asyncio.create_task(peak_of(rss, stop))
    try:
        result = await open_loop_procs(gw.base, rate * opts.overload, opts.open_seconds, f"{run_id}-over",
                                       procs=opts.overload_procs,
                                       connections=opts.overload_connections // opts.overload_procs, on_ready=ready)
    finally:
        stop.set()
        marks["peak"] = await sampler
    result["cpu_s"] = procs.cpu_used(marks.pop("cpu"), gw.cpu())
    await gw.caught_up(ledger)
    result.update(share=opts.overload, rss={**marks, "after": rss()})
    return result


async def sold_out(gw: Gateway, opts: Options) -> dict[str, Any]:
    """Closed loop of new orders for SKU SOLD (stock 0): every answer should be a 409 (P7)."""
    result = await closed_loop(gw.base, opts.seconds, "sold", sku="SOLD")
    result["answers_per_s"] = result["statuses"].get(409, 0) / result["seconds"]
    result["reserved_after"] = await gw.reserved("SOLD")
    return result


async def bench_gateway(servers: Servers, opts: Options, workdir: Path, run_id: str) -> dict[str, Any]:
    """The gateway as ``make run`` starts it: rounds with CPU, sold out, latency curve, overload."""
    async with gateway(servers, workdir, "gateway") as gw:
        await gw.put_stock("HOT", STOCK)
        await gw.put_stock("SOLD", 0)
        ledger = await gw.ledger()
        rounds = await gateway_rounds(gw, ledger, opts)
        rate = best(rounds)
        return {"rounds": rounds, "ledger": ledger, "appendfsync": await gw.appendfsync(),
                "sold_out": await sold_out(gw, opts),
                "curve": await latency_curve(gw, ledger, rate, opts, run_id),
                "overload": await overload(gw, ledger, rate, opts, run_id)}


async def bench_async(servers: Servers, ledger: Ledger, opts: Options, workdir: Path) -> dict[str, Any]:
    """The same closed-loop rounds with OMS_DURABILITY=async: what fsync costs. Our embedded
    Valkey is switched to ``appendfsync everysec`` meanwhile, as ``make run`` starts it then."""
    client = redis.asyncio.from_url(servers.redis_url) if servers.redis_pid else None
    try:
        if client:
            await client.config_set("appendfsync", "everysec")
        async with gateway(servers, workdir, "gateway-async", OMS_DURABILITY="async") as gw:
            rounds = await measure(gw.base, opts, "async")
            await gw.caught_up(ledger)
            return {"rounds": rounds, "appendfsync": await gw.appendfsync()}
    finally:
        if client:
            await client.config_set("appendfsync", "always")
            await client.aclose()


async def writer_capacity(servers: Servers, ledger: Ledger, opts: Options, workdir: Path,
                          run_id: str) -> dict[str, Any]:
    """P3: a backlog built with the writer off (between two marker orders), then the time a
    gateway with its writer on takes to drain it into PostgreSQL."""
    first, last = f"{run_id}-first", f"{run_id}-last"
    async with gateway(servers, workdir, "gateway-nowriter", OMS_RUN_WRITER="0") as gw:
        assert await gw.post_order(first) == 201
        push = await closed_loop(gw.base, opts.seconds, "push")
        assert await gw.post_order(last) == 201
        push["orders_per_s"] = push["ok"] / push["seconds"]
        target = await gw.owed(ledger)
    conn = await asyncpg.connect(servers.database_url)
    try:
        before = await conn.fetchval("SELECT count(*) FROM orders")  # the writer is off: nothing moves
        watch = asyncio.create_task(watch_drain(conn, first, last, target, before))
        async with gateway(servers, workdir, "gateway-drain"):
            drain = await asyncio.wait_for(watch, timeout=300)
    finally:
        watch.cancel()
        await conn.close()
    return {"push": push, "drain": drain}


async def bench_cluster(servers: Servers, one_node_rate: float, opts: Options, workdir: Path) -> dict[str, Any]:
    """The gateway's closed-loop rounds with CPU, as in bench_gateway, on a new Valkey Cluster
    (bench/cluster.py: every key on one of its primaries) and the same PostgreSQL; orders/s
    against ``one_node_rate``, the one-node run's best."""
    async with cluster.started(workdir / "cluster") as nodes:
        on = dataclasses.replace(servers, redis_url=nodes.url, redis_pid=nodes.pid, others=nodes.others())
        async with gateway(on, workdir, "gateway-cluster") as gw:
            await gw.put_stock("HOT", STOCK)
            rounds = await gateway_rounds(gw, await gw.ledger(), opts, "cluster")
        cpu = cpu_per_1000(rounds)
        cpu[nodes.holder] = cpu.pop("Redis")
        rate = best(rounds)
        return {"primaries": cluster.PRIMARIES, "replicas": cluster.REPLICAS, "hash_tag": nodes.tag, "slot": nodes.slot,
                "partition_primary": nodes.holder, "appendfsync": await appendfsync(nodes.node_url), "rounds": rounds,
                "best_orders_per_s": rate, "one_node_orders_per_s": one_node_rate,
                "ratio_to_one_node": rate / one_node_rate, "cpu_per_1000": cpu,
                "gateway_cpu_per_1000": cpu["gateway"], "partition_primary_cpu_per_1000": cpu[nodes.holder]}


SPREAD_SKUS = 10_000  # the hot-SKU section's other load: orders over this many SKUs


async def loaded_rounds(gw: Gateway, opts: Options, label: str, sku: str) -> list[dict[str, Any]]:
    """Closed-loop rounds of ``sku`` (``*N``: spread) with CPU until PostgreSQL has each round's orders."""
    expected = await gw.conn.fetchval("SELECT count(*) FROM orders")

    async def load(seconds: int, name: str) -> dict[str, Any]:
        nonlocal expected
        before = gw.cpu()
        result = await closed_loop(gw.base, seconds, name, sku)
        expected += result["ok"]
        await asyncio.wait_for(wait_rows(gw.conn, expected), 120)
        result["cpu_s"] = procs.cpu_used(before, gw.cpu())
        result["orders_per_s"] = result["ok"] / result["seconds"]
        return result

    if opts.warmup:
        await load(opts.warmup, f"{label}-warm")
    return [await load(opts.seconds, f"{label}-{n}") for n in range(opts.rounds)]


async def bench_hot(servers: Servers, opts: Options, workdir: Path) -> dict[str, Any]:
    """One SKU in a bucket per primary against orders spread over SPREAD_SKUS SKUs, on a new
    cluster with a partition per primary: how near buckets bring one hot SKU to an even spread,
    and how they share its Valkey CPU between the primaries."""
    n = cluster.PRIMARIES
    layout = keys.Partitions(n, ":", (("HOT", n),))
    async with cluster.started(workdir / "cluster-hot", layout) as nodes:
        on = dataclasses.replace(servers, redis_url=nodes.url, redis_pid=None, others=nodes.primaries())
        async with gateway(on, workdir, "gateway-hot", OMS_PARTITIONS=str(n), OMS_HOT_SKUS=f"HOT={n}") as gw:
            await gw.put_stock("HOT", STOCK)
            hot = await loaded_rounds(gw, opts, "hot", "HOT")
            for start in range(0, SPREAD_SKUS, 50):  # 500 at once ran out of cluster connections (503)
                await asyncio.gather(*(gw.put_stock(f"s{i}", STOCK // SPREAD_SKUS)
                                       for i in range(start, min(start + 50, SPREAD_SKUS))))
            spread = await loaded_rounds(gw, opts, "spread", f"*{SPREAD_SKUS}")
    result: dict[str, Any] = {"partitions": n, "buckets": n, "spread_skus": SPREAD_SKUS}
    for name, rounds in (("hot", hot), ("spread", spread)):
        cpu = cpu_per_1000(rounds)
        result[name] = {"rounds": rounds, "best_orders_per_s": best(rounds), "cpu_per_1000": cpu,
                        "primary_cpu_per_1000": {k: v for k, v in cpu.items() if k.startswith("Valkey primary")}}
    result["ratio_hot_to_spread"] = result["hot"]["best_orders_per_s"] / result["spread"]["best_orders_per_s"]
    return result


async def run_bench(servers: Servers, opts: Options, workdir: Path) -> dict[str, Any]:
    """Run every measurement against the given servers; return the results (see bench.report)."""
    py, run_id = sys.executable, f"r{time.time_ns():x}"
    port = free_port()
    async with server("ceiling", [py, "bench/ceiling.py", "--port", str(port)], port, workdir) as srv:
        ceiling = await measure(srv.base, opts, "ceiling")
    port = free_port()
    async with server("naive", [py, "bench/naive.py", "--port", str(port), "--dsn", servers.database_url,
                                "--stock", f"HOT={STOCK}"], port, workdir) as srv:
        naive = await measure(srv.base, opts, "naive")
    gw = await bench_gateway(servers, opts, workdir, run_id)
    port = free_port()  # the same open loop against the ceiling: the floor this method can measure
    async with server("ceiling-floor", [py, "bench/ceiling.py", "--port", str(port)], port, workdir) as srv:
        floor = await open_loop(srv.base, best(gw["rounds"]) / 2, opts.open_seconds, f"{run_id}-floor",
                                opts.open_connections)
    durable = await bench_async(servers, gw["ledger"], opts, workdir)
    writer = await writer_capacity(servers, gw["ledger"], opts, workdir, run_id)
    copy = await copy_rate(servers.database_url, writer["drain"]["rows"])
    clustered = await bench_cluster(servers, best(gw["rounds"]), opts, workdir) if opts.cluster else None
    if clustered is not None:
        clustered["hot_sku"] = await bench_hot(servers, opts, workdir)
    return summarize(opts, ceiling, naive, gw, floor, durable, writer, copy, clustered)


def summarize(opts: Options, ceiling: list[dict[str, Any]], naive: list[dict[str, Any]], gw: dict[str, Any],
              floor: dict[str, Any], durable: dict[str, Any], writer: dict[str, Any],
              copy: dict[str, Any], clustered: dict[str, Any] | None) -> dict[str, Any]:
    """The results document: every round, every figure, P1..P7; ``cluster`` None when skipped."""
    rates = {"ceiling": best(ceiling), "naive": best(naive), "gateway": best(gw["rounds"]),
             "gateway_async": best(durable["rounds"])}
    curve, over = gw["curve"], gw["overload"]
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "options": dataclasses.asdict(opts),
        "tool": ceiling[0]["tool"],
        "rounds": {"ceiling": ceiling, "naive": naive, "gateway": gw["rounds"], "gateway_async": durable["rounds"]},
        "appendfsync": {"fsync": gw["appendfsync"], "async": durable["appendfsync"]},
        "best_orders_per_s": rates,
        "cpu_per_1000": cpu_per_1000(gw["rounds"]),
        "open_loops": [*curve.values(), over],
        "open_loop_ceiling": floor,
        "sold_out": gw["sold_out"],
        "writer": writer,
        "copy": copy,
        "cluster": clustered,
        "P1": rates["gateway"] / rates["ceiling"],
        "P2": rates["gateway"] / rates["naive"],
        "P3": writer["drain"]["rows_per_s"] / copy["rows_per_s"],
        "P4": curve[0.5]["latency_ms"]["p99"],
        "P5": {"rss_growth_mb": (over["rss"]["peak"] - over["rss"]["before"]) / 2**20,
               "p99_201_ms": over["by_status_ms"].get(201, {}).get("p99", float("nan")),
               "p99_503_ms": over["by_status_ms"].get(503, {}).get("p99", float("nan"))},
        "P6": curve[VISIBILITY_SHARE]["visibility"]["p99_ms"],
        "P7": gw["sold_out"]["answers_per_s"] / rates["ceiling"],
        "fsync_cost": rates["gateway"] / rates["gateway_async"],
    }


@contextlib.contextmanager
def backends(workdir: Path) -> Iterator[Servers]:
    """OMS_REDIS_URL / OMS_DATABASE_URL when set, else embedded servers under ``workdir``."""
    started: list[EmbeddedValkey | EmbeddedPostgres] = []
    try:
        servers = Servers(os.environ.get("OMS_REDIS_URL", ""), os.environ.get("OMS_DATABASE_URL", ""))
        if not servers.redis_url:
            valkey = EmbeddedValkey(workdir / "valkey")
            started.append(valkey)
            servers.redis_url = valkey.start()
            servers.redis_pid = valkey.proc.pid if valkey.proc else None
        if not servers.database_url:
            postgres = EmbeddedPostgres(workdir / "pg", database="oms_bench")
            started.append(postgres)
            servers.database_url = postgres.start()
            servers.postgres_pid = procs.postmaster_pid(postgres.dir)
        yield servers
    finally:
        for s in reversed(started):
            s.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s, 1 s warm-up, 2 s open loops")
    parser.add_argument("--seconds", type=int, help="seconds per closed-loop round (default 5)")
    parser.add_argument("--rounds", type=int, help="closed-loop rounds per target (default 2)")
    parser.add_argument("--no-cluster", action="store_true", help="skip the rounds on a Valkey Cluster")
    args = parser.parse_args(argv)
    opts = Options(seconds=2, rounds=1, warmup=1, open_seconds=2) if args.quick else Options()
    opts.cluster = not args.no_cluster
    opts.seconds = args.seconds or opts.seconds
    opts.rounds = args.rounds or opts.rounds
    opts.open_seconds = min(opts.open_seconds, opts.seconds)
    console = Console(width=None if sys.stdout.isatty() else 160)
    started = time.monotonic()
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="oms-bench-"))
    try:
        with backends(workdir) as servers:
            results = uvloop.run(run_bench(servers, opts, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["took_s"] = time.monotonic() - started
    report(results, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
