"""The contract between task implementations, the registry, the dispatcher and the worker.

A task is pure computation: it gets validated parameters, an optional resume state (the
``state`` of its latest accepted checkpoint) and a ``checkpoint(state, progress)`` callback.
It calls the callback at every safe point (cheaply: the worker decides how often a call is
actually sent to the dispatcher) and returns a JSON-able dict. The callback may raise
:class:`TaskInterrupted`; a task never catches it, so the worker can stop it at a safe point.

:func:`task` declares a task type; built-in and operator modules use it alike.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError


class CheckpointFn(Protocol):
    """Called by a task at each safe point with its resume state and progress in [0, 1]."""

    def __call__(self, state: dict[str, Any], progress: float) -> None: ...


TaskRun = Callable[[Any, "dict[str, Any] | None", CheckpointFn], dict[str, Any]]
SplitFn = Callable[[Any, int], "list[dict[str, Any]]"]
"""``split(params, parts)``: the params of at most ``parts`` tasks that together do the job."""
CombineFn = Callable[["list[dict[str, Any]]"], dict[str, Any]]
"""``combine(results)``: the parts' results, in the order ``split`` gave them, as one result."""


class TaskInterrupted(Exception):
    """Raised by a checkpoint callback to stop a task at a safe point (lease lost, shutdown)."""


class InvalidParams(ValueError):
    """Task parameters failed validation; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


TASK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
"""What a task type's name may be (it is stored with every task and sent on the wire)."""


@dataclass(frozen=True)
class TaskType:
    """A task type: its name, its parameter and state models, and the function that runs it."""

    name: str
    params_model: type[BaseModel]
    run: TaskRun
    description: str
    state_model: type[BaseModel] | None = None
    """The shape of the task's checkpoint state; None accepts any JSON object."""
    never_decrease: tuple[str, ...] = ()
    """State fields that measure work done: a checkpoint where one goes down is corrupt."""
    module: str = ""
    """The module that defines it, named when two modules define one name."""
    split: SplitFn | None = None
    """How a job of this type is cut into parts (split jobs); None: it cannot be split."""
    combine: CombineFn | None = None
    """How the parts' results make the job's result; set exactly when ``split`` is."""

    @property
    def splittable(self) -> bool:
        """True when jobs of this type can run as a group of parts."""
        return self.split is not None and self.combine is not None

    def split_params(self, params: dict[str, Any], parts: int) -> list[dict[str, Any]]:
        """The validated, normalised params of each part (at least one, at most ``parts``)."""
        if self.split is None:
            raise InvalidParams("split", f"task type {self.name!r} cannot be split "
                                         "(it defines no split/combine)")
        pieces = self.split(self.validate(params), parts)
        if not 1 <= len(pieces) <= parts:
            raise ValueError(f"task {self.name!r}: split gave {len(pieces)} parts, "
                             f"asked for at most {parts}")
        return [self.validate(piece).model_dump(mode="json") for piece in pieces]

    def __call__(
        self, params: Any, resume: dict[str, Any] | None, checkpoint: CheckpointFn
    ) -> dict[str, Any]:
        """Run the task directly (tests, benchmarks): the decorated function stays callable."""
        return self.run(params, resume, checkpoint)

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


def task(
    name: str,
    *,
    params: type[BaseModel],
    state: type[BaseModel] | None = None,
    never_decrease: tuple[str, ...] = (),
    description: str | None = None,
    split: SplitFn | None = None,
    combine: CombineFn | None = None,
) -> Callable[[TaskRun], TaskType]:
    """Declare a task type: ``@task("name", params=Model)`` on ``def run(params, resume, ckpt)``.

    The decorated name becomes the :class:`TaskType` (still callable like the function). The
    description defaults to the first line of the function's docstring. A mistake in the
    declaration raises here, at import, so a process never starts with a half-valid task.
    ``split`` and ``combine`` (both or neither) let a job run as a group of parts on several
    workers: ``split(params, n)`` gives the parts' params, ``combine(results)`` the job's
    result from the parts' results.
    """

    def declare(run: TaskRun) -> TaskType:
        _check_declaration(name, params, state, never_decrease, run)
        if (split is None) != (combine is None) or not all(
                f is None or callable(f) for f in (split, combine)):
            raise TypeError(f"task {name!r}: give split and combine together, as functions")
        return TaskType(
            name=name,
            params_model=params,
            run=run,
            description=_first_line(run.__doc__) if description is None else description,
            state_model=state,
            never_decrease=tuple(never_decrease),
            module=getattr(run, "__module__", "") or "",
            split=split,
            combine=combine,
        )

    return declare


def _check_declaration(
    name: Any, params: Any, state: Any, never_decrease: Any, run: Any
) -> None:
    """Raise TypeError or ValueError naming the task and the argument that is wrong."""
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise ValueError(f"task name {name!r}: must match {TASK_NAME.pattern}")
    if not _is_model(params):
        raise TypeError(f"task {name!r}: params must be a pydantic BaseModel class")
    if state is not None and not _is_model(state):
        raise TypeError(f"task {name!r}: state must be a pydantic BaseModel class or None")
    if isinstance(never_decrease, str) or not all(isinstance(f, str) for f in never_decrease):
        raise TypeError(f"task {name!r}: never_decrease must be a tuple of field names")
    unknown = [f for f in never_decrease if state is not None and f not in state.model_fields]
    if unknown:
        raise ValueError(f"task {name!r}: never_decrease names {unknown}, not fields of "
                         f"{state.__name__}")
    try:
        inspect.signature(run).bind(None, None, None)
    except (TypeError, ValueError):
        raise TypeError(f"task {name!r}: {getattr(run, '__name__', run)!s} must take "
                        "(params, resume, checkpoint)") from None


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _first_line(doc: str | None) -> str:
    lines = inspect.cleandoc(doc or "").splitlines()
    return lines[0] if lines else ""


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
