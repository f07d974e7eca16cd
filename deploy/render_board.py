"""Draw the Grafana board's main panels into docs/board.png from a real sale: a gateway with
two HTTP workers on fresh embedded servers, a local Prometheus scraping it with
deploy/prometheus.yml, a minute of flash-sale traffic, then each panel's own PromQL through
Prometheus' query_range API, plotted with matplotlib.

    .venv/bin/python deploy/render_board.py [--seconds 60] [--out docs/board.png]

Needs the ``prometheus`` binary (Debian: ``apt-get install prometheus``); ``make test`` does not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing global

ROOT = Path(__file__).resolve().parent.parent
BOARD = ROOT / "deploy" / "grafana" / "flash-sale.json"
ADMIN = {"Authorization": "Bearer dev-admin-key"}
STEP = 2  # seconds between points of query_range
# the board's main panels, in reading order
PANELS = [
    "Orders/s by outcome", "Order latency p50 / p99", "Orders in flight",
    "Coalescer batch size", "Writer backlog (entries)", "Writer lag (seconds)",
    "Available units", "Sell-out ETA", "Transitions/s",
    "Expired orders/s", "Rows written/s by table", "Webhook deliveries/s",
]
UNITS = {"s": "seconds", "reqps": "per second", "ops": "per second", "rowsps": "rows per second", "none": ""}
SKUS = {"HOT-1": 1500, "HOT-2": 3000, "HOT-3": 600}  # sold out one after the other, late in the sale


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def poll(check, what: str, timeout: float = 120) -> None:
    """Wait for another process's state: only polling can see it."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def process(argv: list[str], log: Path, **options: Any) -> AsyncIterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **options)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def ok(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def receiver(deliveries: Counter[str]) -> tuple[web.AppRunner, str]:
    """A webhook consumer that takes every delivery."""
    async def take(request: web.Request) -> web.Response:
        deliveries[json.loads(await request.read())["type"]] += 1
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", take)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/hook"


