"""The store: every query of the dispatcher, named, executed by one class per backend.

Each queue operation (submit, claim, heartbeat, checkpoint, complete, release, sweep) is one
write transaction. Times are always passed in by the caller (the dispatcher's clock), so tests
can inject time and no query reads the wall clock itself.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dispatcher.models import (
    FINISHED,
    Report,
    MIGRATIONS,
    SCHEMA,
    SCHEMA_VERSION,
    Checkpoint,
    Lease,
    NewTask,
    Outcome,
    OutcomeKind,
    Reclaim,
    ReclaimCause,
    Task,
    TaskStatus,
    dumps,
)
from tasks.base import InvalidCheckpoint

log = logging.getLogger(__name__)


class StoreError(Exception):
    """Base of the errors the store raises on purpose."""


class StorageUnavailable(StoreError):
    """The database is locked past the busy timeout, or the disk is full; retry later."""


class NotFound(StoreError):
    """No task with that id."""


class StaleLease(StoreError):
    """The caller does not hold the task at that attempt (fencing token mismatch)."""

    def __init__(self, message: str, code: str = "stale_lease") -> None:
        super().__init__(message)
        self.code = code


Held = tuple[int, int]  # (task_id, attempt)
CheckpointCheck = Callable[[str, dict[str, Any], "dict[str, Any] | None"], None]
"""Called as check(task_type, new_state, previous_state); raises to refuse a checkpoint."""

QUERIES: dict[str, str] = {
    # Claim: the oldest highest-priority pending tasks, leased in one statement.
    "claim": """
        UPDATE tasks
           SET status = 'in-progress', attempt = attempt + 1, worker_id = :worker_id,
               worker_instance = :instance_id, lease_expires_at = :lease_expires_at,
               claimed_at = :now, started_at = COALESCE(started_at, :now)
         WHERE task_id IN (SELECT task_id FROM tasks WHERE status = 'pending'
                           ORDER BY priority DESC, task_id LIMIT :limit)
        RETURNING task_id, task_type, params, attempt, lease_expires_at""",
    "insert_task": """
        INSERT INTO tasks (task_type, params, priority, max_attempts, idempotency_key, created_at)
        VALUES (?, ?, ?, ?, ?, ?)""",
    "task_by_key": "SELECT task_id, status FROM tasks WHERE idempotency_key = ?",
    "task_view": """
        SELECT t.*, r.result FROM tasks t LEFT JOIN task_results r USING (task_id)
         WHERE t.task_id = ?""",
    "task_list": """
        SELECT t.*, r.result FROM tasks t LEFT JOIN task_results r USING (task_id)
         WHERE (:status IS NULL OR t.status = :status)
         ORDER BY t.task_id DESC LIMIT :limit""",
    "task_lease": "SELECT status, attempt, worker_id, task_type FROM tasks WHERE task_id = ?",
    "task_failure": "SELECT attempt, worker_id, error FROM tasks WHERE task_id = ?",
    "checkpoint_get": "SELECT * FROM checkpoints WHERE task_id = ?",
    "checkpoints_of": """
        SELECT * FROM checkpoints WHERE task_id IN (SELECT value FROM json_each(?))""",
    "checkpoint_put": """
        INSERT INTO checkpoints (task_id, attempt, worker_id, state, progress, saved_at)
        VALUES (:task_id, :attempt, :worker_id, :state, :progress, :now)
        ON CONFLICT (task_id) DO UPDATE SET attempt = excluded.attempt,
            worker_id = excluded.worker_id, state = excluded.state,
            progress = excluded.progress, saved_at = excluded.saved_at""",
    "renew_lease": """
        UPDATE tasks SET progress = :progress, lease_expires_at = :lease_expires_at
         WHERE task_id = :task_id""",
    "set_progress": "UPDATE tasks SET progress = ? WHERE task_id = ?",
    "result_get": "SELECT attempt, worker_id, result FROM task_results WHERE task_id = ?",
    "result_put": """
        INSERT INTO task_results (task_id, attempt, worker_id, result, created_at)
        VALUES (?, ?, ?, ?, ?)""",
    "mark_completed": """
        UPDATE tasks SET status = 'completed', progress = 1.0, lease_expires_at = NULL,
               finished_at = ? WHERE task_id = ?""",
    "mark_failed": """
        UPDATE tasks SET status = 'failed', error = ?, lease_expires_at = NULL,
               finished_at = ? WHERE task_id = ?""",
    "mark_cancelled": """
        UPDATE tasks SET status = 'cancelled', lease_expires_at = NULL, finished_at = ?
         WHERE task_id = ? AND status IN ('pending', 'in-progress')""",
    "checkpoint_drop": "DELETE FROM checkpoints WHERE task_id = ?",
    "worker_get": "SELECT instance_id, status FROM workers WHERE worker_id = ?",
    "worker_upsert": """
        INSERT INTO workers (worker_id, instance_id, status, last_heartbeat, registered_at)
        VALUES (:worker_id, :instance_id, 'alive', :now, :now)
        ON CONFLICT (worker_id) DO UPDATE SET instance_id = excluded.instance_id,
            status = 'alive', last_heartbeat = excluded.last_heartbeat""",
    "worker_touch": "UPDATE workers SET last_heartbeat = ?, status = 'alive' WHERE worker_id = ?",
    "worker_completed": """
        UPDATE workers SET tasks_completed = tasks_completed + 1 WHERE worker_id = ?""",
    "worker_mark": "UPDATE workers SET status = ? WHERE worker_id = ?",
    "workers_silent": """
        SELECT worker_id FROM workers WHERE status = 'alive' AND last_heartbeat < ?""",
    "workers_all": "SELECT * FROM workers ORDER BY worker_id",
    "held_by_worker": """
        SELECT task_id, attempt FROM tasks WHERE status = 'in-progress' AND worker_id = ?""",
    "leased_to_instance": """
        SELECT task_id, task_type, params, attempt, lease_expires_at, claimed_at FROM tasks
         WHERE status = 'in-progress' AND worker_id = ? AND worker_instance = ?""",
    "held_by_other_instance": """
        SELECT task_id, attempt FROM tasks
         WHERE status = 'in-progress' AND worker_id = ? AND worker_instance IS NOT ?""",
    "expired_leases": """
        SELECT task_id, attempt, worker_id FROM tasks
         WHERE status = 'in-progress' AND lease_expires_at < ?""",
    # Requeue one task; out of attempts means failed instead of pending.
    "requeue": """
        UPDATE tasks
           SET status = CASE WHEN attempt >= max_attempts AND :counts THEN 'failed'
                             ELSE 'pending' END,
               error = CASE WHEN attempt >= max_attempts AND :counts
                            THEN 'gave up after ' || attempt || ' attempts (last: ' || :cause || ')'
                            ELSE error END,
               finished_at = CASE WHEN attempt >= max_attempts AND :counts THEN :now END,
               lease_expires_at = NULL
         WHERE task_id = :task_id AND status = 'in-progress' AND attempt = :attempt
        RETURNING status""",
    "extend_leases": """
        UPDATE tasks SET lease_expires_at = MAX(lease_expires_at, ?)
         WHERE status = 'in-progress'""",
    "status_counts": "SELECT status, n FROM status_counts",
    "schema_version_put": """
        INSERT INTO schema_info (key, value) VALUES ('version', ?)
        ON CONFLICT (key) DO UPDATE SET value = excluded.value""",
    "finished_since": """
        SELECT COUNT(*) FROM tasks WHERE finished_at >= ? AND status = 'completed'""",
    "counter_add": """
        INSERT INTO counters (name, value) VALUES (?, ?)
        ON CONFLICT (name) DO UPDATE SET value = value + excluded.value""",
    "counters_all": "SELECT name, value FROM counters",
    "in_progress_all": """
        SELECT task_id, worker_id, attempt FROM tasks WHERE status = 'in-progress'""",
}


class SQLiteStore:
    """The task store on an embedded SQLite database (WAL, group commit).

    Writers serialise on a process lock first, so threads of this dispatcher queue in Python
    instead of in SQLite's sleeping busy handler (the busy timeout still covers other
    processes that hold the database), and all write through one connection; reads use a
    connection per thread.
    """

    def __init__(self, path: Path, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # Group commit: transactions commit without fsync; a durable write then fsyncs the WAL
        # outside the write lock, and one fsync covers every commit made before it started.
        self._commits = 0  # transactions committed, counted under the write lock
        self._synced = 0  # of those, how many an fsync has made durable
        self._sync_lock = threading.Lock()
        self._wal_fd: int | None = None
        self._writer_conn: sqlite3.Connection | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._create_schema()

    # -- connections and transactions ------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # durable writes fsync the WAL themselves
        conn.execute("PRAGMA foreign_keys = ON")
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _writer(self) -> sqlite3.Connection:
        """The one connection every write uses (callers hold the write lock).

        Writes are serialised anyway; one connection keeps its page cache valid across them,
        where a connection per thread re-reads every page another connection changed.
        """
        if self._writer_conn is None:
            self._writer_conn = self._connect()
        return self._writer_conn

    @contextmanager
    def _write(
        self, durable: bool = True, on_commit: Callable[[], None] | None = None
    ) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE, commit, or roll back on any error.

        After the commit, and after the write lock is released, ``on_commit`` runs (it wakes
        waiting requests); then a ``durable`` write returns only once an fsync of the WAL
        covers it (:meth:`_sync`). Other writers go ahead during that fsync, and concurrent
        durable writes share one. ``durable=False`` is for writes whose loss in a power cut
        only costs redone work (claims, heartbeats, checkpoints, requeues); the WAL is
        sequential, so the next fsync makes them durable too. Either way a commit survives
        a crash of the dispatcher process: it is in the WAL file.
        """
        with _storage_errors():
            with self._write_lock:
                conn = self._writer()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                self._commits += 1
                commit = self._commits
            if on_commit is not None:
                on_commit()
            if durable:
                self._sync(commit)

    def _sync(self, commit: int) -> None:
        """Return once commit number ``commit`` is on disk: fsync the WAL unless done already.

        This is what synchronous=FULL does inside every COMMIT, moved out of the write lock.
        An fsync flushes the file whichever descriptor asks, so one started after a commit
        covers it: a thread that waited here for another's fsync may return without its own.
        """
        with self._sync_lock:
            if self._synced >= commit:
                return
            covered = self._commits  # every commit counted so far is already in the WAL
            try:
                os.fsync(self._wal())
            except OSError as exc:
                raise StorageUnavailable(f"fsync of the WAL failed: {exc}") from exc
            self._synced = covered

    def _wal(self) -> int:
        """A descriptor of the current WAL file (reopened if SQLite replaced the file)."""
        wal = f"{self.path}-wal"
        inode = os.stat(wal).st_ino
        if self._wal_fd is None or os.fstat(self._wal_fd).st_ino != inode:
            if self._wal_fd is not None:
                os.close(self._wal_fd)
            self._wal_fd = os.open(wal, os.O_RDONLY)
            # A new WAL file is durable only once its directory entry is.
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return self._wal_fd

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read snapshot."""
        conn = self._conn()
        with _storage_errors():
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def _create_schema(self) -> None:
        """Create the base schema, then apply every migration the database has not seen."""
        with self._write() as conn:
            _run_script(conn, SCHEMA)
            row = conn.execute("SELECT value FROM schema_info WHERE key = 'version'").fetchone()
            version = int(row["value"]) if row is not None else 1
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"database schema version {version} is newer than this code "
                    f"({SCHEMA_VERSION}); upgrade the dispatcher"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                _run_script(conn, MIGRATIONS[target])
                log.info("database migrated to schema version %s", target)
            conn.execute(QUERIES["schema_version_put"], (str(SCHEMA_VERSION),))

    def close(self) -> None:
        """Close every connection this store opened."""
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
            self._writer_conn = None
        with self._sync_lock:
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
        self._local = threading.local()

    def ping(self) -> None:
        """Raise StorageUnavailable unless the database answers a query."""
        with _storage_errors():
            self._conn().execute("SELECT 1 FROM schema_info LIMIT 1").fetchone()

    def integrity_check(self) -> str:
        """Run SQLite's integrity check; 'ok' when the file is sound."""
        return self._conn().execute("PRAGMA integrity_check").fetchone()[0]

    # -- submission ------------------------------------------------------------------------

    def submit(
        self, tasks: Sequence[NewTask], now: float, on_commit: Callable[[], None] | None = None
    ) -> list[tuple[int, bool]]:
        """Insert tasks in one durable transaction; return (task_id, created) in order.

        A task whose idempotency key is already stored is not inserted again: its existing id
        comes back with created=False. ``on_commit`` runs between the commit and the fsync.
        """
        with self._write(on_commit=on_commit) as conn:
            if all(t.idempotency_key is None for t in tasks):
                return _insert_many(conn, tasks, now)
            return [_insert_keyed(conn, t, now) for t in tasks]

    # -- workers ---------------------------------------------------------------------------

    def _register(
        self, conn: sqlite3.Connection, worker_id: str, instance_id: str | None, now: float
    ) -> list[Reclaim]:
        """Mark the worker alive; a new instance of a known worker frees the old one's tasks."""
        row = conn.execute(QUERIES["worker_get"], (worker_id,)).fetchone()
        reclaimed: list[Reclaim] = []
        if row is not None and instance_id is not None and row["instance_id"] != instance_id:
            held = conn.execute(
                QUERIES["held_by_other_instance"], (worker_id, instance_id)
            ).fetchall()
            reclaimed = _requeue_all(
                conn, held, worker_id, ReclaimCause.WORKER_RESTARTED, now, counts=True
            )
        if row is None or instance_id is not None:
            conn.execute(
                QUERIES["worker_upsert"],
                {"worker_id": worker_id, "instance_id": instance_id, "now": now},
            )
        else:
            conn.execute(QUERIES["worker_touch"], (now, worker_id))
        return reclaimed

    def heartbeat(
        self,
        worker_id: str,
        instance_id: str | None,
        held: Sequence[Held],
        now: float,
        unlisted_grace: float | None = None,
    ) -> tuple[list[int], list[Reclaim]]:
        """Record a heartbeat; return the held task ids the worker no longer owns, and reclaims.

        With ``unlisted_grace``, a task leased to this instance more than that many seconds
        ago but missing from ``held`` goes back to the queue (``lost_claim``): the claim's
        answer never reached the worker.
        """
        with self._write(durable=False) as conn:
            reclaimed = self._register(conn, worker_id, instance_id, now)
            revoked = [
                task_id
                for task_id, attempt in held
                if not _holds(conn, task_id, attempt, worker_id)
            ]
            if unlisted_grace is not None and instance_id is not None:
                listed = {task_id for task_id, _ in held}
                lost = [
                    (row["task_id"], row["attempt"])
                    for row in conn.execute(QUERIES["leased_to_instance"], (worker_id, instance_id))
                    if row["task_id"] not in listed and row["claimed_at"] < now - unlisted_grace
                ]
                reclaimed += _requeue_all(
                    conn, lost, worker_id, ReclaimCause.LOST_CLAIM, now, counts=False
                )
        return revoked, reclaimed

    def mark_worker(self, worker_id: str, status: str) -> None:
        """Set a worker's status ('stopped' when it says it is leaving)."""
        with self._write() as conn:
            conn.execute(QUERIES["worker_mark"], (status, worker_id))

    # -- claim, checkpoint, release, complete ----------------------------------------------

    def claim(
        self,
        worker_id: str,
        instance_id: str | None,
        limit: int,
        now: float,
        lease_seconds: float,
        results: Sequence[Report] = (),
        on_commit: Callable[[], None] | None = None,
        arriving: bool = True,
    ) -> tuple[list[Lease], list[Reclaim], list[Outcome]]:
        """Record ``results`` (as :meth:`complete`), then lease up to ``limit`` pending tasks.

        One transaction: a worker acknowledges its last batch and takes the next in one
        round trip. Durable (fsync) only when it carries results. ``arriving=False`` is a
        long poll looking again after a wake-up: the worker was registered (and its liveness
        noted) when the request arrived.
        """
        with self._write(durable=bool(results), on_commit=on_commit) as conn:
            outcomes = [_complete_one(conn, worker_id, item, now) for item in results]
            reclaimed = self._register(conn, worker_id, instance_id, now) if arriving else []
            if limit <= 0:
                return [], reclaimed, outcomes
            lost = _lost_claims(conn, worker_id, instance_id)
            rows = conn.execute(
                QUERIES["claim"],
                {
                    "worker_id": worker_id,
                    "instance_id": instance_id,
                    "lease_expires_at": now + lease_seconds,
                    "now": now,
                    "limit": max(0, limit - len(lost)),
                },
            ).fetchall()
            leases = _leases(conn, lost + rows, lease_seconds)
        return leases, reclaimed, outcomes

    def checkpoint(
        self,
        worker_id: str,
        task_id: int,
        attempt: int,
        state: dict[str, Any],
        progress: float,
        now: float,
        lease_seconds: float,
        check: CheckpointCheck | None = None,
    ) -> float:
        """Save a checkpoint and renew the lease; return the new lease expiry.

        ``check`` may refuse the state (InvalidCheckpoint); then nothing changes.
        """
        with self._write(durable=False) as conn:
            task_type = _require_holder(conn, task_id, attempt, worker_id)
            _save_checkpoint(conn, worker_id, task_id, attempt, state, progress, now,
                             _bind(check, task_type))
            expires = now + lease_seconds
            conn.execute(
                QUERIES["renew_lease"],
                {"progress": progress, "lease_expires_at": expires, "task_id": task_id},
            )
            conn.execute(QUERIES["worker_touch"], (now, worker_id))
        return expires

    def release(
        self,
        worker_id: str,
        task_id: int,
        attempt: int,
        state: dict[str, Any] | None,
        progress: float | None,
        now: float,
        check: CheckpointCheck | None = None,
        cause: ReclaimCause = ReclaimCause.RELEASED,
    ) -> Reclaim:
        """Return a held task to the queue at once (shutdown, or unstarted), saving its state."""
        with self._write(durable=False) as conn:
            task_type = _require_holder(conn, task_id, attempt, worker_id)
            if state is not None:
                _save_checkpoint(conn, worker_id, task_id, attempt, state, progress or 0.0, now,
                                 _bind(check, task_type))
                conn.execute(QUERIES["set_progress"], (progress or 0.0, task_id))
            done = _requeue_all(
                conn, [(task_id, attempt)], worker_id, cause, now, counts=False
            )
        return done[0]

    def complete(
        self, worker_id: str, items: Sequence[Report], now: float,
        on_commit: Callable[[], None] | None = None,
    ) -> list[Outcome]:
        """Record reports in one durable transaction.

        Accepted only from the current (task, attempt, worker); the same result posted again
        is a duplicate; anything else is stale and changes nothing. A refused result fails
        its task with the reason.
        """
        with self._write(on_commit=on_commit) as conn:
            return [_complete_one(conn, worker_id, item, now) for item in items]

    def cancel(self, task_id: int, now: float) -> Task:
        """Cancel a task that has not finished; raise StaleLease if it already has."""
        with self._write() as conn:
            row = conn.execute(QUERIES["task_lease"], (task_id,)).fetchone()
            if row is None:
                raise NotFound(f"task {task_id} does not exist")
            if TaskStatus(row["status"]) in FINISHED:
                raise StaleLease(
                    f"task {task_id} is already {row['status']}", code="already_finished"
                )
            conn.execute(QUERIES["mark_cancelled"], (now, task_id))
            conn.execute(QUERIES["checkpoint_drop"], (task_id,))
        return self.get_task(task_id)

    # -- the heartbeat monitor's sweep ---------------------------------------------------

    def reap_dead_workers(self, silent_since: float, now: float) -> list[Reclaim]:
        """Mark workers silent since ``silent_since`` dead and requeue their tasks."""
        if not self._conn().execute(QUERIES["workers_silent"], (silent_since,)).fetchone():
            return []
        reclaimed: list[Reclaim] = []
        with self._write(durable=False) as conn:
            for row in conn.execute(QUERIES["workers_silent"], (silent_since,)).fetchall():
                worker_id = row["worker_id"]
                conn.execute(QUERIES["worker_mark"], ("dead", worker_id))
                held = conn.execute(QUERIES["held_by_worker"], (worker_id,)).fetchall()
                reclaimed += _requeue_all(
                    conn, held, worker_id, ReclaimCause.DEAD_WORKER, now, counts=True
                )
        return reclaimed

    def expire_leases(self, now: float) -> list[Reclaim]:
        """Requeue in-progress tasks whose lease ran out (no progress for a whole lease)."""
        if not self._conn().execute(QUERIES["expired_leases"], (now,)).fetchone():
            return []
        reclaimed: list[Reclaim] = []
        with self._write(durable=False) as conn:
            for row in conn.execute(QUERIES["expired_leases"], (now,)).fetchall():
                reclaimed += _requeue_all(
                    conn,
                    [(row["task_id"], row["attempt"])],
                    row["worker_id"],
                    ReclaimCause.EXPIRED_LEASE,
                    now,
                    counts=True,
                )
        return reclaimed

    def extend_leases(self, until: float) -> None:
        """Give every in-progress lease at least until ``until`` (after a dispatcher restart)."""
        with self._write() as conn:
            conn.execute(QUERIES["extend_leases"], (until,))

    # -- reads ---------------------------------------------------------------------------

    def get_task(self, task_id: int) -> Task:
        """The task's view; raise NotFound."""
        with _storage_errors():
            row = self._conn().execute(QUERIES["task_view"], (task_id,)).fetchone()
        if row is None:
            raise NotFound(f"task {task_id} does not exist")
        return Task.from_row(row)

    def list_tasks(self, status: TaskStatus | None, limit: int) -> list[Task]:
        """The newest tasks, optionally of one status."""
        params = {"status": status.value if status else None, "limit": limit}
        with _storage_errors():
            rows = self._conn().execute(QUERIES["task_list"], params).fetchall()
        return [Task.from_row(row) for row in rows]

    def stats(self, now: float, window_seconds: float = 60.0) -> dict[str, Any]:
        """Counts per status, workers, throughput over the window, reclaim counters."""
        with self._read() as conn:
            counts = {s.value: 0 for s in TaskStatus}
            for row in conn.execute(QUERIES["status_counts"]):
                counts[row["status"]] = row["n"]
            finished = conn.execute(QUERIES["finished_since"], (now - window_seconds,)).fetchone()
            held = conn.execute(QUERIES["in_progress_all"]).fetchall()
            workers = [dict(row) for row in conn.execute(QUERIES["workers_all"])]
            counters = {row["name"]: row["value"] for row in conn.execute(QUERIES["counters_all"])}
        return {
            "counts": counts,
            "completed_last_window": finished[0],
            "workers": workers,
            "held": [dict(row) for row in held],
            "counters": counters,
        }


