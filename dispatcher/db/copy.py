"""Move a queue from SQLite to PostgreSQL: ``python -m dispatcher.db.copy SOURCE TARGET``.

    python -m dispatcher.db.copy sqlite:///data/tasks.db postgresql://tq@db-host:5432/taskqueue

Copies every table that holds the queue's history (split jobs, tasks, results, checkpoints,
workers, counters, failed attempts, schedules, API tokens, the events timeline) from one
consistent snapshot of the SQLite file into an empty PostgreSQL database, in one transaction
(all or nothing), then checks that the row counts, the tasks per status and the counters agree
on both sides, and prints them. Task, group, schedule and event ids are kept, and new ids continue after the largest. Stop
the dispatcher first: a snapshot taken while it runs is consistent, but what it does afterwards
stays behind in SQLite.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from dataclasses import dataclass
from typing import Any

import psycopg

from dispatcher.db.postgres import PostgresStore
from dispatcher.db.sqlite import SQLiteStore
from shared.config import Config, ConfigError

TABLES: dict[str, tuple[str, ...]] = {
    "task_groups": ("group_id", "task_type", "params", "parts", "idempotency_key", "created_at",
                    "owner", "request_hash"),
    "tasks": ("task_id", "task_type", "params", "status", "priority", "attempt", "max_attempts",
              "worker_id", "worker_instance", "lease_expires_at", "progress", "error",
              "idempotency_key", "created_at", "started_at", "claimed_at", "finished_at",
              "run_after", "max_retries", "retries", "retry_backoff", "timeout_seconds",
              "timeout_at", "crash_streak", "crash_progress", "requeued_at", "requeue_cause",
              "owner", "request_hash", "group_id"),
    "task_results": ("task_id", "attempt", "worker_id", "result", "created_at"),
    "checkpoints": ("task_id", "attempt", "worker_id", "state", "progress", "saved_at"),
    "workers": ("worker_id", "instance_id", "status", "last_heartbeat", "registered_at",
                "tasks_completed"),
    "counters": ("name", "value"),
    "task_attempts": ("task_id", "attempt", "worker_id", "kind", "error", "at"),
    "schedules": ("schedule_id", "task_type", "params", "priority", "max_attempts",
                  "max_retries", "retry_backoff", "timeout_seconds", "every_seconds", "cron",
                  "next_run_at", "last_run_at", "last_task_id", "runs", "created_at"),
    "tokens": ("token_id", "secret_hash", "role", "worker_id", "created_at", "revoked_at"),
    "events": ("event_id", "at", "kind", "task_id", "worker_id", "attempt", "status", "progress",
               "detail"),
}
"""What is copied, in an order that respects the foreign keys. Column names are fixed here,
never taken from input, so the statements built from them are constant."""

# Statements built once from the fixed names above (no input ever reaches them).
COUNT_SQL = {table: f"SELECT COUNT(*) FROM {table}" for table in TABLES}
SELECT_SQL = {table: f"SELECT {', '.join(cols)} FROM {table}" for table, cols in TABLES.items()}
COPY_SQL = {table: f"COPY {table} ({', '.join(cols)}) FROM STDIN" for table, cols in TABLES.items()}
STATUS_SQL = "SELECT status, COUNT(*) FROM tasks GROUP BY status ORDER BY status"
COUNTERS_SQL = "SELECT name, value FROM counters ORDER BY name"
RECOUNT_SQL = """
    DELETE FROM status_deltas;
    DELETE FROM status_counts;
    INSERT INTO status_counts (status, n) SELECT status, COUNT(*) FROM tasks GROUP BY status;
    SELECT setval(pg_get_serial_sequence('tasks', 'task_id'),
                  GREATEST((SELECT MAX(task_id) FROM tasks), 1));
    SELECT setval(pg_get_serial_sequence('schedules', 'schedule_id'),
                  GREATEST((SELECT MAX(schedule_id) FROM schedules), 1));
    SELECT setval(pg_get_serial_sequence('events', 'event_id'),
                  GREATEST((SELECT MAX(event_id) FROM events), 1));
    SELECT setval(pg_get_serial_sequence('task_groups', 'group_id'),
                  GREATEST((SELECT MAX(group_id) FROM task_groups), 1));
