"""Kills at random points of checkpointing tasks; corrupt checkpoints refused."""

from __future__ import annotations

import random
import re
import time
from typing import Any

import pytest

from shared.cluster import LocalCluster, wait_until
from tests.conftest import ClusterFactory
from tests.support.audit import task_row
from tests.support.primes_reference import is_correct_primes

pytestmark = pytest.mark.chaos

CHECKPOINT_INTERVAL = 0.3
SLACK_SECONDS = 0.3  # one 0.1 s sleep step or sieve segment, plus the HTTP round trip


def resumed_progress(cluster: LocalCluster, task_id: int, attempt: int) -> float | None:
    """The progress the worker said it resumed at when it claimed ``attempt`` (None: fresh)."""
    match = re.search(rf"task {task_id} attempt {attempt} \(\w+\) (?:claimed|started) by worker w1"
                      r"(?:, resuming at progress ([0-9.e-]+))?\n", cluster.worker_log("w1"))
    assert match, f"attempt {attempt} of task {task_id} was not claimed"
    return float(match[1]) if match[1] else None


def kill_at_random_points(cluster: LocalCluster, rng: random.Random, task_id: int,
                          kills: int) -> list[dict[str, Any]]:
    """Kill w1 ``kills`` times at random moments after a checkpoint of the current attempt."""
    records = []
    for _ in range(kills):
        wait_until(lambda: task_row(cluster.database_url, task_id)["status"] == "in-progress", 20,
                   message="task claimed")
        attempt = task_row(cluster.database_url, task_id)["attempt"]

        def checkpointed() -> bool:
            row = task_row(cluster.database_url, task_id)
            return bool(row["checkpoint"] and row["checkpoint"]["attempt"] == attempt)

        wait_until(checkpointed, 20, interval=0.01, message=f"attempt {attempt} checkpointed")
        time.sleep(rng.uniform(0, 2 * CHECKPOINT_INTERVAL))  # a random point of the run
        if task_row(cluster.database_url, task_id)["status"] != "in-progress":
            break
        killed_wall = time.time()
        cluster.restart_worker("w1")
        row = task_row(cluster.database_url, task_id)
        records.append({"attempt": attempt, "killed_wall": killed_wall, **row["checkpoint"]})
        wait_until(lambda: task_row(cluster.database_url, task_id)["attempt"] > attempt, 10,
                   message="claimed again")
        wait_until(lambda: f"task {task_id} attempt {attempt + 1} " in cluster.worker_log("w1"),
                   10, message="new attempt logged")
    return records


def check_resumes(cluster: LocalCluster, task_id: int, records: list[dict[str, Any]]) -> None:
    for record in records:
        redone = record["killed_wall"] - record["saved_at"]
        assert redone <= CHECKPOINT_INTERVAL + SLACK_SECONDS, f"{redone:.3f}s of work redone"
        resumed = resumed_progress(cluster, task_id, record["attempt"] + 1)
        assert resumed == pytest.approx(record["progress"], abs=1e-12), \
            "the resumed run did not start from the last checkpoint"


def test_sleep_task_resumes_from_its_last_checkpoint_after_every_kill(
    make_cluster: ClusterFactory, rng: random.Random
) -> None:
    cluster = make_cluster(CHECKPOINT_INTERVAL=str(CHECKPOINT_INTERVAL))
    cluster.start_worker("w1")
    task_id = cluster.submit("sleep", {"seconds": 5})
    records = kill_at_random_points(cluster, rng, task_id, kills=5)
    assert len(records) == 5
    check_resumes(cluster, task_id, records)
    view = cluster.wait_finished(task_id, timeout=30)
    assert view["status"] == "completed" and view["attempt"] == 6
    assert view["result"]["slept_seconds"] == 5
    assert view["result"]["resumed_from_seconds"] == pytest.approx(records[-1]["state"]["slept"])
    print("sleep: work redone per kill (s):",
          [round(r["killed_wall"] - r["saved_at"], 3) for r in records])


def test_sieve_resumes_from_its_last_checkpoint_with_the_fault_free_result(
    make_cluster: ClusterFactory, rng: random.Random
) -> None:
    cluster = make_cluster(CHECKPOINT_INTERVAL=str(CHECKPOINT_INTERVAL))
    cluster.start_worker("w1")
    task_id = cluster.submit("primes", {"limit": 2 * 10**10})
    records = kill_at_random_points(cluster, rng, task_id, kills=4)
    assert len(records) >= 2
    check_resumes(cluster, task_id, records)
    view = cluster.wait_finished(task_id, timeout=60)
    assert view["status"] == "completed" and view["attempt"] == len(records) + 1
    assert is_correct_primes(view["params"], view["result"]), view["result"]
    print("sieve: work redone per kill (s):",
          [round(r["killed_wall"] - r["saved_at"], 3) for r in records])


def test_corrupt_checkpoints_are_refused_and_resume_uses_the_last_good_one(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(CHECKPOINT_INTERVAL=str(CHECKPOINT_INTERVAL))
    cluster.start_worker("w1")
    task_id = cluster.submit("primes", {"limit": 2 * 10**10})
    wait_until(lambda: (task_row(cluster.database_url, task_id)["checkpoint"] or {}).get("progress", 0)
               > 0.1, 30, message="a good checkpoint")
    good = task_row(cluster.database_url, task_id)["checkpoint"]
    state = good["state"]
    backwards = {**state, "prime_count": state["prime_count"] - 1000,
                 "last_checked": state["last_checked"] + 10}
    malformed = {**state, "sum_of_primes": "lots"}
    identity = {"worker_id": "w1", "task_id": task_id, "attempt": good["attempt"]}
    for bad_state, progress in ((backwards, good["progress"] + 0.01), (malformed, 0.99),
                                (state, good["progress"] - 0.05)):
        resp = cluster.post("/checkpoint", {**identity, "state": bad_state, "progress": progress})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "invalid_checkpoint"
        kept = task_row(cluster.database_url, task_id)["checkpoint"]
        assert kept["state"]["prime_count"] >= state["prime_count"] and kept["progress"] >= \
            good["progress"], "a corrupt checkpoint replaced a good one"
    cluster.restart_worker("w1")
    last_good = task_row(cluster.database_url, task_id)["checkpoint"]
    wait_until(lambda: task_row(cluster.database_url, task_id)["attempt"] == 2, 10, message="reclaimed")
    wait_until(lambda: f"task {task_id} attempt 2 " in cluster.worker_log("w1"), 10,
               message="attempt 2 logged")
    assert resumed_progress(cluster, task_id, 2) == pytest.approx(last_good["progress"], abs=1e-12)
    view = cluster.wait_finished(task_id, timeout=60)
    assert view["status"] == "completed" and is_correct_primes(view["params"], view["result"])
