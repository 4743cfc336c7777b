"""Failures with real processes and real signals: kill, stale results, leases, restarts."""

from __future__ import annotations

import signal
import sqlite3
import time
from typing import Any

import pytest

from shared.cluster import LocalCluster, wait_until
from shared.utils import free_port
from tests.support.audit import database
from tests.support.primes_reference import KNOWN_PRIMES


def holder(cluster: LocalCluster, task_id: int) -> tuple[str | None, int]:
    view = cluster.task(task_id)
    return (view["worker_id"] if view["status"] == "in-progress" else None), view["attempt"]


def test_killed_worker_task_resumes_elsewhere_within_3s(cluster: LocalCluster) -> None:
    cluster.start_worker("w1")
    task_id = cluster.submit("sleep", {"seconds": 6})
    wait_until(lambda: cluster.task(task_id)["progress"] >= 0.25, 20, message="first checkpoint")
    victim, attempt = holder(cluster, task_id)
    assert victim == "w1" and attempt == 1
    checkpointed = cluster.task(task_id)["progress"]
    cluster.start_worker("w2")
    wait_until(lambda: any(w["worker_id"] == "w2" for w in cluster.stats()["workers"]["details"]),
               20, message="w2 registered")
    killed_at = time.monotonic()
    cluster.kill_worker("w1")
    wait_until(lambda: holder(cluster, task_id) == ("w2", 2), 10, interval=0.01,
               message="task held by w2")
    reassigned_after = time.monotonic() - killed_at
    view = cluster.wait_finished(task_id, timeout=30)
    assert view["status"] == "completed" and view["worker_id"] == "w2"
    assert view["result"]["resumed_from_seconds"] >= checkpointed * 6 - 1e-6 > 0
    assert abs(view["result"]["slept_seconds"] - 6) < 0.5
    assert reassigned_after <= 3.0, f"reassigned after {reassigned_after:.2f}s"
    assert cluster.stats()["reclaims"]["dead_worker"] == 1


def test_killed_sieve_resumes_with_the_right_answer(make_cluster: Any) -> None:
    cluster = make_cluster(CHECKPOINT_INTERVAL="0.2")
    cluster.start_worker("w1")
    task_id = cluster.submit("primes", {"limit": 2 * 10**10})  # ~2.5 s of sieving
    wait_until(lambda: 0.1 <= cluster.task(task_id)["progress"], 60, message="sieve checkpoint")
    cluster.kill_worker("w1")
    cluster.start_worker("w2")
    view = cluster.wait_finished(task_id, timeout=120)
    assert view["status"] == "completed" and view["attempt"] == 2
    assert view["result"]["prime_count"] == 882206716  # primesieve agrees
    assert view["result"]["largest_prime"] == 19999999967
    assert view["result"]["sum_of_primes"] == 8617752113620426559


def test_stale_result_gets_409_and_changes_nothing(cluster: LocalCluster) -> None:
    task_id = cluster.submit("sleep", {"seconds": 0.5})
    lease = cluster.post("/get-task", {"worker_id": "ghost", "instance_id": "g1"}).json()["task"]
    assert lease["task_id"] == task_id
    cluster.start_worker("w1")  # ghost goes silent: declared dead, w1 takes over
    view = cluster.wait_finished(task_id, timeout=30)
    assert view["worker_id"] == "w1" and view["attempt"] == 2
    late = cluster.post("/submit-result", {"worker_id": "ghost", "task_id": task_id,
                                           "attempt": 1, "result": {"slept_seconds": 99}})
    assert late.status_code == 409 and late.json()["error"]["code"] == "stale_lease"
    assert cluster.task(task_id)["result"] == view["result"]


def test_lease_expires_when_a_task_makes_no_progress(make_cluster: Any) -> None:
    cluster = make_cluster(LEASE_DURATION="2", CHECKPOINT_INTERVAL="60")
    cluster.start_worker("w1")
    task_id = cluster.submit("sleep", {"seconds": 30})
    wait_until(lambda: cluster.stats()["reclaims"]["expired_lease"] >= 1, 20,
               message="lease expiry")
    stats = cluster.stats()
    assert stats["reclaims"]["dead_worker"] == 0  # w1 kept heartbeating all along
    assert any(w["worker_id"] == "w1" and w["alive"] for w in stats["workers"]["details"])
    wait_until(lambda: cluster.task(task_id)["attempt"] >= 2, 20, message="task claimed again")


