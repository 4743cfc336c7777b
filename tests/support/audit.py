"""Read the dispatcher's database directly (SQLite or PostgreSQL) and check the promises."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.support.primes_reference import is_correct_primes

Database = Path | str
"""A SQLite file, or a database URL (``sqlite:///...`` or ``postgresql://...``)."""

# Lines a *live* worker process writes when the dispatcher took a task away from it.
LOST_LEASE_LINE = re.compile(
    r"task (\d+) (?:revoked from worker|stopped on worker .*(?:revoked|refused as stale)"
    r"|attempt \d+: \w+ from worker .* refused|finished on worker .* after being revoked)"
)


class Reader:
    """Read-only queries on either backend, sqlite3-style: ``?`` placeholders, rows indexed
    by position or by column name."""

    def __init__(self, conn: Any, postgres: bool) -> None:
        self._conn, self.postgres = conn, postgres

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """A cursor over the rows of ``sql``."""
        if self.postgres:
            return self._conn.execute(sql.replace("?", "%s"), tuple(params))
        return self._conn.execute(sql, tuple(params))

    def rows(self, sql: str, *params: Any) -> list[Any]:
        """Every row of ``sql``."""
        return list(self.execute(sql, params).fetchall())

    def integrity(self) -> str:
        """SQLite's integrity check ('ok'); PostgreSQL keeps its own, so 'ok' there."""
        return "ok" if self.postgres else self.rows("PRAGMA integrity_check")[0][0]


class _Row(dict):  # type: ignore[type-arg]
    """A PostgreSQL row that, like sqlite3.Row, indexes by position and by column name."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int):
            return list(self.values())[key]
        return super().__getitem__(key)


def _row_factory(cursor: Any) -> Any:
    names = [column.name for column in cursor.description or ()]
    return lambda values: _Row(zip(names, values))


@contextmanager
def database(where: Database) -> Iterator[Reader]:
    """A short-lived connection to the dispatcher's database (never blocks it)."""
    text = str(where)
    if text.startswith(("postgresql://", "postgres://")):
        with psycopg.connect(text, autocommit=True, row_factory=_row_factory) as conn:
            yield Reader(conn, postgres=True)
        return
    path = text.removeprefix("sqlite:///") if text.startswith("sqlite:///") else text
    with closing(sqlite3.connect(path, timeout=10)) as conn:
        conn.row_factory = sqlite3.Row
        yield Reader(conn, postgres=False)


@dataclass
class Audit:
    """What the database says after a run; every list should be empty."""

    tasks: int = 0
    completed: int = 0
    results: int = 0
    unfinished: list[int] = field(default_factory=list)
    missing_results: list[int] = field(default_factory=list)
    orphan_results: list[int] = field(default_factory=list)
    attempt_mismatch: list[int] = field(default_factory=list)
    wrong_results: list[int] = field(default_factory=list)
    reassigned: list[int] = field(default_factory=list)  # tasks that needed more than 1 attempt
    integrity: str = ""

    @property
    def clean(self) -> bool:
        """True when nothing is lost, duplicated, mismatched, wrong or corrupt."""
        return self.integrity == "ok" and not (
            self.unfinished or self.missing_results or self.orphan_results
            or self.attempt_mismatch or self.wrong_results)


def audit(db: Database) -> Audit:
    """Check every task: finished, exactly one result iff completed, at the final attempt, correct."""
    report = Audit()
    with database(db) as reader:
        report.integrity = reader.integrity()
        tasks = reader.rows("SELECT task_id, task_type, params, status, attempt FROM tasks")
        results = {row["task_id"]: row for row in reader.rows("SELECT * FROM task_results")}
    report.tasks, report.results = len(tasks), len(results)
    for task in tasks:
        task_id = task["task_id"]
        result = results.get(task_id)
        if task["status"] != "completed":
            report.unfinished.append(task_id)
            if result is not None:
                report.orphan_results.append(task_id)
            continue
        report.completed += 1
        if task["attempt"] > 1:
            report.reassigned.append(task_id)
        if result is None:
            report.missing_results.append(task_id)
            continue
        if result["attempt"] != task["attempt"]:
            report.attempt_mismatch.append(task_id)
        if task["task_type"] == "primes" and not is_correct_primes(
                json.loads(task["params"]), json.loads(result["result"])):
            report.wrong_results.append(task_id)
    return report


def reclaim_counters(db: Database) -> dict[str, int]:
    """The dispatcher's persistent reclaim counters, by cause."""
    with database(db) as reader:
        return {row["name"]: row["value"] for row in reader.rows("SELECT name, value FROM counters")}


def task_row(db: Database, task_id: int) -> dict[str, Any]:
    """The raw ``tasks`` row plus its checkpoint's attempt, progress, state and saved_at."""
    with database(db) as reader:
        [row] = reader.rows("SELECT * FROM tasks WHERE task_id = ?", task_id)
        found = reader.rows("SELECT * FROM checkpoints WHERE task_id = ?", task_id)
    cp = found[0] if found else None
    out = dict(row)
    out["checkpoint"] = (
        {"attempt": cp["attempt"], "progress": cp["progress"], "saved_at": cp["saved_at"],
         "state": json.loads(cp["state"])} if cp is not None else None)
    return out


def lost_lease_lines(log_text: str) -> list[int]:
    """Task ids a live worker logged as taken away from it (revoked / stale 409)."""
    return [int(m[1]) for m in LOST_LEASE_LINE.finditer(log_text)]