async def flash_sale(http: aiohttp.ClientSession, base: str, seconds: float, hook: str) -> Counter[str]:
    """Buyers arriving faster, then slower: most pay, some cancel, the rest expire (10 s TTL)."""
    async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with http.request(method, base + path, json=body, headers=ADMIN) as resp:
            return resp.status, await resp.json(content_type=None)

    await call("PUT", "/v1/webhooks/render", {"url": hook, "events": ["order.paid", "order.shipped"],
                                              "secret": "render-board-secret-0123"})
    await call("PUT", "/v1/warehouses/W1", {"region": "east", "priority": 1, "active": True})
    await call("PUT", "/v1/warehouses/W2", {"region": "west", "priority": 2, "active": True})
    for sku, units in SKUS.items():
        await call("PUT", f"/v1/inventory/{sku}", {"warehouses": {"W1": units // 2, "W2": units - units // 2}})
    now = dt.datetime.now(dt.UTC)
    await call("PUT", "/v1/sales/render", {
        "skus": list(SKUS), "starts_at": now.isoformat(), "ends_at": (now + dt.timedelta(hours=1)).isoformat(),
        "per_user_limit": 3, "reservation_ttl": 10})
    outcomes: Counter[str] = Counter()
    rng = random.Random(11)
    tasks: set[asyncio.Task[None]] = set()

    async def buyer(n: int) -> None:
        order_id = f"r-{n}"
        body = {"order_id": order_id, "user_id": f"u-{rng.randrange(4000)}", "channel": "web", "sale_id": "render",
                "items": [{"sku": rng.choice(list(SKUS)), "qty": rng.choice((1, 1, 1, 2))}]}
        status, answer = await call("POST", "/v1/orders", body)
        outcomes[str(status) if status < 300 else answer.get("code", str(status))] += 1
        if status != 201:
            return
        if rng.random() < 0.05:  # a retry of the same order: replayed
            await call("POST", "/v1/orders", body)
        await asyncio.sleep(rng.uniform(0.5, 4))  # the buyer at the payment page
        fate = rng.random()
        if fate < 0.65:
            await call("POST", f"/v1/orders/{order_id}/payment", {"payment_id": f"p-{n}", "amount": 0})
            if rng.random() < 0.5:
                await call("POST", f"/v1/orders/{order_id}/ship", {})
        elif fate < 0.8:
            await call("POST", f"/v1/orders/{order_id}/cancel", {"reason": "customer"})
        # the rest never pay: their reservations expire

    started = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - started) < seconds:
        rate = 30 + 270 * math.sin(math.pi * elapsed / seconds) ** 2  # orders/s: a rush, then the tail
        for _ in range(rng.randint(0, round(rate / 5))):  # 0.1 s ticks
            n += 1
            task = asyncio.create_task(buyer(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(0.1)
    await asyncio.gather(*tasks)
    return outcomes


def promql(expr: str) -> str:
    """A panel's expression as Prometheus takes it: Grafana's variables filled in."""
    return expr.replace("$__rate_interval", "20s").replace('"$job"', '".*"').replace('"$sku"', '".*"')


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), fmt) or "value"


async def draw(http: aiohttp.ClientSession, prom: str, start: float, end: float, seconds: float, out: Path) -> None:
    panels = {p["title"]: p for p in json.loads(BOARD.read_text())["panels"]}
    fig = Figure(figsize=(18, 15), layout="constrained")
    axes = fig.subplots(4, 3)
    fig.suptitle(f"{json.loads(BOARD.read_text())['title']} — {len(PANELS)} of the board's panels over a "
                 f"{seconds:g} s flash sale and its tail, two HTTP workers and a writer", fontsize=14)
    for ax, title in zip(axes.flat, PANELS, strict=True):
        panel = panels[title]
        for target in panel["targets"]:
            params = {"query": promql(target["expr"]), "start": start, "end": end, "step": STEP}
            async with http.get(prom + "/api/v1/query_range", params=params) as resp:
                answer = await resp.json()
            if answer["status"] != "success":
                raise SystemExit(f"{title}: {answer}")
            for series in answer["data"]["result"]:
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, label=legend(target.get("legendFormat", ""), series["metric"]), linewidth=1.2)
        ax.set_title(title)
        ax.set_xlabel("seconds into the sale")
        ax.set_ylabel(UNITS[panel["fieldConfig"]["defaults"]["unit"]])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper right")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="length of the sale")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "board.png")
    args = parser.parse_args()
    binary = shutil.which("prometheus")
    if not binary:
        raise SystemExit("no prometheus binary on PATH (Debian: apt-get install prometheus)")
    with tempfile.TemporaryDirectory(prefix="render-board-") as tmp:
        work = Path(tmp)
        port, prom_port = free_port(), free_port()
        config = work / "prometheus.yml"  # the shipped config, pointed at this gateway's port
        config.write_text((ROOT / "deploy" / "prometheus.yml").read_text().replace("127.0.0.1:8080",
                                                                                   f"127.0.0.1:{port}"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")} | {
            "OMS_PORT": str(port), "OMS_WORKERS": "2", "OMS_DATA_DIR": str(work / "data")}
        base, prom = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prom_port}"
        deliveries: Counter[str] = Counter()
        runner, hook = await receiver(deliveries)
        async with (process([sys.executable, "-m", "gateway", "serve"], work / "serve.log", cwd=ROOT, env=env),
                    process([binary, f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"], work / "prometheus.log"),
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as http):
            await poll(lambda: ok(http, base + "/readyz"), "the gateway")

            async def scraped() -> bool:
                async with http.get(prom + "/api/v1/targets") as resp:
                    return any(t["health"] == "up" for t in (await resp.json())["data"]["activeTargets"])

            await poll(scraped, "Prometheus' first scrape")
            start = time.time()
            outcomes = await flash_sale(http, base, args.seconds, hook)
            await asyncio.sleep(20)  # the tail: the last reservations expire, the writer drains, scrapes land
            end = time.time()
            await draw(http, prom, start, end, args.seconds, args.out)
        await runner.cleanup()
    print(f"{args.out}: orders {dict(outcomes)}, webhooks delivered {dict(deliveries)}")


if __name__ == "__main__":
    asyncio.run(main())
