"""Read the dispatcher's SQLite file directly and check what the promises say must hold."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.primes_reference import is_correct_primes

# Lines a *live* worker process writes when the dispatcher took a task away from it.
LOST_LEASE_LINE = re.compile(
    r"task (\d+) (?:revoked from worker|stopped on worker .*(?:revoked|refused as stale)"
    r"|attempt \d+: \w+ from worker .* refused|finished on worker .* after being revoked)"
)


@contextmanager
def database(path: Path) -> Iterator[sqlite3.Connection]:
    """A short-lived connection to the dispatcher's database (WAL: never blocks it)."""
    with closing(sqlite3.connect(path, timeout=10)) as conn:
        conn.row_factory = sqlite3.Row
        yield conn


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


def audit(db_path: Path) -> Audit:
    """Check every task: finished, exactly one result iff completed, at the final attempt, correct."""
    report = Audit()
    with database(db_path) as db:
        report.integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        tasks = db.execute("SELECT task_id, task_type, params, status, attempt FROM tasks").fetchall()
        results = {row["task_id"]: row for row in db.execute("SELECT * FROM task_results")}
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


def reclaim_counters(db_path: Path) -> dict[str, int]:
    """The dispatcher's persistent reclaim counters, by cause."""
    with database(db_path) as db:
        return {row["name"]: row["value"] for row in db.execute("SELECT name, value FROM counters")}


def task_row(db_path: Path, task_id: int) -> dict[str, Any]:
    """The raw ``tasks`` row plus its checkpoint's attempt, progress, state and saved_at."""
    with database(db_path) as db:
        row = db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        cp = db.execute("SELECT * FROM checkpoints WHERE task_id = ?", (task_id,)).fetchone()
    out = dict(row)
    out["checkpoint"] = (
        {"attempt": cp["attempt"], "progress": cp["progress"], "saved_at": cp["saved_at"],
         "state": json.loads(cp["state"])} if cp is not None else None)
    return out


def lost_lease_lines(log_text: str) -> list[int]:
    """Task ids a live worker logged as taken away from it (revoked / stale 409)."""
    return [int(m[1]) for m in LOST_LEASE_LINE.finditer(log_text)]
