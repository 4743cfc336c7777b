"""Liveness under load: CPU-heavy tasks while extra load saturates both cores."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from shared.cluster import wait_until
from tests.conftest import ClusterFactory
from tests.support.audit import audit, reclaim_counters
from tests.support.scenarios import LivenessWatch, tasks_taken_from_live_workers

pytestmark = pytest.mark.chaos

LOAD_SECONDS = 18.0


@pytest.fixture
def cpu_hogs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """One pure-Python busy loop per core (plus one), stopped by PID afterwards."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range((os.cpu_count() or 2) + 1)]
    try:
        yield hogs
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(timeout=10)


def test_workers_stay_alive_and_results_exact_while_cores_are_saturated(
    make_cluster: ClusterFactory, cpu_hogs: list[subprocess.Popen[bytes]]
) -> None:
    cluster = make_cluster(CHECKPOINT_INTERVAL="1")
    for worker_id in ("w1", "w2", "w3"):
        cluster.start_worker(worker_id)
    ids = cluster.submit_many([{"task_type": "cpu_burn", "params": {"seconds": 2.5}}] * 15
                              + [{"task_type": "primes", "params": {"limit": 10**8}}] * 6)
    watch = LivenessWatch(cluster, settle=3.0, interval=0.1).start()
    started = time.monotonic()
    try:
        wait_until(lambda: time.monotonic() - started >= LOAD_SECONDS, LOAD_SECONDS + 5,
                   interval=0.5)  # the load phase lasts LOAD_SECONDS; the watch samples meanwhile
    finally:
        for hog in cpu_hogs:
            hog.kill()
        watch.stop()
    for task_id in ids:
        assert cluster.wait_finished(task_id, timeout=90)["status"] == "completed"
    report = audit(cluster.database_url)
    counters = reclaim_counters(cluster.database_url)
    print(f"liveness: {watch.samples} samples, worst heartbeat age {watch.worst_heartbeat_gap:.2f}s, "
          f"wrongly dead {len(watch.false_deaths)}, reclaims {counters}")
    assert watch.samples > 20, "the watch could not sample /stats under load"
    assert report.clean and report.tasks == report.results == len(ids), report
    assert report.attempt_mismatch == [] and report.wrong_results == []
    assert len(watch.false_deaths) == 0, f"live workers declared dead: {watch.false_deaths}"
    assert counters.get("dead_worker", 0) == 0 and tasks_taken_from_live_workers(cluster) == 0
