"""``python -m gateway serve``: HTTP workers on one port and a writer, each its own process.

The writer takes a fifth of a process's CPU under load, so it runs beside the HTTP
workers instead of inside them. ``OMS_WORKERS`` HTTP processes bind the same port with
SO_REUSEPORT and the kernel spreads connections over them; everything they share lives in
Redis and PostgreSQL, so they need no coordination. Stopping goes in data-flow order: the
HTTP workers answer what they hold, then the writer drains the stream into PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client import multiprocess

from gateway import db, metrics, redisconn
from gateway.config import Settings
from gateway.ops import workerstate
from gateway.writer import Writers

log = logging.getLogger(__name__)

QUICK_DEATH = 10.0  # seconds: a child dying this soon after its start died "quickly"
BACKOFF = 0.5  # seconds before restarting after the first quick death, doubled for each further one
MAX_BACKOFF = 30.0
CANNOT_START = 2  # a child's exit code for a configuration it cannot run with: restarting cannot help
STOP_TIMEOUT = 30.0


class Child:
    def __init__(self, role: str, env: dict[str, str]) -> None:
        self.role = role
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.quick_deaths = 0
        self.restarts = 0
        self.restart_at: float | None = None  # while waiting out its back-off
        self.last_exit: int | None = None

    def spawn(self) -> None:
        # A new session: a terminal's Ctrl-C reaches only the supervisor, which stops
        # the children in order. Each child exits on its own if the supervisor dies.
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", self.role], env=self.env,
                                     start_new_session=True)
        self.started = time.monotonic()
        self.restart_at = None
        log.info("started %s worker, pid %d", self.role, self.proc.pid)

    def died(self, code: int) -> float:
        """Book a death; the back-off before the restart: none after a long life, then 0.5 s, 1 s, … 30 s."""
        self.last_exit = code
        self.restarts += 1
        quick = time.monotonic() - self.started < QUICK_DEATH
        self.quick_deaths = self.quick_deaths + 1 if quick else 0
        delay = min(BACKOFF * 2 ** (self.quick_deaths - 1), MAX_BACKOFF) if self.quick_deaths else 0.0
        self.proc = None
        self.restart_at = time.monotonic() + delay
        return delay

    def stop(self) -> int | None:
        """SIGTERM, wait for the graceful exit, SIGKILL after STOP_TIMEOUT."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.error("%s worker %d did not stop in %.0f s; killing it", self.role, self.proc.pid, STOP_TIMEOUT)
            self.proc.kill()
            return self.proc.wait()


def port_free(host: str, port: int) -> bool:
    """SO_REUSEPORT would let a stale gateway share the port silently; probe without it first."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds: TIME_WAIT is no owner
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def report(children: list[Child], path: Path) -> None:
    """The workers' state for /readyz and /metrics (gateway/ops/workerstate.py)."""
    roles: dict[str, dict[str, Any]] = {}
    for child in children:
        r = roles.setdefault(child.role, {"expected": 0, "running": 0, "restarts": 0, "restarting": 0,
                                          "last_exit": None})
        r["expected"] += 1
        r["running"] += child.proc is not None
        r["restarting"] += child.restart_at is not None
        r["restarts"] += child.restarts
        r["last_exit"] = child.last_exit if child.last_exit is not None else r["last_exit"]
    workerstate.write(path, roles)


def supervise(settings: Settings) -> int:
    """Run the children until SIGINT/SIGTERM, restarting one that dies, with back-off when it
    keeps dying; stop only for a child that cannot run with this configuration.

    A worker killed again and again (an OOM killer, a hurried operator) must never take the
    others with it: the HTTP workers take orders while the writer is away, and the stream
    keeps them until it is back.
    """
    if not port_free(settings.host, settings.port):
        log.error("%s:%d is in use (another gateway running?)", settings.host, settings.port)
        return 1
    run_dir = Path(tempfile.mkdtemp(prefix="oms-serve-"))  # the children's metrics files and the worker state
    metrics_dir = run_dir / "metrics"
    metrics_dir.mkdir()
    state = run_dir / "workers.json"
    env = {**os.environ, "OMS_SUPERVISOR_PID": str(os.getpid()), "OMS_REDIS_URL": settings.redis_url or "",
           "OMS_DATABASE_URL": settings.database_url or "", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
           workerstate.ENV: str(state)}
    http = [Child("http", {**env, "OMS_RUN_WRITER": "0"}) for _ in range(settings.workers)]
    writers = [Child("writer", env)] if settings.run_writer else []
    everyone = writers + http
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        for child in everyone:
            child.spawn()
        report(everyone, state)
        while not stop.wait(0.2):
            changed = False
            for child in everyone:
                if child.proc is None:
                    if child.restart_at is not None and time.monotonic() >= child.restart_at:
                        child.spawn()
                        changed = True
                    continue
                code = child.proc.poll()
                if code is None:
                    continue
                pid = child.proc.pid
                multiprocess.mark_process_dead(pid, str(metrics_dir))  # its live gauges go
                if code == CANNOT_START:
                    log.error("%s worker %d cannot start with this configuration (exit %d); stopping",
                              child.role, pid, code)
                    status = 1
                    stop.set()
                    break
                delay = child.died(code)
                log.error("%s worker %d exited with %d; restarting it%s", child.role, pid, code,
                          f" in {delay:.1f} s ({child.quick_deaths} quick exits in a row)" if delay else "")
                changed = True
            if changed:
                report(everyone, state)
    finally:
        log.info("stopping: HTTP workers answer what they hold, then the writer drains")
        for child in http:
            child.stop()
        for child in writers:
            child.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(run_dir, ignore_errors=True)
    return status


async def watch_parent(parent: int) -> None:
    """Exit gracefully (SIGTERM to ourselves) once the supervisor is gone.

    The supervisor's pid comes from the environment: it may have died before this started.
    """
    while os.getppid() == parent:
        await asyncio.sleep(1)  # no event reports a parent's death to a child in another session
    log.warning("the supervisor is gone; stopping")
    os.kill(os.getpid(), signal.SIGTERM)


@contextlib.asynccontextmanager
async def orphan_guard() -> AsyncIterator[None]:
    parent = os.environ.get("OMS_SUPERVISOR_PID")
    task = asyncio.create_task(watch_parent(int(parent))) if parent else None
    try:
        yield
    finally:
        if task:
            task.cancel()


async def run_writer(settings: Settings) -> None:
    """The writer process: drain the stream into PostgreSQL until SIGTERM, then drain once more."""
    assert settings.redis_url and settings.database_url
    client = redisconn.connect(settings.redis_url, socket_timeout=30, socket_connect_timeout=5)
    pool = await db.create_pool(settings.database_url)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    writer = Writers(client, pool, settings.layout, batch=settings.writer_batch, claim_idle_ms=settings.writer_claim_idle_ms,
                    low_stock=settings.low_stock)
    publisher = metrics.Publisher()
    publisher.start()
    try:
        await writer.ensure_group()
        task = writer.start()
        async with orphan_guard():
            await asyncio.wait([task, asyncio.create_task(stopping.wait())], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # a crashed writer exits non-zero so the supervisor restarts it
        try:
            await asyncio.wait_for(writer.close(drain=True), timeout=STOP_TIMEOUT - 5)
        except TimeoutError:
            log.warning("writer did not drain in time; the rest is written on the next start")
            await writer.close(drain=False)
        log.info("writer stopped after %d event(s)", writer.written)
    finally:
        await publisher.close()
        await pool.close()
        await client.aclose()
