"""The store directly, on both backends: migrations, status counts, the sweep, durability."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.db import Store, open_store
from dispatcher.db.schema import SCHEMA_VERSION, SQLITE_MIGRATIONS, SQLITE_SCHEMA
from dispatcher.db.sqlite import SQLiteStore
from dispatcher.db.errors import StorageUnavailable
from dispatcher.models import NewTask, ReclaimCause, Report, TaskQuery, TaskStatus
from shared.config import Config
from tests.conftest import FakeClock

NOOP = NewTask("noop", {}, 0, 3)


@pytest.fixture
def store(database_url: str, clock: FakeClock) -> Iterator[Store]:
    opened = open_store(Config(database_url=database_url), clock)
    yield opened
    opened.close()


def true_counts(store: Store) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in TaskStatus:
        n = len(store.list_tasks(TaskQuery(statuses=(status,), limit=1000)).tasks)
        if n:
            counts[status.value] = n
    return counts


def kept_counts(store: Store) -> dict[str, int]:
    return {k: v for k, v in store.stats()["counts"].items() if v}


def test_a_version_1_database_is_migrated_with_its_data(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "v1.db")
    db.executescript(SQLITE_SCHEMA)
    db.execute("INSERT INTO schema_info VALUES ('version', '1')")
    for status in ("pending", "pending", "completed", "failed"):
        db.execute("INSERT INTO tasks (task_type, params, status, max_attempts, created_at) "
                   "VALUES ('noop', '{}', ?, 3, 1)", (status,))
    db.commit()
    db.close()
    store = SQLiteStore(tmp_path / "v1.db")
    check = sqlite3.connect(tmp_path / "v1.db")
    assert int(check.execute("SELECT value FROM schema_info").fetchone()[0]) == SCHEMA_VERSION
    check.close()
    assert kept_counts(store) == {"pending": 2, "completed": 1, "failed": 1} == true_counts(store)
    store.close()
    reopened = SQLiteStore(tmp_path / "v1.db")  # idempotent on the next start
    assert kept_counts(reopened) == true_counts(reopened)
    reopened.close()


def test_a_database_at_a_later_version_gets_the_migrations_it_missed(tmp_path: Path) -> None:
    """Branches merged out of numeric order: a database at v9 that never ran v4, v5 or v7
    (another branch's numbers) gets them at the next start, and keeps its data."""
    db = sqlite3.connect(tmp_path / "v9.db")
    db.executescript(SQLITE_SCHEMA)
    for version in sorted(SQLITE_MIGRATIONS):
        if version not in (4, 5, 7):
            db.executescript(SQLITE_MIGRATIONS[version])
    db.execute("INSERT INTO schema_info VALUES ('version', '9')")
    db.execute("INSERT INTO tasks (task_type, params, status, max_attempts, created_at) "
               "VALUES ('noop', '{}', 'pending', 3, 1)")
    db.commit()
    db.close()
    store = SQLiteStore(tmp_path / "v9.db")
    [lease] = store.claim("w1", "i1", 1, 100).leases  # the claim's index came with v5
    assert lease.task_id == 1
    assert store.get_task(1).max_retries == 0 and store.get_task(1).owner is None
    store.close()
    check = sqlite3.connect(tmp_path / "v9.db")
    columns = {row[1] for row in check.execute("PRAGMA table_info(tasks)")}
    check.close()
    assert {"owner", "run_after", "requeued_at"} <= columns


def test_opening_again_keeps_the_data_and_the_version(database_url: str) -> None:
    first = open_store(Config(database_url=database_url))
    ids = [task_id for task_id, _ in first.submit([NOOP] * 3)]
    second = open_store(Config(database_url=database_url))  # another dispatcher, same database
    assert [second.get_task(i).task_id for i in ids] == ids
    first.close()
    second.close()


def test_status_counts_follow_every_transition(store: Store, clock: FakeClock) -> None:
    ids = [task_id for task_id, _ in store.submit([NOOP] * 6)]
    claimed = store.claim("w1", "i1", 4, 100)
    leases = claimed.leases
    store.complete("w1", [Report(leases[0].task_id, 1, '{"ok":1}')])
    store.complete("w1", [Report(leases[1].task_id, 1, None, "boom")])
    store.release("w1", leases[2].task_id, 1, None, None, cause=ReclaimCause.RELEASED)
    store.cancel(ids[-1])
    store.sweep(2.0, 100, 1.0)  # the first sweep: the cluster resumes, grace starts
    clock.advance(2.5)
    store.sweep(2.0, 100, 10.0)  # w1 is dead: its last task goes back
    assert kept_counts(store) == true_counts(store) == {
        "pending": 3, "completed": 1, "failed": 1, "cancelled": 1}


def test_one_sweep_at_a_time_and_a_gap_restarts_grace(store: Store, clock: FakeClock) -> None:
    store.submit([NOOP])
    store.claim("w1", "i1", 1, 100)
    first = store.sweep(2.0, 100, 1.0)
    assert first.ran and first.resumed_at == clock() and first.reclaims == []
    clock.advance(0.5)
    assert store.sweep(2.0, 100, 1.0).resumed_at == first.resumed_at  # no gap: no resumption
    clock.advance(5)  # nobody swept for 5 s: every dispatcher was down
    gap = store.sweep(2.0, 100, 1.0)
    assert gap.resumed_at == clock() and gap.reclaims == []  # grace again
    reclaims = []
    for _ in range(9):
        clock.advance(0.25)
        reclaims += store.sweep(2.0, 100, 1.0).reclaims
    assert [r.cause for r in reclaims] == [ReclaimCause.DEAD_WORKER]


class FsyncSpy:
    """Records which files os.fsync was asked to flush (by inode), optionally failing."""

    def __init__(self, monkeypatch, fail: bool = False) -> None:
        self.inodes: list[int] = []
        self.fail = fail
        real = os.fsync

        def fsync(fd: int) -> None:
            self.inodes.append(os.fstat(fd).st_ino)
            if self.fail:
                raise OSError(5, "Input/output error")
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)


