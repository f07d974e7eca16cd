"""``python -m gateway``: serve, http, writer, migrate, partitions, audit verify, reconcile, rebuild-redis,
quarantine, rate-limit, backup, restore, drill."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

import asyncpg
import orjson
import redis.asyncio as aioredis
import uvloop
from aiohttp import web
from rich.console import Console
from rich.progress import Progress, TaskID

from gateway import db, partitions, quarantine, ratelimits, redisconn
from gateway.config import ConfigError, Settings
from gateway.errors import NotReady
from gateway.ops import backup as backups
from gateway.ops import logjson, logsafe, rebuild
from gateway.ops import reconcile as reconciler
from gateway.ops.audit import verify
from gateway.ops.embedded import EmbeddedPostgres, EmbeddedValkey
from gateway.ops.supervisor import CANNOT_START, orphan_guard, run_writer, supervise
from gateway.ratelimits import Limit
from gateway.scripts import Scripts
from gateway.web.app import create_app

log = logging.getLogger("gateway")
T = TypeVar("T")
TOOL_TIMEOUT = 600  # seconds a maintenance command's query may take (a rebuild reads every order)


@contextlib.contextmanager
def backends(settings: Settings) -> Iterator[Settings]:
    """Settings with both URLs filled from embedded servers for the missing ones.

    An embedded server already running under the data directory (``serve``'s, beside which
    maintenance commands run) is used and left running; one this process started is stopped
    on the way out.
    """
    started: list[EmbeddedValkey | EmbeddedPostgres] = []
    try:
        if not settings.redis_url:
            # async durability answers before the fsync; the embedded server then need not
            # fsync each write either
            valkey = EmbeddedValkey(settings.data_dir / "valkey",
                                    appendfsync="always" if settings.durability == "fsync" else "everysec")
            started.append(valkey)
            settings = dataclasses.replace(settings, redis_url=valkey.start())
        if not settings.database_url:
            pg = EmbeddedPostgres(settings.data_dir / "pg")
            started.append(pg)
            settings = dataclasses.replace(settings, database_url=pg.start())
        yield settings
    finally:
        for server in reversed(started):
            name = type(server).__name__.removeprefix("Embedded")
            if server.started:
                log.info("stopping embedded %s", name)
            else:
                log.info("leaving embedded %s running: another process started it", name)
            server.stop()


def serve(settings: Settings) -> int:
    """Embedded servers when no URLs are set, migrations once, then the supervised workers."""
    with backends(settings) as settings:
        assert settings.database_url
        log.info("Redis: %s", settings.redis_url)
        log.info("PostgreSQL: %s", settings.database_url.split("@")[-1])
        asyncio.run(apply_migrations(settings.database_url))
        log.info("gateway listening on http://%s:%d (%d HTTP worker(s), writer %s, durability %s)",
                 settings.host, settings.port, settings.workers, "on" if settings.run_writer else "off",
                 settings.durability)
        return supervise(settings)


def require_urls(settings: Settings, command: str) -> None:
    if not (settings.redis_url and settings.database_url):
        raise ConfigError(f"`{command}` needs OMS_REDIS_URL and OMS_DATABASE_URL; "
                          "`serve` starts embedded servers and runs it for you")


def freeze_startup_objects() -> None:
    """Keep the collector off the hot path: what start-up built lives as long as the worker,
    so it leaves the collected generations, and young collections run every 50,000
    allocations instead of 700. Open loop at 4,200 orders/s, p99 52, 44, 59, 139, 108 and
    13 ms before, 22, 37, 23, 11, 23 and 10 ms after (three runs each, twice)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def http(settings: Settings) -> int:
    """One HTTP worker; SO_REUSEPORT lets several share the port."""
    require_urls(settings, "http")
    app = create_app(settings)

    async def guard(app: web.Application) -> AsyncIterator[None]:
        async with orphan_guard():
            freeze_startup_objects()
            yield

    app.cleanup_ctx.append(guard)
    # backlog: a sale's buyers connect at once; 128 drops SYNs (capped by net.core.somaxconn)
    web.run_app(app, host=settings.host, port=settings.port, reuse_port=True, backlog=4096, print=None,
                shutdown_timeout=10, access_log=None, loop=uvloop.new_event_loop())
    return 0


