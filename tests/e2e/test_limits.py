"""A result too large to store ends its task as failed; the fleet keeps working."""

from __future__ import annotations

import pytest

from shared.cluster import wait_until
from tests.conftest import ClusterFactory

BIG_PARAMS = {"blob": "x" * 4000}  # noop echoes its params: a ~4 KB result


@pytest.mark.parametrize("worker_cap", [None, "65536"], ids=["worker-checks", "dispatcher-refuses"])
def test_an_oversized_result_fails_its_task_and_the_next_tasks_run(
    make_cluster: ClusterFactory, worker_cap: str | None
) -> None:
    cluster = make_cluster(MAX_RESULT_BYTES="2048")
    big = cluster.submit("noop", BIG_PARAMS)
    rest = cluster.submit_many([{"task_type": "noop", "params": {"i": i}} for i in range(20)])
    # A worker whose own cap is larger sends the result anyway: the dispatcher refuses it.
    env = {"MAX_RESULT_BYTES": worker_cap} if worker_cap else None
    for name in ("w1", "w2"):
        cluster.start_worker(name, env=env)
    view = cluster.wait_finished(big, timeout=30)
    assert view["status"] == "failed" and view["attempt"] == 1
    assert "2048 (MAX_RESULT_BYTES)" in view["error"]
    for task_id in rest:
        assert cluster.wait_finished(task_id, timeout=30)["status"] == "completed"
    stats = cluster.stats()
    assert stats["tasks"]["failed"] == 1 and stats["tasks"]["completed"] == 20
    wait_until(lambda: cluster.stats()["workers"]["alive"] == 2, 10, message="both alive")