def wal_inode(store: SQLiteStore) -> int:
    return os.stat(f"{store.path}-wal").st_ino


def test_durable_writes_fsync_the_wal_after_waking_waiters(tmp_path: Path, monkeypatch) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    spy = FsyncSpy(monkeypatch)
    seen_at_commit: list[int] = []
    [(task_id, _)] = store.submit([NOOP], on_commit=lambda: seen_at_commit.append(
        len(spy.inodes)))
    assert seen_at_commit == [0], "waiters are woken before the fsync"
    assert wal_inode(store) in spy.inodes
    fsyncs = len(spy.inodes)
    store.claim("w1", "i1", 1, 100)  # a claim without results is not fsynced
    assert len(spy.inodes) == fsyncs
    store.complete("w1", [Report(task_id, 1, '{"ok":1}')])
    assert len(spy.inodes) == fsyncs + 1
    store.close()


def test_an_fsync_covers_every_commit_made_before_it(tmp_path: Path, monkeypatch) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    store.submit([NOOP])
    spy = FsyncSpy(monkeypatch)
    # Another thread's fsync that started after this commit covers it: no second fsync.
    store._synced = store._commits + 1
    store.submit([NOOP])
    assert spy.inodes == []
    store.close()


def test_a_failed_fsync_is_storage_unavailable_and_not_acknowledged(
    tmp_path: Path, monkeypatch
) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    FsyncSpy(monkeypatch, fail=True)
    with pytest.raises(StorageUnavailable, match="fsync"):
        store.submit([NOOP])
    store.close()


