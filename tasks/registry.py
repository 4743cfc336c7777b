"""The task types a process knows: the built-in modules plus the operator's TASK_MODULES.

:func:`load_registry` imports each module once at start and collects the :class:`TaskType`
objects it defines (``@task`` makes them). The result is a frozen :class:`Registry` that the
entry points hand to the worker and the dispatcher; nothing here is global. Task code only
ever comes from modules installed on the host and named in the configuration.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType, ModuleType
from typing import Any

from tasks.base import InvalidParams, TaskType

BUILTIN_MODULES = ("tasks.prime_task", "tasks.compute_task")
"""The modules of the built-in task types, loaded first by every process."""


class TaskModuleError(Exception):
    """A task module cannot be loaded; the one-line message names the module."""


class DuplicateTaskType(ValueError):
    """Two different task types have the same name."""


class Registry:
    """Task types by name, fixed when the process starts."""

    def __init__(self, task_types: Iterable[TaskType]) -> None:
        by_name: dict[str, TaskType] = {}
        for task_type in task_types:
            known = by_name.setdefault(task_type.name, task_type)
            if known is not task_type:
                raise DuplicateTaskType(
                    f"task type {task_type.name!r} is already defined by "
                    f"{known.module or 'another task type'}"
                )
        self._by_name: Mapping[str, TaskType] = MappingProxyType(by_name)

    @property
    def names(self) -> tuple[str, ...]:
        """The names of every task type, sorted."""
        return tuple(sorted(self._by_name))

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[TaskType]:
        return (self._by_name[name] for name in self.names)

    def get(self, name: str) -> TaskType:
        """The task type called name; InvalidParams on "task_type" if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(self.names)
            message = f"unknown task type {name!r}; known: {known}"
            raise InvalidParams("task_type", message) from None

    def validate_task(self, task_type: Any, params: Any) -> dict[str, Any]:
        """Validate a submitted task; return its params normalised, defaults filled in."""
        if not isinstance(task_type, str):
            raise InvalidParams("task_type", "must be a string")
        return self.get(task_type).validate(params).model_dump(mode="json")

    def check_checkpoint(
        self, task_type: str, state: dict[str, Any], previous: dict[str, Any] | None
    ) -> None:
        """Refuse a corrupt checkpoint (InvalidCheckpoint naming the field).

        A task type this process does not know (its module was removed since the task was
        submitted) gets no type-specific checks: refusing would only stall a running task.
        """
        if task_type in self._by_name:
            self._by_name[task_type].check_checkpoint(state, previous)


def load_registry(module_names: Iterable[str] = ()) -> Registry:
    """The built-in task types plus those of each named module; TaskModuleError names a bad one."""
    found: list[TaskType] = []
    for name in (*BUILTIN_MODULES, *module_names):
        defined = task_types_of(_import(name), name)
        try:
            Registry([*found, *defined])
        except DuplicateTaskType as exc:
            raise TaskModuleError(f"TASK_MODULES: {name}: {exc}") from None
        found.extend(defined)
    return Registry(found)


def task_types_of(module: ModuleType, name: str) -> list[TaskType]:
    """The distinct task types at the top level of a module; TaskModuleError if there is none."""
    unique = {id(value): value for value in vars(module).values() if isinstance(value, TaskType)}
    if not unique:
        raise TaskModuleError(
            f"TASK_MODULES: {name} defines no task type (decorate a function with @task)"
        )
    return list(unique.values())


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise TaskModuleError(
                f"TASK_MODULES: no module named {name!r} (is it installed on this host, or on "
                "PYTHONPATH?)"
            ) from None
        raise TaskModuleError(f"TASK_MODULES: {name} raised on import: {_describe(exc)}") from None
    # Operator code: whatever it raises must become the one-line start-up error, not a traceback.
    except Exception as exc:
        raise TaskModuleError(f"TASK_MODULES: {name} raised on import: {_describe(exc)}") from None


def _describe(exc: Exception) -> str:
    """``Type: message (file, line N)`` on one line; the line is module-level code that raised."""
    message = " ".join(str(exc).split()) or "(no message)"
    # The innermost module-level frame: the module's own line, even when a call made there
    # (a @task declaration, a library) raised deeper down.
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.name == "<module>"]
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {message}{where}"
