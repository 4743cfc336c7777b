"""The domain records built from the store's rows, task statuses and the moves between them.

The tables themselves (both backends) are in ``dispatcher/db/schema.py``.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

class TaskStatus(str, enum.Enum):
    """Where a task is in its life; the values are the spec's strings."""

    PENDING = "pending"  # waiting for a worker (new, returned, or until its run_after)
    IN_PROGRESS = "in-progress"  # leased to one worker for one attempt
    COMPLETED = "completed"  # a result is stored in task_results
    FAILED = "failed"  # the task raised, or it ran out of attempts
    CANCELLED = "cancelled"  # a user cancelled it before it finished

    @property
    def finished(self) -> bool:
        """True for the terminal states."""
        return self in FINISHED


FINISHED = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})

TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.IN_PROGRESS, TaskStatus.CANCELLED}),
    TaskStatus.IN_PROGRESS: frozenset(
        {TaskStatus.PENDING, TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED}
    ),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset({TaskStatus.PENDING}),
    TaskStatus.CANCELLED: frozenset({TaskStatus.PENDING}),
}
"""Allowed moves. Only an in-progress task completes: once a lease is revoked (worker dead,
lease expired, released), a result for that attempt is stale even before anyone claims again.
in-progress -> pending is a reclaim, or a retry after an error (with a backoff); it becomes
failed instead when attempts or retries run out, on a crash loop, or on a timeout. A failed or
cancelled task goes back to pending only when a user asks (``POST /task/<id>/retry``); a
completed one never changes again."""


class WorkerStatus(str, enum.Enum):
    """What the dispatcher last concluded about a worker."""

    ALIVE = "alive"  # heartbeating (or just registered)
    DEAD = "dead"  # silent for HEARTBEAT_TIMEOUT; its tasks went back to the queue
    STOPPED = "stopped"  # said goodbye on a clean shutdown


class ReclaimCause(str, enum.Enum):
    """Why an in-progress task went back to the queue; each has a counter in /stats."""

    DEAD_WORKER = "dead_worker"
    EXPIRED_LEASE = "expired_lease"
    RELEASED = "released_on_shutdown"
    RETURNED = "returned_unstarted"  # a prefetching worker gave back tasks it had not started
    LOST_CLAIM = "lost_claim"  # leased, but the worker's heartbeats never listed it
    WORKER_RESTARTED = "worker_restarted"
    TIMED_OUT = "timed_out"  # ran past its timeout_seconds: failed, not requeued

    @property
    def crash(self) -> bool:
        """True for the causes that mean the attempt's worker died or lost the task: they
        use up an attempt and count towards the crash-loop breaker."""
        return self in (ReclaimCause.DEAD_WORKER, ReclaimCause.EXPIRED_LEASE,
                        ReclaimCause.WORKER_RESTARTED)


FAILURE_COUNTERS = ("retries", "manual_retries", "crash_loops", "timed_out")
"""The task lifecycle's counters (``counters`` table): errors queued again for a retry, tasks
put back by a user, tasks failed as a crash loop, attempts failed by their timeout. /stats shows
them as ``failures``, /metrics as ``taskqueue_task_failures_total``."""


class AttemptKind(str, enum.Enum):
    """How one failed attempt of a task ended (its ``attempts`` history)."""

    ERROR = "error"  # the task raised; retried after a backoff while retries are left
    CRASH = "crash"  # its worker died, restarted or let the lease expire
    TIMEOUT = "timeout"  # it ran past timeout_seconds


def scoped_key(owner: str | None, item: int | None, key: str) -> str:
    """An Idempotency-Key as stored: ``<owner>/1/<key>`` for a single task, ``<owner>/b<i>/<key>``
    for item i of a batch (owner ``-`` without credentials). A batch and a single task under
    the same header never collide, nor the keys of two clients."""
    return f"{owner or '-'}/{'1' if item is None else f'b{item}'}/{key}"


def header_key(stored: str) -> str:
    """The Idempotency-Key header a stored key came from (see :func:`scoped_key`)."""
    return stored.split("/", 2)[2]


def group_key(owner: str | None, key: str) -> str:
    """A split job's Idempotency-Key as stored: ``<owner>/g/<key>`` (see :func:`scoped_key`)."""
    return f"{owner or '-'}/g/{key}"


