"""The PostgreSQL backend: several dispatchers on one database, the database's clock for all.

Connections come from a pool (psycopg_pool). Claims take rows with ``FOR UPDATE SKIP LOCKED``,
so dispatchers never wait on each other's claims. Every transaction reads the time from the
database server (``clock_timestamp()``), so leases and liveness are judged by one clock however
skewed the dispatchers' own clocks are. Writes whose loss to a power cut only costs redone work
(claims, heartbeats, checkpoints, requeues) commit with ``synchronous_commit = off``;
submissions and results wait for the WAL flush. ``NOTIFY`` tells other dispatchers to wake
their long polls; it is only a hint: waits also look again on their own.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from dispatcher.db.errors import StorageUnavailable, StoreError
from dispatcher.db.schema import (
    POSTGRES_MIGRATIONS,
    POSTGRES_SCHEMA,
    SCHEMA_VERSION,
    migrations_between,
    migrations_missed,
)
from dispatcher.db.store import (
    OLDEST_PENDING, Channel, Clock, Dialect, OnCommit, Store, Tx, task_columns,
)

log = logging.getLogger(__name__)

_ATTEMPTS = """json_agg(json_build_object('attempt', a.attempt, 'worker_id', a.worker_id,
                                          'kind', a.kind, 'error', a.error, 'at', a.at)
                        ORDER BY a.attempt)"""
"""The attempt rows ``a`` of one task as a JSON array (an aggregate)."""
_HISTORY = "(SELECT " + _ATTEMPTS + " FROM task_attempts a WHERE a.task_id = {task})::text"
"""A task's attempt history as JSON text (the ``history`` of a task view)."""

_LEASE_NEXT = """        claimed AS (
            UPDATE tasks t
               SET status = 'in-progress', attempt = t.attempt + 1, worker_id = %(worker_id)s,
                   worker_instance = %(instance_id)s, lease_expires_at = %(lease_expires_at)s,
                   claimed_at = %(now)s, started_at = COALESCE(t.started_at, %(now)s),
                   timeout_at = %(now)s + t.timeout_seconds
              FROM next WHERE t.task_id = next.task_id
            RETURNING t.task_id, t.task_type, t.params, t.attempt, t.lease_expires_at,
                      t.timeout_seconds, t.requeued_at, t.requeue_cause)
"""
"""The lease both claims write: the rows of the preceding ``next`` CTE, to this worker."""