# -- helpers used inside transactions --------------------------------------------------------


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Execute a fixed SQL script statement by statement inside the caller's transaction.

    (``executescript`` would commit the transaction first.) Trigger bodies contain ';', so a
    statement ends where SQLite says it is complete.
    """
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                conn.execute(pending)
            pending = ""


@contextmanager
def _storage_errors() -> Iterator[None]:
    """Turn SQLite's locked/busy/full errors into StorageUnavailable (a 503, not a 500)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc).lower()
        if any(word in text for word in ("locked", "busy", "full", "disk i/o")):
            raise StorageUnavailable(str(exc)) from exc
        raise
    except sqlite3.DatabaseError as exc:
        if "full" in str(exc).lower():
            raise StorageUnavailable(str(exc)) from exc
        raise


def _insert_many(
    conn: sqlite3.Connection, tasks: Sequence[NewTask], now: float
) -> list[tuple[int, bool]]:
    rows = [(t.task_type, dumps(t.params), t.priority, t.max_attempts, None, now) for t in tasks]
    conn.executemany(QUERIES["insert_task"], rows)
    # One writer at a time, so AUTOINCREMENT hands this batch consecutive ids.
    last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
    first = last - len(rows) + 1
    return [(task_id, True) for task_id in range(first, last + 1)]


