"""A PgQueuer consumer with one no-op entrypoint, for ``pgq run`` (``python -m pgqueuer run``).

The connection string comes from BENCH_PG_URL, set by the harness for each run's fresh database.
asyncpg is the driver of PgQueuer's own examples and the first one its CLI tries.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from pgqueuer import AsyncpgDriver, PgQueuer
from pgqueuer.models import Job

ENTRYPOINT = "noop"


@asynccontextmanager
async def main() -> AsyncIterator[PgQueuer]:
    """The consumer: one asyncpg connection, one entrypoint that does nothing."""
    connection = await asyncpg.connect(os.environ["BENCH_PG_URL"])
    pgq = PgQueuer(AsyncpgDriver(connection))

    @pgq.entrypoint(ENTRYPOINT)
    async def noop(job: Job) -> None:
        return None

    try:
        yield pgq
    finally:
        await connection.close()
