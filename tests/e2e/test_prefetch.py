"""Adaptive prefetch: short tasks are claimed in batches; long ones are never hoarded."""

from __future__ import annotations

from shared.cluster import LocalCluster, wait_until


def test_unstarted_tasks_are_given_back_once_a_task_proves_long(cluster: LocalCluster) -> None:
    noops = cluster.submit_many([{"task_type": "noop", "params": {"i": i}} for i in range(300)])
    sleeps = cluster.submit_many([{"task_type": "sleep", "params": {"seconds": 6}}] * 4)
    cluster.start_worker("w1")  # alone, its batch grows while the no-ops fly by

    def one_running_rest_pending() -> list[str]:
        states = [cluster.task(t)["status"] for t in sleeps]
        return states if sorted(states) == ["in-progress"] + ["pending"] * 3 else []

    wait_until(one_running_rest_pending, 30, message="one sleep running, the rest given back")
    # The no-ops that shared the long task's batch were delivered without waiting for it.
    wait_until(lambda: cluster.stats()["tasks"]["completed"] == 300, 5, message="no-op results")
    assert cluster.task(sleeps[0])["status"] == "in-progress"
    assert cluster.stats()["reclaims"]["returned_unstarted"] >= 1
    cluster.start_worker("w2")
    views = [cluster.wait_finished(t, timeout=60) for t in sleeps]
    assert {v["worker_id"] for v in views} == {"w1", "w2"}
    assert all(cluster.task(t)["status"] == "completed" for t in noops)


def test_short_tasks_are_claimed_in_batches(cluster: LocalCluster) -> None:
    ids = cluster.submit_many([{"task_type": "noop", "params": {"i": i}} for i in range(500)])
    cluster.start_worker("w1")
    assert cluster.wait_finished(ids[-1], timeout=60)["status"] == "completed"
    wait_until(lambda: cluster.stats()["tasks"]["completed"] == 500, 30, message="all done")
    claims = cluster.stats()["claims"]
    # Batches that double up to PREFETCH_MAX (128): 1+2+...+128 then 128s: ~10 claims, not 500.
    assert claims["tasks_leased"] == 500 and claims["requests_served"] <= 15, claims
    views = [cluster.task(i) for i in ids[::50]]
    assert {v["worker_id"] for v in views} == {"w1"} and all(v["attempt"] == 1 for v in views)