def test_the_committed_data_survives_reopening_without_close(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    ids = [task_id for task_id, _ in store.submit([NOOP] * 3)]
    other = SQLiteStore(tmp_path / "t.db")  # another process's view: the WAL is shared
    assert [other.get_task(i).task_id for i in ids] == ids
    other.close()
    store.close()


class _Watching:
    """A waiter registry for the store: watches ``ids`` and keeps what it is handed."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.views: dict[int, Any] = {}

    def watched(self) -> list[int]:
        return self.ids

    def deliver(self, views: Any) -> None:
        self.views.update(views)


def test_results_hand_watched_tasks_the_view_a_read_finds(store: Store, clock: FakeClock
                                                          ) -> None:
    """The statement that records results (PostgreSQL) returns the finished view of each
    watched task, history included, and nothing for the others; it is what a read finds.
    A store that records results otherwise hands nothing over (its waiters read)."""
    retried = NewTask("noop", {}, 0, 3, max_retries=1)
    ids = [task_id for task_id, _ in store.submit([retried, NOOP, NOOP])]
    [first] = store.claim("w1", "i1", 1, 100.0).leases
    store.complete("w1", [Report(first.task_id, 1, None, error="boom")])  # in its history
    clock.advance(3600)  # past its retry's backoff
    store.promote_due()
    leases = store.claim("w2", "i2", 3, 100.0).leases
    assert sorted((lease.task_id, lease.attempt) for lease in leases) == [
        (ids[0], 2), (ids[1], 1), (ids[2], 1)]
    watching = _Watching([ids[0], ids[1], 10**9])
    outcomes = store.complete("w2", [Report(ids[0], 2, '{"n": 1}'), Report(ids[1], 1, "[2]"),
                                     Report(ids[2], 1, "3")], watchers=watching)
    assert {o.outcome.value for o in outcomes} == {"accepted"}
    if not store.AT_ONCE:
        assert watching.views == {}
        return
    assert sorted(watching.views) == [ids[0], ids[1]]
    for task_id in (ids[0], ids[1]):
        assert watching.views[task_id].to_dict() == store.get_task(task_id).to_dict()
    assert watching.views[ids[0]].result == {"n": 1}
    assert [a["kind"] for a in watching.views[ids[0]].attempts] == ["error"]
    again = _Watching([ids[2]])  # a duplicate report finishes nothing: nothing handed over
    store.complete("w2", [Report(ids[2], 1, "3")], watchers=again)
    assert again.views == {}


def test_a_batch_of_results_is_judged_report_by_report(store: Store) -> None:
    """Results only (PostgreSQL records them in one statement): the holder's first report of
    a task is accepted, the same report again is a duplicate, another one stale, an unknown
    task not found; the result, the dropped checkpoint and the worker's count follow."""
    ids = [task_id for task_id, _ in store.submit([NOOP, NOOP, NOOP])]
    leases = store.claim("w1", "i1", 2, 100.0).leases
    first, second = (lease.task_id for lease in leases)
    store.checkpoint("w1", first, 1, {"at": 1}, 0.5, 100.0)
    reports = [Report(first, 1, '{"n": 1}'), Report(first, 1, '{"n": 1}'),
               Report(first, 1, '{"n": 2}'), Report(ids[2], 1, '{"n": 3}'),
               Report(10**9, 1, "{}"), Report(second, 2, "{}")]
    outcomes = store.complete("w1", reports)
    assert [o.outcome.value for o in outcomes] == [
        "accepted", "duplicate", "stale", "stale", "not_found", "stale"]
    assert store.get_task(first).result == {"n": 1}
    assert store.latest_checkpoint(first) is None
    assert store.get_task(second).status is TaskStatus.IN_PROGRESS
    again = store.complete("w1", [Report(first, 1, '{"n": 1}'), Report(first, 1, '{"n": 9}')])
    assert [o.outcome.value for o in again] == ["duplicate", "stale"]
    [worker] = [w for w in store.stats()["workers"] if w["worker_id"] == "w1"]
    assert worker["tasks_completed"] == 1
