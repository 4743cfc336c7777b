"""The contract between task implementations, the registry, the dispatcher and the worker.

A task is pure computation: it gets validated parameters, an optional resume state (the
``state`` of its latest accepted checkpoint) and a ``checkpoint(state, progress)`` callback.
It calls the callback at every safe point (cheaply: the worker decides how often a call is
actually sent to the dispatcher) and returns a JSON-able dict. The callback may raise
:class:`TaskInterrupted`; a task never catches it, so the worker can stop it at a safe point.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError


class CheckpointFn(Protocol):
    """Called by a task at each safe point with its resume state and progress in [0, 1]."""

    def __call__(self, state: dict[str, Any], progress: float) -> None: ...


TaskRun = Callable[[Any, "dict[str, Any] | None", CheckpointFn], dict[str, Any]]


class TaskInterrupted(Exception):
    """Raised by a checkpoint callback to stop a task at a safe point (lease lost, shutdown)."""


class InvalidParams(ValueError):
    """Task parameters failed validation; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class TaskType:
    """One entry of the fixed task registry."""

    name: str
    params_model: type[BaseModel]
    run: TaskRun
    description: str
    state_model: type[BaseModel] | None = None
    """The shape of the task's checkpoint state; None accepts any JSON object."""
    never_decrease: tuple[str, ...] = ()
    """State fields that measure work done: a checkpoint where one goes down is corrupt."""

    def validate(self, params: Any) -> BaseModel:
        """Validate raw JSON params; raise :class:`InvalidParams` naming the field."""
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise InvalidParams("params", "must be a JSON object")
        return _validated(self.params_model, dict(params), "params", InvalidParams)

    def check_checkpoint(self, state: dict[str, Any], previous: dict[str, Any] | None) -> None:
        """Refuse a corrupt checkpoint (wrong shape, or work done going backwards)."""
        if self.state_model is not None:
            _validated(self.state_model, state, "state", InvalidCheckpoint)
        for name in self.never_decrease if previous else ():
            new, old = state.get(name), previous.get(name)  # type: ignore[union-attr]
            if isinstance(new, (int, float)) and isinstance(old, (int, float)) and new < old:
                raise InvalidCheckpoint(f"state.{name}", f"goes back from {old} to {new}")


class InvalidCheckpoint(InvalidParams):
    """A checkpoint state is malformed or inconsistent with the previous one."""


def _validated(
    model: type[BaseModel], data: dict[str, Any], prefix: str, error: type[InvalidParams]
) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"])
        raise error(f"{prefix}.{loc}" if loc else prefix, first["msg"]) from None


def noop_checkpoint(state: dict[str, Any], progress: float) -> None:
    """A checkpoint callback that discards everything (direct calls, benchmarks)."""


class Stopwatch:
    """Elapsed seconds of a task across resumes: time spent before this run plus this run's."""

    def __init__(self, seconds_before: float = 0.0) -> None:
        self._seconds_before = seconds_before
        self._started = time.monotonic()

    def seconds(self) -> float:
        """Total elapsed seconds so far."""
        return self._seconds_before + (time.monotonic() - self._started)
