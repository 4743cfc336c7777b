"""A worker cut off from the dispatcher by a black-holing TCP proxy."""

from __future__ import annotations

import re
import time

import pytest

from shared.cluster import wait_until
from tests.conftest import ClusterFactory
from tests.chaos.test_zombie import holder, registered, stored_result
from tests.support.audit import database
from tests.support.proxy import BlackholeProxy

pytestmark = pytest.mark.chaos


def test_partitioned_worker_loses_its_task_and_its_first_call_after_healing_gets_409(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(CHECKPOINT_INTERVAL="0.5")
    with BlackholeProxy("127.0.0.1", cluster.port) as proxy:
        cluster.start_worker("w1", "--url", proxy.url)
        task_id = cluster.submit("sleep", {"seconds": 6})
        wait_until(lambda: cluster.task(task_id)["progress"] >= 0.15, 20, message="w1 checkpointed")
        cluster.start_worker("w2")
        wait_until(lambda: registered(cluster, "w2"), 20, message="w2 registered")

        cut_at = time.monotonic()
        proxy.partition()
        wait_until(lambda: holder(cluster, task_id) == ("w2", 2), 10, interval=0.01,
                   message="task reassigned to w2")
        reassigned_after = time.monotonic() - cut_at
        print(f"partition: reassigned {reassigned_after:.3f}s after the cut")
        assert reassigned_after <= 3.0
        assert cluster.workers["w1"].poll() is None, "w1 runs on, cut off"

        healed_at = time.monotonic()
        proxy.heal()
        wait_until(lambda: proxy.responses_since(healed_at), 15, message="w1 reached the dispatcher")
        first = proxy.responses_since(healed_at)[0]
        assert first.status == 409, f"first answer to w1 after healing: {first.status}"
        wait_until(lambda: f"task {task_id} stopped on worker w1" in cluster.worker_log("w1"), 15,
                   message="w1 dropped the task")
        view = cluster.wait_finished(task_id, timeout=30)
        assert view["worker_id"] == "w2" and view["attempt"] == 2
        assert view["result"]["resumed_from_seconds"] > 0, "w2 resumed from w1's checkpoint"
        assert stored_result(cluster, task_id) == {"attempt": 2, "worker_id": "w2"}


def test_result_finished_during_a_partition_is_refused_after_healing(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(CHECKPOINT_INTERVAL="100")
    with BlackholeProxy("127.0.0.1", cluster.port) as proxy:
        cluster.start_worker("w1", "--url", proxy.url)
        task_id = cluster.submit("sleep", {"seconds": 2})
        wait_until(lambda: holder(cluster, task_id) == ("w1", 1), 20, message="w1 runs the task")
        proxy.partition()
        cluster.start_worker("w2")
        cache = cluster.workdir / "run" / "cache" / "w1.sqlite3"

        def w1_holds_result() -> bool:
            with database(cache) as db:
                return db.execute("SELECT COUNT(*) FROM pending_results WHERE task_id = ?",
                                  (task_id,)).fetchone()[0] == 1

        wait_until(w1_holds_result, 20, interval=0.1, message="w1 finished, result undelivered")
        view = cluster.wait_finished(task_id, timeout=30)
        assert view["worker_id"] == "w2" and view["attempt"] == 2
        healed_at = time.monotonic()
        proxy.heal()
        refused = rf"task {task_id} attempt 1: result from worker w1 refused"
        wait_until(lambda: re.search(refused, cluster.worker_log("w1")), 20,
                   message="w1's late result refused")
        # Sent alone it gets 409; sent in a batch (with a claim) it is the batch's "stale" outcome.
        answers = {r.status for r in proxy.responses_since(healed_at)}
        assert answers and answers <= {200, 204, 409}, answers
        wait_until(lambda: not w1_holds_result(), 10, message="w1 dropped its stale result")
        assert stored_result(cluster, task_id) == {"attempt": 2, "worker_id": "w2"}
        assert cluster.task(task_id)["result"] == view["result"]


def test_claim_whose_answer_was_lost_is_not_stuck_for_a_whole_lease(
    make_cluster: ClusterFactory,
) -> None:
    """The dispatcher commits a claim but the worker never hears the answer (the dispatcher was
    SIGKILLed before answering, or the reply was lost). The worker keeps heartbeating without
    the task; the task must go back to the queue, not wait out LEASE_DURATION (100 s)."""
    cluster = make_cluster(CHECKPOINT_INTERVAL="0.5")
    with BlackholeProxy("127.0.0.1", cluster.port) as proxy:
        cluster.start_worker("w1", "--url", proxy.url)
        wait_until(lambda: registered(cluster, "w1"), 20, message="w1 registered")
        proxy.drop_replies()
        task_id = cluster.submit("sleep", {"seconds": 0.5})
        wait_until(lambda: holder(cluster, task_id) == ("w1", 1), 10,
                   message="claim committed, its answer swallowed")
        proxy.heal()
        view = cluster.wait_finished(task_id, timeout=20)
        assert view["status"] == "completed"
