"""shared.client.QueueClient against a real dispatcher and worker."""

from __future__ import annotations

import threading

import pytest

from shared.client import (
    QueueClient,
    RequestRefused,
    TaskFailed,
    Unreachable,
    WaitTimeout,
)
from shared.cluster import LocalCluster
from shared.utils import free_port
from tests.support.primes_reference import KNOWN_PRIMES


def test_submit_and_result_of_a_prime_task(cluster: LocalCluster) -> None:
    cluster.start_worker("w1")
    with QueueClient(cluster.url) as queue:
        task_id = queue.submit("primes", {"limit": 10**6, "algorithm": "sieve"}, priority=3)
        result = queue.result(task_id, timeout=60)
        assert (result["prime_count"], result["largest_prime"], result["sum_of_primes"]) == \
            KNOWN_PRIMES[10**6]
        view = queue.task(task_id)
        assert view["status"] == "completed" and view["priority"] == 3


def test_submit_many_in_batches_and_the_idempotency_key(cluster: LocalCluster) -> None:
    with QueueClient(cluster.url) as queue:
        ids = queue.submit_many([{"task_type": "noop", "params": {}}] * 25, batch_size=10)
        assert len(ids) == len(set(ids)) == 25
        first = queue.submit("noop", idempotency_key="order-17")
        assert queue.submit("noop", idempotency_key="order-17") == first
        assert queue.stats()["tasks"]["pending"] == 26


def test_refusals_name_the_field_and_failures_raise(cluster: LocalCluster) -> None:
    cluster.start_worker("w1")
    with QueueClient(cluster.url) as queue:
        with pytest.raises(RequestRefused) as refused:
            queue.submit("primes", {"limit": -5})
        assert refused.value.status == 400 and "params.limit" in refused.value.message
        with pytest.raises(RequestRefused) as unknown:
            queue.task(999_999)
        assert unknown.value.status == 404
        failing = queue.submit("sleep", {"seconds": 30}, max_attempts=1)
        with pytest.raises(WaitTimeout):
            queue.wait(failing, timeout=0.3)
        queue.cancel(failing)
        with pytest.raises(TaskFailed) as failed:
            queue.result(failing, timeout=10)
        assert failed.value.view["status"] == "cancelled"


def test_unreachable_and_recovery_after_a_dispatcher_restart(cluster: LocalCluster) -> None:
    with pytest.raises(Unreachable):
        QueueClient(f"http://127.0.0.1:{free_port()}", timeout=2).stats()
    queue = QueueClient(cluster.url)
    first = queue.submit("noop")
    cluster.kill_dispatcher()
    with pytest.raises(Unreachable):
        queue.stats()
    cluster.start_dispatcher()
    # The pooled connection died with the old process; the client notices and reconnects.
    assert queue.task(first)["status"] == "pending"
    queue.close()


def test_one_client_is_safe_to_share_between_threads(cluster: LocalCluster) -> None:
    cluster.start_worker("w1")
    errors: list[BaseException] = []
    results: list[object] = []
    with QueueClient(cluster.url) as queue:

        def submit_and_wait() -> None:
            try:
                for _ in range(10):
                    results.append(queue.result(queue.submit("noop"), timeout=30))
            except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
                errors.append(exc)

        threads = [threading.Thread(target=submit_and_wait) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert errors == [] and len(results) == 40
