"""The store: every queue operation, written once over named queries.

A backend (``sqlite.py``, ``postgres.py``) supplies the SQL dialect (its ``QUERIES`` table, with
the same names in both), its connections and transactions, and the clock. Each operation here
is one transaction, and every time it uses is read once per transaction from the store's clock:
the dispatcher's with SQLite, the database's with PostgreSQL (so several dispatchers agree),
or a fake one that tests inject. Status changes go through :func:`dispatcher.db.moves.move`.
"""

from __future__ import annotations

import abc
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from dispatcher.db.errors import NotFound, StaleLease
from dispatcher.db.moves import Move, move
from dispatcher.models import (
    FINISHED,
    Checkpoint,
    Lease,
    NewTask,
    Outcome,
    OutcomeKind,
    Reclaim,
    ReclaimCause,
    Report,
    Task,
    TaskStatus,
    WorkerStatus,
    dumps,
)
from tasks.base import InvalidCheckpoint

log = logging.getLogger(__name__)

Row = Any
"""A result row: ``sqlite3.Row`` or a dict; both are indexed by column name."""
Clock = Callable[[], float]
Held = tuple[int, int]  # (task_id, attempt)
CheckpointCheck = Callable[[str, dict[str, Any], "dict[str, Any] | None"], None]
"""Called as check(task_type, new_state, previous_state); raises to refuse a checkpoint."""
OnCommit = Callable[[], None] | None


@dataclass(frozen=True)
class Dialect:
    """What differs between backends below the operations: SQL texts and parameter encodings."""

    queries: Mapping[str, str]
    id_list: Callable[[Sequence[int]], Any]
    """Encodes a list of ids as the ``checkpoints_of`` query takes it (JSON text, an array)."""
    run_script: Callable[[Any, str], None]
    """Runs fixed DDL (several statements, no parameters) on a cursor."""