class EventKind(str, enum.Enum):
    """What a timeline event (``events`` table, ``GET /events``) records.

    A reclaim's kind is its :class:`ReclaimCause` value, whichever causes there are (except
    ``returned_unstarted``: a prefetching worker handing back tasks it never started is
    bookkeeping, counted in /stats only); the others are the moments around a reclaim that a
    person watching wants to see. The members name the kinds known today; an event's ``kind``
    is kept as text, so a cause added later is recorded and shown as it is.
    """

    DEAD_WORKER = ReclaimCause.DEAD_WORKER.value  # task reclaimed: its worker was declared dead
    EXPIRED_LEASE = ReclaimCause.EXPIRED_LEASE.value  # task reclaimed: no progress in the lease
    RELEASED = ReclaimCause.RELEASED.value  # a stopping worker gave its task back
    LOST_CLAIM = ReclaimCause.LOST_CLAIM.value  # leased, but the worker never listed it
    WORKER_RESTARTED = ReclaimCause.WORKER_RESTARTED.value  # a new instance of its worker came
    WORKER_DEAD = "worker_dead"  # a worker was silent for HEARTBEAT_TIMEOUT
    RESUMED = "resumed"  # a task claimed again after an earlier attempt (from its checkpoint)
    CANCELLED = "cancelled"  # a user cancelled an unfinished task
    TIMED_OUT = ReclaimCause.TIMED_OUT.value  # an attempt ran past its timeout_seconds: failed
    RETRY = "retry"  # the task raised; queued again after a backoff (a retry is left)
    CRASH_LOOP = "crash_loop"  # it lost CRASH_LOOP_LIMIT workers in a row at one checkpoint
    RETRIED = "retried"  # a user put a failed or cancelled task back (POST /task/<id>/retry)


RECLAIM_WORDS: dict[ReclaimCause, str] = {
    ReclaimCause.DEAD_WORKER: "its worker was declared dead",
    ReclaimCause.EXPIRED_LEASE: "no checkpoint within LEASE_DURATION (lease expired)",
    ReclaimCause.RELEASED: "its worker released it on shutdown",
    ReclaimCause.RETURNED: "its worker returned it unstarted",
    ReclaimCause.LOST_CLAIM: "the claim's answer never reached the worker",
    ReclaimCause.WORKER_RESTARTED: "its worker restarted under the same id",
    ReclaimCause.TIMED_OUT: "it ran past its timeout_seconds",
}
"""Each reclaim cause in words, for the timeline (``events.detail``)."""


def dumps(value: Any) -> str:
    """Canonical JSON used for everything stored, so equal values compare equal as text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Task:
    """One row of ``tasks`` joined with its result and latest checkpoint."""

    task_id: int
    task_type: str
    params: dict[str, Any]
    status: TaskStatus
    priority: int
    attempt: int
    max_attempts: int
    worker_id: str | None
    progress: float
    result: Any
    error: str | None
    created_at: float
    started_at: float | None
    claimed_at: float | None
    finished_at: float | None
    lease_expires_at: float | None
    max_retries: int = 0
    retries: int = 0
    retry_backoff: float = 1.0
    run_after: float | None = None
    timeout_seconds: float | None = None
    crash_streak: int = 0
    attempts: tuple[dict[str, Any], ...] = ()
    owner: str | None = None
    """The id of the token that submitted it (not part of the JSON view)."""
    group_id: int | None = None

    @classmethod
    def from_row(cls, row: Any) -> "Task":
        """Build from a row with the ``tasks`` columns plus ``result``."""
        result = row["result"]
        return cls(
            task_id=row["task_id"],
            task_type=row["task_type"],
            params=json.loads(row["params"]),
            status=TaskStatus(row["status"]),
            priority=row["priority"],
            attempt=row["attempt"],
            max_attempts=row["max_attempts"],
            worker_id=row["worker_id"],
            progress=row["progress"],
            result=json.loads(result) if result is not None else None,
            error=row["error"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            claimed_at=row["claimed_at"],
            finished_at=row["finished_at"],
            lease_expires_at=row["lease_expires_at"],
            max_retries=row["max_retries"],
            retries=row["retries"],
            retry_backoff=row["retry_backoff"],
            run_after=row["run_after"],
            timeout_seconds=row["timeout_seconds"],
            crash_streak=row["crash_streak"],
            owner=row["owner"],
            group_id=row["group_id"],
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON view served by ``GET /task/<id>``."""
        return {
            "task_id": self.task_id,
            "task_type": self.task_type,
            "params": self.params,
            "status": self.status.value,
            "priority": self.priority,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "worker_id": self.worker_id,
            "progress": self.progress,
            "result": self.result,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "claimed_at": self.claimed_at,
            "finished_at": self.finished_at,
            "lease_expires_at": self.lease_expires_at,
            "max_retries": self.max_retries,
            "retries": self.retries,
            "retry_backoff": self.retry_backoff,
            "run_after": self.run_after,
            "timeout_seconds": self.timeout_seconds,
            "crash_streak": self.crash_streak,
            "attempts": list(self.attempts),
            "group_id": self.group_id,
        }


