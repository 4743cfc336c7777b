"""The store directly: schema migrations and the trigger-kept status counts."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from dispatcher.db import SQLiteStore, StorageUnavailable
from dispatcher.models import SCHEMA, SCHEMA_VERSION, NewTask, ReclaimCause, Report

NOOP = NewTask("noop", {}, 0, 3)


def true_counts(store: SQLiteStore) -> dict[str, int]:
    rows = store._conn().execute("SELECT status, COUNT(*) FROM tasks GROUP BY status")
    return {status: n for status, n in rows}


def kept_counts(store: SQLiteStore) -> dict[str, int]:
    return {k: v for k, v in store.stats(0.0)["counts"].items() if v}


def test_a_version_1_database_is_migrated_with_its_data(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "v1.db")
    db.executescript(SCHEMA)
    db.execute("INSERT INTO schema_info VALUES ('version', '1')")
    for status in ("pending", "pending", "completed", "failed"):
        db.execute("INSERT INTO tasks (task_type, params, status, max_attempts, created_at) "
                   "VALUES ('noop', '{}', ?, 3, 1)", (status,))
    db.commit()
    db.close()
    store = SQLiteStore(tmp_path / "v1.db")
    version = store._conn().execute("SELECT value FROM schema_info").fetchone()[0]
    assert int(version) == SCHEMA_VERSION
    assert kept_counts(store) == {"pending": 2, "completed": 1, "failed": 1} == true_counts(store)
    store.close()
    reopened = SQLiteStore(tmp_path / "v1.db")  # idempotent on the next start
    assert kept_counts(reopened) == true_counts(reopened)


def test_status_counts_follow_every_transition(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    ids = [task_id for task_id, _ in store.submit([NOOP] * 6, 1.0)]
    leases, _, _ = store.claim("w1", "i1", 4, 2.0, 100)
    store.complete("w1", [Report(leases[0].task_id, 1, '{"ok":1}')], 3.0)
    store.complete("w1", [Report(leases[1].task_id, 1, None, "boom")], 3.0)
    store.release("w1", leases[2].task_id, 1, None, None, 3.0, cause=ReclaimCause.RELEASED)
    store.cancel(ids[-1], 4.0)
    store.reap_dead_workers(silent_since=10.0, now=11.0)
    assert kept_counts(store) == true_counts(store) == {
        "pending": 3, "completed": 1, "failed": 1, "cancelled": 1}


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
    [(task_id, _)] = store.submit([NOOP], 1.0, on_commit=lambda: seen_at_commit.append(
        len(spy.inodes)))
    assert seen_at_commit == [0], "waiters are woken before the fsync"
    assert wal_inode(store) in spy.inodes
    fsyncs = len(spy.inodes)
    store.claim("w1", "i1", 1, 2.0, 100)  # a claim without results is not fsynced
    assert len(spy.inodes) == fsyncs
    store.complete("w1", [Report(task_id, 1, '{"ok":1}')], 3.0)
    assert len(spy.inodes) == fsyncs + 1
    store.close()


def test_an_fsync_covers_every_commit_made_before_it(tmp_path: Path, monkeypatch) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    store.submit([NOOP], 1.0)
    spy = FsyncSpy(monkeypatch)
    # Another thread's fsync that started after this commit covers it: no second fsync.
    store._synced = store._commits + 1
    store.submit([NOOP], 2.0)
    assert spy.inodes == []
    store.close()


def test_a_failed_fsync_is_storage_unavailable_and_not_acknowledged(
    tmp_path: Path, monkeypatch
) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    FsyncSpy(monkeypatch, fail=True)
    with pytest.raises(StorageUnavailable, match="fsync"):
        store.submit([NOOP], 1.0)
    store.close()


def test_the_committed_data_survives_reopening_without_close(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    ids = [task_id for task_id, _ in store.submit([NOOP] * 3, 1.0)]
    other = SQLiteStore(tmp_path / "t.db")  # another process's view: the WAL is shared
    assert [other.get_task(i).task_id for i in ids] == ids
    other.close()
    store.close()