def writer(settings: Settings) -> int:
    """One writer: the stream into PostgreSQL. Several may run; the consumer group shares the work."""
    require_urls(settings, "writer")
    uvloop.run(run_writer(settings))
    return 0


async def apply_migrations(url: str) -> list[int]:
    pool = await db.create_pool(url, command_timeout=TOOL_TIMEOUT)
    try:
        async with pool.acquire() as conn:
            return await db.migrate(conn)
    finally:
        await pool.close()


def migrate(settings: Settings) -> int:
    with backends(settings) as settings:
        assert settings.database_url
        applied = asyncio.run(apply_migrations(settings.database_url))
        print(f"applied {len(applied)} migration(s)" + (f": {applied}" if applied else ""))
    return 0


async def month_partitions(url: str) -> tuple[list[str], list[dict[str, object]]]:
    pool = await db.create_pool(url, command_timeout=TOOL_TIMEOUT)
    try:
        async with pool.acquire() as conn:
            await db.migrate(conn)
        made = await partitions.ensure(pool)
        async with pool.acquire() as conn:
            return made, await partitions.listing(conn)
    finally:
        await pool.close()


def partitions_command(settings: Settings) -> int:
    """Make the coming months' partitions now (the writer does so hourly) and list them all."""
    with backends(settings) as settings:
        assert settings.database_url
        made, rows = asyncio.run(month_partitions(settings.database_url))
    for row in rows:
        print(f"{row['parent']:<13} {row['name']:<24} ~{row['rows_estimate']:>10} rows  {row['bounds']}")
    print(f"made {len(made)} partition(s)" + (f": {', '.join(made)}" if made else ""))
    return 0


def audit(settings: Settings, action: str) -> int:
    async def run(url: str) -> tuple[int, dict[str, object] | None]:
        pool = await db.create_pool(url, command_timeout=TOOL_TIMEOUT)
        try:
            return await verify(pool)
        finally:
            await pool.close()

    with backends(settings) as settings:
        assert settings.database_url
        checked, broken = asyncio.run(run(settings.database_url))
    if broken is None:
        print(f"audit chain intact: {checked} event(s) verified")
        return 0
    print(f"audit chain BROKEN at event id {broken['id']} (order {broken['order_id']}, seq {broken['seq']}, "
          f"{broken['type']}); {checked} event(s) before it verified")
    return 1


@contextlib.asynccontextmanager
async def stores(redis_url: str, database_url: str) -> AsyncIterator[tuple[aioredis.Redis, asyncpg.Pool]]:
    client = redisconn.connect(redis_url)
    pool = await db.create_pool(database_url, command_timeout=TOOL_TIMEOUT)
    try:
        yield client, pool
    finally:
        await pool.close()
        await client.aclose()


def reconcile(settings: Settings, fix: bool) -> int:
    """Print the report (or, with ``fix``, what repair changed and refused); exit 1 unless ok."""
    async def run(redis_url: str, database_url: str) -> dict[str, object]:
        async with stores(redis_url, database_url) as (client, pool):
            if not fix:
                return await reconciler.reconcile(client, pool, layout=settings.layout)
            scripts = Scripts(client)
            await scripts.load()
            return await reconciler.repair(client, pool, scripts, layout=settings.layout)

    with backends(settings) as settings:
        assert settings.redis_url and settings.database_url
        try:
            result = asyncio.run(run(settings.redis_url, settings.database_url))
        except NotReady as exc:
            log.error("reconcile refused: %s", exc.detail)  # a log line: JSON with OMS_LOG_FORMAT=json
            return 2
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0 if result["ok"] else 1


def rebuild_redis(settings: Settings, force: bool) -> int:
    """Restore Redis from PostgreSQL and print what came back; exit 2 when refused."""
    async def run(redis_url: str, database_url: str) -> dict[str, object]:
        async with stores(redis_url, database_url) as (client, pool):
            # stdout carries the counts; with JSON logs stderr carries nothing else
            with Progress(console=Console(stderr=True), disable=settings.log_format == "json") as bar:
                tasks: dict[str, TaskID] = {}

                def report(step: str, done: int, total: int) -> None:
                    if step not in tasks:
                        tasks[step] = bar.add_task(step, total=total)
                    bar.update(tasks[step], completed=done)

                return await rebuild.rebuild(client, pool, idempotency_ttl=settings.idempotency_ttl,
                                             progress=report, force=force, layout=settings.layout)

    with backends(settings) as settings:
        assert settings.redis_url and settings.database_url
        try:
            counts = asyncio.run(run(settings.redis_url, settings.database_url))
        except rebuild.Refused as exc:
            log.error("rebuild-redis refused: %s", exc)
            return 2
    print(orjson.dumps(counts, option=orjson.OPT_INDENT_2).decode())
    return 0


