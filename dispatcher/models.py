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

    PENDING = "pending"  # waiting for a worker (new, or returned to the queue)
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
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}
"""Allowed moves. Only an in-progress task completes: once a lease is revoked (worker dead,
lease expired, released), a result for that attempt is stale even before anyone claims again.
in-progress -> pending is a reclaim; it becomes failed instead when attempts run out."""


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


def scoped_key(owner: str | None, item: int | None, key: str) -> str:
    """An Idempotency-Key as stored: ``<owner>/1/<key>`` for a single task, ``<owner>/b<i>/<key>``
    for item i of a batch (owner ``-`` without credentials). A batch and a single task under
    the same header never collide, nor the keys of two clients."""
    return f"{owner or '-'}/{'1' if item is None else f'b{item}'}/{key}"


def header_key(stored: str) -> str:
    """The Idempotency-Key header a stored key came from (see :func:`scoped_key`)."""
    return stored.split("/", 2)[2]


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
    owner: str | None = None
    """The id of the token that submitted it (not part of the JSON view)."""

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
            owner=row["owner"],
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
        }


@dataclass(frozen=True)
class NewTask:
    """A validated submission, ready to insert."""

    task_type: str
    params: dict[str, Any]
    priority: int
    max_attempts: int
    idempotency_key: str | None = None
    owner: str | None = None
    """The id of the token that submitted it (None when auth is off)."""
    request_hash: str | None = None
    """SHA-256 of the submission behind the idempotency key: a reuse must match it."""


@dataclass(frozen=True)
class Reclaim:
    """One task returned to the queue (or failed for lack of attempts) by the store."""

    task_id: int
    worker_id: str | None
    attempt: int
    cause: ReclaimCause
    failed: bool


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
