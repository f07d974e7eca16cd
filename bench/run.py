"""``make bench``: the gateway against the framework ceiling and the obvious design.

Starts embedded Valkey + PostgreSQL under a temporary directory (or uses OMS_REDIS_URL /
OMS_DATABASE_URL), then runs, one after the other: bench/ceiling.py, bench/naive.py and
``python -m gateway serve``, each with a warm-up and N closed-loop rounds; then an
open-loop run against the gateway at half its best rate, and a raw COPY for comparison
with the writer. Prints the table and writes bench/results/latest.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import uvloop
from rich.console import Console
from rich.table import Table

from bench.load import HEADERS, closed_loop, open_loop
from gateway.embedded import EmbeddedPostgres, EmbeddedValkey

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
STOCK = 10_000_000


@dataclasses.dataclass
class Options:
    seconds: int = 5
    rounds: int = 2
    warmup: int = 3
    open_seconds: int = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def server(name: str, cmd: list[str], port: int, logs: Path, env: dict[str, str] | None = None,
                 ready: str = "") -> AsyncIterator[str]:
    """Run ``cmd`` until the block ends; yield its base URL once ``ready`` answers (or the port accepts)."""
    base = f"http://127.0.0.1:{port}"
    with (logs / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        await wait_ready(proc, base, ready, logs / f"{name}.log")
        yield base
    finally:
        proc.terminate()  # the gateway drains its queue and writer on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
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


async def measure(base: str, opts: Options, label: str, between: Any = None) -> list[dict[str, Any]]:
    """A warm-up, then ``opts.rounds`` closed-loop rounds; ``between`` wraps each round."""
    await closed_loop(base, opts.warmup, f"{label}-warm")
    rounds = []
    for n in range(opts.rounds):
        if between is None:
            rounds.append(await closed_loop(base, opts.seconds, f"{label}-{n}"))
        else:
            rounds.append(await between(closed_loop(base, opts.seconds, f"{label}-{n}")))
    for r in rounds:
        r["orders_per_s"] = r["ok"] / r["seconds"]
    return rounds


async def reserved(session: aiohttp.ClientSession, base: str) -> int:
    async with session.get(base + "/v1/inventory/HOT", headers=HEADERS) as resp:
        return (await resp.json())["reserved"]


async def bench_gateway(base: str, database_url: str, opts: Options) -> dict[str, Any]:
    """Closed-loop rounds; per round the writer's rate: orders in PostgreSQL per second from the
    round's start until PostgreSQL holds every order the round reserved. Then the open loop."""
    conn = await asyncpg.connect(database_url)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.put(base + "/v1/inventory/HOT", json={"warehouses": {"W1": STOCK}},
                                   headers=HEADERS) as resp:
                assert resp.status == 200, await resp.text()

            base_rows, base_reserved = await conn.fetchval("SELECT count(*) FROM orders"), await reserved(session, base)

            async def caught_up() -> int:
                """Wait until PostgreSQL holds every order reserved since the start; return that count."""
                target = base_rows + await reserved(session, base) - base_reserved
                while await conn.fetchval("SELECT count(*) FROM orders") < target:
                    await asyncio.sleep(0.05)
                return target

            async def with_writer(load: Any) -> dict[str, Any]:
                before = await caught_up()
                start = time.monotonic()
                result = await load
                end = time.monotonic()
                rows = await caught_up() - before
                done = time.monotonic()
                result["writer"] = {"rows": rows, "rows_per_s": rows / (done - start), "lag_s": done - end}
                return result

            rounds = await measure(base, opts, "gw", with_writer)
        best = max(r["orders_per_s"] for r in rounds)
        latency = await open_loop(base, best / 2, opts.open_seconds, f"ol-{time.time_ns()}")
        return {"rounds": rounds, "open_loop": latency}
    finally:
        await conn.close()