def quarantine_command(settings: Settings, action: str, ids: list[int] | None) -> int:
    """List the quarantined stream entries, or replay them; exit 1 when any stays refused."""
    async def run(url: str) -> dict[str, object]:
        pool = await db.create_pool(url, command_timeout=TOOL_TIMEOUT)
        try:
            if action == "list":
                return {"entries": await quarantine.open_entries(pool)}
            return await quarantine.replay(pool, ids)
        finally:
            await pool.close()

    with backends(settings) as settings:
        assert settings.database_url
        result = asyncio.run(run(settings.database_url))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 1 if result.get("refused") else 0


def rate_limit(settings: Settings, action: str, scope: str | None, rate: float | None, burst: int) -> int:
    """Show, set or lift a rate limit (gateway/ratelimits.py); every process applies it at its
    next script call. Prints the limits in force; exit 2 for a limit that cannot be."""
    limit = None
    try:
        if action != "show" and scope is None:
            raise ValueError(f"{action} needs a scope")
        if action == "set":
            if rate is None:
                raise ValueError("set needs --rate")
            limit = Limit(rate, burst)
    except ValueError as exc:
        print(f"rate-limit: {exc}", file=sys.stderr)
        return CANNOT_START

    async def run(redis_url: str) -> dict[str, object]:
        client = redisconn.connect(redis_url, socket_timeout=10)
        try:
            if action != "show":
                await ratelimits.put(client, scope, limit, settings.layout)  # type: ignore[arg-type]
            return {s: dataclasses.asdict(v) for s, v in (await ratelimits.read(client, settings.layout)).items()}
        finally:
            await client.aclose()

    with backends(settings) as settings:
        assert settings.redis_url
        print(orjson.dumps(asyncio.run(run(settings.redis_url)), option=orjson.OPT_INDENT_2).decode())
    return 0


# --- backup, restore, drill (gateway/ops/backup.py): exit 0 ok, 1 verification failed or the
# drill found a difference, 2 configuration error or refused, 3 a backend unreachable

def with_progress(what: str, step: Callable[[Any], Coroutine[Any, Any, T]], out: TextIO = sys.stderr) -> T:
    """Run ``step`` (given the progress reporter); a DrillError is ``<what> failed: …`` on ``out``
    and its exit code (SystemExit: the callers' ``with backends`` still stops what it started)."""
    try:
        with backups.progress_bars() as report:
            return asyncio.run(step(report))
    except backups.DrillError as exc:
        print(f"{what} failed: {exc}", file=out)
        raise SystemExit(exc.exit_code) from None


def backup_command(settings: Settings, out: str | None) -> int:
    """Write a dump and its manifest; print where and what."""
    with backends(settings) as settings:
        database_url = settings.database_url
        assert database_url
        where = Path(out) if out else backups.default_dir(settings.data_dir)
        manifest = with_progress("backup", lambda report: backups.backup(database_url, where, report))
    print(f"backed up {manifest.tables.get('orders', 0)} orders, {manifest.tables.get('order_events', 0)} events "
          f"to {where} ({manifest.dump.bytes} bytes, sha256 {manifest.dump.sha256})")
    return 0


def restore_command(settings: Settings, directory: str, url: str | None, name: str | None, force: bool) -> int:
    """Load a backup into ``url`` (or database ``name`` on the configured server) and verify it."""
    with backends(settings) if url is None else contextlib.nullcontext(settings) as settings:
        assert url or settings.database_url
        target = url or backups.with_database(settings.database_url or "", name or "")
        manifest = with_progress("restore", lambda report: backups.restore(Path(directory), target, report,
                                                                           force=force))
    print(f"restored {manifest.tables.get('orders', 0)} orders, {manifest.tables.get('order_events', 0)} events "
          f"into {backups.display(target)}: row counts, audit head and stream offsets match the manifest")
    return 0