def _insert_keyed(conn: sqlite3.Connection, task: NewTask, now: float) -> tuple[int, bool]:
    if task.idempotency_key is not None:
        row = conn.execute(QUERIES["task_by_key"], (task.idempotency_key,)).fetchone()
        if row is not None:
            return row["task_id"], False
    cursor = conn.execute(
        QUERIES["insert_task"],
        (
            task.task_type,
            dumps(task.params),
            task.priority,
            task.max_attempts,
            task.idempotency_key,
            now,
        ),
    )
    return cursor.lastrowid, True


def _holds(conn: sqlite3.Connection, task_id: int, attempt: int, worker_id: str) -> bool:
    row = conn.execute(QUERIES["task_lease"], (task_id,)).fetchone()
    return (
        row is not None
        and row["status"] == TaskStatus.IN_PROGRESS.value
        and row["attempt"] == attempt
        and row["worker_id"] == worker_id
    )


def _require_holder(conn: sqlite3.Connection, task_id: int, attempt: int, worker_id: str) -> str:
    """Raise NotFound/StaleLease unless the worker holds the task; return its task type."""
    row = conn.execute(QUERIES["task_lease"], (task_id,)).fetchone()
    if row is None:
        raise NotFound(f"task {task_id} does not exist")
    if not _holds(conn, task_id, attempt, worker_id):
        raise StaleLease(
            f"task {task_id} attempt {attempt} is not held by {worker_id} "
            f"(task is {row['status']} at attempt {row['attempt']} by {row['worker_id']})"
        )
    return row["task_type"]