"""


class CopyError(Exception):
    """The copy cannot be done (or did not check out); the message says why."""


@dataclass(frozen=True)
class Census:
    """What one side holds: rows per table, tasks per status, counters."""

    rows: dict[str, int]
    statuses: dict[str, int]
    counters: dict[str, int]


def census(conn: Any) -> Census:
    """Count what ``conn`` (sqlite3 or psycopg) holds."""
    rows = {table: conn.execute(sql).fetchone()[0] for table, sql in COUNT_SQL.items()}
    statuses = {row[0]: row[1] for row in conn.execute(STATUS_SQL).fetchall()}
    counters = {row[0]: row[1] for row in conn.execute(COUNTERS_SQL).fetchall()}
    return Census(rows, statuses, counters)


def copy_queue(source_url: str, target_url: str) -> Census:
    """Copy the SQLite queue at ``source_url`` into the empty PostgreSQL ``target_url``."""
    source_path, target = _check_urls(source_url, target_url)
    SQLiteStore(source_path).close()  # brings the file to the current schema version
    PostgresStore(target, pool_size=1).close()  # creates the schema on the target
    with sqlite3.connect(source_path) as src, psycopg.connect(target) as dst:
        src.execute("BEGIN")  # one snapshot of everything
        before = census(src)
        if any(census(dst).rows.values()):
            raise CopyError(f"the target database is not empty: {census(dst).rows}")
        with dst.transaction():
            for table in TABLES:
                _copy_table(src, dst, table)
            dst.execute(RECOUNT_SQL)
            after = census(dst)
            if after != before:
                raise CopyError(f"counts differ after the copy (nothing was kept): "
                                f"source {before}, target {after}")
        src.execute("COMMIT")
    return after


def _check_urls(source_url: str, target_url: str) -> tuple[Any, str]:
    source = Config(database_url=source_url)
    target = Config(database_url=target_url)
    if source.sqlite_path is None:
        raise CopyError(f"the source must be a sqlite:/// URL, got {source_url!r}")
    if not source.sqlite_path.exists():
        raise CopyError(f"no SQLite database at {source.sqlite_path}")
    if target.postgres_url is None:
        raise CopyError(f"the target must be a postgresql:// URL, got {target_url!r}")
    return source.sqlite_path, target.postgres_url


def _copy_table(src: sqlite3.Connection, dst: psycopg.Connection[Any], table: str) -> None:
    with dst.cursor().copy(COPY_SQL[table]) as copy:
        for row in src.execute(SELECT_SQL[table]):
            copy.write_row(row)


def _print(census_: Census) -> None:
    print(f"{'table':<14} rows")
    for table, count in census_.rows.items():
        print(f"{table:<14} {count:,}")
    print("tasks by status: " + ", ".join(f"{s} {n:,}" for s, n in census_.statuses.items()))
    print("counters: " + (", ".join(f"{k} {v:,}" for k, v in census_.counters.items()) or "none"))


def main(argv: list[str] | None = None) -> int:
    """Copy, verify, print the counts; exit 1 with one line when it cannot."""
    parser = argparse.ArgumentParser(prog="python -m dispatcher.db.copy",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("source", help="the SQLite queue, sqlite:///path/to/tasks.db")
    parser.add_argument("target", help="an empty PostgreSQL database, postgresql://...")
    args = parser.parse_args(argv)
    try:
        copied = copy_queue(args.source, args.target)
    except (CopyError, ConfigError, psycopg.Error, sqlite3.Error) as exc:
        print(f"error: {exc}".strip(), file=sys.stderr)
        return 1
    _print(copied)
    print("copied and verified: every count matches the source")
    return 0


if __name__ == "__main__":
    sys.exit(main())
