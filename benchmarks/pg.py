"""The local PostgreSQL server of the benchmarks: is it there, and a fresh database per run.

Every PostgreSQL system (ours-pg and the PostgreSQL peers) gets a new, uniquely named database
for each run and drops it afterwards, so no run sees another's rows, and a run that fails
leaves nothing behind.

A table created and filled a moment ago has no planner statistics until autovacuum's next
round (up to a minute later): the planner then guesses, and some plans are far slower than on
a live database (Procrastinate's fetch sorts every pending job: 5.5 ms per fetch instead of
0.07 ms with 5,000 jobs). So every PostgreSQL system's drain runs ``analyze()`` after the
enqueue, before its workers start, as autovacuum would have done.
"""

from __future__ import annotations

import importlib.util
import uuid
from typing import Any

PG_SERVER_URL = "postgresql://postgres@127.0.0.1:5432"
"""The server (trust authentication, user postgres); each run adds a database name."""
ADMIN_DATABASE = "postgres"
"""Where CREATE DATABASE and DROP DATABASE are sent from."""
PG_SYSTEMS = ("ours-pg", "procrastinate", "pgqueuer", "pg-bare")
"""The systems on PostgreSQL: what ``--peers pg`` selects; the tables compare them with ours-pg."""
ANALYZE_SETTING = ("the harness runs ANALYZE on the fresh database after the drain's enqueue, "
                   "before the workers start (planner statistics, as autovacuum keeps them)")
"""The ``settings["analyze"]`` of every PostgreSQL system."""


def pg_url(database: str) -> str:
    """The URL of one database on the benchmark server."""
    return f"{PG_SERVER_URL}/{database}"


def pg_reason() -> str | None:
    """None when psycopg is installed and the server answers, else why not."""
    if importlib.util.find_spec("psycopg") is None:
        return "package 'psycopg' is not installed (pip install -r requirements-bench.txt)"
    import psycopg

    try:
        with psycopg.connect(pg_url(ADMIN_DATABASE), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_SERVER_URL} does not answer: {' '.join(str(exc).split())}"
    return None


def analyze(url: str) -> None:
    """ANALYZE every table of one database (planner statistics, as autovacuum keeps them)."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("ANALYZE")


def _admin() -> Any:
    import psycopg

    return psycopg.connect(pg_url(ADMIN_DATABASE), autocommit=True, connect_timeout=5)


class FreshDatabase:
    """A database of its own for one run: created by ``create()``, dropped by ``drop()``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.replace("-", "_")
        self.name: str | None = None

    def create(self) -> str:
        """Create a uniquely named empty database; return its URL."""
        from psycopg import sql

        name = f"bench_{self.prefix}_{uuid.uuid4().hex[:10]}"
        with _admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.name = name
        return pg_url(name)

    @property
    def url(self) -> str:
        """The URL of the database created last."""
        if self.name is None:
            raise RuntimeError("FreshDatabase: create() was not called")
        return pg_url(self.name)

    def drop(self) -> None:
        """Drop the database (closing the connections still open to it); safe to call twice."""
        from psycopg import sql

        if self.name is None:
            return
        with _admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(self.name)))
        self.name = None
