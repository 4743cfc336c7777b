"""Request bodies of the HTTP API, validated strictly (no silent coercion, unknown fields refused)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")]
TaskId = Annotated[int, Field(ge=1, le=2**62)]
Attempt = Annotated[int, Field(ge=1, le=2**31 - 1)]  # the attempt column is a 32-bit integer
MAX_SPLIT = 1000
"""Most parts one split job may have."""


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


MAX_DELAY_SECONDS = 366 * 86400
"""How far ahead a task may be scheduled (run_at, delay_seconds): a year and a day."""
Seconds = Annotated[float, Field(ge=0, le=MAX_DELAY_SECONDS)]


class _TaskOptions(_Body):
    """What a submission and a schedule both say about the tasks they make."""

    task_type: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0
    max_attempts: Annotated[int, Field(ge=1, le=100)] | None = None
    max_retries: Annotated[int, Field(ge=0, le=1000)] | None = None
    retry_backoff: Annotated[float, Field(ge=0, le=3600)] | None = None
    timeout_seconds: Annotated[float, Field(gt=0, le=MAX_DELAY_SECONDS)] | None = None


class SubmitTask(_TaskOptions):
    """One task submission (the params are validated by the task registry)."""

    run_at: Annotated[float, Field(ge=0)] | None = None
    delay_seconds: Seconds | None = None
    split: Annotated[int, Field(ge=1, le=MAX_SPLIT)] | None = None
    """Run the job as a group of at most this many parts on different workers (a split job)."""


class NewSchedule(_TaskOptions):
    """A periodic schedule: a task every ``every_seconds``, or on a cron expression (UTC)."""

    every_seconds: Annotated[float, Field(ge=1, le=MAX_DELAY_SECONDS)] | None = None
    cron: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None


class SubmitBatch(_Body):
    """A batch submission; each item is validated as a SubmitTask."""

    tasks: Annotated[list[Any], Field(min_length=1)]


class HeldTask(_Body):
    """A (task, attempt) lease a worker believes it holds."""

    task_id: TaskId
    attempt: Attempt


class Heartbeat(_Body):
    """A worker's sign of life, with the leases it holds."""

    worker_id: Name
    instance_id: Name | None = None
    tasks: list[HeldTask] = Field(default_factory=list, max_length=10_000)
    stopping: bool = False


class SaveCheckpoint(_Body):
    """A task's resume state; renews its lease."""

    worker_id: Name
    task_id: TaskId
    attempt: Attempt
    state: dict[str, Any]
    progress: Annotated[float, Field(ge=0, le=1)] = 0.0


class Release(_Body):
    """A worker giving a task back (shutdown), optionally with its latest state."""

    worker_id: Name
    task_id: TaskId
    attempt: Attempt
    state: dict[str, Any] | None = None
    progress: Annotated[float, Field(ge=0, le=1)] | None = None
    reason: Literal["shutdown", "unstarted"] = "shutdown"


class ResultItem(_Body):
    """One result: exactly one of ``result`` (success) or ``error`` (the task raised)."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["result"], "properties": {"error": {"type": "null"}}},
        {"required": ["error"], "not": {"required": ["result"]},
         "properties": {"error": {"type": "string"}}},
    ]})

    task_id: TaskId
    attempt: Attempt
    result: Any = None
    # Longer than MAX_ERROR_BYTES is cut by the route; this bound only stops absurd texts.
    error: Annotated[str, StringConstraints(max_length=1_000_000)] | None = None
    retry: bool = True
    """False on an error no retry can fix (the worker says so): the task fails at once."""

    @model_validator(mode="after")
    def _one_outcome(self) -> "ResultItem":
        has_result = "result" in self.model_fields_set
        if has_result == (self.error is not None):
            raise ValueError("give exactly one of result or error")
        return self


class GetTask(_Body):
    """A worker asking for work (long poll), optionally reporting its last batch's results."""

    worker_id: Name
    instance_id: Name | None = None
    wait: Annotated[float, Field(ge=0, le=3600)] = 0.0
    max_tasks: Annotated[int, Field(ge=0, le=1000)] | None = None
    results: list[ResultItem] = Field(default_factory=list, max_length=10_000)


class SubmitResult(ResultItem):
    """A single result posted by a worker."""

    worker_id: Name


class SubmitResults(_Body):
    """A batch of results posted by one worker."""

    worker_id: Name
    results: Annotated[list[ResultItem], Field(min_length=1, max_length=10_000)]
