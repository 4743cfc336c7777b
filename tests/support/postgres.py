"""A PostgreSQL database of this test run: created once, emptied between tests, dropped at the end.

The server is the one at ``TEST_POSTGRES_URL`` (default: the local one, trust auth). When it
cannot be reached, the PostgreSQL cases are skipped with the reason, except where
``TASKQUEUE_REQUIRE_POSTGRES=1`` (CI sets it in ``.ci/run``): there they fail.
"""

from __future__ import annotations

import os
import re
import secrets
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRED = os.environ.get("TASKQUEUE_REQUIRE_POSTGRES") == "1"
TABLES = ("task_results", "checkpoints", "tasks", "task_groups", "workers", "counters",
          "cluster", "task_attempts", "schedules", "status_counts", "status_deltas", "events",
          "tokens")


def unavailable(reason: str) -> None:
    """Skip (locally) or fail (where PostgreSQL is required) with ``reason``."""
    message = f"PostgreSQL unavailable at {ADMIN_URL}: {reason}"
    if REQUIRED:
        pytest.fail(message + " (TASKQUEUE_REQUIRE_POSTGRES=1)", pytrace=False)
    pytest.skip(message)


def database_url(name: str, admin_url: str = ADMIN_URL) -> str:
    """The URL of database ``name`` on the admin URL's server."""
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_database(admin_url: str = ADMIN_URL) -> str:
    """Create a uniquely named database for this run; its URL."""
    name = f"taskqueue_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # a generated name, not input
    except psycopg.Error as exc:
        unavailable(str(exc).strip())
    return database_url(name, admin_url)


def drop_database(url: str, admin_url: str = ADMIN_URL) -> None:
    """Drop a database this run created (disconnecting whatever still uses it)."""
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def empty(url: str) -> None:
    """Remove every row (and restart ids) so the next test starts from an empty queue."""
    with psycopg.connect(url, autocommit=True) as conn:
        present = {row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        tables = [t for t in TABLES if t in present]
        if tables:
            conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


def generic_plan(conn: psycopg.Connection, sql: str, params: dict) -> str:
    """The generic plan of ``sql``, made without the parameters' values: psycopg prepares a
    statement after five executions, and PostgreSQL then keeps such a plan whenever it costs
    no more than the plans for the values at hand."""
    names: list[str] = []

    def numbered(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute("PREPARE planned AS " + re.sub(r"%\((\w+)\)s", numbered, sql))
    try:
        arguments = f"({', '.join(['%s'] * len(names))})" if names else ""
        rows = psycopg.ClientCursor(conn).execute(
            "EXPLAIN EXECUTE planned" + arguments, [params[name] for name in names]).fetchall()
    finally:
        conn.execute("DEALLOCATE planned")
    return "\n".join(row[0] for row in rows)