def test_dispatcher_sigkill_keeps_acknowledged_tasks(cluster: LocalCluster) -> None:
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    acked = cluster.submit_many([{"task_type": "sleep", "params": {"seconds": 0.3}}] * 20)
    acked += [cluster.submit("primes", {"limit": 10**6}) for _ in range(5)]
    wait_until(lambda: cluster.stats()["tasks"]["completed"] >= 3, 30, message="some progress")
    cluster.kill_dispatcher()
    cluster.start_dispatcher()
    acked += cluster.submit_many([{"task_type": "noop", "params": {"n": i}} for i in range(10)])
    for task_id in acked:
        assert cluster.wait_finished(task_id, timeout=60)["status"] == "completed"
    with database(cluster.database_url) as db:
        assert db.integrity() == "ok"
        assert db.rows("SELECT COUNT(*) FROM tasks")[0][0] == len(acked)
        assert db.rows("SELECT COUNT(*) FROM task_results")[0][0] == len(acked)


@pytest.mark.parametrize("urls", ["one", "dead-first"])
def test_results_survive_a_dispatcher_outage(cluster: LocalCluster, urls: str) -> None:
    if urls == "dead-first":  # the worker's only live dispatcher goes down and comes back
        cluster.env["DISPATCHER_URL"] = f"http://127.0.0.1:{free_port()},{cluster.url}"
    cluster.start_worker("w1")
    task_id = cluster.submit("primes", {"limit": 10**10})  # ~2 s of sieving
    wait_until(lambda: cluster.task(task_id)["status"] == "in-progress", 20, message="claimed")
    cluster.kill_dispatcher()
    cache = cluster.workdir / "run" / "cache" / "w1.sqlite3"

    def cached() -> bool:
        with sqlite3.connect(cache) as db:
            return db.execute("SELECT COUNT(*) FROM pending_results").fetchone()[0] > 0

    wait_until(cached, 60, interval=0.1, message="result kept in the worker cache")
    cluster.start_dispatcher()
    view = cluster.wait_finished(task_id, timeout=30)
    assert view["status"] == "completed" and view["attempt"] == 1 and view["worker_id"] == "w1"
    result = view["result"]
    assert (result["prime_count"], result["largest_prime"], result["sum_of_primes"]) == \
        KNOWN_PRIMES[10**10]
    wait_until(lambda: not cached(), 10, message="cache emptied after the ack")


def test_heartbeats_keep_arriving_during_a_pure_python_task(cluster: LocalCluster) -> None:
    cluster.start_worker("w1")
    task_id = cluster.submit("cpu_burn", {"seconds": 5})
    wait_until(lambda: cluster.task(task_id)["status"] == "in-progress", 20, message="claimed")
    worst = 0.0
    while cluster.task(task_id)["status"] == "in-progress":
        [w1] = cluster.stats()["workers"]["details"]
        worst = max(worst, w1["seconds_since_heartbeat"])
        assert w1["status"] == "alive"
        time.sleep(0.05)  # sampling pace, not synchronisation
    assert cluster.task(task_id)["status"] == "completed"
    assert worst < 1.6, f"a heartbeat came {worst:.2f}s after the previous one"
    assert cluster.stats()["reclaims"]["dead_worker"] == 0


def test_sigterm_releases_the_task_for_another_worker(cluster: LocalCluster) -> None:
    cluster.start_worker("w1")
    task_id = cluster.submit("sleep", {"seconds": 8})
    wait_until(lambda: cluster.task(task_id)["progress"] > 0.1, 20, message="progress")
    cluster.signal_worker("w1", signal.SIGTERM)
    assert cluster.workers["w1"].wait(timeout=10) == 0
    view = cluster.task(task_id)
    assert view["status"] == "pending" and view["progress"] > 0.1
    assert cluster.stats()["reclaims"]["released_on_shutdown"] == 1
    cluster.start_worker("w2")
    done = cluster.wait_finished(task_id, timeout=30)
    assert done["worker_id"] == "w2" and done["result"]["resumed_from_seconds"] > 0.8


def test_idle_worker_stops_quickly_on_sigterm(cluster: LocalCluster) -> None:
    proc = cluster.start_worker("w1")
    wait_until(lambda: cluster.stats()["workers"]["total"] == 1, 20, message="registered")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 3.0