@dataclass(frozen=True)
class Checkpoint:
    """The latest accepted checkpoint of a task."""

    state: dict[str, Any]
    progress: float
    attempt: int
    saved_at: float

    @classmethod
    def from_row(cls, row: Any) -> "Checkpoint":
        """Build from a ``checkpoints`` row."""
        return cls(json.loads(row["state"]), row["progress"], row["attempt"], row["saved_at"])

    @classmethod
    def from_joined(cls, row: Any) -> "Checkpoint":
        """Build from a task row with the checkpoint joined in as ``cp_*`` columns."""
        return cls(json.loads(row["cp_state"]), row["cp_progress"], row["cp_attempt"],
                   row["cp_saved_at"])

    def to_dict(self) -> dict[str, Any]:
        """The JSON form sent to a worker with its claim."""
        return {
            "state": self.state,
            "progress": self.progress,
            "attempt": self.attempt,
            "saved_at": self.saved_at,
        }


@dataclass(frozen=True)
class Lease:
    """A task handed to a worker: what the worker needs to run and fence it."""

    task_id: int
    task_type: str
    params: dict[str, Any]
    attempt: int
    lease_expires_at: float
    lease_seconds: float
    checkpoint: Checkpoint | None
    timeout_seconds: float | None = None
    requeued: tuple[float, str] | None = None
    """When (store clock) and why (a ReclaimCause value) the task last went back to the
    queue before this claim; None for a first claim. For the reassignment-time metric only:
    not sent to the worker."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form returned by ``POST /get-task``."""
        return {
            "task_id": self.task_id,
            "task_type": self.task_type,
            "params": self.params,
            "attempt": self.attempt,
            "lease_expires_at": self.lease_expires_at,
            "lease_seconds": self.lease_seconds,
            "checkpoint": self.checkpoint.to_dict() if self.checkpoint else None,
            "timeout_seconds": self.timeout_seconds,
        }


@dataclass(frozen=True)
class NewTask:
    """A validated submission, ready to insert."""

    task_type: str
    params: dict[str, Any]
    priority: int
    max_attempts: int
    idempotency_key: str | None = None
    max_retries: int = 0
    retry_backoff: float = 1.0
    timeout_seconds: float | None = None
    run_at: float | None = None  # not claimable before this time (epoch seconds)
    delay_seconds: float | None = None  # ... or before this long after the submission
    owner: str | None = None
    """The id of the token that submitted it (None when auth is off)."""
    request_hash: str | None = None
    """SHA-256 of the submission behind the idempotency key: a reuse must match it."""
    group_id: int | None = None
    """The split job this task is a part of (set by the store when it inserts the group)."""


@dataclass(frozen=True)
class Reclaim:
    """One task returned to the queue (or failed for lack of attempts) by the store."""

    task_id: int
    worker_id: str | None
    attempt: int
    cause: ReclaimCause
    failed: bool
    task_type: str | None = None


@dataclass(frozen=True)
class Report:
    """A worker's report on one lease: a result (canonical JSON text) or the task's error.

    ``refused`` is set when the dispatcher will not store the result (too large): the task
    then ends as failed with that cause instead of being retried forever.
    """

    task_id: int
    attempt: int
    result_json: str | None
    error: str | None = None
    refused: str | None = None
    final: bool = False  # an error no retry can fix (the worker says so): not retried


class OutcomeKind(str, enum.Enum):
    """What the store did with one report; the values go on the wire."""

    ACCEPTED = "accepted"  # recorded; the task is completed (or failed, for an error)
    DUPLICATE = "duplicate"  # the same report was recorded before: a no-op
    STALE = "stale"  # the sender does not hold that lease: nothing changed
    NOT_FOUND = "not_found"  # no such task
    REFUSED = "refused"  # the result was refused; the task failed with the reason


@dataclass(frozen=True)
class Outcome:
    """What the store did with one posted result."""

    task_id: int
    attempt: int
    outcome: OutcomeKind
    status: TaskStatus | None
    task_type: str | None = None
    ran_seconds: float | None = None
    """For a report that finished its task: from the claim of that attempt to the report."""


