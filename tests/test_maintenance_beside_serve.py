"""Maintenance commands beside ``serve``'s embedded servers use them and stop neither; alone,
a command stops the servers it started."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as sync_redis

from tests.conftest import ADMIN, order_body, process_alive
from tests.test_make_run import ROOT, free_port
from tests.test_supervisor import kill_serve, start_serve

pytestmark = pytest.mark.slow


def private_tmp() -> Iterator[Path]:
    """A directory outside pytest's base: each pytest session that starts resets that base to 0700,
    and PostgreSQL runs as another user when we are root, so an initdb under it can fail."""
    path = Path(tempfile.mkdtemp(prefix="oms-mnt-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def embedded_env(data_dir: Path, port: int | None = None) -> dict[str, str]:
    """No backend URLs: ``serve`` and the commands find the embedded servers under ``data_dir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")} | {"OMS_DATA_DIR": str(data_dir)}
    return env | ({"OMS_PORT": str(port)} if port else {})


def postmaster_pid(data_dir: Path) -> int | None:
    pidfile = data_dir / "pg" / "postmaster.pid"
    return int(pidfile.read_text().split()[0]) if pidfile.exists() else None


def valkey_pid(data_dir: Path) -> int | None:
    """The pid of the Valkey answering on the embedded socket, None when none answers."""
    from gateway.ops.embedded import EmbeddedValkey

    valkey = EmbeddedValkey(data_dir / "valkey")
    try:
        with sync_redis.Redis(unix_socket_path=str(valkey.socket), socket_timeout=2) as client:
            return int(client.info("server")["process_id"])
    except (sync_redis.RedisError, OSError):
        return None




async def run_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "gateway", *args], cwd=ROOT, env=env,
                                   capture_output=True, text=True, timeout=120)


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], base: str, data_dir: Path, log: Path) -> None:
        self.proc, self.base, self.data_dir, self.log = proc, base, data_dir, log
        self.env = embedded_env(data_dir)
        self.pg_pid = postmaster_pid(data_dir)
        self.valkey_pid = valkey_pid(data_dir)


@pytest.fixture(scope="module")
def module_tmp() -> Iterator[Path]:
    yield from private_tmp()


@pytest.fixture
def own_tmp() -> Iterator[Path]:
    yield from private_tmp()


@pytest.fixture(scope="module")
async def served(module_tmp: Path) -> AsyncIterator[Served]:
    """``python -m gateway serve`` on its own embedded servers, one order through it and written."""
    tmp = module_tmp
    data_dir = tmp / "data"
    proc, base = await start_serve(embedded_env(data_dir, free_port()), tmp / "serve.log")
    try:
        served = Served(proc, base, data_dir, tmp / "serve.log")
        assert served.pg_pid and served.valkey_pid, served.log.read_text()
        async with aiohttp.ClientSession() as http:
            async with http.put(base + "/v1/inventory/MNT-1", json={"warehouses": {"W1": 100}}, headers=ADMIN) as r:
                assert r.status == 200, await r.text()
            body = order_body("mnt-1", "u-mnt", [{"sku": "MNT-1", "qty": 2}])
            async with http.post(base + "/v1/orders", json=body, headers=ADMIN) as r:
                assert r.status == 201, await r.text()
            deadline = time.monotonic() + 30
            while "mnt-1" not in [e.get("order_id") for e in (await get(http, base + "/v1/events"))[1]["events"]]:
                assert time.monotonic() < deadline, "the writer did not write the order"
                await asyncio.sleep(0.2)  # another process's writer: polled
        yield served
        # serve still owns what it started: SIGTERM stops both servers
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0
        assert not process_alive(served.pg_pid) and not process_alive(served.valkey_pid)
    finally:
        kill_serve(proc)


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url, headers=ADMIN) as resp:
        return resp.status, await resp.json(content_type=None)


async def assert_every_route_answers(served: Served) -> None:
    """Liveness, readiness, and reads that need Redis, PostgreSQL, or both."""
    base = served.base
    async with aiohttp.ClientSession() as http:
        status, body = await get(http, base + "/healthz")
        assert status == 200, body
        status, body = await get(http, base + "/readyz")
        assert (status, body["redis"], body["postgres"]) == (200, True, True), body
        status, body = await get(http, base + "/v1/orders/mnt-1")
        assert (status, body["status"]) == (200, "pending_payment"), body
        status, body = await get(http, base + "/v1/inventory/MNT-1")
        assert (status, body["available"], body["reserved"]) == (200, 98, 2), body
        status, body = await get(http, base + "/v1/orders?limit=10")
        assert status == 200 and [o["order_id"] for o in body["orders"]] == ["mnt-1"], body
        status, body = await get(http, base + "/v1/events?limit=10")
        assert status == 200 and [e["type"] for e in body["events"]] == ["order.accepted"], body


@pytest.mark.parametrize(("args", "code", "says"), [
    pytest.param(["migrate"], 0, "applied 0 migration(s)", id="migrate"),
    pytest.param(["audit", "verify"], 0, "audit chain intact: 1 event(s) verified", id="audit-verify"),
    pytest.param(["reconcile"], 0, '"ok": true', id="reconcile"),
    pytest.param(["reconcile", "--repair"], 0, '"repaired": []', id="reconcile-repair"),
    pytest.param(["rebuild-redis"], 2, "rebuild-redis refused", id="rebuild-redis"),  # Redis is in service
    pytest.param(["backup"], 0, "backed up 1 orders, 1 events", id="backup"),
    # its own scratch database and Valkey: serve's are only read
    pytest.param(["drill"], 0, "restored 1 orders, 1 events, drift 0, audit chain intact", id="drill"),
])
async def test_command_beside_serve_uses_its_servers_and_stops_neither(served: Served, args, code, says):
    result = await run_command(served.env, *args)
    output = result.stdout + result.stderr
    assert (result.returncode, says in output) == (code, True), output
    assert "reusing embedded Valkey" in output and "reusing embedded PostgreSQL" in output, output
    assert "stopping embedded" not in output and "Traceback" not in output, output
    # the same server processes, still answering: nothing was stopped, nothing restarted
    assert (postmaster_pid(served.data_dir), valkey_pid(served.data_dir)) == (served.pg_pid, served.valkey_pid)
    assert served.proc.poll() is None
    await assert_every_route_answers(served)


@pytest.mark.parametrize("args", [["migrate"], ["reconcile"]], ids=" ".join)
async def test_command_alone_starts_the_servers_and_stops_them(own_tmp, args):
    data_dir = own_tmp / "data"
    if args != ["migrate"]:  # reconcile reads tables a fresh database does not have yet
        assert (await run_command(embedded_env(data_dir), "migrate")).returncode == 0
    result = await run_command(embedded_env(data_dir), *args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "embedded Valkey listening" in output and "embedded PostgreSQL listening" in output, output
    assert "stopping embedded Valkey" in output and "stopping embedded Postgres" in output, output
    assert (data_dir / "pg" / "PG_VERSION").exists()  # it did start PostgreSQL here
    assert postmaster_pid(data_dir) is None and valkey_pid(data_dir) is None