async def copy_rate(database_url: str, rows: int) -> dict[str, Any]:
    """Raw asyncpg COPY of ``rows`` order rows into a scratch table shaped like ``orders``."""
    now = dt.datetime.now(dt.UTC)
    columns = ["order_id", "user_id", "channel", "status", "payload", "reserved_until", "created_at", "updated_at"]
    records = [(f"copy-{i}", f"u-{i % 5000}", "web", "pending_payment",
                f'{{"order_id":"copy-{i}","items":[{{"sku":"HOT","qty":1}}]}}', now, now, now)
               for i in range(rows)]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE SCHEMA IF NOT EXISTS naive; DROP TABLE IF EXISTS naive.copy_probe;"
                           "CREATE TABLE naive.copy_probe (LIKE public.orders INCLUDING ALL)")
        start = time.monotonic()
        await conn.copy_records_to_table("copy_probe", schema_name="naive", records=records, columns=columns)
        elapsed = time.monotonic() - start
        await conn.execute("DROP TABLE naive.copy_probe")
    finally:
        await conn.close()
    return {"rows": rows, "seconds": elapsed, "rows_per_s": rows / elapsed}


async def run_bench(redis_url: str, database_url: str, opts: Options, workdir: Path) -> dict[str, Any]:
    """Run every measurement against the given servers; return the results dict (P1..P4 keys)."""
    py = sys.executable
    port = free_port()
    async with server("ceiling", [py, "bench/ceiling.py", "--port", str(port)], port, workdir) as base:
        ceiling = await measure(base, opts, "ceiling")
    port = free_port()
    async with server("naive", [py, "bench/naive.py", "--port", str(port), "--dsn", database_url,
                                "--stock", f"HOT={STOCK}"], port, workdir) as base:
        naive = await measure(base, opts, "naive")
    port = free_port()
    env = {"OMS_REDIS_URL": redis_url, "OMS_DATABASE_URL": database_url, "OMS_PORT": str(port),
           "OMS_DATA_DIR": str(workdir / "gw"), "OMS_DURABILITY": "fsync"}
    async with server("gateway", [py, "-m", "gateway", "serve"], port, workdir, env, ready="/readyz") as base:
        gateway = await bench_gateway(base, database_url, opts)
    port = free_port()  # the same open loop against the ceiling: the floor this method can measure
    async with server("ceiling-floor", [py, "bench/ceiling.py", "--port", str(port)], port, workdir) as base:
        floor = await open_loop(base, gateway["open_loop"]["rate"], opts.open_seconds, "floor")
    written = sum(r["writer"]["rows"] for r in gateway["rounds"])
    copy = await copy_rate(database_url, max(written, 1000))
    best = {name: max(r["orders_per_s"] for r in rounds)
            for name, rounds in (("ceiling", ceiling), ("naive", naive), ("gateway", gateway["rounds"]))}
    writer = max(r["writer"]["rows_per_s"] for r in gateway["rounds"])
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "options": dataclasses.asdict(opts),
        "tool": ceiling[0]["tool"],
        "rounds": {"ceiling": ceiling, "naive": naive, "gateway": gateway["rounds"]},
        "best_orders_per_s": best,
        "open_loop": gateway["open_loop"],
        "open_loop_ceiling": floor,
        "writer_rows_per_s": writer,
        "copy": copy,
        "P1": best["gateway"] / best["ceiling"],
        "P2": best["gateway"] / best["naive"],
        "P3": writer / copy["rows_per_s"],
        "P4": gateway["open_loop"]["latency_ms"]["p99"],
    }


