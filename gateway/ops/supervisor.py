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
from types import FrameType

import redis.asyncio as aioredis
from prometheus_client import multiprocess

from gateway import db, metrics
from gateway.config import Settings
from gateway.writer import Writer

log = logging.getLogger(__name__)

QUICK_DEATH = 10.0  # seconds: a child dying this soon after its start counts as failing to start
MAX_QUICK_DEATHS = 3  # in a row, then the setup is broken (PostgreSQL gone, bad code): give up
STOP_TIMEOUT = 30.0


class Child:
    def __init__(self, role: str, env: dict[str, str]) -> None:
        self.role = role
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.quick_deaths = 0

    def spawn(self) -> None:
        # A new session: a terminal's Ctrl-C reaches only the supervisor, which stops
        # the children in order. Each child exits on its own if the supervisor dies.
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", self.role], env=self.env,
                                     start_new_session=True)
        self.started = time.monotonic()
        log.info("started %s worker, pid %d", self.role, self.proc.pid)

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


def supervise(settings: Settings) -> int:
    """Run the children until SIGINT/SIGTERM, restarting one that dies; give up on one that cannot start."""
    if not port_free(settings.host, settings.port):
        log.error("%s:%d is in use (another gateway running?)", settings.host, settings.port)
        return 1
    metrics_dir = tempfile.mkdtemp(prefix="oms-metrics-")  # the children's prometheus-client files
    env = {**os.environ, "OMS_SUPERVISOR_PID": str(os.getpid()), "OMS_REDIS_URL": settings.redis_url or "",
           "OMS_DATABASE_URL": settings.database_url or "", "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    http = [Child("http", {**env, "OMS_RUN_WRITER": "0"}) for _ in range(settings.workers)]
    writers = [Child("writer", env)] if settings.run_writer else []
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        for child in writers + http:
            child.spawn()
        while not stop.wait(0.5):
            for child in writers + http:
                assert child.proc is not None
                code = child.proc.poll()
                if code is None:
                    continue
                quick = time.monotonic() - child.started < QUICK_DEATH
                child.quick_deaths = child.quick_deaths + 1 if quick else 0
                if child.quick_deaths >= MAX_QUICK_DEATHS:
                    log.error("%s worker keeps exiting right after its start (last code %d); stopping",
                              child.role, code)
                    status = 1
                    stop.set()
                    break
                log.error("%s worker %d exited with %d; restarting it", child.role, child.proc.pid, code)
                multiprocess.mark_process_dead(child.proc.pid, metrics_dir)  # its live gauges go
                child.spawn()
    finally:
        log.info("stopping: HTTP workers answer what they hold, then the writer drains")
        for child in http:
            child.stop()
        for child in writers:
            child.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
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
    client = aioredis.from_url(settings.redis_url, socket_timeout=30, socket_connect_timeout=5)
    pool = await db.create_pool(settings.database_url)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    writer = Writer(client, pool, batch=settings.writer_batch, claim_idle_ms=settings.writer_claim_idle_ms,
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
