"""Task execution: adapts the task registry to the worker.

A claimed task is looked up in the worker's registry (the built-ins plus its TASK_MODULES),
its params validated, and its ``run`` called with the claim's checkpoint state (or None) and a
:class:`Checkpointer` as the callback. A task type this worker lacks fails the task with an
error naming the worker (see the README, "Writing a task").
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.utils import task_fields
from tasks.base import TaskInterrupted, TaskType
from tasks.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedTask:
    """A task as ``POST /get-task`` hands it to this worker."""

    task_id: int
    attempt: int
    task_type: str
    params: Any
    resume_state: dict[str, Any] | None
    resume_progress: float | None
    timeout_seconds: float | None = None

    @classmethod
    def from_dict(cls, raw: Any) -> "ClaimedTask":
        """Parse the ``task`` object of a claim; raise ValueError if it is malformed."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"task must be an object, got {type(raw).__name__}")
        task_id, attempt = raw.get("task_id"), raw.get("attempt")
        if not isinstance(task_id, int) or not isinstance(attempt, int):
            raise ValueError(f"task_id and attempt must be integers, got {task_id!r}, {attempt!r}")
        checkpoint = raw.get("checkpoint")
        state = checkpoint.get("state") if isinstance(checkpoint, Mapping) else None
        progress = checkpoint.get("progress") if isinstance(checkpoint, Mapping) else None
        timeout = raw.get("timeout_seconds")
        return cls(
            task_id=task_id,
            attempt=attempt,
            task_type=str(raw.get("task_type")),
            params=raw.get("params"),
            resume_state=state if isinstance(state, dict) else None,
            resume_progress=progress if isinstance(progress, (int, float)) else None,
            timeout_seconds=(float(timeout) if isinstance(timeout, (int, float))
                             and not isinstance(timeout, bool) and timeout > 0 else None),
        )


class SendOutcome(enum.Enum):
    """What became of one checkpoint POST."""

    SENT = "sent"  # 200: saved, lease renewed
    STALE = "stale"  # 409: this attempt no longer holds the task
    FAILED = "failed"  # dispatcher unreachable or refused it: keep computing


class InterruptReason(enum.Enum):
    """Why a checkpoint call stopped the task."""

    SHUTDOWN = "shutdown"  # release the task with the latest state
    REVOKED = "revoked"  # a heartbeat said another attempt owns it: drop silently
    STALE = "stale"  # the checkpoint was refused with 409: drop silently
    TIMED_OUT = "timed_out"  # past its timeout_seconds: drop (the dispatcher fails it)


SendFn = Callable[[dict[str, Any], float], SendOutcome]


class Checkpointer:
    """The checkpoint callback handed to a task: cheap to call, POSTs at most once per interval."""

    def __init__(
        self,
        send: SendFn,
        interval_seconds: float,
        should_stop: Callable[[], bool],
        is_revoked: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        on_call: Callable[[], None] | None = None,
        timeout_seconds: float | None = None,
    ) -> None:
        self._send = send
        self._on_call = on_call
        self._interval = interval_seconds
        self._should_stop = should_stop
        self._is_revoked = is_revoked
        self._clock = clock
        self._last_sent = clock()
        self._deadline = None if timeout_seconds is None else self._last_sent + timeout_seconds
        self.latest_state: dict[str, Any] | None = None
        self.latest_progress: float | None = None
        self.reason: InterruptReason | None = None
        self.sent_count = 0

    def __call__(self, state: dict[str, Any], progress: float) -> None:
        # Kept by reference: when we interrupt, it is from this very call, so the state
        # the task passed cannot have been mutated since.
        self.latest_state, self.latest_progress = state, progress
        if self._should_stop():
            self._interrupt(InterruptReason.SHUTDOWN)
        if self._is_revoked():
            self._interrupt(InterruptReason.REVOKED)
        if self._deadline is not None and self._clock() > self._deadline:
            self._interrupt(InterruptReason.TIMED_OUT)
        if self._on_call is not None:
            self._on_call()
        now = self._clock()
        if now - self._last_sent < self._interval:
            return
        self._last_sent = now
        self.sent_count += 1
        if self._send(state, progress) is SendOutcome.STALE:
            self._interrupt(InterruptReason.STALE)

    def _interrupt(self, reason: InterruptReason) -> None:
        self.reason = reason
        raise TaskInterrupted(reason.value)


def _json_size(result: Any) -> int | None:
    """Bytes of the result as JSON, or None when it is not JSON-able."""
    try:
        return len(json.dumps(result, allow_nan=False, separators=(",", ":")))
    except (TypeError, ValueError, RecursionError):
        return None


# The dispatcher refuses error texts over 10,000 characters; a refused error would be lost.
MAX_ERROR_CHARS = 4_000


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


class UnknownTaskType(LookupError):
    """The claimed task's type is not loaded on this worker."""


def resolve(task: ClaimedTask, registry: Registry, worker_id: str) -> tuple[TaskType, Any]:
    """Look the task type up in the registry and validate its params; raise on either failure."""
    if task.task_type not in registry:
        raise UnknownTaskType(
            f"task type {task.task_type!r} is not loaded on worker {worker_id} (add its module "
            f"to TASK_MODULES there; loaded: {', '.join(registry.names)})"
        )
    task_type = registry.get(task.task_type)
    return task_type, task_type.validate(task.params)


def run_task(
    task: ClaimedTask,
    checkpoint: Checkpointer,
    worker_id: str,
    registry: Registry,
    max_result_bytes: int,
) -> dict[str, Any]:
    """Run a claimed task; return the payload to report, ``{"result": ...}`` or ``{"error": ...}``.

    An error no retry can fix (this worker lacks the task type, the params are invalid, the
    result is not JSON or too large) carries ``"retry": false``: the task fails at once
    instead of using its retries.

    A result over ``max_result_bytes`` becomes an error: the dispatcher would refuse it, and
    the task must end rather than be computed again. :class:`TaskInterrupted` propagates:
    the caller decides between release and drop.
    """
    try:
        task_type, params = resolve(task, registry, worker_id)
    except (LookupError, ValueError) as exc:
        log.error("task %s rejected by worker %s: %s", task.task_id, worker_id, _describe(exc),
                  extra=task_fields(task.task_id, worker_id, task.attempt))
        return {"error": _describe(exc), "retry": False}
    try:
        result = task_type.run(params, task.resume_state, checkpoint)
    except TaskInterrupted:
        raise
    except Exception as exc:  # the task's own failure: reported, never fatal to the worker
        log.warning("task %s failed on worker %s", task.task_id, worker_id, exc_info=True,
                    extra=task_fields(task.task_id, worker_id, task.attempt))
        return {"error": _describe(exc)}
    size = _json_size(result) if isinstance(result, dict) else None
    if size is None:
        return {"error": f"TypeError: task returned a non-JSON result ({type(result).__name__})",
                "retry": False}
    if size > max_result_bytes:
        log.warning("task %s on worker %s: result of %s bytes is over MAX_RESULT_BYTES",
                    task.task_id, worker_id, size,
                    extra=task_fields(task.task_id, worker_id, task.attempt))
        return {"error": f"result too large: {size} bytes is over the limit of "
                         f"{max_result_bytes} (MAX_RESULT_BYTES)", "retry": False}
    return {"result": result}