def _bind(
    check: CheckpointCheck | None, task_type: str
) -> Callable[[dict[str, Any], dict[str, Any] | None], None] | None:
    if check is None:
        return None
    return lambda state, previous: check(task_type, state, previous)


def _save_checkpoint(
    conn: sqlite3.Connection,
    worker_id: str,
    task_id: int,
    attempt: int,
    state: dict[str, Any],
    progress: float,
    now: float,
    check: Callable[[dict[str, Any], dict[str, Any] | None], None] | None,
) -> None:
    previous = conn.execute(QUERIES["checkpoint_get"], (task_id,)).fetchone()
    if previous is not None and progress < previous["progress"] - 1e-9:
        raise InvalidCheckpoint(
            "progress", f"goes back from {previous['progress']} to {progress} (task {task_id})"
        )
    if check is not None:
        check(state, json.loads(previous["state"]) if previous is not None else None)
    conn.execute(
        QUERIES["checkpoint_put"],
        {
            "task_id": task_id,
            "attempt": attempt,
            "worker_id": worker_id,
            "state": dumps(state),
            "progress": progress,
            "now": now,
        },
    )


def _lost_claims(
    conn: sqlite3.Connection, worker_id: str, instance_id: str | None
) -> list[sqlite3.Row]:
    """Tasks still leased to this worker instance when it claims again: handed back as they are.

    A worker claims only when it holds nothing and reports every finished result with the
    claim, so such a lease is one whose answer was lost (e.g. the dispatcher was killed after
    committing it). Same attempt, same lease: no work is redone, nothing is reassigned.
    """
    if instance_id is None:
        return []
    rows = conn.execute(QUERIES["leased_to_instance"], (worker_id, instance_id)).fetchall()
    if rows:
        log.warning("re-delivering tasks %s to worker %s: their claim answer was lost",
                    [row["task_id"] for row in rows], worker_id)
        conn.execute(QUERIES["counter_add"], ("redelivered", len(rows)))
    return rows


