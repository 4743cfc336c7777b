"""The tables of both backends, version by version.

Both backends carry the same schema version; a database is created at version 1 and brought
up to :data:`SCHEMA_VERSION` by the numbered migrations, at start, in one transaction (on
PostgreSQL under an advisory lock, so dispatchers starting at once migrate it once). Times are
Unix epoch seconds (floats); params, results and checkpoint states are canonical JSON text, so
equal values compare equal as text on both backends.

Versions are applied in ascending order; a number with no migration (work of another line of
development, numbered apart) is skipped, see :func:`migrations_between`.
"""

from __future__ import annotations

from collections.abc import Callable

SCHEMA_VERSION = 9

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_info (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id          INTEGER PRIMARY KEY AUTOINCREMENT,
    task_type        TEXT    NOT NULL,
    params           TEXT    NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'in-progress', 'completed', 'failed', 'cancelled')),
    priority         INTEGER NOT NULL DEFAULT 0,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    worker_id        TEXT,
    worker_instance  TEXT,
    lease_expires_at REAL,
    progress         REAL    NOT NULL DEFAULT 0,
    error            TEXT,
    idempotency_key  TEXT UNIQUE,
    created_at       REAL    NOT NULL,
    started_at       REAL,
    claimed_at       REAL,
    finished_at      REAL
);
-- (the claim's index, tasks_ready_idx, comes with migration 5: this script runs at every
-- start, and must not bring back the index that migration replaced)
CREATE INDEX IF NOT EXISTS tasks_held_idx
    ON tasks (worker_id) WHERE status = 'in-progress';
CREATE INDEX IF NOT EXISTS tasks_lease_idx
    ON tasks (lease_expires_at) WHERE status = 'in-progress';
