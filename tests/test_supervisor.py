"""``serve`` as a supervisor: OMS_WORKERS HTTP processes share one port, a writer process
persists what any of them accepted, a killed worker is replaced, stopping drains in order,
and children do not outlive a supervisor that was killed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import redis as sync_redis

from bench.soak import children
from gateway.config import Settings
from gateway.ops.cli import backends as start_backends
from gateway.ops.supervisor import QUICK_DEATH, Child
from tests.conftest import ADMIN, Backends, order_body, process_alive
from tests.test_make_run import ROOT, free_port

pytestmark = pytest.mark.slow


async def until(check: Callable[[], object], timeout: float = 30) -> None:
    """Poll another process's state: nothing in this process can be awaited for it."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


def serve_env(backends: Backends, port: int, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")}
    return env | {"OMS_REDIS_URL": backends.redis_url, "OMS_DATABASE_URL": backends.database_url,
                  "OMS_PORT": str(port), "OMS_WORKERS": "2", "OMS_DATA_DIR": str(tmp_path / "data")}


async def start_serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m gateway serve``, once ``/readyz`` answers 200."""
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{env['OMS_PORT']}"
    async with aiohttp.ClientSession() as http:
        async def ready() -> bool:
            try:
                async with http.get(base + "/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        deadline = time.monotonic() + 60
        while not await ready():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.2)  # another process: readiness can only be polled
    return proc, base


@pytest.fixture
async def serve(backends: Backends, redis, pg, tmp_path) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """``python -m gateway serve`` with two HTTP workers against the test servers."""
    proc, base = await start_serve(serve_env(backends, free_port(), tmp_path), tmp_path / "serve.log")
    try:
        yield proc, base
    finally:
        kill_serve(proc)


def kill_serve(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL serve and every child it left, whatever state the test left them in.

    The children are found first: once the supervisor is dead they belong to init, and an
    orphaned writer would go on writing the next test's stream into the shared PostgreSQL.
    """
    kids = set(children(proc.pid))
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in kids | set(children(proc.pid)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def workers_answering(base: str, want: int, timeout: float = 30.0) -> set[int]:
    """The worker pids seen over new connections (the kernel spreads them by hash).

    Asks until ``want`` answered or ``timeout`` passed: a worker still starting is not
    listening yet, and every connection goes to the ones that are.
    """
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            async with http.get(base + "/healthz") as resp:
                seen.add((await resp.json())["worker"])
        if len(seen) >= want:
            break
    return seen


async def test_two_workers_share_the_port_and_sell_the_stock_once(serve, pg):
    proc, base = serve
    roles = children(proc.pid)
    assert sorted(roles.values()) == ["http", "http", "writer"]
    http_pids = {pid for pid, role in roles.items() if role == "http"}
    assert await workers_answering(base, 2) == http_pids

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.put(base + "/v1/inventory/SUP-1", json={"warehouses": {"W1": 150}}, headers=ADMIN) as r:
            assert r.status == 200

        async def buy(n: int) -> int:
            body = order_body(f"sup-{n}", f"u-{n}", [{"sku": "SUP-1", "qty": 1}])
            async with http.post(base + "/v1/orders", json=body, headers=ADMIN) as resp:
                return resp.status

        statuses = Counter(await asyncio.gather(*(buy(n) for n in range(300))))
    assert statuses == {201: 150, 409: 150}

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 60) == 0
    assert not any(process_alive(pid) for pid in roles)
    # the writer drained before the supervisor returned: every accepted order is in PostgreSQL
    assert await pg.fetchval("SELECT count(*) FROM orders WHERE order_id LIKE 'sup-%'") == 150


async def test_a_killed_http_worker_is_replaced_and_orders_keep_flowing(serve):
    proc, base = serve
    before = children(proc.pid)
    victim = next(pid for pid, role in before.items() if role == "http")
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        now = children(proc.pid)
        return victim not in now and list(now.values()).count("http") == 2

    await until(replaced)
    now = children(proc.pid)
    replacement = set(now) - set(before)
    assert len(replacement) == 1 and now[next(iter(replacement))] == "http"
    expected = {pid for pid, role in now.items() if role == "http"}
    assert await workers_answering(base, 2) == expected  # asks until the new one listens too
    assert proc.poll() is None


async def test_children_stop_when_the_supervisor_is_killed(serve):
    proc, _ = serve
    kids = children(proc.pid)
    assert len(kids) == 3
    proc.kill()
    proc.wait()
    await until(lambda: not any(process_alive(pid) for pid in kids))


async def test_a_second_gateway_on_a_busy_port_refuses_to_start(serve, backends: Backends, tmp_path):
    _, base = serve
    env = serve_env(backends, int(base.rsplit(":", 1)[1]), tmp_path / "second")
    proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "gateway", "serve"], cwd=ROOT, env=env,
                                   capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "in use" in proc.stderr and "Traceback" not in proc.stderr