def _leases(
    conn: sqlite3.Connection, rows: Sequence[sqlite3.Row], lease_seconds: float
) -> list[Lease]:
    """Leases for claimed rows, in task order, each with its latest checkpoint."""
    if not rows:
        return []
    ids = json.dumps([row["task_id"] for row in rows])
    checkpoints = {
        cp["task_id"]: Checkpoint.from_row(cp)
        for cp in conn.execute(QUERIES["checkpoints_of"], (ids,))
    }
    leases = [
        Lease(
            task_id=row["task_id"],
            task_type=row["task_type"],
            params=json.loads(row["params"]),
            attempt=row["attempt"],
            lease_expires_at=row["lease_expires_at"],
            lease_seconds=lease_seconds,
            checkpoint=checkpoints.get(row["task_id"]),
        )
        for row in rows
    ]
    return sorted(leases, key=lambda lease: lease.task_id)


def _requeue_all(
    conn: sqlite3.Connection,
    held: Sequence[Any],
    worker_id: str | None,
    cause: ReclaimCause,
    now: float,
    counts: bool,
) -> list[Reclaim]:
    """Requeue each (task_id, attempt); ``counts`` says whether the attempt counts as used."""
    reclaimed = []
    for task_id, attempt in held:
        row = conn.execute(
            QUERIES["requeue"],
            {"task_id": task_id, "attempt": attempt, "cause": cause.value, "now": now,
             "counts": counts},
        ).fetchone()
        if row is not None:
            failed = row["status"] == TaskStatus.FAILED.value
            reclaimed.append(Reclaim(task_id, worker_id, attempt, cause, failed))
    if reclaimed:
        conn.execute(QUERIES["counter_add"], (cause.value, len(reclaimed)))
    return reclaimed


