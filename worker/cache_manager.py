"""Durable local cache of results the dispatcher has not acknowledged yet.

A result is written here *before* it is sent, and deleted only once the dispatcher has
answered it (accepted, duplicate or stale). The file survives a worker crash, so a restarted
worker re-sends what the previous process could not deliver.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending_results (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    payload TEXT NOT NULL,
    UNIQUE (task_id, attempt)
)
"""
_PUT = """
INSERT INTO pending_results (task_id, attempt, payload) VALUES (?, ?, ?)
ON CONFLICT (task_id, attempt) DO NOTHING
"""
_PENDING = "SELECT task_id, attempt, payload FROM pending_results ORDER BY seq"
_ACK = "DELETE FROM pending_results WHERE task_id = ? AND attempt = ?"


@dataclass(frozen=True)
class PendingResult:
    """A result waiting for the dispatcher: ``payload`` is ``{"result": ...}`` or ``{"error": ...}``."""

    task_id: int
    attempt: int
    payload: dict[str, Any]
    size: int = field(default=0, compare=False)  # bytes of the payload JSON

    @classmethod
    def from_row(cls, row: tuple[int, int, str]) -> "PendingResult":
        """Build from a ``(task_id, attempt, payload_json)`` row."""
        return cls(task_id=row[0], attempt=row[1], payload=json.loads(row[2]), size=len(row[2]))


class ResultCache:
    """A small SQLite file (WAL) holding unacknowledged results, keyed by (task_id, attempt)."""

    def __init__(self, path: Path, busy_timeout_ms: int = 5_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None)
        # WAL + NORMAL survives a process crash (not a power cut), which is what we need.
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        with self._transaction():
            self._conn.execute(_SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def put(self, task_id: int, attempt: int, payload: dict[str, Any]) -> None:
        """Store a result durably; a second put of the same key keeps the first payload."""
        text = json.dumps(payload, allow_nan=False)
        with self._transaction() as conn:
            conn.execute(_PUT, (task_id, attempt, text))

    def put_many(self, items: list[tuple[int, int, dict[str, Any]]]) -> None:
        """Store several results in one transaction (same rules as :meth:`put`)."""
        rows = [(task_id, attempt, json.dumps(payload, allow_nan=False))
                for task_id, attempt, payload in items]
        if rows:
            with self._transaction() as conn:
                conn.executemany(_PUT, rows)

    def pending(self) -> list[PendingResult]:
        """All unacknowledged results, oldest first."""
        return [PendingResult.from_row(row) for row in self._conn.execute(_PENDING)]

    def ack(self, task_id: int, attempt: int) -> None:
        """Forget a result the dispatcher has answered; unknown keys are ignored."""
        with self._transaction() as conn:
            conn.execute(_ACK, (task_id, attempt))

    def ack_many(self, keys: list[tuple[int, int]]) -> None:
        """Forget several answered results in one transaction."""
        if keys:
            with self._transaction() as conn:
                conn.executemany(_ACK, keys)

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM pending_results").fetchone()[0]

    def close(self) -> None:
        """Close the database file."""
        self._conn.close()

    def __enter__(self) -> "ResultCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
