"""The SQLite backend: an embedded file in WAL mode, one writer, durable by group commit.

Writers serialise on a process lock first, so requests of this dispatcher queue in Python
instead of in SQLite's busy handler, and all write through one connection (whose page cache
then stays valid across writes); reads borrow a connection from a small pool. Waiting for a
lock held by another process is a cooperative retry loop, never a long sleep inside SQLite, so
a locked database delays only the writes, not the whole server.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dispatcher.db.errors import StorageUnavailable, StoreError
from dispatcher.db.schema import (
    SCHEMA_VERSION,
    SQLITE_MIGRATIONS,
    SQLITE_SCHEMA,
    migrations_between,
    migrations_missed,
)
from dispatcher.db.store import OLDEST_PENDING, Clock, Dialect, OnCommit, Store, Tx
from dispatcher.runtime import offload

log = logging.getLogger(__name__)

# The partial indexes of the task lifecycle are named (INDEXED BY) where SQLite's planner, with
# no statistics, would rather take tasks_status_id_idx (status, task_id) and walk every pending
# (or running) task: the claim, the due timer and the dashboard's pending list stay O(log n);
# so is the pending-cap count of one client (tasks_owner_pending_idx), which would otherwise walk
# every client's pending tasks.
QUERIES: dict[str, str] = {
    # -- moves (dispatcher/db/moves.py): the only statements that change a task's status --
    "move_claim": """
        UPDATE tasks
           SET status = 'in-progress', attempt = attempt + 1, worker_id = :worker_id,
               worker_instance = :instance_id, lease_expires_at = :lease_expires_at,
               claimed_at = :now, started_at = COALESCE(started_at, :now),
               timeout_at = :now + timeout_seconds
         WHERE task_id IN (SELECT task_id FROM tasks INDEXED BY tasks_ready_idx
                            WHERE status = 'pending' AND run_after IS NULL
                           ORDER BY priority DESC, task_id LIMIT :limit)
        RETURNING task_id, task_type, params, attempt, lease_expires_at, timeout_seconds,
                  requeued_at, requeue_cause""",
    "move_complete": """
        UPDATE tasks SET status = 'completed', progress = 1.0, lease_expires_at = NULL,
               finished_at = :now
         WHERE status = 'in-progress' AND worker_id = :worker_id
           AND (task_id, attempt) IN (SELECT i.value, a.value FROM json_each(:ids) i
                                      JOIN json_each(:attempts) a ON a.key = i.key)
        RETURNING task_id""",
    "move_fail": """
        UPDATE tasks SET status = 'failed', error = :error, lease_expires_at = NULL,
               finished_at = :now
         WHERE task_id = :task_id AND status = 'in-progress' AND attempt = :attempt
           AND worker_id = :worker_id
        RETURNING task_id""",
    "move_requeue": """
        UPDATE tasks SET status = 'pending', lease_expires_at = NULL, requeued_at = :now,
               requeue_cause = :cause,
               crash_streak = CASE WHEN :crash = 0 THEN crash_streak
                   WHEN crash_progress IS NOT NULL AND progress <= crash_progress
                   THEN crash_streak + 1 ELSE 1 END,
               crash_progress = CASE WHEN :crash = 0 THEN crash_progress ELSE progress END
         WHERE task_id = :task_id AND status = 'in-progress' AND attempt = :attempt
        RETURNING task_id, task_type, progress""",
    "move_give_up": """
        UPDATE tasks SET status = 'failed', error = :error, lease_expires_at = NULL,
               finished_at = :now
         WHERE task_id = :task_id AND status = 'in-progress' AND attempt = :attempt
           AND attempt >= max_attempts
        RETURNING task_id, task_type, progress""",
    "move_cancel": """
        UPDATE tasks SET status = 'cancelled', lease_expires_at = NULL, finished_at = :now
         WHERE task_id = :task_id AND status IN ('pending', 'in-progress') RETURNING task_id""",
    "move_retry": """
        UPDATE tasks SET status = 'pending', lease_expires_at = NULL, error = :error,
               retries = retries + 1, run_after = :run_after, requeued_at = :run_after,
               requeue_cause = :cause
         WHERE task_id = :task_id AND status = 'in-progress' AND attempt = :attempt
           AND worker_id = :worker_id AND retries < max_retries AND attempt < max_attempts
        RETURNING task_id, task_type, retries, progress""",
    "move_quarantine": """
        UPDATE tasks SET status = 'failed', error = :error, lease_expires_at = NULL,
               finished_at = :now, crash_streak = crash_streak + 1
         WHERE task_id = :task_id AND status = 'in-progress' AND attempt = :attempt
           AND crash_progress IS NOT NULL AND progress <= crash_progress
           AND crash_streak + 1 >= :limit
        RETURNING task_id, task_type, progress""",
    "move_time_out": """
        UPDATE tasks SET status = 'failed', error = :error, lease_expires_at = NULL,
               finished_at = :now
         WHERE task_id = :task_id AND status = 'in-progress' AND attempt = :attempt
        RETURNING task_id, task_type, progress""",
    "move_rerun": """
        UPDATE tasks SET status = 'pending', error = NULL, finished_at = NULL, run_after = NULL,
               worker_id = NULL, worker_instance = NULL, lease_expires_at = NULL,
               retries = 0, crash_streak = 0, crash_progress = NULL, requeued_at = :now,
               requeue_cause = :cause,
               max_attempts = attempt + :max_attempts,
               progress = COALESCE((SELECT c.progress FROM checkpoints c
                                     WHERE c.task_id = tasks.task_id), 0)
         WHERE task_id = :task_id AND status IN ('failed', 'cancelled')
        RETURNING task_id, task_type, progress""",
    # -- tasks --
    "insert_task": """
        INSERT INTO tasks (task_type, params, priority, max_attempts, idempotency_key, created_at,
                           max_retries, retry_backoff, timeout_seconds, run_after, owner,
                           request_hash, group_id)
        VALUES (:task_type, :params, :priority, :max_attempts, :idempotency_key, :now,
                :max_retries, :retry_backoff, :timeout_seconds, :run_after, :owner,
                :request_hash, :group_id)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING task_id""",
    "insert_tasks": """
        INSERT INTO tasks (task_type, params, priority, max_attempts, idempotency_key, created_at,
                           max_retries, retry_backoff, timeout_seconds, run_after, owner,
                           request_hash, group_id)
        VALUES (:task_type, :params, :priority, :max_attempts, :idempotency_key, :now,
                :max_retries, :retry_backoff, :timeout_seconds, :run_after, :owner,
                :request_hash, :group_id)""",
    "due_promote": """
        UPDATE tasks INDEXED BY tasks_due_idx SET run_after = NULL
         WHERE status = 'pending' AND run_after IS NOT NULL AND run_after <= :now
        RETURNING task_id""",
    "due_next": """
        SELECT MIN(run_after) AS at FROM tasks INDEXED BY tasks_due_idx
         WHERE status = 'pending' AND run_after IS NOT NULL""",
    "timed_out": """
        SELECT task_id, attempt, worker_id, timeout_seconds
          FROM tasks INDEXED BY tasks_timeout_idx
         WHERE status = 'in-progress' AND timeout_at IS NOT NULL AND timeout_at < :now""",
    "attempt_put": """
        INSERT INTO task_attempts (task_id, attempt, worker_id, kind, error, at)
        VALUES (:task_id, :attempt, :worker_id, :kind, :error, :now)
        ON CONFLICT (task_id, attempt) DO NOTHING""",
    "attempts_of": """
        SELECT attempt, worker_id, kind, error, at FROM task_attempts
         WHERE task_id = :task_id ORDER BY attempt""",
    # -- schedules --
    "schedule_insert": """
        INSERT INTO schedules (task_type, params, priority, max_attempts, max_retries,
                               retry_backoff, timeout_seconds, every_seconds, cron, next_run_at,
                               created_at)
        VALUES (:task_type, :params, :priority, :max_attempts, :max_retries, :retry_backoff,
                :timeout_seconds, :every_seconds, :cron, :next_run_at, :now)
        RETURNING schedule_id""",
    "schedule_get": "SELECT * FROM schedules WHERE schedule_id = :schedule_id",
    "schedule_list": "SELECT * FROM schedules ORDER BY schedule_id",
    "schedule_delete": """
        DELETE FROM schedules WHERE schedule_id = :schedule_id RETURNING schedule_id""",
    "schedules_due": """
        SELECT * FROM schedules WHERE next_run_at <= :now ORDER BY next_run_at LIMIT 100""",
    "schedule_advance": """
        UPDATE schedules SET next_run_at = :next, last_run_at = :due, last_task_id = :task_id,
               runs = runs + 1
         WHERE schedule_id = :schedule_id AND next_run_at = :due
        RETURNING schedule_id""",
    "schedule_next": "SELECT MIN(next_run_at) AS at FROM schedules",
    "last_insert_id": "SELECT last_insert_rowid() AS id",
    "task_by_key": """
        SELECT task_id, status, request_hash FROM tasks WHERE idempotency_key = :key""",
    "owner_pending": """
        SELECT COUNT(*) AS n FROM (SELECT 1 FROM tasks INDEXED BY tasks_owner_pending_idx
                                    WHERE owner = :owner AND status = 'pending' LIMIT :cap)""",
    # -- credentials --
    "token_put": """
        INSERT INTO tokens (token_id, secret_hash, role, worker_id, created_at)
        VALUES (:token_id, :secret_hash, :role, :worker_id, :now)""",
    "token_get": "SELECT * FROM tokens WHERE token_id = :token_id",
    "tokens_all": "SELECT * FROM tokens ORDER BY created_at, token_id",
    "token_revoke": """
        UPDATE tokens SET revoked_at = :now WHERE token_id = :token_id AND revoked_at IS NULL
        RETURNING token_id""",
    "task_view": """
        SELECT t.*, r.result FROM tasks t LEFT JOIN task_results r USING (task_id)
         WHERE t.task_id = :task_id""",
    # The task list: one query per index; ids bound the walk, times only filter within it.
    "task_page": """
        SELECT t.*, r.result FROM tasks t LEFT JOIN task_results r USING (task_id)
         WHERE t.task_id < :before_id AND t.task_id >= :min_id
           AND t.created_at >= :after AND t.created_at < :before
         ORDER BY t.task_id DESC LIMIT :limit""",
    "task_page_status": """
        SELECT t.*, r.result FROM tasks t LEFT JOIN task_results r USING (task_id)
         WHERE t.status = :status AND t.task_id < :before_id AND t.task_id >= :min_id
           AND t.created_at >= :after AND t.created_at < :before
         ORDER BY t.task_id DESC LIMIT :limit""",
    "task_page_type_status": """
        SELECT t.*, r.result FROM tasks t LEFT JOIN task_results r USING (task_id)
         WHERE t.task_type = :task_type AND t.status = :status
           AND t.task_id < :before_id AND t.task_id >= :min_id
           AND t.created_at >= :after AND t.created_at < :before
         ORDER BY t.task_id DESC LIMIT :limit""",
    # A client's own tasks: the walk of (owner, task_id); status and type only filter it.
    "task_page_owner": """
        SELECT t.*, r.result FROM tasks t LEFT JOIN task_results r USING (task_id)
         WHERE t.owner = :owner AND t.task_id < :before_id AND t.task_id >= :min_id
           AND (:status IS NULL OR t.status = :status)
           AND (:task_type IS NULL OR t.task_type = :task_type)
           AND t.created_at >= :after AND t.created_at < :before
         ORDER BY t.task_id DESC LIMIT :limit""",
    "first_id_created_from": """
        SELECT task_id FROM tasks WHERE created_at >= :at
         ORDER BY created_at, task_id LIMIT 1""",
    "last_id_created_before": """
        SELECT task_id FROM tasks WHERE created_at < :at
         ORDER BY created_at DESC, task_id DESC LIMIT 1""",
    # -- groups (split jobs) --
    "group_insert": """
        INSERT INTO task_groups (task_type, params, parts, idempotency_key, created_at, owner,
                                 request_hash)
        VALUES (:task_type, :params, :parts, :idempotency_key, :now, :owner, :request_hash)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING group_id""",
    "group_by_key": """
        SELECT group_id, request_hash FROM task_groups WHERE idempotency_key = :key""",
    "group_get": "SELECT * FROM task_groups WHERE group_id = :group_id",
    "group_parts": """
        SELECT t.task_id, t.status, t.params, t.progress, t.worker_id, t.error, r.result
          FROM tasks t LEFT JOIN task_results r USING (task_id)
         WHERE t.group_id = :group_id ORDER BY t.task_id""",
    "groups_of": """
        SELECT DISTINCT group_id FROM tasks
         WHERE task_id IN (SELECT value FROM json_each(:ids)) AND group_id IS NOT NULL
         ORDER BY group_id""",
    "group_unfinished": """
        SELECT task_id FROM tasks
         WHERE group_id = :group_id AND status IN ('pending', 'in-progress')""",
    # -- retention: finished tasks older than RESULT_TTL, a group's parts only all together;
    # oldest first along tasks_finished_idx ('+status' keeps the planner off the status index,
    # which would sort every finished task) --
    "purge_candidates": """
        SELECT task_id, group_id FROM tasks t
         WHERE finished_at < :before AND +status IN ('completed', 'failed', 'cancelled')
           AND NOT EXISTS (  -- (a task of no group has no siblings: NULL = NULL is not true)
                SELECT 1 FROM tasks p WHERE p.group_id = t.group_id
                   AND (p.status IN ('pending', 'in-progress') OR p.finished_at >= :before))
         ORDER BY finished_at LIMIT :limit""",
    "purge_results": """
        DELETE FROM task_results WHERE task_id IN (SELECT value FROM json_each(:ids))""",
    "purge_checkpoints": """
        DELETE FROM checkpoints WHERE task_id IN (SELECT value FROM json_each(:ids))""",
    "purge_attempts": """
        DELETE FROM task_attempts WHERE task_id IN (SELECT value FROM json_each(:ids))""",
    "purge_tasks": "DELETE FROM tasks WHERE task_id IN (SELECT value FROM json_each(:ids))",
    "purge_groups": """
        DELETE FROM task_groups WHERE group_id IN (SELECT value FROM json_each(:ids))
           AND NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.group_id = task_groups.group_id)""",
    "task_lease": """
        SELECT status, attempt, worker_id, task_type FROM tasks WHERE task_id = :task_id""",
    "task_leases": """
        SELECT task_id, status, attempt, worker_id, task_type, error, claimed_at, retries,
               max_retries, retry_backoff, max_attempts FROM tasks
         WHERE task_id IN (SELECT value FROM json_each(:ids))""",
    "renew_lease": """
        UPDATE tasks SET progress = :progress, lease_expires_at = :lease_expires_at
         WHERE task_id = :task_id""",
    "set_progress": "UPDATE tasks SET progress = :progress WHERE task_id = :task_id",
    "extend_leases": """
        UPDATE tasks SET lease_expires_at = MAX(lease_expires_at, :until)
         WHERE status = 'in-progress'""",
    "expired_leases": """
        SELECT task_id, attempt, worker_id FROM tasks
         WHERE status = 'in-progress' AND lease_expires_at < :now""",
    "held_by_worker": """
        SELECT task_id, attempt FROM tasks
         WHERE status = 'in-progress' AND worker_id = :worker_id""",
    "leased_to_instance": """
        SELECT task_id, task_type, params, attempt, lease_expires_at, claimed_at,
               timeout_seconds FROM tasks
         WHERE status = 'in-progress' AND worker_id = :worker_id
           AND worker_instance = :instance_id""",
    "held_by_other_instance": """
        SELECT task_id, attempt FROM tasks
         WHERE status = 'in-progress' AND worker_id = :worker_id
           AND worker_instance IS NOT :instance_id""",
    "in_progress_all": """
        SELECT task_id, worker_id, attempt FROM tasks WHERE status = 'in-progress'""",
    "oldest_pending": OLDEST_PENDING.format(ready="tasks INDEXED BY tasks_ready_idx"),
    "finished_since": """
        SELECT COUNT(*) AS n FROM tasks WHERE finished_at >= :since AND status = 'completed'""",
    # -- checkpoints and results --
    "checkpoint_get": "SELECT * FROM checkpoints WHERE task_id = :task_id",
    "checkpoints_of": """
        SELECT * FROM checkpoints WHERE task_id IN (SELECT value FROM json_each(:ids))""",
    "checkpoint_put": """
        INSERT INTO checkpoints (task_id, attempt, worker_id, state, progress, saved_at)
        VALUES (:task_id, :attempt, :worker_id, :state, :progress, :now)
        ON CONFLICT (task_id) DO UPDATE SET attempt = excluded.attempt,
            worker_id = excluded.worker_id, state = excluded.state,
            progress = excluded.progress, saved_at = excluded.saved_at""",
    "checkpoint_drop": "DELETE FROM checkpoints WHERE task_id = :task_id",
    "checkpoints_drop": """
        DELETE FROM checkpoints WHERE task_id IN (SELECT value FROM json_each(:ids))""",
    "results_of": """
        SELECT task_id, attempt, worker_id, result FROM task_results
         WHERE task_id IN (SELECT value FROM json_each(:ids))""",
    "result_put": """
        INSERT INTO task_results (task_id, attempt, worker_id, result, created_at)
        VALUES (:task_id, :attempt, :worker_id, :result, :now)""",
    # -- workers --
    "worker_get": "SELECT instance_id, status FROM workers WHERE worker_id = :worker_id",
    "worker_leases": """
        SELECT w.instance_id, w.status, t.task_id, t.attempt, t.claimed_at
          FROM workers w LEFT JOIN tasks t
            ON t.worker_id = w.worker_id AND t.status = 'in-progress'
           AND t.worker_instance = w.instance_id
         WHERE w.worker_id = :worker_id""",
    "worker_idle": """
        SELECT w.instance_id, w.status,
               EXISTS (SELECT 1 FROM tasks INDEXED BY tasks_ready_idx
                        WHERE status = 'pending' AND run_after IS NULL) AS pending,
               (SELECT COUNT(*) FROM tasks t INDEXED BY tasks_held_idx
                 WHERE t.status = 'in-progress' AND t.worker_id = w.worker_id
                   AND t.worker_instance = w.instance_id) AS leased
          FROM workers w WHERE w.worker_id = :worker_id""",
    "worker_upsert": """
        INSERT INTO workers (worker_id, instance_id, status, last_heartbeat, registered_at,
                             tasks_completed)
        VALUES (:worker_id, :instance_id, 'alive', :now, :now, :completed)
        ON CONFLICT (worker_id) DO UPDATE SET instance_id = excluded.instance_id,
            status = 'alive', last_heartbeat = excluded.last_heartbeat,
            tasks_completed = tasks_completed + excluded.tasks_completed""",
    "worker_touch": """
        UPDATE workers SET last_heartbeat = :now, status = 'alive' WHERE worker_id = :worker_id""",
    "worker_completed": """
        UPDATE workers SET tasks_completed = tasks_completed + :completed
         WHERE worker_id = :worker_id""",
    "worker_mark": "UPDATE workers SET status = :status WHERE worker_id = :worker_id",
    "worker_seen": """
        UPDATE workers SET last_heartbeat = MAX(last_heartbeat, :at)
         WHERE worker_id = :worker_id AND status = 'alive'""",
    "workers_silent": """
        SELECT worker_id, last_heartbeat FROM workers
         WHERE status = 'alive' AND last_heartbeat < :silent_since""",
    "workers_all": "SELECT * FROM workers ORDER BY worker_id",
    # -- counters and cluster state --
    "status_counts": "SELECT status, n FROM status_counts",
    "counter_add": """
        INSERT INTO counters (name, value) VALUES (:name, :value)
        ON CONFLICT (name) DO UPDATE SET value = value + excluded.value""",
    "counters_all": "SELECT name, value FROM counters",
    "cluster_get": "SELECT name, value FROM cluster",
    "cluster_put": """
        INSERT INTO cluster (name, value) VALUES (:name, :value)
        ON CONFLICT (name) DO UPDATE SET value = excluded.value""",
    # -- the events timeline and the dashboard (each read bounded by an index and a LIMIT) --
    "event_add": """
        INSERT INTO events (at, kind, task_id, worker_id, attempt, status, progress, detail)
        VALUES (:now, :kind, :task_id, :worker_id, :attempt, :status, :progress, :detail)""",
    "events_after": """
        SELECT * FROM events
         WHERE event_id > :after AND (:task_id IS NULL OR task_id = :task_id)
         ORDER BY event_id LIMIT :limit""",
    "events_latest": """
        SELECT * FROM (SELECT * FROM events WHERE (:task_id IS NULL OR task_id = :task_id)
                        ORDER BY event_id DESC LIMIT :limit) ORDER BY event_id""",
    "events_trim": """
        DELETE FROM events WHERE event_id <= (SELECT event_id FROM events
                                               ORDER BY event_id DESC LIMIT 1 OFFSET :keep)""",
    "dash_running": """
        SELECT t.task_id, t.task_type, t.worker_id, t.attempt, t.max_attempts, t.progress,
               t.claimed_at, t.lease_expires_at, c.saved_at AS checkpoint_at
          FROM tasks t INDEXED BY tasks_held_idx LEFT JOIN checkpoints c USING (task_id)
         WHERE t.status = 'in-progress' ORDER BY t.task_id LIMIT :limit""",
    "dash_held_counts": """
        SELECT worker_id, COUNT(*) AS n FROM tasks INDEXED BY tasks_held_idx
         WHERE status = 'in-progress' GROUP BY worker_id""",
    "dash_pending": """
        SELECT task_id, task_type, priority, attempt, progress, created_at
          FROM tasks INDEXED BY tasks_ready_idx
         WHERE status = 'pending' AND run_after IS NULL
         ORDER BY priority DESC, task_id LIMIT :limit""",
    "dash_delayed": """
        SELECT COUNT(*) AS n FROM (SELECT 1 FROM tasks INDEXED BY tasks_due_idx
                                    WHERE status = 'pending' AND run_after IS NOT NULL
                                    LIMIT :limit) delayed""",
    "dash_recent": """
        SELECT task_id, task_type, status, worker_id, attempt, progress, finished_at, error
          FROM tasks WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT :limit""",
    "dash_buckets": """
        SELECT CAST(finished_at / :bucket AS INTEGER) AS bucket, status, COUNT(*) AS n
          FROM tasks WHERE finished_at >= :since GROUP BY 1, 2""",
    "dash_workers": """
        SELECT * FROM workers ORDER BY status = 'alive' DESC, worker_id LIMIT :limit""",
    "dash_worker_counts": "SELECT status, COUNT(*) AS n FROM workers GROUP BY status",
    "schema_version_get": "SELECT value FROM schema_info WHERE key = 'version'",
    "column_exists": "SELECT 1 AS found FROM pragma_table_info(:table) WHERE name = :column",
    "schema_version_put": """
        INSERT INTO schema_info (key, value) VALUES ('version', :version)
        ON CONFLICT (key) DO UPDATE SET value = excluded.value""",
    "ping": "SELECT 1 FROM schema_info LIMIT 1",
    "integrity_check": "PRAGMA integrity_check",
}

BUSY_SLICE_MS = 20
"""How long one SQLite call may wait inside SQLite for another process's lock; longer waits
are cooperative sleeps between attempts (up to ``busy_timeout_ms``)."""
READERS_KEPT = 8


class SQLiteStore(Store):
    """The task store on an embedded SQLite database (WAL, group commit)."""

    DIALECT = Dialect(QUERIES, lambda ids: json.dumps(list(ids)),
                      lambda cursor, script: _run_script(cursor, script))

    def __init__(self, path: Path, busy_timeout_ms: int = 5000, clock: Clock = time.time
                 ) -> None:
        super().__init__()
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._clock = clock
        self._write_lock = threading.Lock()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        # Group commit: transactions commit without fsync; a durable write then fsyncs the WAL
        # outside the write lock, and one fsync covers every commit made before it started.
        self._commits = 0  # transactions committed, counted under the write lock
        self._synced = 0  # of those, how many an fsync has made durable
        self._sync_lock = threading.Lock()
        self._wal_fd: int | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer_conn = self._connect()
        self._migrate()

    def now(self) -> float:
        """The dispatcher's clock (one process owns a SQLite queue)."""
        return self._clock()

    # -- connections and transactions ---------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_SLICE_MS / 1000, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {min(BUSY_SLICE_MS, self.busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # durable writes fsync the WAL themselves
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _begin_immediate(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, retrying while another process holds the lock, up to the timeout."""
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        pause = 0.002
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)  # cooperative under gevent; a plain sleep under threads
            pause = min(pause * 2, 0.05)

    @contextmanager
    def _write(self, durable: bool = True, on_commit: OnCommit = None) -> Iterator[Tx]:
        """One write transaction: BEGIN IMMEDIATE, commit, or roll back on any error.

        After the commit, and after the write lock is released, ``on_commit`` runs; then a
        ``durable`` write returns only once an fsync of the WAL covers it (:meth:`_sync`).
        Other writers go ahead during that fsync, and concurrent durable writes share one.
        Either way a commit survives a crash of the dispatcher process: it is in the WAL.
        """
        with _storage_errors():
            with self._write_lock:
                conn = self._writer_conn
                self._begin_immediate(conn)
                try:
                    yield Tx(conn.cursor(), self.DIALECT, self._clock())
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
        covers it: a request that waited here for another's fsync may return without its own.
        """
        with self._sync_lock:
            if self._synced >= commit:
                return
            covered = self._commits  # every commit counted so far is already in the WAL
            try:
                offload(os.fsync, self._wal())
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
    def _read(self) -> Iterator[Tx]:
        """A consistent read snapshot on a pooled reader connection."""
        with self._readers_lock:
            conn = self._readers.pop() if self._readers else None
        if conn is None:
            with _storage_errors():  # opening one sets pragmas: a locked file refuses them
                conn = self._connect()
        try:
            with _storage_errors():
                conn.execute("BEGIN")
                try:
                    yield Tx(conn.cursor(), self.DIALECT, self._clock())
                finally:
                    if conn.in_transaction:
                        conn.execute("COMMIT")
        finally:
            self._give_back(conn)

    def _give_back(self, conn: sqlite3.Connection) -> None:
        with self._readers_lock:
            if len(self._readers) < READERS_KEPT and self._writer_conn is not None:
                self._readers.append(conn)
                return
        conn.close()

    def _insert_tasks(self, tx: Tx, rows: list[dict[str, Any]]) -> list[int]:
        tx.many("insert_tasks", rows)
        # One writer at a time, so AUTOINCREMENT hands this batch consecutive ids.
        last = tx.one("last_insert_id")["id"]
        return list(range(last - len(rows) + 1, last + 1))

    def _migrate(self) -> None:
        """Create the base schema, then apply every migration the database has not seen."""
        with self._write() as tx:
            tx.run_script(SQLITE_SCHEMA)
            row = tx.one("schema_version_get")
            version = int(row["value"]) if row is not None else 1
            if version > SCHEMA_VERSION:
                raise StoreError(f"database schema version {version} is newer than this code "
                                 f"({SCHEMA_VERSION}); upgrade the dispatcher")
            missed = migrations_missed(SQLITE_MIGRATIONS, version, lambda table, column: tx.one(
                "column_exists", {"table": table, "column": column}) is not None)
            for target, script in missed + migrations_between(SQLITE_MIGRATIONS, version):
                tx.run_script(script)
                log.info("database migrated to schema version %s", target)
            tx.run("schema_version_put", {"version": str(SCHEMA_VERSION)})

    def close(self) -> None:
        """Close every connection this store opened."""
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        with self._write_lock:
            if self._writer_conn is not None:
                self._writer_conn.close()
                self._writer_conn = None  # type: ignore[assignment]
        with self._sync_lock:
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None

    def ping(self) -> None:
        """Raise StorageUnavailable unless the database answers a query."""
        with self._read() as tx:
            tx.one("ping")

    def integrity_check(self) -> str:
        """Run SQLite's integrity check; 'ok' when the file is sound."""
        with self._read() as tx:
            return tx.one("integrity_check")[0]


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _run_script(cursor: sqlite3.Cursor, script: str) -> None:
    """Execute a fixed SQL script statement by statement inside the caller's transaction.

    (``executescript`` would commit the transaction first.) Trigger bodies contain ';', so a
    statement ends where SQLite says it is complete.
    """
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                cursor.execute(pending)
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
