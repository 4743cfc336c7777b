"""A bare PostgreSQL queue: one table, claims of 32 rows with SKIP LOCKED, a worker loop.

A baseline, not a product: no leases, retries, results or heartbeats. It shows what this
PostgreSQL server can do for the drain when a queue costs nothing but its two statements per
batch (claim, then mark done), each its own autocommit transaction with the server's default
durability (``synchronous_commit = on``). Workers sleep on LISTEN when the table is empty and
announce finished ids with NOTIFY, so the harness can also time a round trip.

    python -m benchmarks.peers.pg_bare PG_URL     # one worker process
"""

from __future__ import annotations

import signal
import sys
from threading import Event
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the harness imports this module's constants without psycopg installed
    import psycopg

CLAIM_BATCH = 32
"""Rows one claim takes."""
IDLE_WAIT_SECONDS = 1.0
"""Longest LISTEN wait of an idle worker before it claims again (in case a wake-up is lost)."""

SCHEMA = (
    "CREATE TABLE bare_jobs (id bigserial PRIMARY KEY, "
    "status text NOT NULL DEFAULT 'pending', payload jsonb NOT NULL DEFAULT '{}')",
    "CREATE INDEX bare_jobs_pending ON bare_jobs (id) WHERE status = 'pending'",
)

QUERIES = {
    # Oldest pending rows first; rows locked by the other worker are skipped, not waited for.
    "claim": "UPDATE bare_jobs SET status = 'running' WHERE id IN ("
             "SELECT id FROM bare_jobs WHERE status = 'pending' ORDER BY id "
             "FOR UPDATE SKIP LOCKED LIMIT %(batch)s) RETURNING id, payload",
    "complete": "WITH done AS (UPDATE bare_jobs SET status = 'done' WHERE id = ANY(%(ids)s) "
                "RETURNING id) SELECT pg_notify('bare_done', string_agg(id::text, ',')) "
                "FROM done",
    "enqueue_many": "INSERT INTO bare_jobs (payload) SELECT '{}'::jsonb "
                    "FROM generate_series(1, %(count)s)",
    "enqueue_one": "WITH job AS (INSERT INTO bare_jobs DEFAULT VALUES RETURNING id) "
                   "SELECT id, pg_notify('bare_new', id::text) FROM job",
    "done_count": "SELECT count(*) FROM bare_jobs WHERE status = 'done'",
    "listen_new": "LISTEN bare_new",
    "listen_done": "LISTEN bare_done",
}


def install(conn: psycopg.Connection) -> None:
    """Create the table and its partial index of pending rows."""
    for statement in SCHEMA:
        conn.execute(statement)


def work_once(conn: psycopg.Connection) -> int:
    """Claim up to CLAIM_BATCH rows, run their no-ops, mark them done; how many were done."""
    rows = conn.execute(QUERIES["claim"], {"batch": CLAIM_BATCH}).fetchall()
    if not rows:
        return 0
    ids = [row[0] for row in rows]  # the no-op "runs" here: nothing to do per row
    conn.execute(QUERIES["complete"], {"ids": ids})
    return len(ids)


def run_worker(pg_url: str, stop: Event) -> None:
    """Work until stop is set; sleep on LISTEN while the table has nothing pending."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(QUERIES["listen_new"])
        while not stop.is_set():
            if work_once(conn) == 0:
                for _ in conn.notifies(timeout=IDLE_WAIT_SECONDS, stop_after=1):
                    pass


def main(argv: list[str]) -> int:
    """One worker process on the database given as the only argument."""
    if len(argv) != 1:
        print("usage: python -m benchmarks.peers.pg_bare PG_URL", file=sys.stderr)
        return 2
    stop = Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run_worker(argv[0], stop)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
