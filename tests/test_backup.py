"""Backup, restore and the drill against the real servers: a restore gives back exactly what the
manifest describes, even with writes during the backup; tampering with the dump, the manifest
or the chain is reported; the CLI's exit codes hold and no output shows the DSN's password."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import msgspec
import orjson
import pytest

from gateway import db
from gateway.ops import backup as backups
from gateway.ops.audit import verify
from tests.conftest import auth
from tests.test_rebuild import ROOT, workload

ORDERS = 9  # tests.test_rebuild.workload's


def quiet(step: str, done: int, total: int) -> None:
    """No progress bars in tests."""


async def adjusted_workload(gw) -> None:
    """test_rebuild's orders in every status over a priced sale, plus a stock adjustment, all written."""
    await workload(gw)
    resp = await gw.client.post("/v1/inventory/SKU-2/adjust", json={"warehouse": "W2", "delta": 4, "reason": "receipt"},
                                headers=auth("k-ops"))
    assert resp.status == 200, await resp.text()
    await gw.caught_up()


async def table_counts(conn: asyncpg.Connection) -> dict[str, int]:
    return {n: await conn.fetchval(f'SELECT count(*) FROM "{n}"') for n in await backups.table_names(conn)}


async def head(conn: asyncpg.Connection) -> tuple[int, str]:
    row = await conn.fetchrow("SELECT id, hash FROM order_events ORDER BY id DESC LIMIT 1")
    return row["id"], row["hash"]


Fresh = Callable[[], Awaitable[str]]


@pytest.fixture
async def fresh_db(backends, pg) -> AsyncIterator[Fresh]:
    """URLs of new empty databases on the test server, dropped afterwards."""
    made: list[str] = []

    async def make() -> str:
        name = f"oms_restore_{secrets.token_hex(4)}"
        await pg.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        made.append(name)
        return backups.with_database(backends.database_url, name)

    yield make
    for name in made:
        await pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def backed_up(gw, pg, backends, tmp_path) -> Path:
    """A backup of the adjusted workload in ``tmp_path / 'b'``."""
    await adjusted_workload(gw)
    await backups.backup(backends.database_url, tmp_path / "b", quiet)
    return tmp_path / "b"


async def test_restore_gives_the_same_rows_and_audit_head_as_the_source(backed_up, pg, fresh_db):
    manifest = backups.read_manifest(backed_up)
    async with pg.acquire() as source:
        source_counts, source_head = await table_counts(source), await head(source)
    assert manifest.tables == source_counts and manifest.tables["orders"] == ORDERS
    assert (manifest.audit_head.id, manifest.audit_head.hash) == source_head
    assert manifest.stream_offsets and manifest.dump.sha256 and manifest.gateway_version
    target = await fresh_db()
    await backups.restore(backed_up, target, quiet)
    async with connected(target) as restored:
        assert await table_counts(restored) == source_counts
        assert await head(restored) == source_head
        assert await restored.fetch("SELECT * FROM orders ORDER BY order_id") == \
            await pg.fetch("SELECT * FROM orders ORDER BY order_id")
    pool = await db.create_pool(target)
    try:
        assert await verify(pool) == (manifest.tables["order_events"], None)
    finally:
        await pool.close()


async def test_manifest_describes_the_dump_while_writes_go_on(gw, pg, backends, tmp_path, fresh_db):
    """Rows committed during the backup are in neither the counts nor the dump: one snapshot."""
    await adjusted_workload(gw)
    inserted = 0
    stop = asyncio.Event()

    async def keep_writing() -> None:
        nonlocal inserted
        async with pg.acquire() as conn:
            while not stop.is_set():
                await conn.execute(
                    """INSERT INTO inventory_movements (stream_id, sku, warehouse, delta, on_hand_after, reason, at)
                       VALUES ($1, 'SKU-9', 'W1', 1, 1, 'concurrent', now())""", f"c-{inserted}")
                inserted += 1

    writing = asyncio.create_task(keep_writing())
    try:
        while inserted < 10:  # writing for sure before the backup starts
            await asyncio.sleep(0)
        before = inserted
        manifest = await backups.backup(backends.database_url, tmp_path / "b", quiet)
        during = inserted - before
    finally:
        stop.set()
        await writing
    assert during > 10, "no writes during the backup: the test proves nothing"
    live = await pg.fetchval("SELECT count(*) FROM inventory_movements")
    assert before <= manifest.tables["inventory_movements"] - 3 < live  # the workload wrote 3 movements of its own
    await backups.restore(tmp_path / "b", await fresh_db(), quiet)  # counts checked against the manifest


async def test_drill_restores_rebuilds_reconciles_and_verifies(backed_up, backends):
    manifest = backups.read_manifest(backed_up)
    result = await backups.drill(backends.database_url, backed_up, quiet, idempotency_ttl=86400)
    events = manifest.tables["order_events"]
    assert result.line() == f"restored {ORDERS} orders, {events} events, drift 0, audit chain intact"
    assert result.ok


async def test_drill_without_a_directory_backs_up_first_and_leaves_no_scratch_database(gw, pg, backends):
    await adjusted_workload(gw)
    databases = {r["datname"] for r in await pg.fetch("SELECT datname FROM pg_database")}
    result = await backups.drill(backends.database_url, None, quiet, idempotency_ttl=86400)
    assert result.ok and result.orders == ORDERS
    assert {r["datname"] for r in await pg.fetch("SELECT datname FROM pg_database")} == databases


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


