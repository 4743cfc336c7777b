"""Requests waiting for a task to finish (``GET /task/<id>?wait=``), and what spares them reads.

A waiting request used to read its task when it arrived and again after every wake-up. Two
things this dispatcher knows make most of those reads unnecessary:

- *The finished view, from the statement that finished the task.* While requests wait for a
  task, its id is *watched*; a store that finishes a watched task in one statement
  (PostgreSQL's results statement) returns the finished row with it and hands the view to the
  waiting requests before they are woken (:meth:`TaskWaits.deliver`). They answer with it: it
  is the state the task reached while they waited, exactly what a read would have found.
- *A task this dispatcher has just created is not finished yet.* A submission notes the
  ``tasks_finished.generation`` read before it was stored; while that generation has not moved,
  no task has finished through this dispatcher and no other dispatcher has announced one, so
  a request that comes to wait for the new task waits without reading it first
  (:meth:`TaskWaits.surely_unfinished`).

Why that is safe: a waiting request still reads whenever it is woken without a view, when its
wait ends, and at least every ``RECHECK_SECONDS``; what it is spared is a read whose answer is
known. A task finished by another dispatcher whose announcement is lost is seen by the next
recheck, as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from dispatcher.models import Task

FRESH_KEPT = 4096
"""Newly created tasks remembered (the oldest are forgotten first); a task forgotten is read."""


class WaitSlot:
    """One waiting request: the finished view handed to it, if any."""

    __slots__ = ("view",)

    def __init__(self) -> None:
        self.view: Task | None = None


class TaskWaits:
    """The watched tasks, their waiting requests, and the tasks created here; thread-safe."""

    def __init__(self, kept: int = FRESH_KEPT) -> None:
        self.kept = kept
        self._lock = threading.Lock()
        self._slots: dict[int, list[WaitSlot]] = {}
        self._fresh: OrderedDict[int, int] = OrderedDict()  # task id -> finished generation

    @contextmanager
    def watch(self, task_id: int) -> Iterator[WaitSlot]:
        """Watch ``task_id`` for the duration of one waiting request."""
        slot = WaitSlot()
        with self._lock:
            self._slots.setdefault(task_id, []).append(slot)
        try:
            yield slot
        finally:
            with self._lock:
                slots = self._slots.get(task_id, [])
                slots.remove(slot)
                if not slots:
                    self._slots.pop(task_id, None)

    def watched(self) -> Sequence[int]:
        """The ids of the tasks requests are waiting for now."""
        with self._lock:
            return list(self._slots)

    def deliver(self, views: Mapping[int, Task]) -> None:
        """Hand finished views to the requests waiting for them (called before waking them)."""
        with self._lock:
            for task_id, view in views.items():
                for slot in self._slots.get(task_id, ()):
                    slot.view = view
                self._fresh.pop(task_id, None)

    def created(self, task_id: int, finished_generation: int) -> None:
        """A task was created here; ``finished_generation`` was read before it was stored."""
        with self._lock:
            self._fresh[task_id] = finished_generation
            while len(self._fresh) > self.kept:
                self._fresh.popitem(last=False)

    def surely_unfinished(self, task_id: int, finished_generation: int) -> bool:
        """True if the task was created here and nothing has finished since (so it has not)."""
        with self._lock:
            noted = self._fresh.get(task_id)
            if noted is not None and noted != finished_generation:
                del self._fresh[task_id]  # something finished since: from now on, read
                return False
            return noted is not None
