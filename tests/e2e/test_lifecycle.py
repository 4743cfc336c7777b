"""The task lifecycle with real processes on both stores: retries of a failing task, the retry
command, a delayed task waking a long poll, the crash-loop breaker and a task that progresses
across real kill -9s, and timeouts of cooperative and non-cooperative tasks (a supervised
worker that ends itself on an overrun is started again)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from shared.cluster import LocalCluster, wait_until
from shared.config import REPO_ROOT
from tests.conftest import ClusterFactory

MODULE = "tests.support.lifecycle_tasks"
FAST = {"TASK_MODULES": MODULE, "HEARTBEAT_INTERVAL": "0.2", "HEARTBEAT_TIMEOUT": "1.0",
        "CHECKPOINT_INTERVAL": "0.01"}


def test_a_failing_task_is_retried_with_backoff_until_it_succeeds(
    make_cluster: ClusterFactory, tmp_path: Path,
) -> None:
    cluster = make_cluster(**FAST)
    cluster.start_worker("w1")
    counter = tmp_path / "runs"
    task_id = cluster.submit("flaky", {"counter": str(counter), "fail_times": 2},
                             max_retries=3, retry_backoff=0.4)
    view = cluster.wait_finished(task_id, 60)
    assert view["status"] == "completed" and view["result"] == {"runs": 3}
    assert view["attempt"] == 3 and view["retries"] == 2 and view["error"] is not None
    errors = view["attempts"]
    assert [(a["attempt"], a["kind"], a["worker_id"]) for a in errors] == [
        (1, "error", "w1"), (2, "error", "w1")]
    assert errors[1]["error"] == "RuntimeError: flaky failure 2 of 2"
    # Not claimed before its backoff was over (both times are the store's clock): the second
    # retry waited at least half of 0.4 * 2.
    assert view["claimed_at"] >= errors[1]["at"] + 0.4
    assert cluster.stats()["failures"]["retries"] == 2


def test_the_retry_command_puts_a_failed_task_back(
    make_cluster: ClusterFactory, tmp_path: Path,
) -> None:
    cluster = make_cluster(**FAST)
    cluster.start_worker("w1")
    task_id = cluster.submit("flaky", {"counter": str(tmp_path / "runs"), "fail_times": 1},
                             max_retries=0)
    assert cluster.wait_finished(task_id, 60)["status"] == "failed"
    done = subprocess.run([sys.executable, "add_task.py", "retry", str(task_id), "--url",
                           cluster.url], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"task {task_id} is back in the queue"
    view = cluster.wait_finished(task_id, 60)
    assert view["status"] == "completed" and view["attempt"] == 2
    again = subprocess.run([sys.executable, "add_task.py", "retry", str(task_id), "--url",
                            cluster.url], cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 1 and "(409)" in again.stderr and "completed" in again.stderr


def test_a_delayed_task_wakes_a_waiting_long_poll_when_due(cluster: LocalCluster) -> None:
    answer: dict = {}

    def poll() -> None:
        answer["resp"] = requests.post(f"{cluster.url}/get-task", json={
            "worker_id": "w1", "instance_id": "i1", "wait": 25}, timeout=40)

    waiter = threading.Thread(target=poll)
    waiter.start()
    wait_until(lambda: cluster.stats()["claims"]["waiting"] == 1, 10, message="poll waits")
    task_id = cluster.submit("noop", {}, delay_seconds=1.5)
    waiter.join(timeout=40)
    assert answer["resp"].status_code == 200
    assert answer["resp"].json()["task"]["task_id"] == task_id
    view = cluster.task(task_id)
    due = view["created_at"] + 1.5  # the store's clock, like claimed_at
    assert view["claimed_at"] >= due
    assert view["claimed_at"] - due < 1.0  # woken by the due time, not by a later look


def test_a_task_that_kills_its_workers_at_one_checkpoint_is_quarantined(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(**FAST, CRASH_LOOP_LIMIT="3")
    for n in range(4):
        cluster.start_worker(f"w{n}")
    task_id = cluster.submit("suicide", {"kills": 50}, max_attempts=10)
    view = cluster.wait_finished(task_id, 90)
    assert view["status"] == "failed" and view["attempt"] == 3
    assert view["error"] == "crash loop: killed 3 workers at the same checkpoint"
    assert [a["kind"] for a in view["attempts"]] == ["crash"] * 3
    dead = [w for w, proc in cluster.workers.items() if proc.poll() is not None]
    assert len(dead) == 3 and all(cluster.workers[w].returncode == -9 for w in dead)
    assert {a["worker_id"] for a in view["attempts"]} == set(dead)
    assert cluster.stats()["failures"]["crash_loops"] == 1


def test_a_task_that_progresses_across_crashes_keeps_being_retried(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(**FAST, CRASH_LOOP_LIMIT="3")
    for n in range(6):
        cluster.start_worker(f"w{n}")
    task_id = cluster.submit("suicide", {"kills": 4, "progressing": True}, max_attempts=10)
    view = cluster.wait_finished(task_id, 120)
    assert view["status"] == "completed" and view["result"] == {"step": 4}
    assert view["attempt"] == 5 and [a["kind"] for a in view["attempts"]] == ["crash"] * 4
    assert sum(proc.poll() == -9 for proc in cluster.workers.values()) == 4
    assert cluster.stats()["failures"]["crash_loops"] == 0


def test_a_cooperative_task_is_stopped_at_its_timeout(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(**FAST)
    worker = cluster.start_worker("w1")
    task_id = cluster.submit("spin", {"seconds": 30}, timeout_seconds=1, max_retries=3)
    view = cluster.wait_finished(task_id, 30)
    assert view["status"] == "failed" and view["error"] == "timed out after 1 s"
    assert [(a["kind"], a["attempt"]) for a in view["attempts"]] == [("timeout", 1)]
    # The worker stopped the task and carries on with the next one.
    after = cluster.wait_finished(cluster.submit("noop", {}), 30)
    assert after["status"] == "completed" and after["worker_id"] == "w1"
    assert worker.poll() is None
    assert view["finished_at"] - view["claimed_at"] < 10


def test_a_task_that_ignores_its_timeout_ends_its_worker(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(**FAST, TIMEOUT_GRACE="1")
    worker = cluster.start_worker("w1")
    task_id = cluster.submit("spin", {"seconds": 60, "cooperative": False}, timeout_seconds=1)
    view = cluster.wait_finished(task_id, 30)
    assert view["status"] == "failed" and view["error"] == "timed out after 1 s"
    assert worker.wait(timeout=30) == 75
    assert "ignored its timeout of 1.0 s" in cluster.worker_log("w1")
    assert view["finished_at"] - view["claimed_at"] < 30  # failed long before its 60 s


@pytest.mark.parametrize("cluster_backend", ["sqlite"])  # the worker side: any store will do
def test_a_supervised_worker_ended_by_an_overrun_is_started_again(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(**FAST, TIMEOUT_GRACE="1")
    sup = cluster.start_supervisor("host", 1)
    task_id = cluster.submit("spin", {"seconds": 60, "cooperative": False}, timeout_seconds=1)
    wait_until(lambda: cluster.task(task_id)["status"] != "pending", 60,
               message="the supervised worker claimed the task")
    pid = cluster.child_pid("host-1")
    view = cluster.wait_finished(task_id, 30)
    assert view["status"] == "failed" and view["error"] == "timed out after 1 s"
    # Exit code 75 is a crash to the supervisor (not a configuration error): it restarts.
    wait_until(lambda: cluster.child_pid("host-1") not in (None, pid), 30,
               message="the worker that ended itself was started again")
    after = cluster.wait_finished(cluster.submit("noop", {}), 30)
    assert after["status"] == "completed" and after["worker_id"] == "host-1"
    assert "exit code 75 (its task ignored its timeout" in cluster.worker_log("host")
    assert sup.poll() is None


def test_the_schedule_commands(cluster: LocalCluster) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "add_task.py", *args, "--url", cluster.url],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)

    made = cli("schedule", "--every", "3600", "--type", "noop", "--params", '{"x": 1}',
               "--max-retries", "2")
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("schedule 1: every 3600 s, next run at ")
    cron = cli("schedule", "--cron", "0 3 * * *", "1000")
    assert cron.returncode == 0 and "cron '0 3 * * *'" in cron.stdout, cron.stderr
    listed = cli("schedules", "--json")
    views = json.loads(listed.stdout)["schedules"]
    assert [(v["task_type"], v["params"], v["max_retries"]) for v in views] == [
        ("noop", {"x": 1}, 2), ("primes", {"limit": 1000, "algorithm": "sieve"}, 3)]
    bad = cli("schedule", "--cron", "every day", "1000")
    assert bad.returncode == 1 and "(400): cron: " in bad.stderr
    assert cli("unschedule", "1").stdout.strip() == "schedule 1 deleted"
    gone = cli("unschedule", "1")
    assert gone.returncode == 1 and "(404)" in gone.stderr
    # The spec's form is unchanged, and takes the new options.
    plain = cli("2", "1000", "sieve", "--delay", "3600", "--max-retries", "0")
    assert plain.returncode == 0 and plain.stdout.startswith("submitted 2 task(s): ")
    task_id = int(plain.stdout.split()[-1])
    view = cluster.task(task_id)
    assert view["params"] == {"limit": 1000, "algorithm": "sieve"}
    assert view["max_retries"] == 0 and view["run_after"] >= view["created_at"] + 3600
