"""A paused worker (zombie) and a hung task lose their lease and get 409."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest
import requests

from shared.cluster import LocalCluster, wait_until
from tests.conftest import ClusterFactory
from tests.support.audit import database

pytestmark = pytest.mark.chaos

HEARTBEAT_TIMEOUT = 2.0


def holder(cluster: LocalCluster, task_id: int) -> tuple[str | None, int]:
    view = cluster.task(task_id)
    return (view["worker_id"] if view["status"] == "in-progress" else None), view["attempt"]


def instance_of(cluster: LocalCluster, worker_id: str) -> str:
    """The instance id the worker's (latest) process announced in its log."""
    found = re.findall(rf"worker {worker_id} \(instance ([0-9a-f]+)\) starting",
                       cluster.worker_log(worker_id))
    assert found, f"worker {worker_id} has not logged its instance yet"
    return found[-1]


def registered(cluster: LocalCluster, worker_id: str) -> bool:
    return any(w["worker_id"] == worker_id and w["alive"]
               for w in cluster.stats()["workers"]["details"])


def stored_result(cluster: LocalCluster, task_id: int) -> dict[str, Any]:
    with database(cluster.database_url) as db:
        rows = db.execute("SELECT attempt, worker_id FROM task_results WHERE task_id = ?",
                          (task_id,)).fetchall()
    assert len(rows) == 1, f"task {task_id} has {len(rows)} result rows"
    return dict(rows[0])


def test_paused_worker_loses_its_task_and_every_late_call_gets_409(
    make_cluster: ClusterFactory,
) -> None:
    # No checkpoints from w1 (interval 100 s): after SIGCONT its heartbeat thread is the first
    # to speak, so the abandonment path is the heartbeat's 409.
    cluster = make_cluster(CHECKPOINT_INTERVAL="100")
    cluster.start_worker("w1")
    task_id = cluster.submit("sleep", {"seconds": 5})
    wait_until(lambda: holder(cluster, task_id) == ("w1", 1), 20, message="w1 runs the task")
    cluster.start_worker("w2")
    wait_until(lambda: registered(cluster, "w2"), 20, message="w2 registered")
    w1_instance = instance_of(cluster, "w1")

    paused_at = time.monotonic()
    cluster.pause_worker("w1")
    wait_until(lambda: holder(cluster, task_id) == ("w2", 2), 10, interval=0.01,
               message="task moved to w2")
    moved_after = time.monotonic() - paused_at
    print(f"zombie: task moved {moved_after:.3f}s after SIGSTOP")
    # Its last beat came up to one HEARTBEAT_INTERVAL before the pause.
    assert HEARTBEAT_TIMEOUT - 1.0 <= moved_after <= 3.0, f"moved {moved_after:.2f}s after the pause"
    cluster.resume_worker("w1")

    wait_until(lambda: re.search(rf"task {task_id} revoked from worker w1 \(heartbeat 409\)",
                                 cluster.worker_log("w1")), 10, message="w1's heartbeat got 409")
    wait_until(lambda: f"task {task_id} stopped on worker w1: revoked" in cluster.worker_log("w1"),
               10, message="w1 abandoned the task")
    # What the zombie would send next, with its own identity and fencing token: all refused.
    beat = cluster.post("/heartbeat", {"worker_id": "w1", "instance_id": w1_instance,
                                       "tasks": [{"task_id": task_id, "attempt": 1}]})
    assert beat.status_code == 409 and beat.json()["revoked"] == [task_id]
    checkpoint = cluster.post("/checkpoint", {"worker_id": "w1", "task_id": task_id, "attempt": 1,
                                              "state": {"slept": 4.0, "elapsed_seconds": 4.0},
                                              "progress": 0.8})
    assert checkpoint.status_code == 409, checkpoint.text
    late = cluster.post("/submit-result", {"worker_id": "w1", "task_id": task_id, "attempt": 1,
                                           "result": {"slept_seconds": 5}})
    assert late.status_code == 409 and late.json()["error"]["code"] == "stale_lease"
    assert holder(cluster, task_id) == ("w2", 2), "a refused call changed the lease"

    view = cluster.wait_finished(task_id, timeout=30)
    assert view["status"] == "completed" and view["worker_id"] == "w2" and view["attempt"] == 2
    assert stored_result(cluster, task_id) == {"attempt": 2, "worker_id": "w2"}
    assert cluster.workers["w1"].poll() is None, "the zombie should live on and take new work"
    assert f"task {task_id} attempt 1: result delivered" not in cluster.worker_log("w1")
    assert cluster.stats()["reclaims"]["dead_worker"] == 1