QUERIES: dict[str, str] = {
    # -- moves (dispatcher/db/moves.py): the only statements that change a task's status --
    "move_claim": """
        WITH next AS (
            SELECT task_id FROM tasks WHERE status = 'pending' AND run_after IS NULL
             ORDER BY priority DESC, task_id LIMIT %(limit)s
               FOR UPDATE SKIP LOCKED),
""" + _LEASE_NEXT + """        SELECT c.*, cp.state AS cp_state, cp.progress AS cp_progress,
               cp.attempt AS cp_attempt, cp.saved_at AS cp_saved_at
          FROM claimed c LEFT JOIN checkpoints cp USING (task_id)""",
    "move_complete": """
        UPDATE tasks t SET status = 'completed', progress = 1.0, lease_expires_at = NULL,
               finished_at = %(now)s
          FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS r (task_id, attempt)
         WHERE t.task_id = r.task_id AND t.attempt = r.attempt
           AND t.status = 'in-progress' AND t.worker_id = %(worker_id)s
        RETURNING t.task_id""",
    "move_fail": """
        UPDATE tasks SET status = 'failed', error = %(error)s, lease_expires_at = NULL,
               finished_at = %(now)s
         WHERE task_id = %(task_id)s AND status = 'in-progress' AND attempt = %(attempt)s
           AND worker_id = %(worker_id)s
        RETURNING task_id""",
    "move_requeue": """
        UPDATE tasks SET status = 'pending', lease_expires_at = NULL, requeued_at = %(now)s,
               requeue_cause = %(cause)s,
               crash_streak = CASE WHEN %(crash)s::int = 0 THEN crash_streak
                   WHEN crash_progress IS NOT NULL AND progress <= crash_progress
                   THEN crash_streak + 1 ELSE 1 END,
               crash_progress = CASE WHEN %(crash)s::int = 0 THEN crash_progress
                   ELSE progress END
         WHERE task_id = %(task_id)s AND status = 'in-progress' AND attempt = %(attempt)s
        RETURNING task_id, task_type, progress""",
    "move_give_up": """
        UPDATE tasks SET status = 'failed', error = %(error)s, lease_expires_at = NULL,
               finished_at = %(now)s
         WHERE task_id = %(task_id)s AND status = 'in-progress' AND attempt = %(attempt)s
           AND attempt >= max_attempts
        RETURNING task_id, task_type, progress""",
    "move_cancel": """
        UPDATE tasks SET status = 'cancelled', lease_expires_at = NULL, finished_at = %(now)s
         WHERE task_id = %(task_id)s AND status IN ('pending', 'in-progress')
        RETURNING task_id""",
    # -- tasks --
    "move_retry": """
        UPDATE tasks SET status = 'pending', lease_expires_at = NULL, error = %(error)s,
               retries = retries + 1, run_after = %(run_after)s, requeued_at = %(run_after)s,
               requeue_cause = %(cause)s
         WHERE task_id = %(task_id)s AND status = 'in-progress' AND attempt = %(attempt)s
           AND worker_id = %(worker_id)s AND retries < max_retries AND attempt < max_attempts
        RETURNING task_id, task_type, retries, progress""",
    "move_quarantine": """
        UPDATE tasks SET status = 'failed', error = %(error)s, lease_expires_at = NULL,
               finished_at = %(now)s, crash_streak = crash_streak + 1
         WHERE task_id = %(task_id)s AND status = 'in-progress' AND attempt = %(attempt)s
           AND crash_progress IS NOT NULL AND progress <= crash_progress
           AND crash_streak + 1 >= %(limit)s::int
        RETURNING task_id, task_type, progress""",
    "move_time_out": """
        UPDATE tasks SET status = 'failed', error = %(error)s, lease_expires_at = NULL,
               finished_at = %(now)s
         WHERE task_id = %(task_id)s AND status = 'in-progress' AND attempt = %(attempt)s
        RETURNING task_id, task_type, progress""",
    "move_rerun": """
        UPDATE tasks SET status = 'pending', error = NULL, finished_at = NULL, run_after = NULL,
               worker_id = NULL, worker_instance = NULL, lease_expires_at = NULL,
               retries = 0, crash_streak = 0, crash_progress = NULL, requeued_at = %(now)s,
               requeue_cause = %(cause)s,
               max_attempts = attempt + %(max_attempts)s,
               progress = COALESCE((SELECT c.progress FROM checkpoints c
                                     WHERE c.task_id = tasks.task_id), 0)
         WHERE task_id = %(task_id)s AND status IN ('failed', 'cancelled')
        RETURNING task_id, task_type, progress""",
    # -- one-statement forms of the hot operations (Store._at_once): each one round trip --
    # One task, with or without an idempotency key, within its client's pending cap: inserted
    # (created) or, for a key already stored, that task (with its request hash to compare).
    # No row: over the cap, or the key is being inserted by another transaction right now;
    # the transaction path then decides (and raises QuotaExceeded).
    "submit_one_at_once": """
        WITH room AS (
            SELECT %(cap)s::int IS NULL OR (
                SELECT COUNT(*) FROM (SELECT 1 FROM tasks WHERE owner = %(owner)s
                                         AND status = 'pending' LIMIT %(cap)s) AS mine
                ) < %(cap)s AS ok),
        added AS (
            INSERT INTO tasks (task_type, params, priority, max_attempts, idempotency_key,
                               created_at, max_retries, retry_backoff, timeout_seconds, owner,
                               request_hash, group_id)
            SELECT %(task_type)s, %(params)s, %(priority)s, %(max_attempts)s,
                   %(idempotency_key)s, %(now)s, %(max_retries)s, %(retry_backoff)s,
                   %(timeout_seconds)s, %(owner)s, %(request_hash)s, %(group_id)s
              FROM room WHERE room.ok
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING task_id),
        hint AS (SELECT pg_notify(%(channel)s, %(payload)s) FROM added)
        SELECT a.task_id, true AS created, NULL::text AS request_hash
          FROM added a LEFT JOIN hint ON true
        UNION ALL
        SELECT t.task_id, false, t.request_hash FROM tasks t, room
         WHERE t.idempotency_key = %(idempotency_key)s AND room.ok
           AND NOT EXISTS (SELECT 1 FROM added)""",
    "submit_at_once": """
        WITH added AS (
            INSERT INTO tasks (task_type, params, priority, max_attempts, created_at,
                               max_retries, retry_backoff, timeout_seconds, run_after, owner,
                               group_id)
            SELECT * FROM unnest(%(task_types)s::text[], %(params)s::text[],
                                 %(priorities)s::int[], %(max_attempts)s::int[],
                                 %(nows)s::float8[], %(max_retries)s::int[],
                                 %(retry_backoffs)s::float8[], %(timeouts)s::float8[],
                                 %(run_afters)s::float8[], %(owners)s::text[],
                                 %(group_ids)s::bigint[])
            RETURNING task_id),
        hint AS (SELECT pg_notify(%(channel)s, %(payload)s))
        SELECT added.task_id FROM added, hint""",
    # A claim only for a worker known and alive as this instance that holds no lease (else
    # nothing is claimed and known_idle is false: the ordinary path registers it or hands
    # back a lease whose answer was lost). Always one row at least, for known_idle; drained
    # says that no task was left pending but those it claimed (as the statement saw the
    # queue: a task another claim has locked still counts). Like every claim it commits
    # without waiting for the WAL flush (SET LOCAL, in the statement).
    "move_claim_at_once": """
        WITH no_flush_wait AS (SELECT set_config('synchronous_commit', 'off', true)),
        guard AS (
            SELECT EXISTS (SELECT 1 FROM workers w WHERE w.worker_id = %(worker_id)s
                              AND w.instance_id = %(instance_id)s AND w.status = 'alive')
               AND NOT EXISTS (SELECT 1 FROM tasks h WHERE h.status = 'in-progress'
                                  AND h.worker_id = %(worker_id)s
                                  AND h.worker_instance = %(instance_id)s) AS known_idle),
        next AS (
            SELECT task_id FROM tasks WHERE status = 'pending' AND run_after IS NULL
               AND (SELECT known_idle FROM guard)
             ORDER BY priority DESC, task_id LIMIT %(limit)s
               FOR UPDATE SKIP LOCKED),
""" + _LEASE_NEXT + """        SELECT g.known_idle, c.*, cp.state AS cp_state, cp.progress AS cp_progress,
               cp.attempt AS cp_attempt, cp.saved_at AS cp_saved_at,
               (SELECT COUNT(*) FROM (SELECT 1 FROM tasks
                                       WHERE status = 'pending' AND run_after IS NULL
                                       ORDER BY priority DESC, task_id
                                       LIMIT %(limit)s + 1) AS waiting)
                   <= (SELECT COUNT(*) FROM claimed) AS drained
          FROM no_flush_wait, guard g LEFT JOIN claimed c ON true
          LEFT JOIN checkpoints cp ON cp.task_id = c.task_id""",
    # Results of the lease holder: the same fenced move as move_complete, the result rows,
    # the checkpoints dropped, the worker's count, the wake-up; returns the state before
    # (with the result already recorded, to judge a repeated report), what moved and, for
    # the tasks in %(watched)s (requests wait for them), the finished row and its history.
    # Task rows are locked before the worker's row, as in every transaction here.
    "move_complete_at_once": """
        WITH before AS (
            SELECT t.task_id, t.status, t.attempt, t.worker_id, t.task_type, t.error,
                   t.claimed_at, r.attempt AS kept_attempt, r.worker_id AS kept_worker,
                   r.result AS kept_result
              FROM tasks t LEFT JOIN task_results r USING (task_id)
             WHERE t.task_id = ANY(%(ids)s)),
        moved AS (
            UPDATE tasks t SET status = 'completed', progress = 1.0, lease_expires_at = NULL,
                   finished_at = %(now)s
              FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS r (task_id, attempt)
             WHERE t.task_id = r.task_id AND t.attempt = r.attempt
               AND t.status = 'in-progress' AND t.worker_id = %(worker_id)s
            RETURNING t.task_id, t.attempt,
                      CASE WHEN t.task_id = ANY(%(watched)s::bigint[])
                           THEN row_to_json(t)::text END AS view),
        stored AS (
            INSERT INTO task_results (task_id, attempt, worker_id, result, created_at)
            SELECT m.task_id, m.attempt, %(worker_id)s, r.result, %(now)s
              FROM moved m JOIN unnest(%(ids)s::bigint[], %(results)s::text[])
                                AS r (task_id, result) USING (task_id)),
        dropped AS (DELETE FROM checkpoints WHERE task_id IN (SELECT task_id FROM moved)),
        counted AS (
            UPDATE workers SET tasks_completed = tasks_completed + (SELECT COUNT(*) FROM moved)
             WHERE worker_id = %(worker_id)s AND EXISTS (SELECT 1 FROM moved)),
        hint AS (SELECT pg_notify(%(channel)s, %(payload)s) WHERE EXISTS (SELECT 1 FROM moved)),
        history AS (
            SELECT a.task_id, """ + _ATTEMPTS + """::text AS view_history
              FROM task_attempts a WHERE a.task_id = ANY(%(watched)s::bigint[])
             GROUP BY a.task_id)
        SELECT b.*, m.task_id IS NOT NULL AS moved, m.view, h.view_history
          FROM before b LEFT JOIN moved m USING (task_id) LEFT JOIN hint ON true
          LEFT JOIN history h USING (task_id)""",
    "insert_task": """
        INSERT INTO tasks (task_type, params, priority, max_attempts, idempotency_key, created_at,
                           max_retries, retry_backoff, timeout_seconds, run_after, owner,
                           request_hash, group_id)
        VALUES (%(task_type)s, %(params)s, %(priority)s, %(max_attempts)s,
                %(idempotency_key)s, %(now)s,
                %(max_retries)s, %(retry_backoff)s, %(timeout_seconds)s, %(run_after)s,
                %(owner)s, %(request_hash)s, %(group_id)s)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING task_id""",
    # Rows another dispatcher's timer is promoting are skipped, not waited for: a waiter
    # holds the row's tuple lock, which would make a claim's SKIP LOCKED pass the task by.
    "due_promote": """
        UPDATE tasks SET run_after = NULL
         WHERE task_id IN (SELECT task_id FROM tasks
                            WHERE status = 'pending' AND run_after IS NOT NULL
                              AND run_after <= %(now)s
                              FOR UPDATE SKIP LOCKED)
        RETURNING task_id""",
    "due_next": """
        SELECT MIN(run_after) AS at FROM tasks
         WHERE status = 'pending' AND run_after IS NOT NULL""",
    "timed_out": """
        SELECT task_id, attempt, worker_id, timeout_seconds FROM tasks
         WHERE status = 'in-progress' AND timeout_at IS NOT NULL AND timeout_at < %(now)s""",
    "attempt_put": """
        INSERT INTO task_attempts (task_id, attempt, worker_id, kind, error, at)
        VALUES (%(task_id)s, %(attempt)s, %(worker_id)s, %(kind)s, %(error)s, %(now)s)
        ON CONFLICT (task_id, attempt) DO NOTHING""",
    "attempts_of": """
        SELECT attempt, worker_id, kind, error, at FROM task_attempts
         WHERE task_id = %(task_id)s ORDER BY attempt""",
    "schedule_insert": """
        INSERT INTO schedules (task_type, params, priority, max_attempts, max_retries,
                               retry_backoff, timeout_seconds, every_seconds, cron, next_run_at,
                               created_at)
        VALUES (%(task_type)s, %(params)s, %(priority)s, %(max_attempts)s, %(max_retries)s,
                %(retry_backoff)s,
                %(timeout_seconds)s, %(every_seconds)s, %(cron)s, %(next_run_at)s, %(now)s)
        RETURNING schedule_id""",
    "schedule_get": """SELECT * FROM schedules WHERE schedule_id = %(schedule_id)s""",
    "schedule_list": """SELECT * FROM schedules ORDER BY schedule_id""",
    "schedule_delete": """
        DELETE FROM schedules WHERE schedule_id = %(schedule_id)s RETURNING schedule_id""",
    "schedules_due": """
        SELECT * FROM schedules WHERE next_run_at <= %(now)s ORDER BY next_run_at LIMIT 100
           FOR UPDATE SKIP LOCKED""",
    "schedule_advance": """
        UPDATE schedules SET next_run_at = %(next)s, last_run_at = %(due)s,
               last_task_id = %(task_id)s,
               runs = runs + 1
         WHERE schedule_id = %(schedule_id)s AND next_run_at = %(due)s
        RETURNING schedule_id""",
    "schedule_next": """SELECT MIN(next_run_at) AS at FROM schedules""",
    "insert_tasks": """
        INSERT INTO tasks (task_type, params, priority, max_attempts, created_at, max_retries,
                           retry_backoff, timeout_seconds, run_after, owner, group_id)
        SELECT * FROM unnest(%(task_types)s::text[], %(params)s::text[], %(priorities)s::int[],
                             %(max_attempts)s::int[], %(nows)s::float8[],
                             %(max_retries)s::int[], %(retry_backoffs)s::float8[],
                             %(timeouts)s::float8[], %(run_afters)s::float8[], %(owners)s::text[],
                             %(group_ids)s::bigint[])
        RETURNING task_id""",
    "task_by_key": """
        SELECT task_id, status, request_hash FROM tasks WHERE idempotency_key = %(key)s""",
    "owner_pending": """
        SELECT COUNT(*) AS n FROM (SELECT 1 FROM tasks WHERE owner = %(owner)s
                                    AND status = 'pending' LIMIT %(cap)s) AS capped""",
    # -- credentials --
    "token_put": """
        INSERT INTO tokens (token_id, secret_hash, role, worker_id, created_at)
        VALUES (%(token_id)s, %(secret_hash)s, %(role)s, %(worker_id)s, %(now)s)""",
    "token_get": "SELECT * FROM tokens WHERE token_id = %(token_id)s",
    "tokens_all": "SELECT * FROM tokens ORDER BY created_at, token_id",
    "token_revoke": """
        UPDATE tokens SET revoked_at = %(now)s
         WHERE token_id = %(token_id)s AND revoked_at IS NULL RETURNING token_id""",
    "task_view": """
        SELECT t.*, r.result,
               """ + _HISTORY.format(task="t.task_id") + """ AS history
          FROM tasks t LEFT JOIN task_results r USING (task_id)
         WHERE t.task_id = %(task_id)s""",
    # The task list: one query per index; ids bound the walk, times only filter within it.
    "task_page": """
        SELECT t.*, r.result FROM tasks t LEFT JOIN task_results r USING (task_id)
         WHERE t.task_id < %(before_id)s AND t.task_id >= %(min_id)s
           AND t.created_at >= %(after)s AND t.created_at < %(before)s
         ORDER BY t.task_id DESC LIMIT %(limit)s""",
    "task_page_status": """
        SELECT t.*, r.result FROM tasks t LEFT JOIN task_results r USING (task_id)
         WHERE t.status = %(status)s AND t.task_id < %(before_id)s AND t.task_id >= %(min_id)s
           AND t.created_at >= %(after)s AND t.created_at < %(before)s
         ORDER BY t.task_id DESC LIMIT %(limit)s""",
    "task_page_type_status": """
        SELECT t.*, r.result FROM tasks t LEFT JOIN task_results r USING (task_id)
         WHERE t.task_type = %(task_type)s AND t.status = %(status)s
           AND t.task_id < %(before_id)s AND t.task_id >= %(min_id)s
           AND t.created_at >= %(after)s AND t.created_at < %(before)s
         ORDER BY t.task_id DESC LIMIT %(limit)s""",
    # A client's own tasks: the walk of (owner, task_id); status and type only filter it.
    "task_page_owner": """
        SELECT t.*, r.result FROM tasks t LEFT JOIN task_results r USING (task_id)
         WHERE t.owner = %(owner)s AND t.task_id < %(before_id)s AND t.task_id >= %(min_id)s
           AND (%(status)s::text IS NULL OR t.status = %(status)s)
           AND (%(task_type)s::text IS NULL OR t.task_type = %(task_type)s)
           AND t.created_at >= %(after)s AND t.created_at < %(before)s
         ORDER BY t.task_id DESC LIMIT %(limit)s""",
    "first_id_created_from": """
        SELECT task_id FROM tasks WHERE created_at >= %(at)s
         ORDER BY created_at, task_id LIMIT 1""",
    "last_id_created_before": """
        SELECT task_id FROM tasks WHERE created_at < %(at)s
         ORDER BY created_at DESC, task_id DESC LIMIT 1""",
    # -- groups (split jobs) --
    "group_insert": """
        INSERT INTO task_groups (task_type, params, parts, idempotency_key, created_at, owner,
                                 request_hash)
        VALUES (%(task_type)s, %(params)s, %(parts)s, %(idempotency_key)s, %(now)s, %(owner)s,
                %(request_hash)s)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING group_id""",
    "group_by_key": """
        SELECT group_id, request_hash FROM task_groups WHERE idempotency_key = %(key)s""",
    "group_get": "SELECT * FROM task_groups WHERE group_id = %(group_id)s",
    "group_parts": """
        SELECT t.task_id, t.status, t.params, t.progress, t.worker_id, t.error, r.result
          FROM tasks t LEFT JOIN task_results r USING (task_id)
         WHERE t.group_id = %(group_id)s ORDER BY t.task_id""",
    "groups_of": """
        SELECT DISTINCT group_id FROM tasks
         WHERE task_id = ANY(%(ids)s) AND group_id IS NOT NULL ORDER BY group_id""",
    "group_unfinished": """
        SELECT task_id FROM tasks
         WHERE group_id = %(group_id)s AND status IN ('pending', 'in-progress')
         ORDER BY task_id""",
    # -- retention: finished tasks older than RESULT_TTL, a group's parts only all together;
    # rows another dispatcher's purge holds are skipped, never waited for --
    "purge_candidates": """
        SELECT task_id, group_id FROM tasks t
         WHERE finished_at < %(before)s AND status IN ('completed', 'failed', 'cancelled')
           AND NOT EXISTS (  -- (a task of no group has no siblings: NULL = NULL is not true)
                SELECT 1 FROM tasks p WHERE p.group_id = t.group_id
                   AND (p.status IN ('pending', 'in-progress') OR p.finished_at >= %(before)s))
         ORDER BY finished_at LIMIT %(limit)s
           FOR UPDATE OF t SKIP LOCKED""",
    "purge_results": "DELETE FROM task_results WHERE task_id = ANY(%(ids)s)",
    "purge_checkpoints": "DELETE FROM checkpoints WHERE task_id = ANY(%(ids)s)",
    "purge_attempts": "DELETE FROM task_attempts WHERE task_id = ANY(%(ids)s)",
    "purge_tasks": "DELETE FROM tasks WHERE task_id = ANY(%(ids)s)",
    "purge_groups": """
        DELETE FROM task_groups g WHERE g.group_id = ANY(%(ids)s)
           AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.group_id = g.group_id)""",
    "task_lease": """
        SELECT status, attempt, worker_id, task_type FROM tasks WHERE task_id = %(task_id)s""",
    "task_leases": """
        SELECT task_id, status, attempt, worker_id, task_type, error, claimed_at, retries,
               max_retries, retry_backoff, max_attempts FROM tasks
         WHERE task_id = ANY(%(ids)s)""",
    "renew_lease": """
        UPDATE tasks SET progress = %(progress)s, lease_expires_at = %(lease_expires_at)s
         WHERE task_id = %(task_id)s""",
    "set_progress": "UPDATE tasks SET progress = %(progress)s WHERE task_id = %(task_id)s",
    "extend_leases": """
        UPDATE tasks SET lease_expires_at = GREATEST(lease_expires_at, %(until)s)
         WHERE status = 'in-progress'""",
    "expired_leases": """
        SELECT task_id, attempt, worker_id FROM tasks
         WHERE status = 'in-progress' AND lease_expires_at < %(now)s ORDER BY task_id""",
    "held_by_worker": """
        SELECT task_id, attempt FROM tasks
         WHERE status = 'in-progress' AND worker_id = %(worker_id)s ORDER BY task_id""",
    "leased_to_instance": """
        SELECT task_id, task_type, params, attempt, lease_expires_at, claimed_at,
               timeout_seconds FROM tasks
         WHERE status = 'in-progress' AND worker_id = %(worker_id)s
           AND worker_instance = %(instance_id)s ORDER BY task_id""",
    "held_by_other_instance": """
        SELECT task_id, attempt FROM tasks
         WHERE status = 'in-progress' AND worker_id = %(worker_id)s
           AND worker_instance IS DISTINCT FROM %(instance_id)s ORDER BY task_id""",
    "in_progress_all": """
        SELECT task_id, worker_id, attempt FROM tasks WHERE status = 'in-progress'""",
    "oldest_pending": OLDEST_PENDING.format(ready="tasks"),
    "finished_since": """
        SELECT COUNT(*) AS n FROM tasks
         WHERE finished_at >= %(since)s AND status = 'completed'""",
    # -- checkpoints and results --
    "checkpoint_get": "SELECT * FROM checkpoints WHERE task_id = %(task_id)s",
    "checkpoints_of": "SELECT * FROM checkpoints WHERE task_id = ANY(%(ids)s)",
    "checkpoint_put": """
        INSERT INTO checkpoints (task_id, attempt, worker_id, state, progress, saved_at)
        VALUES (%(task_id)s, %(attempt)s, %(worker_id)s, %(state)s, %(progress)s, %(now)s)
        ON CONFLICT (task_id) DO UPDATE SET attempt = excluded.attempt,
            worker_id = excluded.worker_id, state = excluded.state,
            progress = excluded.progress, saved_at = excluded.saved_at""",
    "checkpoint_drop": "DELETE FROM checkpoints WHERE task_id = %(task_id)s",
    "checkpoints_drop": "DELETE FROM checkpoints WHERE task_id = ANY(%(ids)s)",
    "results_of": """
        SELECT task_id, attempt, worker_id, result FROM task_results
         WHERE task_id = ANY(%(ids)s)""",
    "result_put": """
        INSERT INTO task_results (task_id, attempt, worker_id, result, created_at)
        VALUES (%(task_id)s, %(attempt)s, %(worker_id)s, %(result)s, %(now)s)""",
    # -- workers --
    "worker_get": "SELECT instance_id, status FROM workers WHERE worker_id = %(worker_id)s",
    "worker_leases": """
        SELECT w.instance_id, w.status, t.task_id, t.attempt, t.claimed_at
          FROM workers w LEFT JOIN tasks t
            ON t.worker_id = w.worker_id AND t.status = 'in-progress'
           AND t.worker_instance = w.instance_id
         WHERE w.worker_id = %(worker_id)s""",
    "worker_idle": """
        SELECT w.instance_id, w.status,
               EXISTS (SELECT 1 FROM tasks
                        WHERE status = 'pending' AND run_after IS NULL) AS pending,
               (SELECT COUNT(*) FROM tasks t WHERE t.status = 'in-progress'
                   AND t.worker_id = w.worker_id
                   AND t.worker_instance = w.instance_id) AS leased
          FROM workers w WHERE w.worker_id = %(worker_id)s""",
    "worker_upsert": """
        INSERT INTO workers (worker_id, instance_id, status, last_heartbeat, registered_at,
                             tasks_completed)
        VALUES (%(worker_id)s, %(instance_id)s, 'alive', %(now)s, %(now)s, %(completed)s)
        ON CONFLICT (worker_id) DO UPDATE SET instance_id = excluded.instance_id,
            status = 'alive', last_heartbeat = excluded.last_heartbeat,
            tasks_completed = workers.tasks_completed + excluded.tasks_completed""",
    "worker_touch": """
        UPDATE workers SET last_heartbeat = %(now)s, status = 'alive'
         WHERE worker_id = %(worker_id)s""",
    "worker_completed": """
        UPDATE workers SET tasks_completed = tasks_completed + %(completed)s
         WHERE worker_id = %(worker_id)s""",
    "worker_mark": "UPDATE workers SET status = %(status)s WHERE worker_id = %(worker_id)s",
    "worker_seen": """
        UPDATE workers SET last_heartbeat = GREATEST(last_heartbeat, %(at)s)
         WHERE worker_id = %(worker_id)s AND status = 'alive'""",
    "workers_silent": """
        SELECT worker_id, last_heartbeat FROM workers
         WHERE status = 'alive' AND last_heartbeat < %(silent_since)s ORDER BY worker_id""",
    "workers_all": "SELECT * FROM workers ORDER BY worker_id",
    # -- counters and cluster state --
    "status_counts": """
        SELECT status, SUM(n) AS n FROM (
            SELECT status, n FROM status_counts UNION ALL SELECT status, n FROM status_deltas
        ) counts GROUP BY status""",
    "status_fold": """
        WITH moved AS (DELETE FROM status_deltas RETURNING status, n)
        INSERT INTO status_counts (status, n)
            SELECT status, SUM(n) FROM moved GROUP BY status
        ON CONFLICT (status) DO UPDATE SET n = status_counts.n + excluded.n""",
    "counter_add": """
        INSERT INTO counters (name, value) VALUES (%(name)s, %(value)s)
        ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value""",
    "counters_all": "SELECT name, value FROM counters",
    "cluster_get": "SELECT name, value FROM cluster",
    "cluster_put": """
        INSERT INTO cluster (name, value) VALUES (%(name)s, %(value)s)
        ON CONFLICT (name) DO UPDATE SET value = excluded.value""",
    # -- the events timeline and the dashboard (each read bounded by an index and a LIMIT) --
    "event_add": """
        INSERT INTO events (at, kind, task_id, worker_id, attempt, status, progress, detail)
        VALUES (%(now)s, %(kind)s, %(task_id)s, %(worker_id)s, %(attempt)s, %(status)s,
                %(progress)s, %(detail)s)""",
    "events_after": """
        SELECT * FROM events
         WHERE event_id > %(after)s AND (%(task_id)s::bigint IS NULL OR task_id = %(task_id)s)
         ORDER BY event_id LIMIT %(limit)s""",
    "events_latest": """
        SELECT * FROM (SELECT * FROM events
                        WHERE (%(task_id)s::bigint IS NULL OR task_id = %(task_id)s)
                        ORDER BY event_id DESC LIMIT %(limit)s) latest ORDER BY event_id""",
    "events_trim": """
        DELETE FROM events WHERE event_id <= (SELECT event_id FROM events
                                               ORDER BY event_id DESC LIMIT 1 OFFSET %(keep)s)""",
    "dash_running": """
        SELECT t.task_id, t.task_type, t.worker_id, t.attempt, t.max_attempts, t.progress,
               t.claimed_at, t.lease_expires_at, c.saved_at AS checkpoint_at
          FROM tasks t LEFT JOIN checkpoints c USING (task_id)
         WHERE t.status = 'in-progress' ORDER BY t.task_id LIMIT %(limit)s""",
    "dash_held_counts": """
        SELECT worker_id, COUNT(*) AS n FROM tasks
         WHERE status = 'in-progress' GROUP BY worker_id""",
    "dash_pending": """
        SELECT task_id, task_type, priority, attempt, progress, created_at FROM tasks
         WHERE status = 'pending' AND run_after IS NULL
         ORDER BY priority DESC, task_id LIMIT %(limit)s""",
    "dash_delayed": """
        SELECT COUNT(*) AS n FROM (SELECT 1 FROM tasks
                                    WHERE status = 'pending' AND run_after IS NOT NULL
                                    LIMIT %(limit)s) delayed""",
    "dash_recent": """
        SELECT task_id, task_type, status, worker_id, attempt, progress, finished_at, error
          FROM tasks WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT %(limit)s""",
    "dash_buckets": """
        SELECT floor(finished_at / %(bucket)s)::bigint AS bucket, status, COUNT(*) AS n
          FROM tasks WHERE finished_at >= %(since)s GROUP BY 1, 2""",
    "dash_workers": """
        SELECT * FROM workers ORDER BY status = 'alive' DESC, worker_id LIMIT %(limit)s""",
    "dash_worker_counts": "SELECT status, COUNT(*) AS n FROM workers GROUP BY status",
    "schema_version_get": "SELECT value FROM schema_info WHERE key = 'version'",
    "column_exists": """
        SELECT 1 AS found FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = %(table)s
           AND column_name = %(column)s""",
    "schema_version_put": """
        INSERT INTO schema_info (key, value) VALUES ('version', %(version)s)
        ON CONFLICT (key) DO UPDATE SET value = excluded.value""",
    "ping": "SELECT 1 AS ok",
    # -- PostgreSQL only --
    "clock": "SELECT extract(epoch FROM clock_timestamp())::float8 AS now",
    "begin": "BEGIN",
    "no_flush_wait": "SET LOCAL synchronous_commit TO off",
    "commit": "COMMIT",
    "sweep_lock": "SELECT pg_try_advisory_xact_lock(%(key)s) AS locked",
    "migrate_lock": "SELECT pg_advisory_xact_lock(%(key)s)",
    "notify": "SELECT pg_notify(%(channel)s, %(payload)s)",
    "listen": "LISTEN taskqueue_tasks; LISTEN taskqueue_finished; LISTEN taskqueue_due",
}

