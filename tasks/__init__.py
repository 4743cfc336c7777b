"""The fixed registry of task types, and validation of submitted tasks.

Importing this package loads pydantic only: numpy is imported when a task runs, so the
dispatcher can validate submissions cheaply.
"""

from __future__ import annotations

from typing import Any

from tasks.base import InvalidParams, TaskType
from tasks.compute_task import (
    COLLATZ_TASK,
    CPU_BURN_TASK,
    MONTE_CARLO_PI_TASK,
    NOOP_TASK,
    SLEEP_TASK,
    SUM_OF_SQUARES_TASK,
)
from tasks.prime_task import PRIME_TASK

REGISTRY: dict[str, TaskType] = {
    task.name: task
    for task in (
        PRIME_TASK,
        NOOP_TASK,
        SLEEP_TASK,
        CPU_BURN_TASK,
        MONTE_CARLO_PI_TASK,
        SUM_OF_SQUARES_TASK,
        COLLATZ_TASK,
    )
}


def get_task_type(name: str) -> TaskType:
    """The registered task type called name; InvalidParams on "task_type" if there is none."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise InvalidParams("task_type", f"unknown task type {name!r}; known: {known}") from None


def validate_task(task_type: Any, params: Any) -> dict[str, Any]:
    """Validate a submitted task; return its params normalised, defaults filled in."""
    if not isinstance(task_type, str):
        raise InvalidParams("task_type", "must be a string")
    model = get_task_type(task_type).validate(params)
    return model.model_dump(mode="json")


def check_checkpoint(
    task_type: str, state: dict[str, Any], previous: dict[str, Any] | None
) -> None:
    """Refuse a corrupt checkpoint of a registered task; raise InvalidCheckpoint naming the field."""
    get_task_type(task_type).check_checkpoint(state, previous)