class Tx:
    """One open transaction: runs the backend's named queries; ``now`` is its one clock reading."""

    def __init__(self, cursor: Any, dialect: Dialect, now: float) -> None:
        self.cursor, self._dialect, self.now = cursor, dialect, now

    def one(self, name: str, params: Mapping[str, Any] | None = None) -> Row | None:
        """The first row of a named query, or None."""
        return self.cursor.execute(self._dialect.queries[name], params or {}).fetchone()

    def all(self, name: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        """Every row of a named query."""
        return list(self.cursor.execute(self._dialect.queries[name], params or {}).fetchall())

    def run(self, name: str, params: Mapping[str, Any] | None = None) -> int:
        """Execute a named statement; the number of rows it changed."""
        return self.cursor.execute(self._dialect.queries[name], params or {}).rowcount

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
    """What one claim transaction did: leases handed out, reclaims it caused, reports recorded."""

    leases: list[Lease]
    reclaims: list[Reclaim]
    outcomes: list[Outcome]


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


class Store(abc.ABC):
    """The task store. Subclasses provide connections, transactions, the dialect and the clock."""

    DIALECT: Dialect

    def __init__(self) -> None:
        self._beats = Beats()

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

    def listen(self, on_tasks: Callable[[int], None], on_finished: Callable[[], None]) -> None:
        """Deliver other dispatchers' wake-up hints to these callbacks (until :meth:`close`)."""

    # -- submission ---------------------------------------------------------------------------

    def submit(self, tasks: Sequence[NewTask], on_commit: OnCommit = None
               ) -> list[tuple[int, bool]]:
        """Insert tasks in one durable transaction; (task_id, created) for each, in order.

        A task whose idempotency key is already stored is not inserted again: its existing
        id comes back with created=False.
        """
        with self._write(on_commit=on_commit) as tx:
            rows = [_task_row(task, tx.now) for task in tasks]
            if all(task.idempotency_key is None for task in tasks):
                created = [(task_id, True) for task_id in self._insert_tasks(tx, rows)]
            else:
                created = [_insert_keyed(tx, row) for row in rows]
            self._notify(tx, Channel.TASKS, sum(1 for _, new in created if new))
        return created

    # -- workers ------------------------------------------------------------------------------

    def _register(self, tx: Tx, worker_id: str, instance_id: str | None) -> list[Reclaim]:
        """Mark the worker alive; a new instance of a known worker frees the old one's tasks."""
        row = tx.one("worker_get", {"worker_id": worker_id})
        reclaimed: list[Reclaim] = []
        if row is not None and instance_id is not None and row["instance_id"] != instance_id:
            held = tx.all("held_by_other_instance",
                          {"worker_id": worker_id, "instance_id": instance_id})
            reclaimed = self._requeue_all(tx, held, worker_id, ReclaimCause.WORKER_RESTARTED)
        params = {"worker_id": worker_id, "instance_id": instance_id, "now": tx.now}
        if row is None or instance_id is not None:
            tx.run("worker_upsert", params)
        else:
            tx.run("worker_touch", params)
        return reclaimed

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
            reclaimed = self._register(tx, worker_id, instance_id)
            revoked = [task_id for task_id, attempt in held
                       if not _holds(tx, task_id, attempt, worker_id)]
            if unlisted_grace is not None and instance_id is not None:
                listed = {task_id for task_id, _ in held}
                lost = [row for row in tx.all("leased_to_instance",
                                              {"worker_id": worker_id, "instance_id": instance_id})
                        if row["task_id"] not in listed
                        and row["claimed_at"] < tx.now - unlisted_grace]
                reclaimed += self._requeue_all(tx, lost, worker_id, ReclaimCause.LOST_CLAIM,
                                               counts=False)
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

    def mark_worker(self, worker_id: str, status: WorkerStatus) -> None:
        """Set a worker's status ('stopped' when it says it is leaving)."""
        with self._write() as tx:
            tx.run("worker_mark", {"status": status.value, "worker_id": worker_id})

    # -- claim, checkpoint, release, complete -------------------------------------------------

    def claim(
        self, worker_id: str, instance_id: str | None, limit: int, lease_seconds: float,
        reports: Sequence[Report] = (), on_commit: OnCommit = None, arriving: bool = True,
    ) -> Claimed:
        """Record ``reports`` (as :meth:`complete`), then lease up to ``limit`` pending tasks.

        One transaction: a worker acknowledges its last batch and takes the next in one
        round trip. Durable only when it carries reports. ``arriving=False`` is a long poll
        looking again after a wake-up: the worker was registered when the request arrived.
        A known worker's claim that carries nothing and finds nothing is answered from a read.
        """
        if not reports and limit > 0 and self._nothing_to_claim(worker_id, instance_id):
            return Claimed([], [], [])
        with self._write(durable=bool(reports), on_commit=on_commit) as tx:
            outcomes = self._record(tx, worker_id, reports)
            reclaimed = self._register(tx, worker_id, instance_id) if arriving else []
            if limit <= 0:
                return Claimed([], reclaimed, outcomes)
            lost = _lost_claims(tx, worker_id, instance_id)
            rows = move(tx, Move.CLAIM, {
                "worker_id": worker_id, "instance_id": instance_id, "now": tx.now,
                "lease_expires_at": tx.now + lease_seconds, "limit": max(0, limit - len(lost)),
            })
            leases = _leases(tx, lost + rows, lease_seconds)
        return Claimed(leases, reclaimed, outcomes)

    def _nothing_to_claim(self, worker_id: str, instance_id: str | None) -> bool:
        """True when a known, live worker instance holds no lease and no task is pending."""
        if instance_id is None:
            return False
        with self._read() as tx:  # one statement: the worker, any pending task, its leases
            row = tx.one("worker_idle", {"worker_id": worker_id})
        idle = (row is not None and _alive_as(row, instance_id)
                and not row["pending"] and not row["leased"])
        if idle:
            self._beats.seen(worker_id, tx.now)
        return idle

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

    def complete(self, worker_id: str, reports: Sequence[Report], on_commit: OnCommit = None
                 ) -> list[Outcome]:
        """Record reports in one durable transaction.

        Accepted only from the current (task, attempt, worker); the same report posted again
        is a duplicate; anything else is stale and changes nothing. A refused result fails
        its task with the reason.
        """
        with self._write(on_commit=on_commit) as tx:
            return self._record(tx, worker_id, reports)

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
            tx.run("checkpoint_drop", {"task_id": task_id})
            self._notify(tx, Channel.FINISHED)
        return self.get_task(task_id)

    # -- the heartbeat monitor's sweep --------------------------------------------------------

    def sweep(self, heartbeat_timeout: float, lease_seconds: float, gap_seconds: float) -> Swept:
        """One monitor pass over the whole cluster, at most one dispatcher at a time.

        If nobody swept for more than ``gap_seconds`` (every dispatcher was down or cut off
        from the database), workers could not heartbeat either: the cluster "resumes", every
        lease restarts from now, and nobody is declared dead until a full timeout after the
        resumption. Then workers silent for ``heartbeat_timeout`` are dead (their tasks
        requeued) and expired leases are requeued. First, whatever the lock says, the
        heartbeats this dispatcher answered from reads since the last sweep are written.
        """
        with self._write(durable=False) as tx:
            self._beats.flush(tx)
            if not self._sweep_lock(tx):
                return Swept(False, [], None)
            resumed_at = self._resume_if_gap(tx, lease_seconds, gap_seconds)
            reclaimed: list[Reclaim] = []
            if tx.now - heartbeat_timeout >= resumed_at:
                reclaimed += self._reap_dead(tx, tx.now - heartbeat_timeout)
            for row in tx.all("expired_leases", {"now": tx.now}):
                reclaimed += self._requeue_all(tx, [row], row["worker_id"],
                                               ReclaimCause.EXPIRED_LEASE)
            self._compact(tx)
        return Swept(True, reclaimed, resumed_at)

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

    def _reap_dead(self, tx: Tx, silent_since: float) -> list[Reclaim]:
        reclaimed: list[Reclaim] = []
        for row in tx.all("workers_silent", {"silent_since": silent_since}):
            worker_id = row["worker_id"]
            tx.run("worker_mark", {"status": WorkerStatus.DEAD.value, "worker_id": worker_id})
            held = tx.all("held_by_worker", {"worker_id": worker_id})
            reclaimed += self._requeue_all(tx, held, worker_id, ReclaimCause.DEAD_WORKER)
        return reclaimed

    # -- reads --------------------------------------------------------------------------------

    def get_task(self, task_id: int) -> Task:
        """The task's view; raise NotFound."""
        with self._read() as tx:
            row = tx.one("task_view", {"task_id": task_id})
        if row is None:
            raise NotFound(f"task {task_id} does not exist")
        return Task.from_row(row)

    def list_tasks(self, status: TaskStatus | None, limit: int) -> list[Task]:
        """The newest tasks, optionally of one status."""
        with self._read() as tx:
            rows = tx.all("task_list", {"status": status.value if status else None,
                                        "limit": limit})
        return [Task.from_row(row) for row in rows]

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

    # -- helpers inside transactions ----------------------------------------------------------

    def _record(self, tx: Tx, worker_id: str, reports: Sequence[Report]) -> list[Outcome]:
        outcomes = [_record_one(tx, worker_id, report) for report in reports]
        if any(o.outcome in (OutcomeKind.ACCEPTED, OutcomeKind.REFUSED) for o in outcomes):
            self._notify(tx, Channel.FINISHED)
        return outcomes

    def _requeue_all(self, tx: Tx, held: Sequence[Row], worker_id: str | None,
                     cause: ReclaimCause, counts: bool = True) -> list[Reclaim]:
        """Requeue each held (task_id, attempt) still at that attempt.

        ``counts`` says whether the attempt counts as used: if so, a task that has used its
        last attempt is failed instead (given up), with the cause in its error.
        """
        reclaimed = []
        for row in held:
            params = {"task_id": row["task_id"], "attempt": row["attempt"], "now": tx.now,
                      "error": f"gave up after {row['attempt']} attempts (last: {cause.value})"}
            given_up = counts and bool(move(tx, Move.GIVE_UP, params))
            if given_up or move(tx, Move.REQUEUE, params):
                reclaimed.append(Reclaim(row["task_id"], worker_id, row["attempt"], cause,
                                         given_up))
        if reclaimed:
            tx.run("counter_add", {"name": cause.value, "value": len(reclaimed)})
            requeued = sum(1 for r in reclaimed if not r.failed)
            if requeued:
                self._notify(tx, Channel.TASKS, requeued)
            if requeued < len(reclaimed):
                self._notify(tx, Channel.FINISHED)
        return reclaimed


# -- helpers used inside transactions (backend-independent) --------------------------------------


def _task_row(task: NewTask, now: float) -> dict[str, Any]:
    return {"task_type": task.task_type, "params": dumps(task.params),
            "priority": task.priority, "max_attempts": task.max_attempts,
            "idempotency_key": task.idempotency_key, "now": now}


def _insert_keyed(tx: Tx, row: dict[str, Any]) -> tuple[int, bool]:
    """Insert unless the key is taken (atomically: another dispatcher may be inserting it)."""
    inserted = tx.one("insert_task", row)
    if inserted is not None:
        return inserted["task_id"], True
    return tx.one("task_by_key", {"key": row["idempotency_key"]})["task_id"], False


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


def _holds(tx: Tx, task_id: int, attempt: int, worker_id: str) -> bool:
    row = tx.one("task_lease", {"task_id": task_id})
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
    if rows:
        log.warning("re-delivering tasks %s to worker %s: their claim answer was lost",
                    [row["task_id"] for row in rows], worker_id)
        tx.run("counter_add", {"name": "redelivered", "value": len(rows)})
    return rows


def _leases(tx: Tx, rows: Sequence[Row], lease_seconds: float) -> list[Lease]:
    """Leases for claimed rows, in task order, each with its latest checkpoint."""
    if not rows:
        return []
    ids = tx.id_list([row["task_id"] for row in rows])
    checkpoints = {cp["task_id"]: Checkpoint.from_row(cp)
                   for cp in tx.all("checkpoints_of", {"ids": ids})}
    leases = [Lease(task_id=row["task_id"], task_type=row["task_type"],
                    params=json.loads(row["params"]), attempt=row["attempt"],
                    lease_expires_at=row["lease_expires_at"], lease_seconds=lease_seconds,
                    checkpoint=checkpoints.get(row["task_id"]))
              for row in rows]
    return sorted(leases, key=lambda lease: lease.task_id)


def _record_one(tx: Tx, worker_id: str, report: Report) -> Outcome:
    task_id, attempt = report.task_id, report.attempt
    row = tx.one("task_lease", {"task_id": task_id})
    if row is None:
        return Outcome(task_id, attempt, OutcomeKind.NOT_FOUND, None)
    status = TaskStatus(row["status"])
    if status in FINISHED:
        return Outcome(task_id, attempt, _repeat_outcome(tx, worker_id, report, status), status)
    if status is not TaskStatus.IN_PROGRESS or row["attempt"] != attempt \
            or row["worker_id"] != worker_id:
        return Outcome(task_id, attempt, OutcomeKind.STALE, status)
    params = {"task_id": task_id, "now": tx.now}
    kind = OutcomeKind.ACCEPTED
    if report.refused is not None or report.error is not None:
        kind = OutcomeKind.REFUSED if report.refused is not None else kind
        move(tx, Move.FAIL, {**params, "error": report.refused or report.error})
        if report.refused is not None:
            log.warning("task %s attempt %s from worker %s: result refused (%s); task failed",
                        task_id, attempt, worker_id, report.refused)
        new_status = TaskStatus.FAILED
    else:
        tx.run("result_put", {**params, "attempt": attempt, "worker_id": worker_id,
                              "result": report.result_json})
        move(tx, Move.COMPLETE, params)
        tx.run("worker_completed", {"worker_id": worker_id})
        new_status = TaskStatus.COMPLETED
    tx.run("checkpoint_drop", {"task_id": task_id})
    return Outcome(task_id, attempt, kind, new_status)


def _repeat_outcome(tx: Tx, worker_id: str, report: Report, status: TaskStatus) -> OutcomeKind:
    """A report for a finished task: a duplicate if it is the one recorded, else stale."""
    task_id, attempt = report.task_id, report.attempt
    if status is TaskStatus.COMPLETED and report.error is None and report.refused is None:
        stored = tx.one("result_get", {"task_id": task_id})
        same = (stored is not None and stored["attempt"] == attempt
                and stored["worker_id"] == worker_id and stored["result"] == report.result_json)
        return OutcomeKind.DUPLICATE if same else OutcomeKind.STALE
    if status is TaskStatus.FAILED:
        error = report.refused if report.refused is not None else report.error
        row = tx.one("task_failure", {"task_id": task_id})
        if row["attempt"] == attempt and row["worker_id"] == worker_id and row["error"] == error:
            return OutcomeKind.DUPLICATE
    return OutcomeKind.STALE
