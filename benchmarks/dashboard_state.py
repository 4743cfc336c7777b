"""What ``GET /dashboard/state`` costs with a big queue: ``python -m benchmarks.dashboard_state``.

Fills a scratch database (a temp SQLite file, and a PostgreSQL database of its own when the
server at TEST_POSTGRES_URL answers) with TASKS tasks: 40 % completed over the last ten minutes,
100 in progress, the rest pending. Prints the query plan of each dashboard read (each must use
an index, never scan the task table) and the time to build the document: the first one of a
dispatcher (it reads the whole ten-minute chart) and the next ones (only the open buckets).
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from dispatcher.db import open_store
from dispatcher.feed import DashboardFeed
from shared.config import Config

READS = ("dash_running", "dash_held_counts", "dash_pending", "dash_recent", "dash_buckets")


def _rows(total: int, now: float) -> list[tuple[Any, ...]]:
    done, running = int(total * 0.4), 100
    rows: list[tuple[Any, ...]] = []
    for i in range(total):
        if i < done:
            rows.append(("completed", 1, f"w{i % 10}", None, now - 600 + 600 * i / done))
        elif i < done + running:
            rows.append(("in-progress", 1, f"w{i % 10}", now + 100, None))
        else:
            rows.append(("pending", 0, None, None, None))
    return rows


def _time_builds(config: Config) -> list[float]:
    store = open_store(config)
    try:
        feed = DashboardFeed(store, config)
        times = []
        for _ in range(4):
            started = time.perf_counter()
            feed._build()  # the document itself, without the half-second reuse
            times.append(round((time.perf_counter() - started) * 1000, 1))
        return times
    finally:
        store.close()


def sqlite_case(total: int, directory: Path) -> None:
    """Fill a SQLite file, show the plans, time the builds."""
    from dispatcher.db.sqlite import QUERIES

    config = Config(database_url=f"sqlite:///{directory / 'big.db'}")
    open_store(config).close()  # the schema
    now = time.time()
    with sqlite3.connect(directory / "big.db") as conn:
        conn.executemany(
            "INSERT INTO tasks (task_type, params, status, attempt, max_attempts, worker_id,"
            " lease_expires_at, created_at, finished_at)"
            " VALUES ('noop', '{}', ?, ?, 3, ?, ?, ?, ?)",
            [(s, a, w, lease, now - 1200, f) for s, a, w, lease, f in _rows(total, now)])
        params = {"limit": 50, "since": now - 600, "bucket": 10}
        for name in READS:
            plan = conn.execute("EXPLAIN QUERY PLAN " + QUERIES[name], params).fetchall()
            print(f"sqlite   {name:<18} {'; '.join(row[3] for row in plan)}")
    print(f"sqlite   document build, ms (first, then three more): {_time_builds(config)}")


def postgres_case(total: int) -> None:
    """The same on a PostgreSQL database of its own (dropped afterwards)."""
    import psycopg

    from dispatcher.db.postgres import QUERIES
    from tests.support import postgres

    try:
        url = postgres.create_database()
    except BaseException as exc:  # pytest's skip outside pytest: the server is not there
        print(f"postgres skipped: {exc}")
        return
    try:
        open_store(Config(database_url=url)).close()
        now = time.time()
        with psycopg.connect(url, autocommit=True) as conn:
            with conn.cursor().copy("COPY tasks (task_type, params, status, attempt, max_attempts,"
                                    " worker_id, lease_expires_at, created_at, finished_at)"
                                    " FROM STDIN") as copy:
                for s, a, w, lease, f in _rows(total, now):
                    copy.write_row(("noop", "{}", s, a, 3, w, lease, now - 1200, f))
            conn.execute("ANALYZE")
            params = {"limit": 50, "since": now - 600, "bucket": 10}
            for name in READS:
                plan = [row[0].strip() for row in conn.execute("EXPLAIN " + QUERIES[name], params)]
                print(f"postgres {name:<18} {'; '.join(p for p in plan if 'Scan' in p)}")
        print(f"postgres document build, ms (first, then three more): "
              f"{_time_builds(Config(database_url=url))}")
    finally:
        postgres.drop_database(url)


def main() -> None:
    """Run both cases."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dashboard-bench-") as tmp:
        sqlite_case(args.tasks, Path(tmp))
    postgres_case(args.tasks)


if __name__ == "__main__":
    main()