def _complete_one(
    conn: sqlite3.Connection, worker_id: str, item: Report, now: float
) -> Outcome:
    task_id, attempt = item.task_id, item.attempt
    row = conn.execute(QUERIES["task_lease"], (task_id,)).fetchone()
    if row is None:
        return Outcome(task_id, attempt, OutcomeKind.NOT_FOUND, None)
    status = TaskStatus(row["status"])
    if status in FINISHED:
        return Outcome(task_id, attempt, _repeat_outcome(conn, worker_id, item, status), status)
    if status is not TaskStatus.IN_PROGRESS or row["attempt"] != attempt \
            or row["worker_id"] != worker_id:
        return Outcome(task_id, attempt, OutcomeKind.STALE, status)
    kind = OutcomeKind.ACCEPTED
    if item.refused is not None:
        conn.execute(QUERIES["mark_failed"], (item.refused, now, task_id))
        new_status, kind = TaskStatus.FAILED, OutcomeKind.REFUSED
        log.warning("task %s attempt %s from worker %s: result refused (%s); task failed",
                    task_id, attempt, worker_id, item.refused)
    elif item.error is not None:
        conn.execute(QUERIES["mark_failed"], (item.error, now, task_id))
        new_status = TaskStatus.FAILED
    else:
        conn.execute(QUERIES["result_put"], (task_id, attempt, worker_id, item.result_json, now))
        conn.execute(QUERIES["mark_completed"], (now, task_id))
        conn.execute(QUERIES["worker_completed"], (worker_id,))
        new_status = TaskStatus.COMPLETED
    conn.execute(QUERIES["checkpoint_drop"], (task_id,))
    return Outcome(task_id, attempt, kind, new_status)


def _repeat_outcome(
    conn: sqlite3.Connection, worker_id: str, item: Report, status: TaskStatus
) -> OutcomeKind:
    """A report for a finished task: a duplicate if it is the one recorded, else stale."""
    task_id, attempt = item.task_id, item.attempt
    if status is TaskStatus.COMPLETED and item.error is None and item.refused is None:
        stored = conn.execute(QUERIES["result_get"], (task_id,)).fetchone()
        same = (
            stored["attempt"] == attempt
            and stored["worker_id"] == worker_id
            and stored["result"] == item.result_json
        )
        return OutcomeKind.DUPLICATE if same else OutcomeKind.STALE
    if status is TaskStatus.FAILED:
        error = item.refused if item.refused is not None else item.error
        row = conn.execute(QUERIES["task_failure"], (task_id,)).fetchone()
        if row["attempt"] == attempt and row["worker_id"] == worker_id and row["error"] == error:
            return OutcomeKind.DUPLICATE
    return OutcomeKind.STALE