SWEEP_LOCK = zlib.crc32(b"taskqueue.sweep")
MIGRATE_LOCK = zlib.crc32(b"taskqueue.migrate")
RECONNECT_MAX_SECONDS = 5.0
CLOCK_KEEP_SECONDS = 5.0
"""A clock reading is replaced by a later one with a slower round trip after this long."""


class PostgresStore(Store):
    """The task store on a PostgreSQL database shared by any number of dispatchers."""

    DIALECT = Dialect(QUERIES, list, lambda cursor, script: cursor.execute(script),
                      pipelined=True)
    AT_ONCE = True

    def __init__(self, url: str, pool_size: int = 10, clock: Clock | None = None,
                 pool_timeout: float = 10.0) -> None:
        super().__init__()
        self.url = url
        self._clock = clock
        self.origin = uuid.uuid4().hex[:12]
        """This dispatcher's name in its notifications (it has already woken its own waiters)."""
        self._closed = threading.Event()
        self._listener: threading.Thread | None = None
        self._on_due: Callable[[float], None] | None = None
        self._offset, self._rtt, self._calibrated_at = 0.0, float("inf"), 0.0
        self._pool = ConnectionPool(
            url, min_size=min(2, pool_size), max_size=pool_size, timeout=pool_timeout,
            kwargs={"autocommit": True, "row_factory": dict_row}, open=False,
            name="taskqueue")
        try:
            self._pool.open(wait=True, timeout=pool_timeout)
        except PoolTimeout as exc:
            self._pool.close()
            raise StorageUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        with _storage_errors(), self._pool.connection() as conn:
            self._calibrate(conn.cursor())
        self._migrate()

    # -- the database's clock -----------------------------------------------------------

    def now(self) -> float:
        """The database server's clock, followed locally between readings (or the injected one).

        Reading it in every transaction would cost a round trip each; instead each sweep
        (every MONITOR_INTERVAL) reads it, and in between this dispatcher's monotonic clock
        carries it on. The estimate is within half the fastest recent round trip of the
        server's clock, whatever this host's own wall clock says.
        """
        if self._clock is not None:
            return self._clock()
        return time.monotonic() + self._offset

    def _calibrate(self, cursor: psycopg.Cursor[Any]) -> None:
        """Read the server's clock; keep the reading with the shortest recent round trip."""
        before = time.monotonic()
        server = cursor.execute(QUERIES["clock"]).fetchone()["now"]
        after = time.monotonic()
        rtt, offset = after - before, server - (before + after) / 2
        if rtt <= self._rtt or after - self._calibrated_at > CLOCK_KEEP_SECONDS:
            self._offset, self._rtt, self._calibrated_at = offset, rtt, after

    # -- transactions ---------------------------------------------------------------------

    @contextmanager
    def _write(self, durable: bool = True, on_commit: OnCommit = None) -> Iterator[Tx]:
        """A transaction in pipeline mode; one that need not be flushed commits without waiting.

        In pipeline mode a statement whose result is not read travels with the next one that
        is (or with the COMMIT): a transaction costs a round trip per result it reads, plus one.
        """
        with _storage_errors(), self._pool.connection() as conn:
            try:
                with conn.pipeline():
                    cursor = conn.cursor()
                    cursor.execute(QUERIES["begin"])
                    if not durable:
                        cursor.execute(QUERIES["no_flush_wait"])
                    yield Tx(cursor, self.DIALECT, self.now())
                    conn.execute(QUERIES["commit"])
            except BaseException:
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    conn.rollback()
                raise
        if on_commit is not None:
            on_commit()

    @contextmanager
    def _ddl(self) -> Iterator[Tx]:
        """A plain transaction for schema scripts (several statements in one, no pipeline)."""
        with _storage_errors(), self._pool.connection() as conn, conn.transaction():
            yield Tx(conn.cursor(), self.DIALECT, self.now())

    @contextmanager
    def _read(self) -> Iterator[Tx]:
        """Reads, each statement on its own (autocommit): no BEGIN/COMMIT round trips."""
        with _storage_errors(), self._pool.connection() as conn:
            yield Tx(conn.cursor(), self.DIALECT, self.now())

    @contextmanager
    def _at_once(self) -> Iterator[Tx]:
        """Statements on an autocommit connection: each its own durable transaction."""
        with _storage_errors(), self._pool.connection() as conn:
            yield Tx(conn.cursor(), self.DIALECT, self.now())

    def _insert_tasks(self, tx: Tx, rows: list[dict[str, Any]]) -> list[int]:
        found = tx.all("insert_tasks", task_columns(rows))
        # Identity values are drawn in insertion order, so sorted ids follow the input order.
        return sorted(row["task_id"] for row in found)

    def _hint(self, count: int) -> str:
        return f"{self.origin}:{count}"

    def _notify(self, tx: Tx, channel: str, count: int = 1) -> None:
        if count > 0:
            tx.run("notify", {"channel": channel, "payload": self._hint(count)})

    def _notify_due(self, tx: Tx, at: float) -> None:
        tx.run("notify", {"channel": Channel.DUE, "payload": f"{self.origin}:{at!r}"})

    def _sweep_lock(self, tx: Tx) -> bool:
        if self._clock is None:
            self._calibrate(tx.cursor)
        return bool(tx.one("sweep_lock", {"key": SWEEP_LOCK})["locked"])

    def _compact(self, tx: Tx) -> None:
        tx.run("status_fold")

    # -- schema -------------------------------------------------------------------------

    def _migrate(self) -> None:
        """Create or upgrade the schema once, however many dispatchers start at the same time."""
        with self._ddl() as tx:
            tx.one("migrate_lock", {"key": MIGRATE_LOCK})
            tx.run_script("CREATE TABLE IF NOT EXISTS schema_info "
                          "(key text PRIMARY KEY, value text NOT NULL)")
            row = tx.one("schema_version_get")
            version = int(row["value"]) if row is not None else 0
            if version > SCHEMA_VERSION:
                raise StoreError(f"database schema version {version} is newer than this code "
                                 f"({SCHEMA_VERSION}); upgrade the dispatcher")
            if version == 0:
                tx.run_script(POSTGRES_SCHEMA)
                version = 1
            missed = migrations_missed(POSTGRES_MIGRATIONS, version, lambda table, column: tx.one(
                "column_exists", {"table": table, "column": column}) is not None)
            for target, script in missed + migrations_between(POSTGRES_MIGRATIONS, version):
                tx.run_script(script)
                log.info("database migrated to schema version %s", target)
            tx.run("schema_version_put", {"version": str(SCHEMA_VERSION)})
            # A new database has no planner statistics until something analyses it.
            tx.run_script("ANALYZE tasks")

    # -- wake-ups from other dispatchers --------------------------------------------------

    def listen(self, on_tasks: Callable[[int], None], on_finished: Callable[[], None],
               on_due: Callable[[float], None] | None = None) -> None:
        """Deliver other dispatchers' NOTIFYs to the callbacks, from a thread, until closed."""
        if self._listener is None:
            self._on_due = on_due
            self._listener = threading.Thread(target=self._listen_loop,
                                              args=(on_tasks, on_finished),
                                              name="postgres-listener", daemon=True)
            self._listener.start()

    def _listen_loop(self, on_tasks: Callable[[int], None], on_finished: Callable[[], None]
                     ) -> None:
        pause = 0.1
        while not self._closed.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    conn.execute(QUERIES["listen"])
                    pause = 0.1
                    # A hint may have been missed while not listening: wake everyone once.
                    on_tasks(0)
                    on_finished()
                    self._deliver(conn, on_tasks, on_finished)
            except psycopg.Error as exc:
                log.warning("listening for other dispatchers failed (%s); retrying in %.1f s",
                            exc, pause)
                self._closed.wait(pause)
                pause = min(pause * 2, RECONNECT_MAX_SECONDS)

    def _deliver(self, conn: psycopg.Connection[Any], on_tasks: Callable[[int], None],
                 on_finished: Callable[[], None]) -> None:
        while not self._closed.is_set():
            for note in conn.notifies(timeout=0.5):
                origin, _, count = note.payload.partition(":")
                if origin == self.origin:
                    continue
                if note.channel == Channel.TASKS:
                    on_tasks(int(count) if count.isdigit() else 0)
                elif note.channel == Channel.DUE:
                    self._due_elsewhere(count)
                else:
                    on_finished()

    def _due_elsewhere(self, payload: str) -> None:
        """Another dispatcher wrote a delayed task: our due timer may need to wake earlier."""
        try:
            at = float(payload)
        except ValueError:
            return
        if self._on_due is not None:
            self._on_due(at)

    # -- lifecycle ----------------------------------------------------------------------

    def ping(self) -> None:
        """Raise StorageUnavailable unless the database answers a query."""
        with _storage_errors(), self._pool.connection() as conn:
            conn.execute(QUERIES["ping"]).fetchone()

    def close(self) -> None:
        """Stop listening and close every pooled connection."""
        self._closed.set()
        if self._listener is not None:
            self._listener.join(timeout=2)
        self._pool.close()


@contextmanager
def _storage_errors() -> Iterator[None]:
    """Connection loss, a full pool, a full disk or a deadlock: StorageUnavailable (a 503)."""
    try:
        yield
    except PoolTimeout as exc:
        raise StorageUnavailable(f"no database connection available: {exc}") from exc
    except (psycopg.OperationalError, psycopg.errors.DiskFull,
            psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
            psycopg.errors.LockNotAvailable) as exc:
        raise StorageUnavailable(f"{type(exc).__name__}: {exc}".strip()) from exc


def wait_for_database(url: str, timeout: float) -> None:
    """Block until PostgreSQL at ``url`` accepts connections (tools and tests)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
