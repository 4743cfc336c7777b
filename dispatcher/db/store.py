"""The store: every queue operation, written once over named queries.

A backend (``sqlite.py``, ``postgres.py``) supplies the SQL dialect (its ``QUERIES`` table, with
the same names in both), its connections and transactions, and the clock. Each operation here
is one transaction, and every time it uses is read once per transaction from the store's clock:
the dispatcher's with SQLite, the database's with PostgreSQL (so several dispatchers agree),
or a fake one that tests inject. Status changes go through :func:`dispatcher.db.moves.move`.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from dispatcher.db.errors import IdempotencyConflict, NotFound, QuotaExceeded, StaleLease
from dispatcher.db.moves import Move, move, move_after_read
from dispatcher.models import (
    FINISHED,
    AttemptKind,
    RECLAIM_WORDS,
    Checkpoint,
    Event,
    EventKind,
    Group,
    Lease,
    NewTask,
    Outcome,
    OutcomeKind,
    Reclaim,
    ReclaimCause,
    Report,
    Task,
    TaskPage,
    TaskQuery,
    TaskStatus,
    WorkerStatus,
    dumps,
)
from shared.utils import task_fields
from tasks.base import InvalidCheckpoint

log = logging.getLogger(__name__)

Row = Any
"""A result row: ``sqlite3.Row`` or a dict; both are indexed by column name."""
Clock = Callable[[], float]
Held = tuple[int, int]  # (task_id, attempt)
CheckpointCheck = Callable[[str, dict[str, Any], "dict[str, Any] | None"], None]
"""Called as check(task_type, new_state, previous_state); raises to refuse a checkpoint."""
OnCommit = Callable[[], None] | None


class Watchers(Protocol):
    """Requests waiting for tasks to finish: a store that finishes one of the watched tasks
    may hand them its view, read by the statement that finished it (no read of their own)."""

    def watched(self) -> Sequence[int]:
        """The ids of the tasks waited for now."""

    def deliver(self, views: Mapping[int, Task]) -> None:
        """Hand over finished views (before the waiters are woken)."""


OLDEST_PENDING = """
    WITH RECURSIVE levels(priority) AS (
        SELECT MAX(priority) FROM {ready} WHERE status = 'pending' AND run_after IS NULL
        UNION ALL
        SELECT (SELECT MAX(priority) FROM {ready}
                 WHERE status = 'pending' AND run_after IS NULL AND priority < levels.priority)
          FROM levels WHERE levels.priority IS NOT NULL)
    SELECT MIN((SELECT created_at FROM {ready} WHERE status = 'pending' AND run_after IS NULL
                   AND priority = levels.priority ORDER BY task_id LIMIT 1)) AS created_at
      FROM levels WHERE levels.priority IS NOT NULL"""
"""When the oldest claimable pending task was submitted (the same SQL on both backends, with
``{ready}`` the tasks table, named with its index on SQLite): the first task of each priority
in the claim's index (tasks_ready_idx), a skip scan with one index probe per distinct
priority, never a scan of the tasks table. Ids grow with submission time, so the first id of
a priority is its oldest task. A delayed task (run_after set) is not waiting yet: not counted."""


@dataclass(frozen=True)
class Dialect:
    """What differs between backends below the operations: SQL texts and parameter encodings."""

    queries: Mapping[str, str]
    id_list: Callable[[Sequence[int]], Any]
    """Encodes a list of ids as the ``checkpoints_of`` query takes it (JSON text, an array)."""
    run_script: Callable[[Any, str], None]
    """Runs fixed DDL (several statements, no parameters) on a cursor."""
    pipelined: bool = False
    """Statements are sent ahead and read later (PostgreSQL's pipeline mode); otherwise a
    statement's rows must be read before the next statement runs (SQLite's cursors step
    lazily, so a later UPDATE would show through an unread SELECT)."""


class Tx:
    """One open transaction: runs the backend's named queries; ``now`` is its one clock reading."""

    def __init__(self, cursor: Any, dialect: Dialect, now: float) -> None:
        self.cursor, self._dialect, self.now = cursor, dialect, now
        self.due_at: float | None = None
        """The earliest ``run_after`` this transaction set (the due timer is told at commit)."""

    def delay_until(self, at: float) -> None:
        """Note that a task this transaction wrote becomes claimable at ``at``."""
        self.due_at = at if self.due_at is None else min(self.due_at, at)

    def one(self, name: str, params: Mapping[str, Any] | None = None) -> Row | None:
        """The first row of a named query, or None."""
        return self.cursor.execute(self._dialect.queries[name], params or {}).fetchone()

    def all(self, name: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        """Every row of a named query."""
        return list(self.cursor.execute(self._dialect.queries[name], params or {}).fetchall())

    def run(self, name: str, params: Mapping[str, Any] | None = None) -> None:
        """Execute a named statement whose result is not needed.

        (On PostgreSQL a transaction runs in pipeline mode: such statements travel with the
        next one whose result is read, or with the COMMIT, instead of a round trip each.)
        """
        self.cursor.execute(self._dialect.queries[name], params or {})

    def pair(self, first: str, first_params: Mapping[str, Any], second: str,
             second_params: Mapping[str, Any]) -> tuple[list[Row], list[Row]]:
        """Run two named queries in order and read both (pipelined: one round trip for both)."""
        if not self._dialect.pipelined:
            return self.all(first, first_params), self.all(second, second_params)
        # Two fresh cursors: the transaction's own cursor may still be waiting for the results
        # of statements sent before (BEGIN...), and under a full send buffer psycopg can hand
        # it one of those instead of the first query's rows.
        one, other = self.cursor.connection.cursor(), self.cursor.connection.cursor()
        one.execute(self._dialect.queries[first], first_params)
        other.execute(self._dialect.queries[second], second_params)
        return list(one.fetchall()), list(other.fetchall())

    def many(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Execute a named statement once per parameter set."""
        if rows:
            self.cursor.executemany(self._dialect.queries[name], rows)

    def id_list(self, ids: Sequence[int]) -> Any:
        """A list of ids as this backend's queries take it."""
        return self._dialect.id_list(ids)

    def run_script(self, script: str) -> None:
        """Run fixed DDL of this backend (schema creation and migrations)."""
        self._dialect.run_script(self.cursor, script)


@dataclass(frozen=True)
class Claimed:
    """What one claim transaction did: leases handed out, reclaims it caused, reports recorded.

    ``idle`` says the answer came from a read that found the worker idle (``Look.idle``, or a
    one-statement claim of a known worker holding no lease that found nothing to claim).
    ``sole`` says the worker held nothing before, so the leases are all it holds; ``drained``
    that no other task was pending (both from PostgreSQL's one-statement claim only).
    """

    leases: list[Lease]
    reclaims: list[Reclaim]
    outcomes: list[Outcome]
    idle: bool = False
    sole: bool = False
    drained: bool = False


@dataclass(frozen=True)
class Look:
    """What one read says about a worker about to claim."""

    known: bool  # registered and alive as this very instance
    pending: bool  # some task is pending
    leased: int  # leases this instance holds (perhaps from a claim whose answer was lost)
    at: float  # when (the store's clock)

    @property
    def idle(self) -> bool:
        """Nothing to do but note its liveness: known, nothing pending, nothing held."""
        return self.known and not self.pending and not self.leased


@dataclass(frozen=True)
class Swept:
    """What one monitor pass did. ``ran`` is False when another dispatcher was sweeping."""

    ran: bool
    reclaims: list[Reclaim]
    resumed_at: float | None
    """When the cluster last came back after a gap in sweeping (its grace runs from there)."""


class Channel:
    """Names of the wake-up hints sent between dispatchers (PostgreSQL LISTEN/NOTIFY)."""

    TASKS = "taskqueue_tasks"  # tasks became claimable; payload: how many
    FINISHED = "taskqueue_finished"  # tasks finished
    DUE = "taskqueue_due"  # a task becomes claimable later; payload: when (epoch seconds)


class Store(abc.ABC):
    """The task store. Subclasses provide connections, transactions, the dialect and the clock."""

    DIALECT: Dialect
    AT_ONCE = False
    """The backend has one-statement transactions (:meth:`_at_once`). Then every claim also
    starts with the one-statement claim, not only a woken one: it costs about what the look
    it replaces costs."""
    MAX_RETRY_DELAY = 3600.0
    """The longest backoff between two retries of an error, however many came before."""

    def __init__(self) -> None:
        self._beats = Beats()
        self.crash_loop_limit = 3
        """A task that killed this many workers in a row at the same checkpoint fails."""
        self.on_due: Callable[[float], None] | None = None
        """Told, after the commit, when a write made a task claimable only later."""

    def _after_write(self, tx: Tx) -> None:
        """After a commit: tell this dispatcher's due timer about delayed tasks it wrote."""
        if tx.due_at is not None and self.on_due is not None:
            self.on_due(tx.due_at)

    # -- what a backend provides --------------------------------------------------------------

    @abc.abstractmethod
    def _write(self, durable: bool = True, on_commit: OnCommit = None
               ) -> AbstractContextManager[Tx]:
        """A write transaction; commit, or roll back on error.

        ``on_commit`` runs right after the commit (it wakes this dispatcher's waiting
        requests). A ``durable`` write returns only once the commit is on disk; others may be
        lost to a power cut (never to a crash of the process), which only costs redone work.
        """

    @abc.abstractmethod
    def _read(self) -> AbstractContextManager[Tx]:
        """A read-only transaction (one consistent snapshot)."""

    def _at_once(self) -> AbstractContextManager[Tx]:
        """A Tx in which every statement is a durable transaction of its own, one round trip
        each, for operations that fit in one statement (only where ``AT_ONCE``).

        PostgreSQL has them (autocommit; data-modifying CTEs let one statement write several
        tables): the hot operations (a plain submission, a claim, a batch of results, a task
        read) then cost one round trip instead of a pipelined BEGIN ... COMMIT, whose waits
        and statements cost the dispatcher about twice the CPU (docs/performance.md). SQLite
        has none: its statements write one table each, so those operations run as ordinary
        transactions.
        """
        raise NotImplementedError("this backend has no one-statement transactions")

    @abc.abstractmethod
    def _insert_tasks(self, tx: Tx, rows: list[dict[str, Any]]) -> list[int]:
        """Insert task rows without idempotency keys in one statement; their ids in order."""

    @abc.abstractmethod
    def now(self) -> float:
        """The store's clock: what every lease and liveness decision is measured against."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise StorageUnavailable unless the database answers a query."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release every connection."""

    def _notify(self, tx: Tx, channel: str, count: int = 1) -> None:
        """Tell other dispatchers, at commit, that something they may wait for happened."""

    def _sweep_lock(self, tx: Tx) -> bool:
        """Take the cluster-wide sweep lock for this transaction; False if another holds it."""
        return True

    def _compact(self, tx: Tx) -> None:
        """Fold bookkeeping rows together (a sweep's housekeeping); nothing by default."""

    def listen(self, on_tasks: Callable[[int], None], on_finished: Callable[[], None],
               on_due: Callable[[float], None] | None = None) -> None:
        """Deliver other dispatchers' wake-up hints to these callbacks (until :meth:`close`)."""

    # -- submission ---------------------------------------------------------------------------

    def submit(self, tasks: Sequence[NewTask], on_commit: OnCommit = None,
               pending_cap: int | None = None) -> list[tuple[int, bool]]:
        """Insert tasks in one durable transaction; (task_id, created) for each, in order.

        A task whose idempotency key is already stored is not inserted again: its existing
        id comes back with created=False, unless the stored request hash differs (then
        IdempotencyConflict, and nothing of the batch is stored). With ``pending_cap``, an
        owner with that many pending tasks (counting these) gets QuotaExceeded.
        """
        done = self._submit_at_once(tasks, pending_cap) if tasks else None
        if done is not None:
            if on_commit is not None and any(created for _, created in done):
                on_commit()
            return done
        with self._write(on_commit=on_commit) as tx:
            if pending_cap is not None and tasks and tasks[0].owner is not None:
                _check_pending(tx, tasks[0].owner, pending_cap, len(tasks))
            rows = [_task_row(task, tx.now) for task in tasks]
            if all(task.idempotency_key is None for task in tasks):
                created = [(task_id, True) for task_id in self._insert_tasks(tx, rows)]
            else:
                created = [_insert_keyed(tx, row) for row in rows]
            ready = sum(1 for (_, new), row in zip(created, rows)
                        if new and row["run_after"] is None)
            self._notify(tx, Channel.TASKS, ready)
            for (_, new), row in zip(created, rows):
                if new and row["run_after"] is not None:
                    tx.delay_until(row["run_after"])
            self._announce_due(tx)
        self._after_write(tx)
        return created

    def _submit_at_once(self, tasks: Sequence[NewTask], pending_cap: int | None
                        ) -> list[tuple[int, bool]] | None:
        """:meth:`submit` in one statement, with the wake-up of other dispatchers; None (nothing
        done) if the backend has no such statement, a task asks to run later, a batch has
        keys or a cap, or the single task's statement could not decide (over the cap, or its
        key inserted concurrently): the transaction path then does it all."""
        if not self.AT_ONCE or any(task.run_at is not None or task.delay_seconds is not None
                                   for task in tasks):
            return None
        cap = pending_cap if tasks[0].owner is not None else None
        if len(tasks) > 1 and (cap is not None
                               or any(task.idempotency_key is not None for task in tasks)):
            return None
        with self._at_once() as tx:
            rows = [_task_row(task, tx.now) for task in tasks]
            hint = {"channel": Channel.TASKS, "payload": self._hint(len(rows))}
            if len(rows) == 1:  # plain parameters: adapting eleven arrays costs more
                found = tx.all("submit_one_at_once", {**rows[0], **hint, "cap": cap})
            else:
                found = tx.all("submit_at_once", {**task_columns(rows), **hint})
        if len(rows) > 1:
            # Identity values are drawn in insertion order: sorted ids follow the input order.
            return [(task_id, True) for task_id in sorted(row["task_id"] for row in found)]
        if not found:
            return None
        [got] = found
        if not got["created"]:
            _same_request(got["request_hash"], rows[0]["request_hash"], f"task {got['task_id']}")
        return [(got["task_id"], bool(got["created"]))]

    def _hint(self, count: int) -> str:
        """The payload of a wake-up hint to other dispatchers (who sent it, how many)."""
        return str(count)

    def _announce_due(self, tx: Tx) -> None:
        """Tell other dispatchers' due timers when this transaction's delayed tasks come due."""
        if tx.due_at is not None:
            self._notify_due(tx, tx.due_at)

    def _notify_due(self, tx: Tx, at: float) -> None:
        """Send the DUE hint (PostgreSQL); nothing with one dispatcher."""

    def submit_group(self, task_type: str, params: dict[str, Any], parts: Sequence[NewTask],
                     key: str | None = None, on_commit: OnCommit = None,
                     request_hash: str | None = None, pending_cap: int | None = None
                     ) -> tuple[int, list[int], bool]:
        """Insert a split job and its part tasks in one durable transaction.

        Returns (group_id, part task ids, created). The group's owner is its parts' owner. A
        group whose idempotency key is stored already is not inserted again: its existing id
        and parts come back, created=False, unless the stored request hash differs (then
        IdempotencyConflict). With ``pending_cap``, an owner who would have more pending tasks
        than that, counting the parts, gets QuotaExceeded.
        """
        owner = parts[0].owner if parts else None
        with self._write(on_commit=on_commit) as tx:
            row = tx.one("group_insert", {"task_type": task_type, "params": dumps(params),
                                          "parts": len(parts), "idempotency_key": key,
                                          "now": tx.now, "owner": owner,
                                          "request_hash": request_hash})
            if row is None:
                found = tx.one("group_by_key", {"key": key})
                group_id = found["group_id"]
                _same_request(found["request_hash"], request_hash, f"group {group_id}")
                ids = [part["task_id"] for part in tx.all("group_parts", {"group_id": group_id})]
                return group_id, ids, False
            if pending_cap is not None and owner is not None:
                _check_pending(tx, owner, pending_cap, len(parts))
            group_id = row["group_id"]
            rows = [{**_task_row(part, tx.now), "group_id": group_id} for part in parts]
            ids = self._insert_tasks(tx, rows)
            self._notify(tx, Channel.TASKS, len(ids))
        return group_id, ids, True

    # -- workers ------------------------------------------------------------------------------

    def _free_other_instances(self, tx: Tx, worker_id: str, instance_id: str | None
                              ) -> list[Reclaim]:
        """A new instance of a known worker: the tasks the earlier one held go back at once."""
        row = tx.one("worker_get", {"worker_id": worker_id})
        if row is None or instance_id is None or row["instance_id"] == instance_id:
            return []
        held = tx.all("held_by_other_instance", {"worker_id": worker_id, "instance_id": instance_id})
        return self._requeue_all(tx, held, worker_id, ReclaimCause.WORKER_RESTARTED)

    def _upsert_worker(self, tx: Tx, worker_id: str, instance_id: str | None,
                       completed: int = 0) -> None:
        """Mark the worker alive (as this instance), adding ``completed`` results.

        The last statement of its transaction: every transaction locks task rows before the
        worker's row, so that two of them never wait on each other in a cycle (PostgreSQL).
        """
        params = {"worker_id": worker_id, "instance_id": instance_id, "now": tx.now,
                  "completed": completed}
        if instance_id is None:
            tx.run("worker_touch", params)
        else:
            tx.run("worker_upsert", params)

    def heartbeat(
        self, worker_id: str, instance_id: str | None, held: Sequence[Held],
        unlisted_grace: float | None = None,
    ) -> tuple[list[int], list[Reclaim]]:
        """Record a heartbeat; the held task ids the worker no longer owns, and reclaims.

        With ``unlisted_grace``, a task leased to this instance more than that many seconds
        ago but missing from ``held`` goes back to the queue (``lost_claim``): the claim's
        answer never reached the worker.

        The heartbeat of a known, live instance that changes nothing else is answered from a
        read; its time is written with the next sweep (:meth:`sweep`), so an idle fleet costs
        reads, not write transactions.
        """
        quiet = self._quiet_heartbeat(worker_id, instance_id, held, unlisted_grace)
        if quiet is not None:
            return quiet, []
        with self._write(durable=False) as tx:
            reclaimed = self._free_other_instances(tx, worker_id, instance_id)
            revoked = _not_held(tx, held, worker_id)
            if unlisted_grace is not None and instance_id is not None:
                listed = {task_id for task_id, _ in held}
                lost = [row for row in tx.all("leased_to_instance",
                                              {"worker_id": worker_id, "instance_id": instance_id})
                        if row["task_id"] not in listed
                        and row["claimed_at"] < tx.now - unlisted_grace]
                reclaimed += self._requeue_all(tx, lost, worker_id, ReclaimCause.LOST_CLAIM,
                                               counts=False)
            self._upsert_worker(tx, worker_id, instance_id)
        return revoked, reclaimed

    def _quiet_heartbeat(self, worker_id: str, instance_id: str | None, held: Sequence[Held],
                         unlisted_grace: float | None) -> list[int] | None:
        """Revoked task ids when the heartbeat needs no write, else None."""
        if instance_id is None:
            return None
        with self._read() as tx:  # one statement: the worker and its current leases
            rows = tx.all("worker_leases", {"worker_id": worker_id})
        if not rows or not _alive_as(rows[0], instance_id):
            return None
        leased = [row for row in rows if row["task_id"] is not None]
        listed = {task_id for task_id, _ in held}
        if unlisted_grace is not None and any(
                row["task_id"] not in listed and row["claimed_at"] < tx.now - unlisted_grace
                for row in leased):
            return None  # a lost claim to requeue: the write path does it
        current = {(row["task_id"], row["attempt"]) for row in leased}
        self._beats.seen(worker_id, tx.now)
        return [task_id for task_id, attempt in held if (task_id, attempt) not in current]

    def note_alive(self, worker_id: str) -> None:
        """Note a sign of life of a worker known to be alive; the next sweep writes it."""
        self._beats.seen(worker_id, self.now())

    def mark_worker(self, worker_id: str, status: WorkerStatus) -> None:
        """Set a worker's status ('stopped' when it says it is leaving)."""
        with self._write() as tx:
            tx.run("worker_mark", {"status": status.value, "worker_id": worker_id})

    # -- claim, checkpoint, release, complete -------------------------------------------------

    def claim(
        self, worker_id: str, instance_id: str | None, limit: int, lease_seconds: float,
        reports: Sequence[Report] = (), on_commit: OnCommit = None, woken: bool = False,
    ) -> Claimed:
        """Record ``reports`` (as :meth:`complete`), then lease up to ``limit`` pending tasks.

        A worker acknowledges its last batch and takes the next in one request: the reports
        are committed first (durably, waking whoever waits for them), then the claim, which
        needs no flush. A known worker's claim that finds nothing is answered from one read,
        its liveness noted for the next sweep. ``woken`` says a task was just announced:
        then the claim is tried at once, with the worker's state read alongside (one round
        trip on PostgreSQL, where every claim starts that way: ``AT_ONCE``).
        """
        outcomes = self.complete(worker_id, reports, on_commit) if reports else []
        if limit <= 0:
            return Claimed([], [], outcomes)
        if (woken and not reports) or self.AT_ONCE:
            claimed = self._claim_at_once(worker_id, instance_id, limit, lease_seconds)
            if claimed is not None:
                return dataclasses.replace(claimed, outcomes=outcomes)
        look = self._look(worker_id, instance_id)
        if look.idle:
            self._beats.seen(worker_id, look.at)
            return Claimed([], [], outcomes, idle=True)
        with self._write(durable=False) as tx:
            reclaimed = [] if look.known else self._free_other_instances(tx, worker_id,
                                                                         instance_id)
            # A lease this instance holds when it claims is one whose answer was lost.
            lost = _lost_claims(tx, worker_id, instance_id) if look.leased else []
            claimed_rows = move(tx, Move.CLAIM, _claim_params(
                tx, worker_id, instance_id, limit - len(lost), lease_seconds))
            leases = _leases(tx, lost + claimed_rows, lease_seconds)
            _note_resumed(tx, worker_id, leases, {row["task_id"] for row in claimed_rows})
            if look.known:
                self._beats.seen(worker_id, tx.now)
            else:
                self._upsert_worker(tx, worker_id, instance_id)
        return Claimed(leases, reclaimed, outcomes)

    def _claim_at_once(self, worker_id: str, instance_id: str | None, limit: int,
                       lease_seconds: float) -> Claimed | None:
        """Claim without looking first; None (nothing done) unless the worker is known, alive
        and holds no lease (then the ordinary path handles registration or re-delivery)."""
        if self.AT_ONCE:
            with self._at_once() as tx:
                rows = move(tx, Move.CLAIM_AT_ONCE, _claim_params(
                    tx, worker_id, instance_id, limit, lease_seconds))
                if not rows or not rows[0]["known_idle"]:
                    return None  # nothing was claimed
                claimed_rows = [row for row in rows if row["task_id"] is not None]
                leases = _leases(tx, claimed_rows, lease_seconds)
                # The timeline event commits after the claim: a crash in between loses a
                # line of the timeline, never a lease.
                _note_resumed(tx, worker_id, leases, {row["task_id"] for row in claimed_rows})
            self._beats.seen(worker_id, tx.now)
            # Known and holding nothing before: idle if it found none, else holding just these.
            return Claimed(leases, [], [], idle=not leases, sole=True,
                           drained=bool(rows[0]["drained"]))
        try:
            with self._write(durable=False) as tx:
                found, claimed_rows = tx.pair(
                    "worker_idle", {"worker_id": worker_id}, Move.CLAIM.query,
                    _claim_params(tx, worker_id, instance_id, limit, lease_seconds))
                look = _look_from(found[0] if found else None, instance_id, tx.now)
                if not look.known or look.leased:
                    raise _NotAtOnce
                leases = _leases(tx, claimed_rows, lease_seconds)
                _note_resumed(tx, worker_id, leases, {row["task_id"] for row in claimed_rows})
        except _NotAtOnce:
            return None
        self._beats.seen(worker_id, tx.now)
        return Claimed(leases, [], [])

    def _look(self, worker_id: str, instance_id: str | None) -> Look:
        """One read: is this instance known and alive, is anything pending, does it hold leases."""
        with self._read() as tx:
            return _look_in(tx, worker_id, instance_id)

    def checkpoint(
        self, worker_id: str, task_id: int, attempt: int, state: dict[str, Any],
        progress: float, lease_seconds: float, check: CheckpointCheck | None = None,
    ) -> float:
        """Save a checkpoint and renew the lease; the new lease expiry.

        ``check`` may refuse the state (InvalidCheckpoint); then nothing changes.
        """
        with self._write(durable=False) as tx:
            task_type = _require_holder(tx, task_id, attempt, worker_id)
            _save_checkpoint(tx, worker_id, task_id, attempt, state, progress,
                             _bind(check, task_type))
            expires = tx.now + lease_seconds
            tx.run("renew_lease", {"progress": progress, "lease_expires_at": expires,
                                   "task_id": task_id})
            tx.run("worker_touch", {"now": tx.now, "worker_id": worker_id})
        return expires

    def release(
        self, worker_id: str, task_id: int, attempt: int, state: dict[str, Any] | None,
        progress: float | None, check: CheckpointCheck | None = None,
        cause: ReclaimCause = ReclaimCause.RELEASED,
    ) -> Reclaim:
        """Return a held task to the queue at once (shutdown, or unstarted), saving its state."""
        with self._write(durable=False) as tx:
            task_type = _require_holder(tx, task_id, attempt, worker_id)
            if state is not None:
                _save_checkpoint(tx, worker_id, task_id, attempt, state, progress or 0.0,
                                 _bind(check, task_type))
                tx.run("set_progress", {"progress": progress or 0.0, "task_id": task_id})
            [done] = self._requeue_all(tx, [{"task_id": task_id, "attempt": attempt}],
                                       worker_id, cause, counts=False)
        return done

    def complete(self, worker_id: str, reports: Sequence[Report], on_commit: OnCommit = None,
                 watchers: Watchers | None = None) -> list[Outcome]:
        """Record reports in one durable transaction.

        Accepted only from the current (task, attempt, worker); the same report posted again
        is a duplicate; anything else is stale and changes nothing. A refused result fails
        its task with the reason. ``watchers`` may be handed the views of the tasks this
        finishes (before ``on_commit``); those it is not handed, they read.
        """
        if reports and all(r.error is None and r.refused is None for r in reports):
            outcomes = self._complete_at_once(worker_id, reports, watchers)
            if outcomes is not None:
                if on_commit is not None:
                    on_commit()
                return outcomes
        with self._write(on_commit=on_commit) as tx:
            outcomes, completed = self._record(tx, worker_id, reports)
            if completed:
                tx.run("worker_completed", {"worker_id": worker_id, "completed": completed,
                                            "now": tx.now})
            self._announce_due(tx)
        self._after_write(tx)
        return outcomes

    def _complete_at_once(self, worker_id: str, reports: Sequence[Report],
                          watchers: Watchers | None = None) -> list[Outcome] | None:
        """Record a batch of results (no errors) in one statement; None if the backend has no
        such statement. The same fenced move, result rows, checkpoint clean-up, worker count
        and wake-up as :meth:`_record`, with the state before read by the same statement, and
        the finished views of the watched tasks handed to ``watchers``."""
        if not self.AT_ONCE:
            return None
        firsts = list({r.task_id: r for r in reversed(reports)}.values())
        watched = set(watchers.watched()) if watchers is not None else set()
        with self._at_once() as tx:
            found = move(tx, Move.COMPLETE_AT_ONCE, {
                "worker_id": worker_id, "now": tx.now,
                "ids": tx.id_list([r.task_id for r in firsts]),
                "attempts": tx.id_list([r.attempt for r in firsts]),
                "results": [r.result_json for r in firsts],
                "watched": tx.id_list([r.task_id for r in firsts if r.task_id in watched]),
                "channel": Channel.FINISHED, "payload": self._hint(1)})
        if watchers is not None:
            results = {r.task_id: r.result_json for r in firsts}
            views = {row["task_id"]: task_view(
                {**json.loads(row["view"]), "result": results[row["task_id"]]},
                json.loads(row["view_history"] or "[]")) for row in found if row["view"]}
            if views:
                watchers.deliver(views)
        plan = _Plan(worker_id, {row["task_id"]: row for row in found})
        for report in reports:
            plan.add(report)
        outcomes: dict[int, OutcomeKind] = dict(plan.decided)
        _judge_results(plan.results, {row["task_id"] for row in found if row["moved"]}, outcomes)
        if plan.repeats:
            _judge_repeats(worker_id, plan, outcomes, {
                row["task_id"]: {"attempt": row["kept_attempt"], "worker_id": row["kept_worker"],
                                 "result": row["kept_result"]}
                for row in found if row["kept_attempt"] is not None})
        return [plan.outcome(r, outcomes, tx.now) for r in reports]

    def cancel(self, task_id: int) -> Task:
        """Cancel a task that has not finished; raise StaleLease if it already has."""
        with self._write() as tx:
            row = tx.one("task_lease", {"task_id": task_id})
            if row is None:
                raise NotFound(f"task {task_id} does not exist")
            if TaskStatus(row["status"]) in FINISHED:
                raise StaleLease(f"task {task_id} is already {row['status']}",
                                 code="already_finished")
            move(tx, Move.CANCEL, {"task_id": task_id, "now": tx.now})
            _add_events(tx, [_event(
                EventKind.CANCELLED.value, task_id, row["worker_id"], row["attempt"],
                TaskStatus.CANCELLED.value, None,
                f"cancelled by a user while {row['status']}"
                + (f" on {row['worker_id']}" if row["status"] == "in-progress" else ""))])
            tx.run("checkpoint_drop", {"task_id": task_id})
            self._notify(tx, Channel.FINISHED)
        return self.get_task(task_id)

    def retry(self, task_id: int, max_attempts: int, on_commit: OnCommit = None) -> Task:
        """Put a failed or cancelled task back in the queue, claimable at once.

        It gets ``max_attempts`` more attempts and its retries and crash streak start again;
        its attempt numbers go on (so reports of earlier attempts stay stale) and so does its
        ``attempts`` history. Raise StaleLease (code ``not_retryable``) for any other status.
        """
        with self._write(on_commit=on_commit) as tx:
            row = tx.one("task_lease", {"task_id": task_id})
            if row is None:
                raise NotFound(f"task {task_id} does not exist")
            moved = move(tx, Move.RERUN, {"task_id": task_id, "max_attempts": max_attempts,
                                          "now": tx.now, "cause": REQUEUE_MANUAL_RETRY})
            if not moved:
                raise StaleLease(f"task {task_id} is {row['status']}: only a failed or "
                                 "cancelled task can be retried", code="not_retryable")
            tx.run("counter_add", {"name": "manual_retries", "value": 1})
            _add_events(tx, [_event(
                EventKind.RETRIED.value, task_id, None, row["attempt"], TaskStatus.PENDING.value,
                moved[0]["progress"], f"put back in the queue by a user after it was "
                f"{row['status']}, with {max_attempts} more attempts")])
            self._notify(tx, Channel.TASKS)
        return self.get_task(task_id)

    # -- delayed tasks and schedules ----------------------------------------------------------

    def promote_due(self) -> int:
        """Make every delayed task whose ``run_after`` has come claimable; how many.

        Judged by the store's clock (the database's with PostgreSQL), in one statement over
        ``tasks_due_idx``; other dispatchers are told (NOTIFY) so their long polls wake too.
        """
        with self._write(durable=False) as tx:
            count = len(tx.all("due_promote", {"now": tx.now}))
            self._notify(tx, Channel.TASKS, count)
        return count

    def due_times(self) -> tuple[float | None, float | None, float]:
        """(earliest ``run_after`` of a delayed task, earliest schedule, now): one read."""
        with self._read() as tx:
            task, schedule = tx.one("due_next"), tx.one("schedule_next")
        return (task["at"] if task is not None else None,
                schedule["at"] if schedule is not None else None, tx.now)

    def next_due(self) -> float | None:
        """The earliest time a delayed task comes due or a schedule fires, or None."""
        times = [at for at in self.due_times()[:2] if at is not None]
        return min(times) if times else None

    def fire_schedules(self, next_run: Callable[[Row, float], float]) -> list[int]:
        """Submit one task for every schedule that is due; the ids of the tasks created.

        Each schedule is advanced to ``next_run(row, now)`` in the same transaction that
        inserts its task, by a conditional update (the row must still show the time it was
        read with), and the task's idempotency key names the schedule and the period: a
        period fires once however many dispatchers share the database (PostgreSQL: a due
        schedule is locked by one of them, the others skip it).
        """
        created: list[int] = []
        with self._write() as tx:
            for row in tx.all("schedules_due", {"now": tx.now}):
                due = row["next_run_at"]
                task = NewTask(row["task_type"], json.loads(row["params"]), row["priority"],
                               row["max_attempts"], f"schedule:{row['schedule_id']}:{due!r}",
                               row["max_retries"], row["retry_backoff"], row["timeout_seconds"])
                task_id, new = _insert_keyed(tx, _task_row(task, tx.now))
                advanced = tx.one("schedule_advance", {
                    "schedule_id": row["schedule_id"], "due": due, "task_id": task_id,
                    "next": next_run(row, tx.now)})
                if new and advanced is not None:
                    created.append(task_id)
            self._notify(tx, Channel.TASKS, len(created))
        return created

    def add_schedule(self, spec: Mapping[str, Any], first_run: Callable[[float], float]
                     ) -> dict[str, Any]:
        """Store a schedule (``spec``: the schedules columns); it first fires at
        ``first_run(now)``. Its row as a dict."""
        with self._write() as tx:
            at = first_run(tx.now)
            row = tx.one("schedule_insert", {**spec, "params": dumps(spec["params"]),
                                             "next_run_at": at, "now": tx.now})
            tx.delay_until(at)
            self._announce_due(tx)
        self._after_write(tx)
        return self.get_schedule(row["schedule_id"])

    def get_schedule(self, schedule_id: int) -> dict[str, Any]:
        """One schedule's row as a dict; raise NotFound."""
        with self._read() as tx:
            row = tx.one("schedule_get", {"schedule_id": schedule_id})
        if row is None:
            raise NotFound(f"schedule {schedule_id} does not exist")
        return _schedule_view(row)

    def list_schedules(self) -> list[dict[str, Any]]:
        """Every schedule, oldest first."""
        with self._read() as tx:
            return [_schedule_view(row) for row in tx.all("schedule_list")]

    def delete_schedule(self, schedule_id: int) -> None:
        """Stop a schedule (tasks it already submitted stay); raise NotFound."""
        with self._write() as tx:
            if tx.one("schedule_delete", {"schedule_id": schedule_id}) is None:
                raise NotFound(f"schedule {schedule_id} does not exist")

    def cancel_group(self, group_id: int) -> Group:
        """Cancel every unfinished part of a split job (none left: nothing changes)."""
        with self._write() as tx:
            if tx.one("group_get", {"group_id": group_id}) is None:
                raise NotFound(f"group {group_id} does not exist")
            unfinished = tx.all("group_unfinished", {"group_id": group_id})
            for row in unfinished:
                move(tx, Move.CANCEL, {"task_id": row["task_id"], "now": tx.now})
            if unfinished:
                tx.run("checkpoints_drop",
                       {"ids": tx.id_list([row["task_id"] for row in unfinished])})
                self._notify(tx, Channel.FINISHED)
        return self.get_group(group_id)

    # -- retention ----------------------------------------------------------------------------

    def purge_finished(self, ttl_seconds: float, batch: int) -> int:
        """Delete up to ``batch`` tasks finished more than ``ttl_seconds`` ago; how many.

        One short transaction: the tasks with their results, checkpoints, failed-attempt
        history and idempotency keys, oldest first. A part of a split job goes only with all
        its group's parts, once every one of them finished before the cut-off; the group row
        goes with its last part.
        Unfinished tasks are never touched, so claims never wait on a purge.
        """
        with self._write(durable=False) as tx:
            rows = tx.all("purge_candidates", {"before": tx.now - ttl_seconds, "limit": batch})
            if rows:
                ids = tx.id_list([row["task_id"] for row in rows])
                tx.run("purge_results", {"ids": ids})
                tx.run("purge_checkpoints", {"ids": ids})
                tx.run("purge_attempts", {"ids": ids})  # its history (no foreign key)
                tx.run("purge_tasks", {"ids": ids})
                groups = sorted({row["group_id"] for row in rows if row["group_id"] is not None})
                if groups:
                    tx.run("purge_groups", {"ids": tx.id_list(groups)})
        return len(rows)

    # -- the heartbeat monitor's sweep --------------------------------------------------------

    def sweep(self, heartbeat_timeout: float, lease_seconds: float, gap_seconds: float,
              events_kept: int = 1000) -> Swept:
        """One monitor pass over the whole cluster, at most one dispatcher at a time.

        If nobody swept for more than ``gap_seconds`` (every dispatcher was down or cut off
        from the database), workers could not heartbeat either: the cluster "resumes", every
        lease restarts from now, and nobody is declared dead until a full timeout after the
        resumption. Then workers silent for ``heartbeat_timeout`` are dead (their tasks
        requeued) and expired leases are requeued. First, whatever the lock says, the
        heartbeats this dispatcher answered from reads since the last sweep are written.
        Last, the events timeline is trimmed to its newest ``events_kept`` rows.
        """
        self._flush_beats()
        with self._write(durable=False) as tx:
            if not self._sweep_lock(tx):
                return Swept(False, [], None)
            resumed_at = self._resume_if_gap(tx, lease_seconds, gap_seconds)
            reclaimed: list[Reclaim] = []
            if tx.now - heartbeat_timeout >= resumed_at:
                reclaimed += self._reap_dead(tx, tx.now - heartbeat_timeout)
            for row in tx.all("expired_leases", {"now": tx.now}):
                reclaimed += self._requeue_all(tx, [row], row["worker_id"],
                                               ReclaimCause.EXPIRED_LEASE)
            reclaimed += self._time_out(tx)
            self._compact(tx)
            tx.run("events_trim", {"keep": events_kept})
        return Swept(True, reclaimed, resumed_at)

    def _flush_beats(self) -> None:
        """Write the heartbeats answered from reads since the last sweep (one transaction)."""
        if self._beats.pending():
            with self._write(durable=False) as tx:
                self._beats.flush(tx)

    def _resume_if_gap(self, tx: Tx, lease_seconds: float, gap_seconds: float) -> float:
        state = {row["name"]: row["value"] for row in tx.all("cluster_get")}
        last, resumed_at = state.get("last_sweep_at"), state.get("resumed_at", tx.now)
        if last is None or tx.now - last > gap_seconds:
            resumed_at = tx.now
            tx.run("extend_leases", {"until": tx.now + lease_seconds})
            if last is not None:
                log.warning("no dispatcher swept for %.1f s: leases restarted, liveness judged "
                            "from now on", tx.now - last)
            tx.run("cluster_put", {"name": "resumed_at", "value": resumed_at})
        tx.run("cluster_put", {"name": "last_sweep_at", "value": tx.now})
        return resumed_at

    def _time_out(self, tx: Tx) -> list[Reclaim]:
        """Fail every attempt that has run past its ``timeout_seconds`` (not retried).

        Its worker learns it from its next heartbeat or checkpoint (the lease is gone) and
        stops the task there; a task that never checkpoints is killed by its worker.
        """
        ended: list[Reclaim] = []
        events: list[dict[str, Any]] = []
        for row in tx.all("timed_out", {"now": tx.now}):
            error = f"timed out after {row['timeout_seconds']:g} s"
            moved = move(tx, Move.TIME_OUT, {"task_id": row["task_id"],
                                             "attempt": row["attempt"], "error": error,
                                             "now": tx.now})
            if moved:
                _note_attempt(tx, row["task_id"], row["attempt"], row["worker_id"],
                              AttemptKind.TIMEOUT, error)
                ended.append(Reclaim(row["task_id"], row["worker_id"], row["attempt"],
                                     ReclaimCause.TIMED_OUT, True, moved[0]["task_type"]))
                events.append(_event(
                    EventKind.TIMED_OUT.value, row["task_id"], row["worker_id"], row["attempt"],
                    TaskStatus.FAILED.value, moved[0]["progress"],
                    f"{error} (timeout_seconds); failed, not retried"))
        _add_events(tx, events)
        if ended:
            tx.run("counter_add", {"name": ReclaimCause.TIMED_OUT.value, "value": len(ended)})
            self._notify(tx, Channel.FINISHED)
        return ended

    def _reap_dead(self, tx: Tx, silent_since: float) -> list[Reclaim]:
        reclaimed: list[Reclaim] = []
        for row in tx.all("workers_silent", {"silent_since": silent_since}):
            worker_id = row["worker_id"]
            _add_events(tx, [_event(
                EventKind.WORKER_DEAD.value, None, worker_id, None, WorkerStatus.DEAD.value, None,
                f"no heartbeat for {tx.now - row['last_heartbeat']:.1f} s")])
            held = tx.all("held_by_worker", {"worker_id": worker_id})
            reclaimed += self._requeue_all(tx, held, worker_id, ReclaimCause.DEAD_WORKER)
            tx.run("worker_mark", {"status": WorkerStatus.DEAD.value, "worker_id": worker_id})
        return reclaimed

    # -- reads --------------------------------------------------------------------------------

    def get_task(self, task_id: int) -> Task:
        """The task's view; raise NotFound."""
        with self._read() as tx:
            row = tx.one("task_view", {"task_id": task_id})
            if row is None:
                raise NotFound(f"task {task_id} does not exist")
            if "history" in row.keys():  # PostgreSQL's view carries it, as JSON: no 2nd query
                history = json.loads(row["history"] or "[]")
            else:
                history = tx.all("attempts_of", {"task_id": task_id})
        return task_view(row, history)

    def list_tasks(self, query: TaskQuery) -> TaskPage:
        """One page of tasks, newest first, filtered; every query walks one index.

        Each status asked for is one index walk (``(status, task_id)``, or
        ``(task_type, status, task_id)`` with a type, or ``(owner, task_id)`` for one client's
        tasks), merged here; a time range becomes a range of ids first (ids are handed out in
        creation order), so a page never scans the tasks outside it.
        """
        with self._read() as tx:
            params = _page_params(tx, query)
            if params is None:
                return TaskPage([], None)
            rows = [row for name, extra in _page_queries(query)
                    for row in tx.all(name, {**params, **extra})]
        rows.sort(key=lambda row: row["task_id"], reverse=True)
        tasks = [Task.from_row(row) for row in rows[:query.limit]]
        more = len(rows) > query.limit
        return TaskPage(tasks, tasks[-1].task_id if more and tasks else None)

    def group_owner(self, group_id: int) -> str | None:
        """The id of the token that submitted a split job (None: auth was off); NotFound."""
        with self._read() as tx:
            row = tx.one("group_get", {"group_id": group_id})
        if row is None:
            raise NotFound(f"group {group_id} does not exist")
        return row["owner"]

    def groups_of(self, task_ids: Sequence[int]) -> list[int]:
        """The split jobs these tasks are parts of."""
        with self._read() as tx:
            rows = tx.all("groups_of", {"ids": tx.id_list(sorted(set(task_ids)))})
        return [row["group_id"] for row in rows]

    def get_group(self, group_id: int) -> Group:
        """A split job with its parts; raise NotFound."""
        with self._read() as tx:
            row = tx.one("group_get", {"group_id": group_id})
            parts = tx.all("group_parts", {"group_id": group_id}) if row is not None else []
        if row is None:
            raise NotFound(f"group {group_id} does not exist")
        return Group.from_rows(row, parts)

    # -- credentials --------------------------------------------------------------------------

    def add_token(self, token_id: str, secret_hash: str, role: str, worker_id: str | None
                  ) -> None:
        """Store a new credential (only the hash of its secret)."""
        with self._write() as tx:
            tx.run("token_put", {"token_id": token_id, "secret_hash": secret_hash,
                                 "role": role, "worker_id": worker_id, "now": tx.now})

    def token(self, token_id: str) -> dict[str, Any] | None:
        """A stored credential's row (id, secret_hash, role, worker_id, created_at,
        revoked_at), or None."""
        with self._read() as tx:
            row = tx.one("token_get", {"token_id": token_id})
        return dict(row) if row is not None else None

    def tokens(self) -> list[dict[str, Any]]:
        """Every stored credential, oldest first."""
        with self._read() as tx:
            return [dict(row) for row in tx.all("tokens_all")]

    def revoke_token(self, token_id: str) -> bool:
        """Revoke a credential; False when there is no such unrevoked token."""
        with self._write() as tx:
            return tx.one("token_revoke", {"token_id": token_id, "now": tx.now}) is not None

    def stats(self, window_seconds: float = 60.0) -> dict[str, Any]:
        """Counts per status, workers, throughput over the window, counters; and ``now``."""
        with self._read() as tx:
            counts = {s.value: 0 for s in TaskStatus}
            for row in tx.all("status_counts"):
                counts[row["status"]] = int(row["n"])
            finished = tx.one("finished_since", {"since": tx.now - window_seconds})
            held = [dict(row) for row in tx.all("in_progress_all")]
            workers = [self._beats.merged(dict(row)) for row in tx.all("workers_all")]
            counters = {row["name"]: int(row["value"]) for row in tx.all("counters_all")}
            cluster = {row["name"]: row["value"] for row in tx.all("cluster_get")}
        return {"now": tx.now, "counts": counts, "completed_last_window": int(finished["n"]),
                "workers": workers, "held": held, "counters": counters, "cluster": cluster}

    def events(self, after: int | None, limit: int, task_id: int | None = None) -> list[Event]:
        """Timeline events in order: those after id ``after``, or else the newest ``limit``."""
        params = {"after": after, "limit": limit, "task_id": task_id}
        with self._read() as tx:
            rows = tx.all("events_latest" if after is None else "events_after", params)
        return [Event.from_row(row) for row in rows]

    def latest_checkpoint(self, task_id: int) -> Checkpoint | None:
        """The task's latest accepted checkpoint (None when it has none); NotFound if no task."""
        with self._read() as tx:
            if tx.one("task_lease", {"task_id": task_id}) is None:
                raise NotFound(f"task {task_id} does not exist")
            row = tx.one("checkpoint_get", {"task_id": task_id})
        return Checkpoint.from_row(row) if row is not None else None

    def dashboard(self, since: float, bucket_seconds: float, rows: int, worker_rows: int
                  ) -> dict[str, Any]:
        """What the dashboard shows, from bounded reads: none scans the whole task table.

        Counts per status (kept by triggers), workers (at most ``worker_rows``, live ones
        first) with their lease counts, the in-progress, next pending and last finished tasks
        (at most ``rows`` each, by index; the pending ones are those claimable now), the
        delayed tasks (pending until their ``run_after``; counted up to ``DELAYED_COUNTED``),
        tasks finished since ``since`` per bucket of ``bucket_seconds`` (by the finished-time
        index), counters and the newest events.
        """
        limit = {"limit": rows}
        with self._read() as tx:
            counts = {s.value: 0 for s in TaskStatus}
            for row in tx.all("status_counts"):
                counts[row["status"]] = int(row["n"])
            found: dict[str, Any] = {name: [dict(row) for row in tx.all(name, limit)] for name in
                                     ("dash_running", "dash_pending", "dash_recent")}
            workers = [self._beats.merged(dict(row))
                       for row in tx.all("dash_workers", {"limit": worker_rows})]
            found.update(
                now=tx.now, counts=counts, workers=workers,
                worker_counts={r["status"]: int(r["n"]) for r in tx.all("dash_worker_counts")},
                held={r["worker_id"]: int(r["n"]) for r in tx.all("dash_held_counts")},
                buckets=[dict(row) for row in tx.all(
                    "dash_buckets", {"since": since, "bucket": bucket_seconds})],
                counters={row["name"]: int(row["value"]) for row in tx.all("counters_all")},
                delayed=int(tx.one("dash_delayed", {"limit": DELAYED_COUNTED})["n"]),
                events=[Event.from_row(row) for row in tx.all(
                    "events_latest", {"task_id": None, "limit": rows})])
        return found

    def gauges(self) -> dict[str, Any]:
        """What /metrics reads from the database, in one read transaction of indexed reads.

        Tasks per status (the trigger-kept counts), the reclaim counters, every worker's
        row (with heartbeats not yet written), when the oldest pending task was submitted
        (None: none pending), and ``now`` (the store's clock). Never scans the tasks table.
        """
        with self._read() as tx:
            counts = {s.value: 0 for s in TaskStatus}
            for row in tx.all("status_counts"):
                counts[row["status"]] = int(row["n"])
            counters = {row["name"]: int(row["value"]) for row in tx.all("counters_all")}
            workers = [self._beats.merged(dict(row)) for row in tx.all("workers_all")]
            oldest = tx.one("oldest_pending")
        return {"now": tx.now, "counts": counts, "counters": counters, "workers": workers,
                "oldest_pending_at": oldest["created_at"] if oldest is not None else None}

    # -- helpers inside transactions ----------------------------------------------------------

    def _record(self, tx: Tx, worker_id: str, reports: Sequence[Report]
                ) -> tuple[list[Outcome], int]:
        """Record reports with a handful of set-based statements; outcomes, and results stored.

        A report is accepted only from the current holder (task, attempt, worker), checked by
        the statement that moves the task, so a concurrent reclaim on another dispatcher can
        never let a stale report through.
        """
        if not reports:
            return [], 0
        ids = tx.id_list(sorted({report.task_id for report in reports}))
        # The state before, and the results' tasks completed (fenced), in one round trip.
        results = [r for r in reports if r.error is None and r.refused is None]
        found, moved_rows = move_after_read(tx, "task_leases", {"ids": ids}, Move.COMPLETE, {
            "worker_id": worker_id, "now": tx.now,
            "ids": tx.id_list([r.task_id for r in results]),
            "attempts": tx.id_list([r.attempt for r in results])})
        plan = _Plan(worker_id, {row["task_id"]: row for row in found})
        for report in reports:
            plan.add(report)
        outcomes: dict[int, OutcomeKind] = dict(plan.decided)
        completed = self._store_results(tx, worker_id, plan.results,
                                        {row["task_id"] for row in moved_rows}, outcomes)
        for report in plan.errors:
            if _retry(tx, worker_id, report, plan.rows[report.task_id], self.MAX_RETRY_DELAY):
                plan.retried.add(report.task_id)
                outcomes[id(report)] = OutcomeKind.ACCEPTED
            else:
                outcomes[id(report)] = _fail(tx, worker_id, report)
        if plan.retried:
            tx.run("counter_add", {"name": "retries", "value": len(plan.retried)})
        moved = [r.task_id for r in plan.results + plan.errors
                 if outcomes[id(r)] in (OutcomeKind.ACCEPTED, OutcomeKind.REFUSED)
                 and r.task_id not in plan.retried]
        if moved:
            tx.run("checkpoints_drop", {"ids": tx.id_list(moved)})
            self._notify(tx, Channel.FINISHED)
        if plan.repeats:
            ids = tx.id_list(sorted({r.task_id for r in plan.repeats}))
            _judge_repeats(worker_id, plan, outcomes, {
                row["task_id"]: row for row in tx.all("results_of", {"ids": ids})})
        return [plan.outcome(r, outcomes, tx.now) for r in reports], completed

    def _store_results(self, tx: Tx, worker_id: str, results: list[Report], moved: set[int],
                       outcomes: dict[int, OutcomeKind]) -> int:
        """Store the results whose task the fenced move completed; the others are stale."""
        stored = [r for r in results if r.task_id in moved]
        tx.many("result_put", [{"task_id": r.task_id, "attempt": r.attempt,
                                "worker_id": worker_id, "result": r.result_json, "now": tx.now}
                               for r in stored])
        _judge_results(results, moved, outcomes)
        return len(stored)

    def _requeue_all(self, tx: Tx, held: Sequence[Row], worker_id: str | None,
                     cause: ReclaimCause, counts: bool = True) -> list[Reclaim]:
        """Requeue each held (task_id, attempt) still at that attempt.

        ``counts`` says whether the attempt counts as used: if so, a task that has used its
        last attempt is failed instead (given up), with the cause in its error.
        """
        reclaimed, events, loops = [], [], 0
        crash = counts and cause.crash
        limit = self.crash_loop_limit
        for row in held:
            params = {"task_id": row["task_id"], "attempt": row["attempt"], "now": tx.now,
                      "cause": cause.value,
                      "error": f"gave up after {row['attempt']} attempts (last: {cause.value})",
                      "crash": 1 if crash else 0}
            # A crash loop: K workers killed in a row without the checkpoint advancing.
            looped = move(tx, Move.QUARANTINE, {
                **params, "limit": limit,
                "error": f"crash loop: killed {limit} workers at the same checkpoint"}
            ) if crash else []
            moved = looped or (move(tx, Move.GIVE_UP, params) if counts else [])
            given_up = bool(moved)
            moved = moved or move(tx, Move.REQUEUE, params)
            if moved:
                reclaimed.append(Reclaim(row["task_id"], worker_id, row["attempt"], cause,
                                         given_up, moved[0]["task_type"]))
                loops += bool(looped)
                if crash:
                    _note_attempt(tx, row["task_id"], row["attempt"], worker_id,
                                  AttemptKind.CRASH, f"crash: {cause.value}")
                if looped:
                    events.append(_crash_loop_event(reclaimed[-1], moved[0]["progress"], limit))
                elif cause is not ReclaimCause.RETURNED:  # prefetch bookkeeping, not news
                    events.append(_reclaim_event(reclaimed[-1], moved[0]["progress"]))
        _add_events(tx, events)
        if loops:
            tx.run("counter_add", {"name": "crash_loops", "value": loops})
        if reclaimed:
            tx.run("counter_add", {"name": cause.value, "value": len(reclaimed)})
            requeued = sum(1 for r in reclaimed if not r.failed)
            if requeued:
                self._notify(tx, Channel.TASKS, requeued)
            if requeued < len(reclaimed):
                self._notify(tx, Channel.FINISHED)
        return reclaimed


# -- helpers used inside transactions (backend-independent) --------------------------------------


def _event(kind: str, task_id: int | None, worker_id: str | None, attempt: int | None,
           status: str | None, progress: float | None, detail: str) -> dict[str, Any]:
    """The parameters of one ``event_add`` row (its time is the transaction's)."""
    return {"kind": kind, "task_id": task_id, "worker_id": worker_id, "attempt": attempt,
            "status": status, "progress": progress, "detail": detail}


def _add_events(tx: Tx, events: list[dict[str, Any]]) -> None:
    """Record timeline events in the transaction of what they record."""
    tx.many("event_add", [{**event, "now": tx.now} for event in events])


def _reclaim_event(reclaim: Reclaim, progress: float) -> dict[str, Any]:
    after = (f"failed: out of attempts after attempt {reclaim.attempt}" if reclaim.failed
             else "back to the queue")
    status = TaskStatus.FAILED if reclaim.failed else TaskStatus.PENDING
    words = RECLAIM_WORDS.get(reclaim.cause, reclaim.cause.value.replace("_", " "))
    return _event(reclaim.cause.value, reclaim.task_id, reclaim.worker_id, reclaim.attempt,
                  status.value, progress, f"{words}; {after}")


def _crash_loop_event(reclaim: Reclaim, progress: float, limit: int) -> dict[str, Any]:
    words = RECLAIM_WORDS.get(reclaim.cause, reclaim.cause.value.replace("_", " "))
    return _event(EventKind.CRASH_LOOP.value, reclaim.task_id, reclaim.worker_id,
                  reclaim.attempt, TaskStatus.FAILED.value, progress,
                  f"{words}; failed as a crash loop: {limit} workers in a row lost it "
                  "without its checkpoint advancing")


def _note_resumed(tx: Tx, worker_id: str, leases: Sequence[Lease], claimed: set[int]) -> None:
    """A timeline event for each newly claimed task that an earlier attempt had started."""
    events = []
    for lease in leases:
        if lease.task_id not in claimed or lease.attempt <= 1:
            continue
        cp = lease.checkpoint
        detail = (f"attempt {lease.attempt} resumes from its checkpoint at {cp.progress:.0%}"
                  if cp is not None else f"attempt {lease.attempt} starts over (no checkpoint)")
        events.append(_event(EventKind.RESUMED.value, lease.task_id, worker_id, lease.attempt,
                             TaskStatus.IN_PROGRESS.value, cp.progress if cp else 0.0, detail))
    _add_events(tx, events)


def _task_row(task: NewTask, now: float) -> dict[str, Any]:
    run_after = task.run_at
    if task.delay_seconds is not None:
        run_after = now + task.delay_seconds
    if run_after is not None and run_after <= now:
        run_after = None  # due already: claimable at once
    return {"task_type": task.task_type, "params": dumps(task.params),
            "priority": task.priority, "max_attempts": task.max_attempts,
            "idempotency_key": task.idempotency_key, "now": now,
            "max_retries": task.max_retries, "retry_backoff": task.retry_backoff,
            "timeout_seconds": task.timeout_seconds, "run_after": run_after,
            "owner": task.owner, "request_hash": task.request_hash, "group_id": task.group_id}


def task_view(row: Any, history: Sequence[Any]) -> Task:
    """A task's view from its row (the ``tasks`` columns plus ``result``) and attempt rows."""
    attempts = tuple({"attempt": h["attempt"], "worker_id": h["worker_id"], "kind": h["kind"],
                      "error": h["error"], "at": h["at"]} for h in history)
    return dataclasses.replace(Task.from_row(row), attempts=attempts)


def task_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Task rows as one list per column: the parameters of an insert of many rows at once."""
    return {"task_types": [r["task_type"] for r in rows], "params": [r["params"] for r in rows],
            "priorities": [r["priority"] for r in rows],
            "max_attempts": [r["max_attempts"] for r in rows], "nows": [r["now"] for r in rows],
            "max_retries": [r["max_retries"] for r in rows],
            "retry_backoffs": [r["retry_backoff"] for r in rows],
            "timeouts": [r["timeout_seconds"] for r in rows],
            "run_afters": [r["run_after"] for r in rows], "owners": [r["owner"] for r in rows],
            "group_ids": [r["group_id"] for r in rows]}


def retry_delay(backoff: float, retries: int, cap: float,
                rand: Callable[[], float] = random.random) -> float:
    """Seconds before retry number ``retries + 1``: exponential with "equal jitter".

    ``backoff * 2**retries``, capped, of which a random half is kept: retries of many tasks
    that failed together (a dependency down) spread out instead of coming back at once.
    """
    full = min(cap, backoff * 2 ** min(retries, 60))
    return full / 2 + rand() * full / 2


def _retry(tx: Tx, worker_id: str, report: Report, row: Row, cap: float) -> bool:
    """Requeue an errored attempt after a backoff, if it has retries (and attempts) left."""
    if report.refused is not None or report.final:
        return False
    if row["retries"] >= row["max_retries"] or row["attempt"] >= row["max_attempts"]:
        return False
    run_after = tx.now + retry_delay(row["retry_backoff"], row["retries"], cap)
    moved = move(tx, Move.RETRY, {"task_id": report.task_id, "attempt": report.attempt,
                                  "worker_id": worker_id, "error": report.error,
                                  "run_after": run_after, "cause": REQUEUE_RETRY})
    if not moved:
        return False
    _note_attempt(tx, report.task_id, report.attempt, worker_id, AttemptKind.ERROR,
                  report.error or "")
    _add_events(tx, [_event(
        EventKind.RETRY.value, report.task_id, worker_id, report.attempt,
        TaskStatus.PENDING.value, moved[0]["progress"],
        f"raised: {_clip(report.error or '')}; retry {moved[0]['retries']} of "
        f"{row['max_retries']} in {run_after - tx.now:.1f} s")])
    tx.delay_until(run_after)
    return True


def _clip(text: str, most: int = 200) -> str:
    """The first line of ``text``, at most ``most`` characters (for an event's detail)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= most else line[:most - 1] + "…"


def _note_attempt(tx: Tx, task_id: int, attempt: int, worker_id: str | None,
                  kind: AttemptKind, error: str) -> None:
    """Add one failed attempt to the task's history (shown by ``GET /task/<id>``)."""
    tx.run("attempt_put", {"task_id": task_id, "attempt": attempt, "worker_id": worker_id,
                           "kind": kind.value, "error": error, "now": tx.now})


def _schedule_view(row: Row) -> dict[str, Any]:
    view = {key: row[key] for key in row.keys()}
    view["params"] = json.loads(view["params"])
    return view


DELAYED_COUNTED = 10_000
"""The dashboard counts delayed tasks up to this many (a bounded read of tasks_due_idx)."""
NO_ID_ABOVE = 2**63 - 1
FAR_PAST, FAR_FUTURE = -1e300, 1e300


def _page_params(tx: Tx, query: TaskQuery) -> dict[str, Any] | None:
    """The bounds of a page's walk; None when the time range holds no task at all."""
    before_id, min_id = query.before_id or NO_ID_ABOVE, 0
    if query.created_before is not None:
        row = tx.one("last_id_created_before", {"at": query.created_before})
        if row is None:
            return None
        before_id = min(before_id, row["task_id"] + 1)
    if query.created_after is not None:
        row = tx.one("first_id_created_from", {"at": query.created_after})
        if row is None:
            return None
        min_id = row["task_id"]
    return {"before_id": before_id, "min_id": min_id, "limit": query.limit + 1,
            "after": FAR_PAST if query.created_after is None else query.created_after,
            "before": FAR_FUTURE if query.created_before is None else query.created_before}


def _page_queries(query: TaskQuery) -> list[tuple[str, dict[str, Any]]]:
    """The named queries of a page, one per index walk, with their own parameters."""
    statuses = query.statuses
    if query.owner is not None:  # a client's own tasks: its (owner, task_id) walk
        return [("task_page_owner", {"owner": query.owner, "task_type": query.task_type,
                                     "status": s.value if s else None})
                for s in statuses or (None,)]
    if query.task_type is not None:
        return [("task_page_type_status", {"task_type": query.task_type, "status": s.value})
                for s in statuses or tuple(TaskStatus)]
    if statuses:
        return [("task_page_status", {"status": s.value}) for s in statuses]
    return [("task_page", {})]


def _insert_keyed(tx: Tx, row: dict[str, Any]) -> tuple[int, bool]:
    """Insert unless the key is taken (atomically: another dispatcher may be inserting it).

    A taken key answers its task only for the same request: a different one (its hash
    differs) raises IdempotencyConflict, which rolls the whole submission back.
    """
    inserted = tx.one("insert_task", row)
    if inserted is not None:
        return inserted["task_id"], True
    found = tx.one("task_by_key", {"key": row["idempotency_key"]})
    _same_request(found["request_hash"], row["request_hash"], f"task {found['task_id']}")
    return found["task_id"], False


def _same_request(stored: str | None, asked: str | None, what: str) -> None:
    """Raise IdempotencyConflict when a key's stored request hash differs from this one's."""
    if stored is not None and asked is not None and stored != asked:
        raise IdempotencyConflict(
            f"{what} was submitted under this idempotency key with a different request")


def _check_pending(tx: Tx, owner: str, cap: int, adding: int) -> None:
    """Raise QuotaExceeded when ``owner`` would have more than ``cap`` pending tasks."""
    pending = int(tx.one("owner_pending", {"owner": owner, "cap": cap + 1})["n"])
    if pending + adding > cap:
        raise QuotaExceeded(
            f"{pending} tasks of this client are pending; at most {cap} may be "
            "(MAX_PENDING_PER_CLIENT)")


def _look_in(tx: Tx, worker_id: str, instance_id: str | None) -> Look:
    return _look_from(tx.one("worker_idle", {"worker_id": worker_id}), instance_id, tx.now)


def _look_from(row: Row | None, instance_id: str | None, at: float) -> Look:
    if row is None or instance_id is None:
        return Look(False, True, 1 if instance_id is not None else 0, at)
    return Look(_alive_as(row, instance_id), bool(row["pending"]), int(row["leased"]), at)


def _claim_params(tx: Tx, worker_id: str, instance_id: str | None, limit: int,
                  lease_seconds: float) -> dict[str, Any]:
    return {"worker_id": worker_id, "instance_id": instance_id, "now": tx.now,
            "lease_expires_at": tx.now + lease_seconds, "limit": max(0, limit)}


class _NotAtOnce(Exception):
    """A claim tried at once found the worker needs the ordinary path (rolled back)."""


def _alive_as(row: Row, instance_id: str) -> bool:
    """True when a ``workers`` row is alive and registered as this very instance."""
    return row["instance_id"] == instance_id and row["status"] == WorkerStatus.ALIVE.value


class Beats:
    """Heartbeats answered from reads, kept until the next sweep writes them in one go.

    Each worker's latest time (the store's clock at the read) is kept; written with
    ``MAX(last_heartbeat, ...)`` so a flush never moves a heartbeat back.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}

    def seen(self, worker_id: str, at: float) -> None:
        """Note a sign of life of ``worker_id`` at ``at``."""
        with self._lock:
            if at > self._seen.get(worker_id, 0.0):
                self._seen[worker_id] = at

    def pending(self) -> bool:
        """True when some sign of life waits to be written."""
        with self._lock:
            return bool(self._seen)

    def flush(self, tx: Tx) -> None:
        """Write every noted sign of life (to workers still alive) inside ``tx``."""
        with self._lock:
            seen, self._seen = self._seen, {}
        tx.many("worker_seen", [{"worker_id": w, "at": at} for w, at in sorted(seen.items())])

    def merged(self, row: dict[str, Any]) -> dict[str, Any]:
        """A ``workers`` row with its not yet written heartbeat applied."""
        with self._lock:
            at = self._seen.get(row["worker_id"])
        if at is not None and at > row["last_heartbeat"]:
            row["last_heartbeat"] = at
        return row


def _not_held(tx: Tx, held: Sequence[Held], worker_id: str) -> list[int]:
    """The listed task ids that are not (or no longer) this worker's lease: one query for all."""
    if not held:
        return []
    ids = tx.id_list(sorted({task_id for task_id, _ in held}))
    rows = {row["task_id"]: row for row in tx.all("task_leases", {"ids": ids})}
    return [task_id for task_id, attempt in held
            if not _is_lease(rows.get(task_id), attempt, worker_id)]


def _is_lease(row: Row | None, attempt: int, worker_id: str) -> bool:
    return (row is not None and row["status"] == TaskStatus.IN_PROGRESS.value
            and row["attempt"] == attempt and row["worker_id"] == worker_id)


def _require_holder(tx: Tx, task_id: int, attempt: int, worker_id: str) -> str:
    """Raise NotFound/StaleLease unless the worker holds the task; return its task type."""
    row = tx.one("task_lease", {"task_id": task_id})
    if row is None:
        raise NotFound(f"task {task_id} does not exist")
    if not (row["status"] == TaskStatus.IN_PROGRESS.value and row["attempt"] == attempt
            and row["worker_id"] == worker_id):
        raise StaleLease(
            f"task {task_id} attempt {attempt} is not held by {worker_id} "
            f"(task is {row['status']} at attempt {row['attempt']} by {row['worker_id']})")
    return row["task_type"]


def _bind(check: CheckpointCheck | None, task_type: str
          ) -> Callable[[dict[str, Any], dict[str, Any] | None], None] | None:
    if check is None:
        return None
    return lambda state, previous: check(task_type, state, previous)


def _save_checkpoint(
    tx: Tx, worker_id: str, task_id: int, attempt: int, state: dict[str, Any], progress: float,
    check: Callable[[dict[str, Any], dict[str, Any] | None], None] | None,
) -> None:
    previous = tx.one("checkpoint_get", {"task_id": task_id})
    if previous is not None and progress < previous["progress"] - 1e-9:
        raise InvalidCheckpoint(
            "progress", f"goes back from {previous['progress']} to {progress} (task {task_id})")
    if check is not None:
        check(state, json.loads(previous["state"]) if previous is not None else None)
    tx.run("checkpoint_put", {"task_id": task_id, "attempt": attempt, "worker_id": worker_id,
                              "state": dumps(state), "progress": progress, "now": tx.now})


def _lost_claims(tx: Tx, worker_id: str, instance_id: str | None) -> list[Row]:
    """Tasks still leased to this worker instance when it claims again: handed back as they are.

    A worker claims only when it holds nothing and reports every finished result with the
    claim, so such a lease is one whose answer was lost (e.g. the dispatcher was killed after
    committing it). Same attempt, same lease: no work is redone, nothing is reassigned.
    """
    if instance_id is None:
        return []
    rows = tx.all("leased_to_instance", {"worker_id": worker_id, "instance_id": instance_id})
    for row in rows:
        log.warning("re-delivering task %s (attempt %s) to worker %s: its claim answer was lost",
                    row["task_id"], row["attempt"], worker_id,
                    extra=task_fields(row["task_id"], worker_id, row["attempt"]))
    if rows:
        tx.run("counter_add", {"name": "redelivered", "value": len(rows)})
    return rows


def _leases(tx: Tx, rows: Sequence[Row], lease_seconds: float) -> list[Lease]:
    """Leases for claimed rows, in task order, each with its latest checkpoint.

    Rows that carry their checkpoint already (``cp_state``: PostgreSQL's claim joins it in
    the same statement) need no second query.
    """
    if not rows:
        return []
    checkpoints = {row["task_id"]: Checkpoint.from_joined(row) for row in rows
                   if "cp_state" in row.keys() and row["cp_state"] is not None}
    missing = [row["task_id"] for row in rows if "cp_state" not in row.keys()]
    if missing:
        checkpoints.update((cp["task_id"], Checkpoint.from_row(cp)) for cp in
                           tx.all("checkpoints_of", {"ids": tx.id_list(missing)}))
    leases = [Lease(task_id=row["task_id"], task_type=row["task_type"],
                    params=json.loads(row["params"]), attempt=row["attempt"],
                    lease_expires_at=row["lease_expires_at"], lease_seconds=lease_seconds,
                    checkpoint=checkpoints.get(row["task_id"]),
                    timeout_seconds=row["timeout_seconds"], requeued=_requeued(row))
              for row in rows]
    return sorted(leases, key=lambda lease: lease.task_id)


REQUEUE_RETRY, REQUEUE_MANUAL_RETRY = "retry", "manual_retry"
"""``requeue_cause`` of a task back in the queue by an error retry (``requeued_at`` is then when
its backoff ends: the reassignment time measures the wait once claimable, not the backoff) and
by ``POST /task/<id>/retry``; the reclaims' causes are ReclaimCause values."""


def _requeued(row: Row) -> tuple[float, str] | None:
    """When and why a claimed task last went back to the queue (None: first claim)."""
    if "requeued_at" not in row.keys() or row["requeued_at"] is None:
        return None
    return row["requeued_at"], row["requeue_cause"] or "unknown"


class _Plan:
    """Sorts a batch of reports by what must be done with each (a first pass: reads only)."""

    def __init__(self, worker_id: str, rows: dict[int, Row]) -> None:
        self.worker_id, self.rows = worker_id, rows
        self.decided: dict[int, OutcomeKind] = {}  # id(report) -> outcome known already
        self.results: list[Report] = []  # the holder's results, to complete
        self.errors: list[Report] = []  # the holder's errors and refused results, to fail
        self.repeats: list[Report] = []  # reports for finished tasks: duplicate or stale
        self.retried: set[int] = set()  # tasks whose error is retried (pending again)
        self._first: dict[int, Report] = {}

    def add(self, report: Report) -> None:
        """File one report."""
        row = self.rows.get(report.task_id)
        first = self._first.setdefault(report.task_id, report)
        if row is None:
            self.decided[id(report)] = OutcomeKind.NOT_FOUND
        elif first is not report:  # the same task twice in one batch
            same = (first.attempt, first.result_json, first.error, first.refused) == (
                report.attempt, report.result_json, report.error, report.refused)
            self.decided[id(report)] = OutcomeKind.DUPLICATE if same else OutcomeKind.STALE
        elif TaskStatus(row["status"]) in FINISHED:
            self.repeats.append(report)
        elif (row["status"] != TaskStatus.IN_PROGRESS.value or row["attempt"] != report.attempt
              or row["worker_id"] != self.worker_id):
            self.decided[id(report)] = OutcomeKind.STALE
        elif report.refused is not None or report.error is not None:
            self.errors.append(report)
        else:
            self.results.append(report)

    def outcome(self, report: Report, outcomes: dict[int, OutcomeKind], now: float) -> Outcome:
        """The outcome of one report, with its task type and, if it finished the task, the
        time its attempt ran (from the claim)."""
        kind = outcomes[id(report)]
        row = self.rows.get(report.task_id)
        if row is None:
            return Outcome(report.task_id, report.attempt, kind, None)
        ran = None
        if kind in (OutcomeKind.ACCEPTED, OutcomeKind.REFUSED) and row["claimed_at"] is not None:
            ran = max(0.0, now - row["claimed_at"])
        return Outcome(report.task_id, report.attempt, kind,
                       self.status_after(report, outcomes), row["task_type"], ran)

    def status_after(self, report: Report, outcomes: dict[int, OutcomeKind]) -> TaskStatus | None:
        """The task's status once this batch is recorded (as far as this batch knows)."""
        row = self.rows.get(report.task_id)
        if row is None:
            return None
        first = self._first[report.task_id]
        if report.task_id in self.retried:
            return TaskStatus.PENDING
        if outcomes.get(id(first)) in (OutcomeKind.ACCEPTED, OutcomeKind.REFUSED):
            failed = first.error is not None or first.refused is not None
            return TaskStatus.FAILED if failed else TaskStatus.COMPLETED
        return TaskStatus(row["status"])


def _fail(tx: Tx, worker_id: str, report: Report) -> OutcomeKind:
    """Fail the task of the holder's error (or refused result), fenced by its lease."""
    moved = move(tx, Move.FAIL, {"task_id": report.task_id, "attempt": report.attempt,
                                 "worker_id": worker_id, "now": tx.now,
                                 "error": report.refused or report.error})
    if not moved:
        return OutcomeKind.STALE
    _note_attempt(tx, report.task_id, report.attempt, worker_id, AttemptKind.ERROR,
                  report.refused or report.error or "")
    if report.refused is not None:
        log.warning("task %s attempt %s from worker %s: result refused (%s); task failed",
                    report.task_id, report.attempt, worker_id, report.refused,
                    extra=task_fields(report.task_id, worker_id, report.attempt))
        return OutcomeKind.REFUSED
    return OutcomeKind.ACCEPTED


def _judge_results(results: Sequence[Report], moved: set[int],
                   outcomes: dict[int, OutcomeKind]) -> None:
    """The holder's results: accepted where the fenced move completed the task, else stale."""
    for report in results:
        outcomes[id(report)] = (OutcomeKind.ACCEPTED if report.task_id in moved
                                else OutcomeKind.STALE)


def _judge_repeats(worker_id: str, plan: _Plan, outcomes: dict[int, OutcomeKind],
                   stored: Mapping[int, Mapping[str, Any]]) -> None:
    """Reports for finished tasks: a duplicate if it is the one recorded, else stale.

    ``stored`` holds the recorded result (attempt, worker_id, result) of each repeated task
    that has one.
    """
    for report in plan.repeats:
        row, kept = plan.rows[report.task_id], stored.get(report.task_id)
        if report.error is None and report.refused is None:
            same = (kept is not None and kept["attempt"] == report.attempt
                    and kept["worker_id"] == worker_id and kept["result"] == report.result_json)
        else:
            same = (row["status"] == TaskStatus.FAILED.value and row["attempt"] == report.attempt
                    and row["worker_id"] == worker_id
                    and row["error"] == (report.refused or report.error))
        outcomes[id(report)] = OutcomeKind.DUPLICATE if same else OutcomeKind.STALE
