"""Moving a queue from SQLite to PostgreSQL keeps all of it, verified by counts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.db.copy import CopyError, copy_queue, main
from dispatcher.db.postgres import PostgresStore
from dispatcher.db.sqlite import SQLiteStore
from dispatcher.models import NewTask, ReclaimCause, Report, TaskQuery, TaskStatus
from tests.conftest import FakeClock
from tests.support import postgres


@pytest.fixture
def target() -> Iterator[str]:
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


def a_busy_queue(path: Path) -> SQLiteStore:
    """A SQLite queue with tasks in every status, a result, a checkpoint, workers, counters,
    events, a failed attempt, a schedule and a split job."""
    store = SQLiteStore(path, clock=FakeClock())
    ids = [task_id for task_id, _ in store.submit([NewTask("noop", {"i": i}, i % 3, 5,
                                                           owner="0123456789ab")
                                                   for i in range(8)])]
    store.add_token("0123456789ab", "f" * 64, "client", None)
    leases = store.claim("w1", "i1", 4, 100).leases
    store.complete("w1", [Report(leases[0].task_id, 1, '{"echo":{"i":0}}')])
    store.complete("w1", [Report(leases[1].task_id, 1, None, "boom")])
    store.checkpoint("w1", leases[2].task_id, 1, {"n": 3}, 0.5, 100)
    store.release("w1", leases[3].task_id, 1, None, None, cause=ReclaimCause.RELEASED)
    store.cancel(ids[-1])
    store.heartbeat("w2", "i2", [])
    store.add_schedule({"task_type": "noop", "params": {"p": 1}, "priority": 0,
                        "max_attempts": 5, "max_retries": 1, "retry_backoff": 1.0,
                        "timeout_seconds": None, "every_seconds": 60.0, "cron": None},
                       lambda now: now + 60)
    store.submit_group("noop", {}, [NewTask("noop", {"part": i}, 0, 5, owner="0123456789ab")
                                    for i in range(2)])
    return store


def test_a_sqlite_queue_moves_to_postgresql_whole(tmp_path: Path, target: str) -> None:
    source = a_busy_queue(tmp_path / "tasks.db")
    expected = {t.task_id: t for t in source.list_tasks(TaskQuery()).tasks}
    source.close()
    copied = copy_queue(f"sqlite:///{tmp_path / 'tasks.db'}", target)
    assert copied.rows == {"task_groups": 1, "tasks": 10, "task_results": 1, "checkpoints": 1,
                           "workers": 2, "counters": 1, "task_attempts": 1, "schedules": 1,
                           "tokens": 1, "events": 2}
    store = PostgresStore(target)
    assert {t.task_id: t for t in store.list_tasks(TaskQuery()).tasks} == expected
    [schedule] = store.list_schedules()
    assert schedule["params"] == {"p": 1} and schedule["every_seconds"] == 60.0
    assert store.token("0123456789ab")["role"] == "client"  # credentials move too
    assert len(store.list_tasks(TaskQuery(owner="0123456789ab")).tasks) == 10
    assert store.group_owner(1) == "0123456789ab"
    stats = store.stats()
    assert {k: v for k, v in stats["counts"].items() if v} == {
        "pending": 6, "in-progress": 1, "completed": 1, "failed": 1, "cancelled": 1}
    assert stats["counters"] == {ReclaimCause.RELEASED.value: 1}
    events = store.events(None, 10)
    assert [e.kind for e in events] == ["released_on_shutdown", "cancelled"]
    [(new_id, _)] = store.submit([NewTask("noop", {}, 0, 5)])
    assert new_id == max(expected) + 1  # ids continue after the copied ones
    store.cancel(new_id)
    assert store.events(events[-1].event_id, 10)[0].event_id == events[-1].event_id + 1
    assert [p.params for p in store.get_group(1).parts] == [{"part": 0}, {"part": 1}]
    group_id, _, _ = store.submit_group("noop", {}, [NewTask("noop", {}, 0, 5)])
    assert group_id == 2
    [running] = store.list_tasks(TaskQuery(statuses=(TaskStatus.IN_PROGRESS,))).tasks
    leases = store.claim("w1", "i1", 1, 100).leases  # w1/i1 still holds it: handed back as it is
    assert [(lease.task_id, lease.checkpoint.state) for lease in leases] == [
        (running.task_id, {"n": 3})]
    store.close()


def test_the_target_must_be_empty_and_nothing_is_half_copied(tmp_path: Path, target: str) -> None:
    a_busy_queue(tmp_path / "tasks.db").close()
    copy_queue(f"sqlite:///{tmp_path / 'tasks.db'}", target)
    with pytest.raises(CopyError, match="not empty"):
        copy_queue(f"sqlite:///{tmp_path / 'tasks.db'}", target)


def test_the_command_says_what_is_wrong_in_one_line(tmp_path: Path, capsys) -> None:
    assert main([f"sqlite:///{tmp_path / 'missing.db'}", postgres.ADMIN_URL]) == 1
    assert capsys.readouterr().err.strip().startswith("error: no SQLite database at")
    assert main(["postgresql://x/y", "postgresql://x/z"]) == 1
    assert "the source must be a sqlite:/// URL" in capsys.readouterr().err