async def test_a_stopped_gateway_can_start_again_on_its_port_at_once(serve, backends: Backends, tmp_path):
    proc, base = serve
    async with aiohttp.ClientSession() as http:
        for _ in range(5):
            async with http.get(base + "/healthz") as resp:
                assert resp.status == 200
        # stopping closes these kept-alive connections from the server's side: TIME_WAIT on its port
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0
    again, _ = await start_serve(serve_env(backends, int(base.rsplit(":", 1)[1]), tmp_path), tmp_path / "again.log")
    again.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(again.wait, 60) == 0


@pytest.mark.parametrize("command", ["http", "writer"])
def test_worker_commands_need_both_urls(tmp_path, command):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")} | {"OMS_DATA_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "gateway", command], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "OMS_REDIS_URL" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("durability", "appendfsync"), [("fsync", "always"), ("async", "everysec")])
def test_embedded_valkey_fsyncs_every_write_only_for_fsync_durability(backends: Backends, tmp_path,
                                                                      durability, appendfsync):
    settings = Settings.from_env({"OMS_DATABASE_URL": backends.database_url, "OMS_DURABILITY": durability,
                                  "OMS_DATA_DIR": str(tmp_path / "data")})
    with start_backends(settings) as started:
        assert started.redis_url and started.redis_url != backends.redis_url
        client = sync_redis.Redis.from_url(started.redis_url)
        assert client.config_get("appendfsync") == {"appendfsync": appendfsync}
        client.close()


async def test_a_writer_killed_again_and_again_comes_back_with_backoff_while_intake_goes_on(serve, pg):
    proc, base = serve
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async def get(path: str) -> dict:
            async with http.get(base + path, headers=ADMIN) as resp:
                assert resp.status == 200, path
                return await resp.json() if path != "/metrics" else {"text": await resp.text()}

        async def order(n: int) -> int:
            body = order_body(f"bo-{n}", f"u-{n}", [{"sku": "BO-1", "qty": 1}])
            async with http.post(base + "/v1/orders", json=body, headers=ADMIN) as resp:
                return resp.status

        async with http.put(base + "/v1/inventory/BO-1", json={"warehouses": {"W1": 100}}, headers=ADMIN) as r:
            assert r.status == 200
        killed: list[int] = []
        for n in range(4):  # as an OOM killer would: each new writer dies right after its start
            await until(lambda: any(role == "writer" and pid not in killed
                                    for pid, role in children(proc.pid).items()))
            victim = next(pid for pid, role in children(proc.pid).items() if role == "writer" and pid not in killed)
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            assert await order(n) == 201  # intake never stops
        async def readiness_when(check: Callable[[dict], bool]) -> dict:
            deadline = time.monotonic() + 30
            while not check(ready := await get("/readyz")):
                assert time.monotonic() < deadline, ready
                await asyncio.sleep(0.1)  # the supervisor's state, another process's: polled
            return ready

        # the fourth quick death waits 4 s: the HTTP workers say so and still take orders
        ready = await readiness_when(lambda r: r["workers"]["writer"]["restarts"] == 4)
        assert ready["ready"] is True and ready["degraded"] == ["writer"]
        assert ready["workers"]["writer"] == {"expected": 1, "running": 0, "restarts": 4, "restarting": 1,
                                              "last_exit": -9}
        assert await order(4) == 201
        ready = await readiness_when(lambda r: not r["degraded"])  # back after its back-off
        assert ready["workers"]["writer"]["running"] == 1 and proc.poll() is None
        text = (await get("/metrics"))["text"]
        assert 'oms_worker_restarts_total{role="writer"} 4.0' in text
        assert 'oms_workers_running{role="http"} 2.0' in text
    deadline = time.monotonic() + 30
    while await pg.fetchval("SELECT count(*) FROM orders WHERE order_id LIKE 'bo-%'") < 5:
        assert time.monotonic() < deadline, "the restarted writer did not write the orders taken meanwhile"
        await asyncio.sleep(0.2)


def test_the_backoff_doubles_with_each_quick_death_and_resets_after_a_long_life():
    child = Child("writer", {})
    delays = []
    for _ in range(9):
        child.started = time.monotonic()  # as spawn sets it
        delays.append(child.died(-9))
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    child.started = time.monotonic() - QUICK_DEATH - 1  # it ran a while before dying
    assert child.died(1) == 0.0 and child.restarts == 10 and child.last_exit == 1
