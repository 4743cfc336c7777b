"""The public task API: declare task types with :func:`task`, load them into a :class:`Registry`.

A task module (built in, or named in ``TASK_MODULES``) does ``from tasks import task`` and
decorates ``def run(params, resume, checkpoint) -> dict``. The names exported here are the
stable contract for such modules. Importing this package loads pydantic only: numpy is
imported when a task runs, so the dispatcher can validate submissions cheaply.
"""

from __future__ import annotations

from tasks.base import (
    CheckpointFn,
    CombineFn,
    InvalidCheckpoint,
    InvalidParams,
    SplitFn,
    Stopwatch,
    TaskInterrupted,
    TaskType,
    noop_checkpoint,
    task,
)
from tasks.registry import BUILTIN_MODULES, Registry, TaskModuleError, load_registry

__all__ = [
    "BUILTIN_MODULES",
    "CheckpointFn",
    "CombineFn",
    "InvalidCheckpoint",
    "InvalidParams",
    "Registry",
    "SplitFn",
    "Stopwatch",
    "TaskInterrupted",
    "TaskModuleError",
    "TaskType",
    "load_registry",
    "noop_checkpoint",
    "task",
]