@dataclass(frozen=True)
class Event:
    """One row of the ``events`` timeline."""

    event_id: int
    at: float
    kind: str  # an EventKind value, or a reclaim cause added since
    task_id: int | None
    worker_id: str | None
    attempt: int | None
    status: str | None  # the task's status after the event (a worker's, for worker_dead)
    progress: float | None  # the task's progress (its checkpoint) at the event
    detail: str | None  # the cause in words

    @classmethod
    def from_row(cls, row: Any) -> "Event":
        """Build from an ``events`` row."""
        return cls(row["event_id"], row["at"], row["kind"], row["task_id"],
                   row["worker_id"], row["attempt"], row["status"], row["progress"],
                   row["detail"])

    def to_dict(self) -> dict[str, Any]:
        """The JSON form served by ``GET /events``."""
        return {"event_id": self.event_id, "at": self.at, "kind": self.kind,
                "task_id": self.task_id, "worker_id": self.worker_id, "attempt": self.attempt,
                "status": self.status, "progress": self.progress, "detail": self.detail}


@dataclass(frozen=True)
class TaskQuery:
    """What ``GET /tasks`` asks for: filters, a keyset position and a page size.

    Pages run from the newest task to the oldest; ``before_id`` (from the cursor) is exclusive.
    """

    statuses: tuple[TaskStatus, ...] = ()  # empty: any status
    task_type: str | None = None
    created_after: float | None = None  # inclusive
    created_before: float | None = None  # exclusive
    before_id: int | None = None
    limit: int = 100
    owner: str | None = None  # only the tasks this token submitted (a client's own)


@dataclass(frozen=True)
class TaskPage:
    """One page of the task list; ``next_id`` is where the next page starts (None: no more)."""

    tasks: list[Task]
    next_id: int | None


class GroupStatus(str, enum.Enum):
    """A split job's status, derived from its parts' statuses."""

    PENDING = "pending"  # no part has started
    RUNNING = "running"  # some part started or finished, none failed or was cancelled
    COMPLETED = "completed"  # every part completed: the combined result is there
    FAILED = "failed"  # a part failed (its error is the group's)
    CANCELLED = "cancelled"  # a part was cancelled (and none failed)


@dataclass(frozen=True)
class GroupPart:
    """One part of a split job as the group view shows it."""

    task_id: int
    status: TaskStatus
    params: dict[str, Any]
    progress: float
    worker_id: str | None
    result: Any
    error: str | None

    @classmethod
    def from_row(cls, row: Any) -> "GroupPart":
        """Build from a ``group_parts`` row."""
        result = row["result"]
        return cls(row["task_id"], TaskStatus(row["status"]), json.loads(row["params"]),
                   row["progress"], row["worker_id"],
                   json.loads(result) if result is not None else None, row["error"])


@dataclass(frozen=True)
class Group:
    """A split job: the task it stands for and its parts, in range order."""

    group_id: int
    task_type: str
    params: dict[str, Any]
    created_at: float
    parts: list[GroupPart]
    owner: str | None = None
    """The id of the token that submitted it (not part of the JSON view)."""

    @classmethod
    def from_rows(cls, row: Any, parts: list[Any]) -> "Group":
        """Build from a ``task_groups`` row and its ``group_parts`` rows."""
        return cls(row["group_id"], row["task_type"], json.loads(row["params"]),
                   row["created_at"], [GroupPart.from_row(part) for part in parts], row["owner"])

    @property
    def status(self) -> GroupStatus:
        """Failed if a part failed, cancelled if one was, completed if all are, else by start."""
        statuses = {part.status for part in self.parts}
        if TaskStatus.FAILED in statuses:
            return GroupStatus.FAILED
        if TaskStatus.CANCELLED in statuses:
            return GroupStatus.CANCELLED
        if statuses == {TaskStatus.COMPLETED}:
            return GroupStatus.COMPLETED
        return GroupStatus.PENDING if statuses == {TaskStatus.PENDING} else GroupStatus.RUNNING

    @property
    def error(self) -> str | None:
        """The error of the first failed part, naming it."""
        for part in self.parts:
            if part.status is TaskStatus.FAILED:
                return f"part task {part.task_id} failed: {part.error}"
        return None

    @property
    def progress(self) -> float:
        """The mean progress of the parts (a completed part counts 1)."""
        if not self.parts:
            return 0.0
        done = [1.0 if p.status is TaskStatus.COMPLETED else p.progress for p in self.parts]
        return sum(done) / len(done)
