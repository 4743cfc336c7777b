"""Response bodies of the HTTP API, as pydantic models: they document ``/openapi.json``.

The routes build their answers from the domain records (``models.py``); these models describe
those answers, and the schemathesis test checks every response against them. Extra fields
are allowed (a client must ignore fields it does not know), so adding one is compatible.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from dispatcher.models import GroupStatus, OutcomeKind, TaskStatus

TASK_STATUSES = tuple(status.value for status in TaskStatus)
Status = Literal["pending", "in-progress", "completed", "failed", "cancelled"]
assert set(Status.__args__) == set(TASK_STATUSES)  # type: ignore[attr-defined]
OutcomeName = Literal["accepted", "duplicate", "stale", "not_found", "refused"]
assert set(OutcomeName.__args__) == {kind.value for kind in OutcomeKind}  # type: ignore[attr-defined]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(_Answer):
    """What went wrong: a stable snake_case code and a message that starts with the field."""

    code: str
    message: str


class ErrorBody(_Answer):
    """Every error response (a 409 of ``/heartbeat`` adds ``revoked``)."""

    error: ErrorDetail


class SubmittedOne(_Answer):
    """One task stored (201), or found under its idempotency key (200, ``duplicate``)."""

    task_id: int
    status: Status
    duplicate: bool = False


class SubmittedBatch(_Answer):
    """A batch stored: the ids in the order of the submission."""

    task_ids: list[int]
    status: Literal["pending"]


GroupStatusName = Literal["pending", "running", "completed", "failed", "cancelled"]
assert set(GroupStatusName.__args__) == {s.value for s in GroupStatus}  # type: ignore[attr-defined]


class SubmittedGroup(_Answer):
    """A split job stored (201) as a group of part tasks, or found under its idempotency key
    (200, ``duplicate``, with the group's current status)."""

    group_id: int
    task_ids: list[int]
    status: GroupStatusName
    duplicate: bool = False


class Submitted(RootModel[SubmittedOne | SubmittedBatch | SubmittedGroup]):
    """The answer to a submission."""


class CheckpointView(_Answer):
    """The latest accepted checkpoint, sent with a claim so the task resumes from it."""

    state: dict[str, Any]
    progress: float
    attempt: int
    saved_at: float


class LeaseView(_Answer):
    """A task leased to a worker; ``(task_id, attempt)`` is the fencing token."""

    task_id: int
    task_type: str
    params: dict[str, Any]
    attempt: int
    lease_expires_at: float
    lease_seconds: float
    checkpoint: CheckpointView | None
    timeout_seconds: float | None = None
    """The attempt's time limit, counted from the claim (null: none)."""


class OutcomeItem(_Answer):
    """What the dispatcher did with one reported result."""

    task_id: int
    attempt: int
    outcome: OutcomeName


class ClaimedOne(_Answer):
    """The plain form: one task."""

    task: LeaseView


class ClaimedBatch(_Answer):
    """The batch form: the tasks leased and the outcomes of the results reported with it."""

    tasks: list[LeaseView]
    results: list[OutcomeItem]


class Claimed(RootModel[ClaimedOne | ClaimedBatch]):
    """The answer to a claim."""


class RecordedOne(_Answer):
    """One result recorded (or a duplicate of the recorded one)."""

    task_id: int
    status: Status
    duplicate: bool


class RecordedBatch(_Answer):
    """The outcome of each result of a batch, in order."""

    results: list[OutcomeItem]


class ResultRecorded(RootModel[RecordedOne | RecordedBatch]):
    """The answer to a result."""


class HeartbeatAnswer(_Answer):
    """Alive; ``revoked`` is empty (a 409 lists the leases no longer held)."""

    status: Literal["ok"]
    revoked: list[int]


class CheckpointSaved(_Answer):
    """The checkpoint is stored and the lease renewed until ``lease_expires_at``."""

    task_id: int
    lease_expires_at: float


class Released(_Answer):
    """The task is back in the queue."""

    task_id: int
    status: Literal["pending"]


class AttemptView(_Answer):
    """One failed attempt of a task (its ``attempts`` history)."""

    attempt: int
    worker_id: str | None
    kind: Literal["error", "crash", "timeout"]
    error: str
    at: float


class TaskView(_Answer):
    """A task: status, progress, result or error, timestamps (Unix seconds)."""

    task_id: int
    task_type: str
    params: dict[str, Any]
    status: Status
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
    """Retries of an error this task may have (each after a backoff)."""
    retries: int = 0
    retry_backoff: float = 1.0
    run_after: float | None = None
    """Not claimable before this time (a retry's backoff, run_at, delay_seconds); null: now."""
    timeout_seconds: float | None = None
    crash_streak: int = 0
    attempts: list[AttemptView] = []
    """Every failed attempt: error, crash or timeout, oldest first."""
    group_id: int | None = None
    """The split job this task is a part of (null: a task of its own)."""


class ListedTask(TaskView):
    """A task as ``GET /tasks`` lists it: a params, result or error longer than
    MAX_LIST_FIELD_BYTES is null and named in ``truncated`` (``GET /task/<id>`` has it)."""

    params: dict[str, Any] | None  # type: ignore[assignment]
    truncated: list[Literal["params", "result", "error"]] = []


class TaskList(_Answer):
    """A page of tasks, newest first; ``next_cursor`` (null on the last page) asks for the
    next one."""

    tasks: list[ListedTask]
    next_cursor: str | None


class GroupPart(_Answer):
    """One part task of a split job."""

    task_id: int
    status: Status
    params: dict[str, Any]
    progress: float
    worker_id: str | None
    error: str | None


class GroupParts(_Answer):
    """How many parts a split job has, in total and per task status."""

    total: int
    pending: int
    in_progress: int = Field(alias="in-progress")
    completed: int
    failed: int
    cancelled: int


class GroupView(_Answer):
    """A split job: its status (derived from its parts'), progress, parts, and the combined
    result once every part completed."""

    group_id: int
    task_type: str
    params: dict[str, Any]
    status: GroupStatusName
    progress: float
    parts: GroupParts
    tasks: list[GroupPart]
    result: Any
    error: str | None
    created_at: float


class WorkerView(_Answer):
    """One worker as /stats shows it."""

    worker_id: str
    status: Literal["alive", "dead", "stopped"]
    alive: bool
    seconds_since_heartbeat: float
    current_tasks: list[int]
    tasks_completed: int


class WorkersView(_Answer):
    """Workers alive (heartbeat within HEARTBEAT_TIMEOUT), dead, and every one in detail."""

    alive: int
    dead: int
    total: int
    details: list[WorkerView]


class Throughput(_Answer):
    """Tasks completed in the last window."""

    window_seconds: float
    completed: int
    tasks_per_second: float


class Stats(_Answer):
    """The /stats document."""

    tasks: dict[str, int]
    workers: WorkersView
    throughput: Throughput
    reclaims: dict[str, int]
    failures: dict[str, int] = {}
    """The task lifecycle's counters: retries, manual_retries, crash_loops, timed_out."""
    claims: dict[str, float]
    monitor: dict[str, Any]
    uptime_seconds: float


class Health(_Answer):
    """The database answers."""

    status: Literal["ok"]


class EventView(_Answer):
    """One timeline event: a reclaim (its cause as ``kind``), a dead worker, a resumption..."""

    event_id: int
    at: float
    kind: str
    task_id: int | None
    worker_id: str | None
    attempt: int | None
    status: str | None
    progress: float | None
    detail: str | None


class EventList(_Answer):
    """Events in order, and the id to pass as ``after`` next time (null: none yet)."""

    events: list[EventView]
    last_event_id: int | None


class LatestCheckpoint(_Answer):
    """A task's latest accepted checkpoint, or null when it has none."""

    task_id: int
    checkpoint: CheckpointView | None


class DashboardState(_Answer):
    """Everything the dashboard page shows (see the README's Dashboard section)."""

    now: float
    headline: dict[str, Any]
    tasks: dict[str, int]
    workers: list[dict[str, Any]]
    running: list[dict[str, Any]]
    pending: list[dict[str, Any]]
    recent: list[dict[str, Any]]
    throughput: dict[str, Any]
    reclaims: dict[str, int]
    events: list[EventView]
    settings: dict[str, Any]


class ScheduleView(_Answer):
    """A periodic schedule: what it submits, when (``every_seconds`` or ``cron``, UTC), its
    next and last run."""

    schedule_id: int
    task_type: str
    params: dict[str, Any]
    priority: int
    max_attempts: int
    max_retries: int
    retry_backoff: float
    timeout_seconds: float | None
    every_seconds: float | None
    cron: str | None
    next_run_at: float
    last_run_at: float | None
    last_task_id: int | None
    runs: int
    created_at: float


class ScheduleList(_Answer):
    """Every schedule, oldest first."""

    schedules: list[ScheduleView]


class ScheduleDeleted(_Answer):
    """A schedule stopped (the tasks it submitted stay)."""

    schedule_id: int
    deleted: Literal[True]