def rows(results: dict[str, Any]) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """The figures as (what, value, per-round detail) and the ratios as (name, value, meaning)."""
    best, ol = results["best_orders_per_s"], results["open_loop"]
    figures = [(f"{name} orders/s (best of {len(results['rounds'][name])})", f"{best[name]:,.0f}",
                ", ".join(f"{r['orders_per_s']:,.0f}" for r in results["rounds"][name]))
               for name in ("ceiling", "naive", "gateway")]
    lat = ol["latency_ms"]
    floor = results["open_loop_ceiling"]
    figures += [
        ("writer rows/s (best round)", f"{results['writer_rows_per_s']:,.0f}",
         "; ".join(f"{r['writer']['rows']:,} rows, lag {r['writer']['lag_s']:.2f}s" for r in results["rounds"]["gateway"])),
        ("COPY rows/s", f"{results['copy']['rows_per_s']:,.0f}", f"{results['copy']['rows']:,} rows"),
        (f"open loop at {ol['rate']:,.0f}/s", f"p99 {lat['p99']:.1f} ms",
         f"p50 {lat['p50']:.1f} / p90 {lat['p90']:.1f} / p99.9 {lat['p99.9']:.1f} / max {lat['max']:.1f} ms; "
         f"send lag p99 {ol['send_lag_p99_ms']:.1f} ms" + (" GENERATOR BEHIND" if ol["generator_behind"] else "")),
        ("same open loop on the ceiling", f"p99 {floor['latency_ms']['p99']:.1f} ms",
         "the floor of this measurement (generator and server share the machine)"
         + (" GENERATOR BEHIND" if floor["generator_behind"] else "")),
    ]
    ratios = [
        ("P1", f"{results['P1']:.2f}", "gateway ÷ ceiling orders/s (goal 0.8)"),
        ("P2", f"{results['P2']:.1f}", "gateway ÷ naive orders/s"),
        ("P3", f"{results['P3']:.2f}", "writer rows/s ÷ COPY rows/s"),
        ("P4", f"{results['P4']:.1f} ms", "gateway p99 latency at 50% of its max"),
    ]
    return figures, ratios


def markdown(results: dict[str, Any]) -> str:
    figures, ratios = rows(results)
    m = results["machine"]
    lines = [f"Measured {results['when']} on {m['cpus']} CPUs ({m['platform']}, Python {m['python']}), "
             f"load by {results['tool']}, {results['options']}", "",
             "| measure | value | detail |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in figures]
    lines += ["", "| ratio | value | meaning |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in ratios]
    return "\n".join(lines) + "\n"


def report(results: dict[str, Any], console: Console) -> None:
    figures, ratios = rows(results)
    table = Table(title=f"make bench — {results['when']}, {results['machine']['cpus']} CPUs, load by {results['tool']}")
    for col in ("measure", "value", "detail"):
        table.add_column(col)
    for row in figures:
        table.add_row(*row)
    table.add_section()
    for row in ratios:
        table.add_row(*row)
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(markdown(results))
    console.print(f"written {RESULTS / 'latest.json'} and {RESULTS / 'latest.md'}")


@contextlib.contextmanager
def backends(workdir: Path) -> Iterator[tuple[str, str]]:
    """OMS_REDIS_URL / OMS_DATABASE_URL when set, else embedded servers under ``workdir``."""
    started: list[EmbeddedValkey | EmbeddedPostgres] = []
    try:
        redis_url = os.environ.get("OMS_REDIS_URL")
        if not redis_url:
            started.append(EmbeddedValkey(workdir / "valkey"))
            redis_url = started[-1].start()
        database_url = os.environ.get("OMS_DATABASE_URL")
        if not database_url:
            started.append(EmbeddedPostgres(workdir / "pg", database="oms_bench"))
            database_url = started[-1].start()
        yield redis_url, database_url
    finally:
        for s in reversed(started):
            s.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s, 1 s warm-up, 2 s open loop")
    parser.add_argument("--seconds", type=int, help="seconds per closed-loop round (default 5)")
    parser.add_argument("--rounds", type=int, help="closed-loop rounds per target (default 2)")
    args = parser.parse_args(argv)
    opts = Options(seconds=2, rounds=1, warmup=1, open_seconds=2) if args.quick else Options()
    opts.seconds = args.seconds or opts.seconds
    opts.rounds = args.rounds or opts.rounds
    opts.open_seconds = min(opts.open_seconds, opts.seconds)
    console = Console(width=None if sys.stdout.isatty() else 160)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="oms-bench-"))
    try:
        with backends(workdir) as (redis_url, database_url):
            results = uvloop.run(run_bench(redis_url, database_url, opts, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, console)
    console.print(f"took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
