"""A Procrastinate app on PostgreSQL with one no-op task, for ``procrastinate worker``.

The CLI wants a module-level app (``--app benchmarks.peers.procrastinate_app.app``), so its
connection string comes from BENCH_PG_URL, set by the harness for each run's fresh database.
"""

from __future__ import annotations

import os
from typing import Any

import procrastinate


def build(pg_url: str) -> tuple[procrastinate.App, Any]:
    """An App on a PsycopgConnector (library defaults otherwise) and its ``noop`` task."""
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=pg_url))

    @app.task(name="noop")
    async def noop() -> bool:
        return True

    return app, noop


app, noop = build(os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"))
