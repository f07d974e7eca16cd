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
             AND c.constraint_type = 'PRIMARY KEY'""")
    assert [r["column_name"] for r in primary_key] == ["order_id"]


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