async def test_a_flipped_dump_byte_fails_the_checksum_and_loads_nothing(backed_up, backends, fresh_db):
    flip_byte(backed_up / backups.DUMP)
    target = await fresh_db()
    with pytest.raises(backups.DrillError, match="dump checksum mismatch"):
        await backups.restore(backed_up, target, quiet)
    async with connected(target) as conn:
        assert await table_counts(conn) == {}
    with pytest.raises(backups.DrillError, match="dump checksum mismatch"):
        await backups.drill(backends.database_url, backed_up, quiet, idempotency_ttl=86400)


async def test_an_edited_manifest_row_count_is_detected(backed_up, fresh_db):
    path = backed_up / backups.MANIFEST
    manifest = orjson.loads(path.read_bytes())
    manifest["tables"]["orders"] += 1
    path.write_bytes(orjson.dumps(manifest))
    with pytest.raises(backups.DrillError, match=f"orders: manifest {ORDERS + 1} rows, database {ORDERS}"):
        await backups.restore(backed_up, await fresh_db(), quiet)


async def test_an_edited_manifest_field_is_refused(backed_up, fresh_db):
    path = backed_up / backups.MANIFEST
    manifest = orjson.loads(path.read_bytes())
    manifest["tables"]["orders"] = "nine"
    path.write_bytes(orjson.dumps(manifest))
    with pytest.raises(backups.DrillError, match=r"manifest unreadable: Expected `int`, got `str` - at `\$\.tables"):
        await backups.restore(backed_up, await fresh_db(), quiet)


async def test_an_event_deleted_after_the_restore_is_reported(backed_up, fresh_db):
    manifest = backups.read_manifest(backed_up)
    target = await fresh_db()
    await backups.restore(backed_up, target, quiet)
    async with connected(target) as conn:
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM order_events ORDER BY id")]
        assert await conn.execute("DELETE FROM order_events WHERE id = $1", ids[3]) == "DELETE 1"
        events = manifest.tables["order_events"]
        assert await backups.differences(conn, manifest, quiet) == [
            f"order_events: manifest {events} rows, database {events - 1}"]
    pool = await db.create_pool(target)
    try:
        assert (await verify(pool))[1]["id"] == ids[4]
    finally:
        await pool.close()


async def test_drill_of_a_database_whose_chain_was_tampered_reports_the_event(gw, pg, backends):
    await adjusted_workload(gw)
    row = await pg.fetchrow("SELECT id, order_id, seq, type FROM order_events WHERE type = 'order.cancelled' LIMIT 1")
    await pg.execute("""UPDATE order_events SET data = jsonb_set(data, '{reason}', '"customer"') WHERE id = $1""",
                     row["id"])
    result = await backups.drill(backends.database_url, None, quiet, idempotency_ttl=86400)
    assert not result.ok
    assert result.line().endswith(f"drift 0, audit chain BROKEN at event id {row['id']} "
                                  f"(order {row['order_id']}, seq {row['seq']}, order.cancelled)")


async def test_a_non_empty_target_is_refused_unless_forced(backed_up, fresh_db):
    target = await fresh_db()
    await backups.restore(backed_up, target, quiet)
    async with connected(target) as conn:
        await conn.execute("DELETE FROM orders WHERE order_id = 'o-paid'")
    with pytest.raises(backups.Refused, match="is not empty"):
        await backups.restore(backed_up, target, quiet)
    async with connected(target) as conn:  # refused: nothing changed
        assert await conn.fetchval("SELECT count(*) FROM orders") == ORDERS - 1
    await backups.restore(backed_up, target, quiet, force=True)
    async with connected(target) as conn:
        assert await conn.fetchval("SELECT count(*) FROM orders") == ORDERS


def with_password(url: str, password: str) -> str:
    """The test server trusts local connections, so a password in the URL is accepted and never checked."""
    scheme, rest = url.split("://", 1)
    user, at = rest.split("@", 1)
    return f"{scheme}://{user.split(':')[0]}:{password}@{at}"


async def test_cli_exit_codes_and_no_password_in_any_output(backed_up, backends, tmp_path, fresh_db):
    password = "pw-" + secrets.token_hex(8)
    source = with_password(backends.database_url, password)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")} | {
        "OMS_DATABASE_URL": source, "OMS_REDIS_URL": backends.redis_url, "OMS_ENV": "test"}

    async def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "gateway", *args], cwd=ROOT, env=env,
                                         capture_output=True, text=True, timeout=120)
        assert password not in result.stdout + result.stderr
        return result

    out = tmp_path / "cli"
    result = await run("backup", "--out", str(out))
    assert result.returncode == 0 and "backed up 9 orders" in result.stdout, result.stderr
    manifest = msgspec.json.decode((out / backups.MANIFEST).read_bytes())
    assert password not in (out / backups.MANIFEST).read_text()
    assert (await run("backup", "--out", str(out))).returncode == 2  # the directory holds a backup

    target = with_password(await fresh_db(), password)
    result = await run("restore", str(out), "--database-url", target)
    assert result.returncode == 0 and "match the manifest" in result.stdout, result.stderr
    result = await run("restore", str(out), "--database-url", target)
    assert (result.returncode, "is not empty" in result.stderr) == (2, True), result.stderr

    result = await run("drill", str(out))
    events = manifest["tables"]["order_events"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"restored 9 orders, {events} events, drift 0, audit chain intact"

    flip_byte(out / backups.DUMP)
    result = await run("drill", str(out))
    assert result.returncode == 1 and "dump checksum mismatch" in result.stdout.splitlines()[-1], result.stdout

    env["OMS_DATABASE_URL"] = f"postgresql://postgres:{password}@/oms?host={tmp_path / 'nowhere'}"
    result = await run("backup", "--out", str(tmp_path / "never"))
    assert (result.returncode, "unreachable" in result.stderr) == (3, True), result.stderr
