"""Migrations: well-named, applied once, safe to run twice or from two processes at once,
and leaving the tables that tools outside the code rely on (DESIGN.md, PostgreSQL)."""

from __future__ import annotations

import asyncio
import importlib.resources
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from gateway import db

ROOT = Path(__file__).resolve().parents[1]
DESIGN_TABLES = {"orders", "order_items", "allocations", "order_events", "inventory",
                 "inventory_movements", "warehouses", "sales"}


@pytest.fixture
async def fresh_db(backends) -> AsyncIterator[str]:
    """The URL of a new, empty database on the test server, dropped afterwards."""
    name = f"mig_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(backends.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urlsplit(backends.database_url)._replace(path=f"/{name}").geturl()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def test_every_sql_file_is_named_nnn_name_and_versions_ascend_without_repeats():
    files = [f.name for f in importlib.resources.files("gateway.sql").iterdir() if f.name.endswith(".sql")]
    assert files
    assert all(re.fullmatch(r"\d{3}_\w+\.sql", name) for name in files), files  # none silently skipped
    found = db.migrations()
    assert len(found) == len(files)
    versions = [v for v, _, _ in found]
    assert versions == sorted(set(versions))
    assert versions[0] >= 1
    assert [f"{v:03d}_{n}.sql" for v, n, _ in found] == sorted(files)


async def test_migrate_applies_everything_once_then_nothing(fresh_db):
    conn = await asyncpg.connect(fresh_db)
    try:
        assert await db.migrate(conn) == [v for v, _, _ in db.migrations()]
        assert await db.migrate(conn) == []
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [tuple(r) for r in rows] == [(v, n) for v, n, _ in db.migrations()]
    finally:
        await conn.close()


async def test_two_migrators_at_once_on_an_empty_database_apply_each_migration_once(fresh_db):
    conns = await asyncio.gather(*(asyncpg.connect(fresh_db) for _ in range(4)))
    try:
        applied = await asyncio.gather(*(db.migrate(c) for c in conns))
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    assert sorted(v for versions in applied for v in versions) == [v for v, _, _ in db.migrations()]
    assert sum(1 for versions in applied if versions) == 1


async def test_design_tables_exist_and_orders_has_its_documented_columns(pg):
    tables = {r["table_name"] for r in await pg.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    assert DESIGN_TABLES <= tables

    columns = {r["column_name"] for r in await pg.fetch(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = 'orders'")}
    assert {"order_id", "user_id", "channel", "sale_id", "status", "created_at", "updated_at"} <= columns

    primary_key = await pg.fetch(
        """SELECT k.column_name FROM information_schema.table_constraints c
           JOIN information_schema.key_column_usage k
             ON k.constraint_name = c.constraint_name AND k.table_schema = c.table_schema
           WHERE c.table_schema = 'public' AND c.table_name = 'orders'
             AND c.constraint_type = 'PRIMARY KEY' ORDER BY k.ordinal_position""")
    # partitioned by month (migration 008): the key must hold created_at; order_id leads it,
    # and the writer keeps it unique across months (tests/test_partitions.py)
    assert [r["column_name"] for r in primary_key] == ["order_id", "created_at"]
    kinds = [await pg.fetchval("SELECT relkind::text FROM pg_class WHERE oid = $1::regclass", f"public.{t}")
             for t in ("orders", "order_events")]  # public: the bench smoke test has an orders of its own
    assert kinds == ["p", "p"]


def test_cli_migrate_applies_then_reports_nothing_to_apply(fresh_db, backends, tmp_path):
    env = {"OMS_DATABASE_URL": fresh_db, "OMS_REDIS_URL": backends.redis_url,
           "OMS_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}

    def run() -> str:
        proc = subprocess.run([sys.executable, "-m", "gateway", "migrate"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert run() == f"applied {len(db.migrations())} migration(s): {[v for v, _, _ in db.migrations()]}"
    assert run() == "applied 0 migration(s)"
    assert not (tmp_path / "data").exists()  # both URLs given: no embedded server started


async def migrate_to(conn: asyncpg.Connection, last: int) -> None:
    """Apply migrations up to ``last`` as ``db.migrate`` would, to stand a database at an older version."""
    await conn.execute("CREATE TABLE schema_migrations "
                       "(version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
    for version, name, sql in db.migrations():
        if version <= last:
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)


async def test_partitioning_carries_every_order_and_event_with_its_ids_and_months(fresh_db):
    conn = await asyncpg.connect(fresh_db)
    try:
        await migrate_to(conn, 7)
        when = {"old": "2019-03-04 05:06:07+00", "last_year": "2025-11-30 23:59:59.999+00", "now": None}
        for n, (label, at) in enumerate(when.items()):
            created = f"timestamptz '{at}'" if at else "now()"
            await conn.execute(
                f"""INSERT INTO orders (order_id, user_id, channel, status, payload, created_at, updated_at,
                                        last_seq, payment_id)
                    VALUES ($1, 'u-1', 'web', 'paid', '{{"n": {n}}}', {created}, {created}, 2, 'pay-' || $1)""",
                label)
            await conn.execute(
                f"""INSERT INTO order_events (stream_id, order_id, seq, type, at, data, prev_hash, hash)
                    VALUES ($1 || '-0', $1, 1, 'order.accepted', {created}, '{{}}', 'p', 'h-' || $1)""", label)
        before = {t: [tuple(r) for r in await conn.fetch(f"SELECT * FROM {t} ORDER BY 1")]
                  for t in ("orders", "order_events")}

        assert await db.migrate(conn) == [v for v, _, _ in db.migrations() if v > 7]

        after = {t: [tuple(r) for r in await conn.fetch(f"SELECT * FROM {t} ORDER BY 1")]
                 for t in ("orders", "order_events")}
        assert after == before  # every column of every row, ids included
        home = {r["order_id"]: r["part"] for r in await conn.fetch(
            "SELECT order_id, tableoid::regclass::text AS part FROM orders")}
        assert home["old"] == "orders_default"  # more than five years back: no month made for it
        assert home["last_year"] == "orders_2025_11"  # the bounds are UTC months
        assert home["now"] != "orders_default"
        next_id = await conn.fetchval(
            """INSERT INTO order_events (stream_id, type, at, data) VALUES ('x-1', 'writer.quarantined', now(), '{}')
               RETURNING id""")
        assert next_id > max(r[0] for r in after["order_events"])  # the sequence went on where it was
    finally:
        await conn.close()