def drill_command(settings: Settings, directory: str | None) -> int:
    """Backup, restore into scratch servers, rebuild, reconcile, audit; the last line says how it went."""
    with backends(settings) as settings:
        database_url, ttl = settings.database_url, settings.idempotency_ttl
        assert database_url
        result = with_progress("drill", lambda report: backups.drill(
            database_url, Path(directory) if directory else None, report, idempotency_ttl=ttl), out=sys.stdout)
    log.info("drill took %.1f s", result.seconds)
    print(result.line())
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description="Flash-sale order gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="start the gateway: embedded servers when no URLs are set, "
                   "OMS_WORKERS HTTP processes and a writer")
    sub.add_parser("http", help="one HTTP worker process (serve runs these)")
    sub.add_parser("writer", help="one writer process: the event stream into PostgreSQL (serve runs one)")
    sub.add_parser("migrate", help="apply pending SQL migrations")
    sub.add_parser("partitions", help="make the coming months' partitions of orders and order_events; list them")
    audit_cmd = sub.add_parser("audit", help="check the tamper-evident event chain")
    audit_cmd.add_argument("action", choices=["verify"])
    reconcile_cmd = sub.add_parser("reconcile", help="compare Redis stock with PostgreSQL")
    reconcile_cmd.add_argument("--repair", action="store_true", help="rewrite drifted Redis stock from PostgreSQL")
    rebuild_cmd = sub.add_parser("rebuild-redis", help="restore Redis from PostgreSQL after it lost its data")
    rebuild_cmd.add_argument("--force", action="store_true", help="rebuild even though Redis is in service")
    quarantine_cmd = sub.add_parser("quarantine", help="stream entries PostgreSQL refused: list them, "
                                    "or replay them after a fix")
    quarantine_cmd.add_argument("action", choices=["list", "replay"])
    quarantine_cmd.add_argument("--id", type=int, action="append", dest="ids",
                                help="replay only this entry (repeatable); default: every open one")
    limit_cmd = sub.add_parser("rate-limit", help="show, set or lift the rate limits (live, every process)")
    limit_cmd.add_argument("action", choices=["show", "set", "off"])
    limit_cmd.add_argument("scope", nargs="?", choices=ratelimits.SCOPES)
    limit_cmd.add_argument("--rate", type=float, help="tokens a second (set)")
    limit_cmd.add_argument("--burst", type=int, default=1, help="most tokens saved, and a new bucket's (set; default 1)")
    backup_cmd = sub.add_parser("backup", help="pg_dump of one snapshot and a manifest describing it")
    backup_cmd.add_argument("--out", metavar="DIR", help="where to write (default OMS_DATA_DIR/backups/<UTC time>)")
    restore_cmd = sub.add_parser("restore", help="load a backup into an empty database and verify it")
    restore_cmd.add_argument("directory", metavar="DIR")
    restore_target = restore_cmd.add_mutually_exclusive_group(required=True)
    restore_target.add_argument("--database-url", metavar="URL", help="the target (its password may come from PGPASSWORD)")
    restore_target.add_argument("--database", metavar="NAME", help="a database on the configured or embedded server")
    restore_cmd.add_argument("--force", action="store_true", help="restore into a database that is not empty")
    drill_cmd = sub.add_parser("drill", help="backup, restore into scratch servers, rebuild, reconcile, audit")
    drill_cmd.add_argument("directory", metavar="DIR", nargs="?",
                           help="drill the backup here, or back up into it when it holds none (default: a temporary one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env(os.environ)
        secret_filter = logsafe.install(settings)  # before anything logs; serve's children run main() too
        if settings.log_format == "json":
            logjson.install(secret_filter)
        if args.command == "audit":
            return audit(settings, args.action)
        if args.command == "reconcile":
            return reconcile(settings, args.repair)
        if args.command == "quarantine":
            return quarantine_command(settings, args.action, args.ids)
        if args.command == "rebuild-redis":
            return rebuild_redis(settings, args.force)
        if args.command == "rate-limit":
            return rate_limit(settings, args.action, args.scope, args.rate, args.burst)
        if args.command == "backup":
            return backup_command(settings, args.out)
        if args.command == "restore":
            return restore_command(settings, args.directory, args.database_url, args.database, args.force)
        if args.command == "drill":
            return drill_command(settings, args.directory)
        return {"serve": serve, "http": http, "writer": writer, "migrate": migrate,
                "partitions": partitions_command}[args.command](settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return CANNOT_START
