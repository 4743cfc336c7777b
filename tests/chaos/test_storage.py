"""Storage faults (a lock held by another process, a full disk) answer 503, never 500."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.cluster import LocalCluster, wait_until
from tests.conftest import ClusterFactory
from tests.support.audit import audit, reclaim_counters

pytestmark = pytest.mark.chaos

NO_HANG_SECONDS = 5.0

LOCK_HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


class Client:
    """Submits with Idempotency-Key and records every answer; never retries by itself."""

    def __init__(self, url: str) -> None:
        self.url, self.http = url, requests.Session()
        self.acknowledged: dict[str, int] = {}
        self.answers: list[tuple[int, float, dict[str, Any], str | None]] = []

    def submit(self, key: str) -> int:
        started = time.monotonic()
        resp = self.http.post(f"{self.url}/submit-task", headers={"Idempotency-Key": key},
                              json={"task_type": "noop", "params": {"key": key}},
                              timeout=NO_HANG_SECONDS + 5)
        self.answers.append((resp.status_code, time.monotonic() - started, resp.json(),
                             resp.headers.get("Retry-After")))
        if resp.status_code in (200, 201):
            self.acknowledged[key] = resp.json()["task_id"]
        return resp.status_code

    def check_answers(self) -> list[int]:
        """Every answer is 201/200/503 within NO_HANG_SECONDS; a 503 is JSON with Retry-After."""
        for status, seconds, body, retry_after in self.answers:
            assert status in (200, 201, 503), (status, body)
            assert seconds < NO_HANG_SECONDS, f"an answer took {seconds:.1f}s"
            if status == 503:
                assert body["error"]["code"] == "storage_unavailable" and body["error"]["message"]
                assert retry_after is not None and float(retry_after) > 0
        return [status for status, *_ in self.answers]


def complete_everything(cluster: LocalCluster, client: Client, pending: list[str]) -> None:
    """Retry the refused keys until acknowledged; all acknowledged tasks finish; nothing lost."""
    for key in pending:
        wait_until(lambda: client.submit(key) in (200, 201), 20, interval=0.2,
                   message=f"{key} accepted after the fault")
    for task_id in client.acknowledged.values():
        assert cluster.wait_finished(task_id, timeout=30)["status"] == "completed"
    report = audit(cluster.database_url)
    assert report.clean and report.tasks == len(client.acknowledged), report


def test_database_locked_by_another_process_answers_503_then_recovers(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(SQLITE_BUSY_TIMEOUT_MS="300")
    cluster.start_worker("w1")
    client = Client(cluster.url)
    assert client.submit("before") == 201
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(cluster.db_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        locked_at = time.monotonic()
        refused = [f"during-{i}" for i in range(6) if client.submit(f"during-{i}") == 503]
        assert refused, "a write went through an exclusive lock"
        assert cluster.get("/health").status_code == 200, "reads go on in WAL mode"
        wait_until(lambda: time.monotonic() - locked_at > 3.0, 5, interval=0.1)  # hold > timeout
    finally:
        holder.communicate("go\n", timeout=10)
    statuses = client.check_answers()
    print(f"locked: {statuses.count(503)} x 503, max answer "
          f"{max(s for _, s, _, _ in client.answers):.2f}s")
    complete_everything(cluster, client, refused)


def test_locked_database_does_not_make_live_workers_dead(make_cluster: ClusterFactory) -> None:
    """Heartbeats refused by a locked database are not the worker's silence."""
    cluster = make_cluster(SQLITE_BUSY_TIMEOUT_MS="300")
    cluster.start_worker("w1")
    task_id = cluster.submit("sleep", {"seconds": 8})
    wait_until(lambda: cluster.task(task_id)["status"] == "in-progress", 20, message="claimed")
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(cluster.db_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        locked_at = time.monotonic()
        wait_until(lambda: time.monotonic() - locked_at > 4.5, 6, interval=0.1)  # > 2 x HEARTBEAT_TIMEOUT
    finally:
        holder.communicate("go\n", timeout=10)
    view = cluster.wait_finished(task_id, timeout=30)
    counters = reclaim_counters(cluster.database_url)
    assert counters.get("dead_worker", 0) == 0, "a live worker was declared dead after the lock"
    assert view["attempt"] == 1


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs mounted for this test (root only), always unmounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill the disk needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a filler file until the disk is full; return it."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out:  # unbuffered: close() has nothing to flush
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_full_disk_answers_503_and_service_resumes_by_itself(
    make_cluster: ClusterFactory, small_disk: Path, tmp_path: Path
) -> None:
    db_path = small_disk / "tasks.db"
    cluster = make_cluster(tmp_path / "cluster", DATABASE_URL=f"sqlite:///{db_path}")
    cluster.db_path = db_path
    cluster.start_worker("w1")
    client = Client(cluster.url)
    for i in range(20):
        assert client.submit(f"before-{i}") == 201
    filler = fill(small_disk)
    refused = [f"full-{i}" for i in range(30) if client.submit(f"full-{i}") == 503]
    assert refused, "writes went on with the disk full"
    assert cluster.dispatcher is not None and cluster.dispatcher.poll() is None
    filler.unlink()
    statuses = client.check_answers()
    print(f"disk full: {statuses.count(503)} x 503 of {len(statuses)} answers")
    complete_everything(cluster, client, refused)
    assert cluster.healthy()