CREATE INDEX IF NOT EXISTS tasks_finished_idx
    ON tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS task_results (
    task_id    INTEGER PRIMARY KEY REFERENCES tasks (task_id),
    attempt    INTEGER NOT NULL,
    worker_id  TEXT    NOT NULL,
    result     TEXT    NOT NULL,
    created_at REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    task_id   INTEGER PRIMARY KEY REFERENCES tasks (task_id),
    attempt   INTEGER NOT NULL,
    worker_id TEXT    NOT NULL,
    state     TEXT    NOT NULL,
    progress  REAL    NOT NULL,
    saved_at  REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    worker_id       TEXT PRIMARY KEY,
    instance_id     TEXT,
    status          TEXT NOT NULL CHECK (status IN ('alive', 'dead', 'stopped')),
    last_heartbeat  REAL NOT NULL,
    registered_at   REAL NOT NULL,
    tasks_completed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

SQLITE_MIGRATIONS: dict[int, str] = {
    # v2: tasks per status kept by triggers, so /stats is O(1) however long the queue.
    2: """
CREATE TABLE IF NOT EXISTS status_counts (
    status TEXT PRIMARY KEY,
    n      INTEGER NOT NULL
);
INSERT OR REPLACE INTO status_counts (status, n)
    SELECT status, COUNT(*) FROM tasks GROUP BY status;
CREATE TRIGGER IF NOT EXISTS tasks_count_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO status_counts (status, n) VALUES (NEW.status, 1)
        ON CONFLICT (status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS tasks_count_update AFTER UPDATE OF status ON tasks
    WHEN OLD.status IS NOT NEW.status BEGIN
    UPDATE status_counts SET n = n - 1 WHERE status = OLD.status;
    INSERT INTO status_counts (status, n) VALUES (NEW.status, 1)
        ON CONFLICT (status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS tasks_count_delete AFTER DELETE ON tasks BEGIN
    UPDATE status_counts SET n = n - 1 WHERE status = OLD.status;
END;
""",
    # v3: the cluster's monitor state (last sweep, last resumption after a gap).
    3: """
CREATE TABLE IF NOT EXISTS cluster (
    name  TEXT PRIMARY KEY,
    value REAL NOT NULL
);
""",
    # v4: credentials (API tokens, stored as SHA-256 hashes of their secrets), each task's
    # owner (the token that submitted it) and the hash of the request behind an idempotency key.
    4: """
CREATE TABLE IF NOT EXISTS tokens (
    token_id    TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('client', 'worker', 'admin')),
    worker_id   TEXT,
    created_at  REAL NOT NULL,
    revoked_at  REAL
);
ALTER TABLE tasks ADD COLUMN owner TEXT;
ALTER TABLE tasks ADD COLUMN request_hash TEXT;
CREATE INDEX IF NOT EXISTS tasks_owner_idx ON tasks (owner, task_id) WHERE owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_owner_pending_idx ON tasks (owner)
    WHERE status = 'pending' AND owner IS NOT NULL;
""",
    # v5: the task lifecycle. ``run_after`` is the one "not claimable before" time (retry
    # backoff, run_at/delay_seconds): NULL means claimable, and the claim's index holds only
    # those rows, so delayed tasks never slow a claim down; the due timer clears ``run_after``
    # when the time comes (tasks_due_idx finds them). Retries of errors, per-attempt timeouts,
    # the crash-loop breaker's streak, each attempt's failure, and periodic schedules.
    5: """
ALTER TABLE tasks ADD COLUMN run_after REAL;
ALTER TABLE tasks ADD COLUMN max_retries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN retry_backoff REAL NOT NULL DEFAULT 1;
ALTER TABLE tasks ADD COLUMN timeout_seconds REAL;
ALTER TABLE tasks ADD COLUMN timeout_at REAL;
ALTER TABLE tasks ADD COLUMN crash_streak INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN crash_progress REAL;
DROP INDEX IF EXISTS tasks_pending_idx;
CREATE INDEX IF NOT EXISTS tasks_ready_idx
    ON tasks (priority DESC, task_id) WHERE status = 'pending' AND run_after IS NULL;
CREATE INDEX IF NOT EXISTS tasks_due_idx
    ON tasks (run_after) WHERE status = 'pending' AND run_after IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_timeout_idx
    ON tasks (timeout_at) WHERE status = 'in-progress' AND timeout_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS task_attempts (
    task_id   INTEGER NOT NULL,
    attempt   INTEGER NOT NULL,
    worker_id TEXT,
    kind      TEXT    NOT NULL CHECK (kind IN ('error', 'crash', 'timeout')),
    error     TEXT    NOT NULL,
    at        REAL    NOT NULL,
    PRIMARY KEY (task_id, attempt)
);
CREATE TABLE IF NOT EXISTS schedules (
    schedule_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    task_type       TEXT    NOT NULL,
    params          TEXT    NOT NULL,
    priority        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    max_retries     INTEGER NOT NULL,
    retry_backoff   REAL    NOT NULL,
    timeout_seconds REAL,
    every_seconds   REAL,
    cron            TEXT,
    next_run_at     REAL    NOT NULL,
    last_run_at     REAL,
    last_task_id    INTEGER,
    runs            INTEGER NOT NULL DEFAULT 0,
    created_at      REAL    NOT NULL,
    CHECK ((every_seconds IS NULL) <> (cron IS NULL))
);
CREATE INDEX IF NOT EXISTS schedules_due_idx ON schedules (next_run_at);
""",
    # v6: split jobs (a group of part tasks with a combine step), the indexes behind the
    # filtered, paginated task list, and the one behind retention's purge of parts by group.
    6: """
CREATE TABLE IF NOT EXISTS task_groups (
    group_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    task_type       TEXT    NOT NULL,
    params          TEXT    NOT NULL,
    parts           INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE,
    created_at      REAL    NOT NULL
);
ALTER TABLE tasks ADD COLUMN group_id INTEGER REFERENCES task_groups (group_id);
CREATE INDEX IF NOT EXISTS tasks_group_idx ON tasks (group_id) WHERE group_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_status_id_idx ON tasks (status, task_id);
CREATE INDEX IF NOT EXISTS tasks_type_status_idx ON tasks (task_type, status, task_id);
CREATE INDEX IF NOT EXISTS tasks_created_idx ON tasks (created_at, task_id);
""",
    # v7: when and why a task last went back to the queue, so a claim can tell how long a
    # reclaimed task waited to be reassigned (the reassignment-time histogram of /metrics).
    7: """
ALTER TABLE tasks ADD COLUMN requeued_at REAL;
ALTER TABLE tasks ADD COLUMN requeue_cause TEXT;
""",
    # v8: the cluster's recent events (reclaims, dead workers, resumptions, cancellations), for
    # the dashboard's timeline; written in the transaction of what they record, trimmed by the
    # monitor to the newest EVENTS_KEPT. AUTOINCREMENT: an id is never reused after a trim, so
    # ``GET /events?after=<id>`` is a reliable cursor.
    8: """
CREATE TABLE IF NOT EXISTS events (
    event_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    at        REAL    NOT NULL,
    kind      TEXT    NOT NULL,
    task_id   INTEGER,
    worker_id TEXT,
    attempt   INTEGER,
    status    TEXT,
    progress  REAL,
    detail    TEXT
);
""",
    # v9: a split job's owner (the token that submitted it: a client reads and cancels only its
    # own groups) and the hash of the request behind its idempotency key (v4 did the same for
    # tasks; task_groups is younger than v4).
    9: """
ALTER TABLE task_groups ADD COLUMN owner TEXT;
ALTER TABLE task_groups ADD COLUMN request_hash TEXT;
""",
}
"""SQLite schema changes by version; a database is brought up to SCHEMA_VERSION at start."""


POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_info (
    key   text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id          bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    task_type        text    NOT NULL,
    params           text    NOT NULL,
    status           text    NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'in-progress', 'completed', 'failed', 'cancelled')),
    priority         integer NOT NULL DEFAULT 0,
    attempt          integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL,
    worker_id        text,
    worker_instance  text,
    lease_expires_at double precision,
    progress         double precision NOT NULL DEFAULT 0,
    error            text,
    idempotency_key  text UNIQUE,
    created_at       double precision NOT NULL,
    started_at       double precision,
    claimed_at       double precision,
    finished_at      double precision
);
CREATE INDEX IF NOT EXISTS tasks_pending_idx
    ON tasks (priority DESC, task_id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS tasks_held_idx
    ON tasks (worker_id) WHERE status = 'in-progress';
CREATE INDEX IF NOT EXISTS tasks_lease_idx
    ON tasks (lease_expires_at) WHERE status = 'in-progress';
CREATE INDEX IF NOT EXISTS tasks_finished_idx
    ON tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS task_results (
    task_id    bigint  PRIMARY KEY REFERENCES tasks (task_id),
    attempt    integer NOT NULL,
    worker_id  text    NOT NULL,
    result     text    NOT NULL,
    created_at double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    task_id   bigint  PRIMARY KEY REFERENCES tasks (task_id),
    attempt   integer NOT NULL,
    worker_id text    NOT NULL,
    state     text    NOT NULL,
    progress  double precision NOT NULL,
    saved_at  double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    worker_id       text PRIMARY KEY,
    instance_id     text,
    status          text NOT NULL CHECK (status IN ('alive', 'dead', 'stopped')),
    last_heartbeat  double precision NOT NULL,
    registered_at   double precision NOT NULL,
    tasks_completed bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counters (
    name  text PRIMARY KEY,
    value bigint NOT NULL
);
"""

POSTGRES_MIGRATIONS: dict[int, str] = {
    # v2: tasks per status, O(1) for /stats. Statement-level triggers append one row per
    # status and statement to status_deltas (inserts never wait on each other, unlike one
    # counter row per status that every transaction would lock); the monitor folds the deltas
    # into status_counts, and readers add both.
    2: """
CREATE TABLE IF NOT EXISTS status_counts (
    status text PRIMARY KEY,
    n      bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS status_deltas (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status text   NOT NULL,
    n      bigint NOT NULL
);
INSERT INTO status_counts (status, n)
    SELECT status, COUNT(*) FROM tasks GROUP BY status
    ON CONFLICT (status) DO UPDATE SET n = excluded.n;
CREATE OR REPLACE FUNCTION taskqueue_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO status_deltas (status, n) SELECT status, COUNT(*) FROM new_rows GROUP BY status;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION taskqueue_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO status_deltas (status, n)
        SELECT status, SUM(n) FROM (
            SELECT status, -1 AS n FROM old_rows UNION ALL SELECT status, 1 FROM new_rows
        ) moved GROUP BY status HAVING SUM(n) <> 0;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION taskqueue_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO status_deltas (status, n) SELECT status, -COUNT(*) FROM old_rows GROUP BY status;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS tasks_count_insert ON tasks;
CREATE TRIGGER tasks_count_insert AFTER INSERT ON tasks REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskqueue_count_inserted();
DROP TRIGGER IF EXISTS tasks_count_update ON tasks;
CREATE TRIGGER tasks_count_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskqueue_count_updated();
DROP TRIGGER IF EXISTS tasks_count_delete ON tasks;
CREATE TRIGGER tasks_count_delete AFTER DELETE ON tasks REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskqueue_count_deleted();
""",
    # v3: the cluster's monitor state (last sweep, last resumption after a gap).
    3: """
CREATE TABLE IF NOT EXISTS cluster (
    name  text PRIMARY KEY,
    value double precision NOT NULL
);
""",
    # v4: credentials, task owners, idempotency request hashes (as SQLite's v4).
    4: """
CREATE TABLE IF NOT EXISTS tokens (
    token_id    text PRIMARY KEY,
    secret_hash text NOT NULL,
    role        text NOT NULL CHECK (role IN ('client', 'worker', 'admin')),
    worker_id   text,
    created_at  double precision NOT NULL,
    revoked_at  double precision
);
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS owner text;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS request_hash text;
CREATE INDEX IF NOT EXISTS tasks_owner_idx ON tasks (owner, task_id) WHERE owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_owner_pending_idx ON tasks (owner)
    WHERE status = 'pending' AND owner IS NOT NULL;
""",
    # v5: the task lifecycle (see the SQLite migration of the same number).
    5: """
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS run_after double precision;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS max_retries integer NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS retries integer NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS retry_backoff double precision NOT NULL DEFAULT 1;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS timeout_seconds double precision;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS timeout_at double precision;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS crash_streak integer NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS crash_progress double precision;
DROP INDEX IF EXISTS tasks_pending_idx;
CREATE INDEX IF NOT EXISTS tasks_ready_idx
    ON tasks (priority DESC, task_id) WHERE status = 'pending' AND run_after IS NULL;
CREATE INDEX IF NOT EXISTS tasks_due_idx
    ON tasks (run_after) WHERE status = 'pending' AND run_after IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_timeout_idx
    ON tasks (timeout_at) WHERE status = 'in-progress' AND timeout_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS task_attempts (
    task_id   bigint  NOT NULL,
    attempt   integer NOT NULL,
    worker_id text,
    kind      text    NOT NULL CHECK (kind IN ('error', 'crash', 'timeout')),
    error     text    NOT NULL,
    at        double precision NOT NULL,
    PRIMARY KEY (task_id, attempt)
);
CREATE TABLE IF NOT EXISTS schedules (
    schedule_id     bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    task_type       text    NOT NULL,
    params          text    NOT NULL,
    priority        integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL,
    max_retries     integer NOT NULL,
    retry_backoff   double precision NOT NULL,
    timeout_seconds double precision,
    every_seconds   double precision,
    cron            text,
    next_run_at     double precision NOT NULL,
    last_run_at     double precision,
    last_task_id    bigint,
    runs            bigint  NOT NULL DEFAULT 0,
    created_at      double precision NOT NULL,
    CHECK ((every_seconds IS NULL) <> (cron IS NULL))
);
CREATE INDEX IF NOT EXISTS schedules_due_idx ON schedules (next_run_at);
""",
    # v6: split jobs, the task list's indexes, the purge's lookup of parts by group.
    6: """
CREATE TABLE IF NOT EXISTS task_groups (
    group_id        bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    task_type       text    NOT NULL,
    params          text    NOT NULL,
    parts           integer NOT NULL,
    idempotency_key text UNIQUE,
    created_at      double precision NOT NULL
);
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS group_id bigint REFERENCES task_groups (group_id);
CREATE INDEX IF NOT EXISTS tasks_group_idx ON tasks (group_id) WHERE group_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_status_id_idx ON tasks (status, task_id);
CREATE INDEX IF NOT EXISTS tasks_type_status_idx ON tasks (task_type, status, task_id);
CREATE INDEX IF NOT EXISTS tasks_created_idx ON tasks (created_at, task_id);
""",
    # v7: when a task last went back to the queue (see SQLite's v7).
    7: """
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS requeued_at double precision;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS requeue_cause text;
""",
    # v8: recent events for the dashboard's timeline (see the SQLite migration).
    8: """
CREATE TABLE IF NOT EXISTS events (
    event_id  bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at        double precision NOT NULL,
    kind      text    NOT NULL,
    task_id   bigint,
    worker_id text,
    attempt   integer,
    status    text,
    progress  double precision,
    detail    text
);
""",
    # v9: split jobs' owners and idempotency request hashes (as SQLite's v9).
    9: """
ALTER TABLE task_groups ADD COLUMN IF NOT EXISTS owner text;
ALTER TABLE task_groups ADD COLUMN IF NOT EXISTS request_hash text;
""",
}
"""PostgreSQL schema changes by version (the same versions as SQLite's)."""


def migrations_between(migrations: dict[int, str], version: int) -> list[tuple[int, str]]:
    """The migrations a database at ``version`` still needs, in ascending order."""
    return sorted((v, sql) for v, sql in migrations.items() if version < v <= SCHEMA_VERSION)


MIGRATION_MARKERS: dict[int, tuple[str, str]] = {
    4: ("tasks", "owner"),
    5: ("tasks", "run_after"),
    7: ("tasks", "requeued_at"),
}
"""A column each of these migrations adds. They were written on branches merged in another
order than their numbers, so a database may be at a later version without one of them (a
database at v8 before v4 existed, at v9 before v5): a migration whose column is missing is
applied anyway (before the ones above the stored version)."""


def migrations_missed(migrations: dict[int, str], version: int,
                      has_column: Callable[[str, str], bool]) -> list[tuple[int, str]]:
    """The migrations at or below ``version`` that a database never got (see
    :data:`MIGRATION_MARKERS`), in ascending order."""
    return sorted((v, migrations[v]) for v, (table, column) in MIGRATION_MARKERS.items()
                  if v <= version and v in migrations and not has_column(table, column))
