"""Several dispatchers on one PostgreSQL database: wake-ups, failover, one clock, detection."""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from pathlib import Path

import psycopg
import pytest
import requests

from shared.cluster import LocalCluster, wait_until
from tests.conftest import ClusterFactory

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


@pytest.fixture
def cluster_backend() -> str:
    """Only PostgreSQL lets dispatchers share a queue."""
    return "postgres"


def skewed(seconds: int) -> dict[str, str]:
    """Environment that shifts a process's wall clock by ``seconds`` (libfaketime)."""
    if not FAKETIME.exists():
        pytest.fail(f"libfaketime missing ({FAKETIME}); ./run_tests.sh installs Debian's faketime")
    return {"LD_PRELOAD": str(FAKETIME), "FAKETIME": f"{seconds:+d}s",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_NO_CACHE": "1"}


def stats(url: str) -> dict:
    return requests.get(f"{url}/stats", timeout=10).json()


def healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_a_long_poll_on_b_wakes_when_a_task_is_submitted_through_a(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster()
    b = cluster.add_dispatcher()
    delays = []
    for i in range(7):
        answer: dict = {}
        waiter = threading.Thread(target=lambda: answer.update(
            resp=requests.post(f"{b}/get-task", json={"worker_id": f"w{i}", "instance_id": "i",
                                                      "wait": 20}, timeout=30),
            at=time.monotonic()))
        waiter.start()
        wait_until(lambda: stats(b)["claims"]["waiting"] == 1, 10, message="B's poll waits")
        submitted = time.monotonic()
        cluster.submit("noop", {"i": i})
        waiter.join(timeout=25)
        assert answer["resp"].status_code == 200
        delays.append(answer["at"] - submitted)
    # A lost notification would leave the poll to its re-check, a second or two later.
    assert statistics.median(delays) < 0.25, delays


def test_a_wait_on_a_wakes_when_the_task_a_created_is_finished_through_b(
    make_cluster: ClusterFactory,
) -> None:
    """A waits without reading a task it has just created; the result posted through B
    still wakes it at once (B's announcement), with the result, not at its next re-check."""
    cluster = make_cluster()
    b = cluster.add_dispatcher()
    delays = []
    for i in range(5):
        task_id = cluster.submit("noop", {"i": i})
        answer: dict = {}
        waiter = threading.Thread(target=lambda: answer.update(
            view=requests.get(f"{cluster.url}/task/{task_id}?wait=20", timeout=30).json(),
            at=time.monotonic()))
        waiter.start()
        [lease] = requests.post(f"{b}/get-task", json={
            "worker_id": "w", "instance_id": "i", "max_tasks": 1}, timeout=10).json()["tasks"]
        assert lease["task_id"] == task_id
        wait_until(lambda: stats(cluster.url)["tasks"].get("in-progress") == 1, 10,
                   message="A sees the lease")
        finished = time.monotonic()
        resp = requests.post(f"{b}/submit-result", json={
            "worker_id": "w", "task_id": task_id, "attempt": lease["attempt"], "result": i},
            timeout=10)
        assert resp.status_code == 200
        waiter.join(timeout=25)
        assert answer["view"]["status"] == "completed" and answer["view"]["result"] == i
        delays.append(answer["at"] - finished)
    # A lost notification would leave the wait to its re-check, a second later.
    assert statistics.median(delays) < 0.5, delays


def test_a_dead_worker_is_detected_when_its_dispatcher_died_with_it(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(CHECKPOINT_INTERVAL="0.5")
    a = cluster.url
    b = cluster.add_dispatcher()
    # Long enough to be under way when w1 dies; w2 then sleeps only what is left of it.
    task_id = cluster.submit("sleep", {"seconds": 8})
    cluster.start_worker("w1", env={"DISPATCHER_URL": a})  # knows only A
    wait_until(lambda: cluster.task(task_id)["progress"] > 0.1, 30, message="task under way")
    cluster.kill_worker("w1")
    cluster.kill_dispatcher_at(a)
    killed = time.monotonic()
    wait_until(lambda: requests.get(f"{b}/task/{task_id}", timeout=5).json()["status"]
               == "pending", 15, interval=0.05, message="requeued by B")
    detected = time.monotonic() - killed
    assert detected < 2.0 + 1.5, detected  # HEARTBEAT_TIMEOUT + a sweep, with slack for load
    assert stats(b)["reclaims"]["dead_worker"] == 1
    cluster.start_worker("w2", env={"DISPATCHER_URL": b})
    # The rest of its 8 s (and w2's start) may take longer than one long poll under load.
    view = wait_until(lambda: (v := requests.get(f"{b}/task/{task_id}", params={"wait": 10},
                                                 timeout=20).json())["status"]
                      in ("completed", "failed") and v, 90, message="the task finished on w2")
    assert view["status"] == "completed" and view["attempt"] == 2
    assert view["result"]["resumed_from_seconds"] > 0  # from the checkpoint, not from scratch


@pytest.mark.parametrize("skew", [-30, 45])
def test_dispatchers_with_skewed_clocks_agree_on_who_is_alive(
    make_cluster: ClusterFactory, skew: int
) -> None:
    cluster = make_cluster(CHECKPOINT_INTERVAL="0.5")
    a = cluster.url
    b = cluster.add_dispatcher(env=skewed(skew))
    task_id = cluster.submit("sleep", {"seconds": 6})
    cluster.start_worker("w1", env={"DISPATCHER_URL": b})  # only the skewed one hears it
    view = requests.get(f"{a}/task/{task_id}", params={"wait": 30}, timeout=40).json()
    assert view["status"] == "completed" and view["attempt"] == 1
    for url in (a, b):
        seen = stats(url)
        assert seen["reclaims"]["dead_worker"] == 0 and seen["workers"]["alive"] == 1
        [worker] = seen["workers"]["details"]
        assert abs(worker["seconds_since_heartbeat"]) < 2.0, (url, worker)
    # And a real death is seen after HEARTBEAT_TIMEOUT, not skew seconds early or late.
    second = cluster.submit("sleep", {"seconds": 30})
    wait_until(lambda: cluster.task(second)["status"] == "in-progress", 20, message="running")
    cluster.kill_worker("w1")
    killed = time.monotonic()
    wait_until(lambda: cluster.task(second)["status"] == "pending", 15, interval=0.05,
               message="requeued")
    assert 1.0 < time.monotonic() - killed < 2.0 + 1.5


def test_one_dispatcher_restarting_does_not_pause_detection(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(CHECKPOINT_INTERVAL="0.5")
    a = cluster.url
    b = cluster.add_dispatcher()
    task_id = cluster.submit("sleep", {"seconds": 30})
    cluster.start_worker("w1", env={"DISPATCHER_URL": a})
    wait_until(lambda: cluster.task(task_id)["status"] == "in-progress", 20, message="running")
    cluster.kill_dispatcher_at(b)
    cluster.start_dispatcher_at(b)  # B restarts; A kept sweeping: no cluster-wide grace
    cluster.kill_worker("w1")
    killed = time.monotonic()
    wait_until(lambda: cluster.task(task_id)["status"] == "pending", 15, interval=0.05,
               message="requeued")
    assert time.monotonic() - killed < 2.0 + 1.5
    assert stats(a)["monitor"]["in_grace_period"] is False


def test_scripts_run_two_dispatchers_on_one_database(
    tmp_path: Path, make_cluster: ClusterFactory
) -> None:
    import subprocess
    import sys

    from shared.config import REPO_ROOT
    from shared.utils import free_port

    database = make_cluster().database_url  # a fresh database (its dispatcher stays aside)
    ports = [free_port(), free_port()]
    env = {**os.environ, "DATABASE_URL": database, "RUN_DIR": str(tmp_path / "run"),
           "DISPATCHER_URL": ",".join(f"http://127.0.0.1:{p}" for p in ports)}
    started = [subprocess.Popen(["./start_dispatcher.sh", str(port)], cwd=REPO_ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for port in ports]
    try:
        for port in ports:
            wait_until(lambda p=port: healthy(f"http://127.0.0.1:{p}"), 60, interval=0.1,
                       message=f"dispatcher on {port}")
        started.append(subprocess.Popen(["./start_worker.sh", "sw-1"], cwd=REPO_ROOT, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        out = subprocess.run([sys.executable, "add_task.py", "2", "100000", "--wait",
                              "--timeout", "60"], cwd=REPO_ROOT, env=env, capture_output=True,
                             text=True, timeout=90)
        assert out.returncode == 0 and out.stdout.count("count=9592") == 2, out.stderr
        pidfiles = sorted(p.name for p in (tmp_path / "run").glob("*.pid"))
        assert pidfiles == sorted([f"dispatcher-{p}.pid" for p in ports] + ["worker-sw-1.pid"])
        cleaned = subprocess.run(["./cleanup.sh"], cwd=REPO_ROOT, env=env, capture_output=True,
                                 text=True, timeout=60)
        assert all(f"stopped dispatcher-{p} (pid" in cleaned.stdout for p in ports)
        assert [proc.wait(timeout=10) for proc in started] == [0, 0, 0]
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()


def test_a_schedule_fires_once_per_period_with_two_dispatchers(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster()
    b = cluster.add_dispatcher()
    resp = cluster.post("/schedules", {"task_type": "noop", "params": {}, "every_seconds": 1})
    assert resp.status_code == 201
    schedule_id = resp.json()["schedule_id"]

    def runs(url: str) -> int:
        found = requests.get(f"{url}/schedules", timeout=10).json()["schedules"]
        return found[0]["runs"]

    wait_until(lambda: runs(b) >= 4, 30, message="4 periods")
    cluster.kill_dispatcher()  # B alone keeps the schedule going
    before = runs(b)
    wait_until(lambda: runs(b) >= before + 2, 30, message="2 more periods through B")
    assert requests.delete(f"{b}/schedules/{schedule_id}", timeout=10).status_code == 200
    with psycopg.connect(cluster.database_url) as conn:
        keys = [row[0] for row in conn.execute(
            "SELECT idempotency_key FROM tasks WHERE idempotency_key LIKE %s",
            (f"schedule:{schedule_id}:%",))]
        [(total,)] = conn.execute("SELECT runs FROM schedules").fetchall() or [(None,)]
    periods = sorted(float(key.rsplit(":", 1)[1]) for key in keys)
    assert len(keys) == len(set(keys)) >= 6  # one task per period, none twice
    # Periods a whole number of seconds apart: each fired once, on its own period (a period
    # is skipped, never doubled, if no timer got to it in time).
    steps = [later - earlier for earlier, later in zip(periods, periods[1:])]
    assert all(step >= 1 and abs(step - round(step)) < 1e-6 for step in steps), periods
    assert total is None  # deleted


def test_a_delayed_task_submitted_through_a_wakes_a_long_poll_on_b_when_due(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster()
    b = cluster.add_dispatcher()
    answer: dict = {}
    waiter = threading.Thread(target=lambda: answer.update(resp=requests.post(
        f"{b}/get-task", json={"worker_id": "w1", "instance_id": "i", "wait": 25}, timeout=40)))
    waiter.start()
    wait_until(lambda: stats(b)["claims"]["waiting"] == 1, 10, message="B's poll waits")
    task_id = cluster.submit("noop", {}, delay_seconds=1.5)
    waiter.join(timeout=40)
    assert answer["resp"].status_code == 200
    assert answer["resp"].json()["task"]["task_id"] == task_id
    view = cluster.task(task_id)
    due = view["created_at"] + 1.5  # the database's clock, like claimed_at
    assert due <= view["claimed_at"] < due + 1.0
