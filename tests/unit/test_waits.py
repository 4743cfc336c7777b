"""TaskWaits: the requests waiting for tasks, the views handed to them, the tasks created here."""

from __future__ import annotations

from dispatcher.models import Task, TaskStatus
from dispatcher.waits import TaskWaits


def _view(task_id: int) -> Task:
    return Task(task_id=task_id, task_type="noop", params={}, status=TaskStatus.COMPLETED,
                priority=0, attempt=1, max_attempts=3, worker_id="w1", progress=1.0,
                result=None, error=None, created_at=0.0, started_at=0.0, claimed_at=0.0,
                finished_at=1.0, lease_expires_at=None)


def test_a_view_reaches_every_request_waiting_for_its_task_and_no_other() -> None:
    waits = TaskWaits()
    with waits.watch(1) as first, waits.watch(1) as second, waits.watch(2) as other:
        assert sorted(waits.watched()) == [1, 2]
        waits.deliver({1: _view(1), 3: _view(3)})
        assert first.view is not None and first.view.task_id == 1
        assert second.view is first.view
        assert other.view is None
    assert waits.watched() == []
    with waits.watch(1) as later:  # a request that comes after the delivery reads
        assert later.view is None


def test_a_task_created_here_is_surely_unfinished_until_anything_finishes() -> None:
    waits = TaskWaits()
    waits.created(7, finished_generation=4)
    assert waits.surely_unfinished(7, 4)
    assert not waits.surely_unfinished(8, 4)  # not created here: read it
    assert not waits.surely_unfinished(7, 5)  # something finished since: read it
    assert not waits.surely_unfinished(7, 4)  # and from then on
    waits.created(9, finished_generation=4)
    waits.deliver({9: _view(9)})  # its own results: read (or use the view) from now on
    assert not waits.surely_unfinished(9, 4)


def test_only_the_newest_created_tasks_are_remembered() -> None:
    waits = TaskWaits(kept=2)
    for task_id in (1, 2, 3):
        waits.created(task_id, finished_generation=0)
    assert not waits.surely_unfinished(1, 0)
    assert waits.surely_unfinished(2, 0) and waits.surely_unfinished(3, 0)
