"""PostgreSQL: the connection pool and the ordered SQL migrations in ``gateway/sql``."""

from __future__ import annotations

import importlib.resources
import logging
import re

import asyncpg

log = logging.getLogger(__name__)
MIGRATION_LOCK = 0x6F6D73  # advisory lock id: one migrator at a time across processes
EVENTS_LOCK = 0x6F6D7366  # advisory lock: one writer transaction at a time (gateway/writer.py)


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every ``NNN_name.sql``, in version order."""
    found = []
    for entry in importlib.resources.files("gateway.sql").iterdir():
        m = re.fullmatch(r"(\d{3})_(\w+)\.sql", entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry.read_text()))
    return sorted(found)


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply pending migrations, each in its own transaction; returns the versions applied.

    The lock comes first: two concurrent ``CREATE TABLE IF NOT EXISTS`` of the same table
    can both pass the check, and the loser fails on a unique violation in ``pg_type``.
    """
    applied: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            log.info("applied migration %03d_%s", version, name)
            applied.append(version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied


async def create_pool(dsn: str, *, command_timeout: float = 10, connect_timeout: float = 5,
                      **kwargs: object) -> asyncpg.Pool:
    """Every call is bounded: a stalled server is a timeout (503 at the edge), not a hang."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=8, command_timeout=command_timeout,
                                     timeout=connect_timeout, **kwargs)
    assert pool is not None
    return pool