class HungWorker(threading.Thread):
    """A worker that heartbeats every 0.5 s listing its task but never makes progress."""

    def __init__(self, url: str, task_id: int, attempt: int) -> None:
        super().__init__(daemon=True)
        self.url, self.held = url, [{"task_id": task_id, "attempt": attempt}]
        self.stop = threading.Event()
        self.answers: list[tuple[float, int]] = []  # (monotonic, HTTP status)

    def run(self) -> None:
        with requests.Session() as http:
            while not self.stop.wait(0.5):  # heartbeat pace
                resp = http.post(f"{self.url}/heartbeat", timeout=5, json={
                    "worker_id": "hung", "instance_id": "h1", "tasks": self.held})
                self.answers.append((time.monotonic(), resp.status_code))


def test_hung_task_loses_its_lease_after_lease_duration_and_its_late_result_gets_409(
    make_cluster: ClusterFactory,
) -> None:
    lease = 3.0
    cluster = make_cluster(LEASE_DURATION=str(lease))
    task_id = cluster.submit("sleep", {"seconds": 0.5})
    claimed = cluster.post("/get-task", {"worker_id": "hung", "instance_id": "h1"})
    claimed_at = time.monotonic()
    task = claimed.json()["task"]
    assert task["task_id"] == task_id and task["lease_seconds"] == lease
    hung = HungWorker(cluster.url, task_id, task["attempt"])
    hung.start()
    try:
        cluster.start_worker("w2")
        wait_until(lambda: holder(cluster, task_id)[1] >= 2 or cluster.task(task_id)["status"]
                   != "in-progress", lease + 5, interval=0.01, message="lease lost")
        lost_at, lost_wall = time.monotonic(), time.time()
        workers = {w["worker_id"]: w for w in cluster.stats()["workers"]["details"]}
        assert workers["hung"]["alive"], "the hung worker kept heartbeating"
        late_by = lost_wall - task["lease_expires_at"]
        print(f"hung: lease lost {late_by:+.3f}s after expiry, {lost_at - claimed_at:.3f}s after claim")
        assert -0.05 <= late_by <= 0.5, f"lease lost {late_by:+.3f}s after it expired"
        assert lost_at - claimed_at <= lease + 0.5
        before = [status for at, status in hung.answers if at < lost_at - 0.1]
        assert before and set(before) == {200}, "the hung worker's heartbeats were accepted"
        wait_until(lambda: any(s == 409 for _, s in hung.answers), 5, message="heartbeat 409")
    finally:
        hung.stop.set()
        hung.join(timeout=10)
    late = cluster.post("/submit-result", {"worker_id": "hung", "task_id": task_id,
                                           "attempt": task["attempt"], "result": {"slept_seconds": 0.5}})
    assert late.status_code == 409
    view = cluster.wait_finished(task_id, timeout=30)
    assert view["worker_id"] == "w2" and view["attempt"] == 2
    assert stored_result(cluster, task_id) == {"attempt": 2, "worker_id": "w2"}
    stats = cluster.stats()
    assert stats["reclaims"]["expired_lease"] == 1 and stats["reclaims"]["dead_worker"] == 0
