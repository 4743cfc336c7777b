"""A count split into ranges that run on two real workers adds up to the unsplit count."""

from __future__ import annotations

import pytest

from shared.cluster import LocalCluster
from tests.support.primes_reference import KNOWN_PRIMES


@pytest.mark.parametrize(
    ("algorithm", "limit", "cuts"),
    [("sieve", 10**9, [2 * 10**8, 5 * 10**8, 7 * 10**8]),
     ("trial_division", 10**7, [3 * 10**6, 6 * 10**6])],
)
def test_ranges_on_two_workers_add_up(
    cluster: LocalCluster, algorithm: str, limit: int, cuts: list[int]
) -> None:
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    ranges = list(zip([0, *(cut + 1 for cut in cuts)], [*cuts, limit], strict=True))
    ids = cluster.submit_many([
        {"task_type": "primes", "params": {"start": start, "limit": end, "algorithm": algorithm}}
        for start, end in ranges])
    results = [cluster.wait_finished(task_id, timeout=120) for task_id in ids]
    assert [view["status"] for view in results] == ["completed"] * len(ranges), results
    assert [view["params"]["start"] for view in results[1:]] == [start for start, _ in ranges[1:]]
    count = sum(view["result"]["prime_count"] for view in results)
    total = sum(view["result"]["sum_of_primes"] for view in results)
    largest = results[-1]["result"]["largest_prime"]  # every range here holds a prime
    assert (count, largest, total) == KNOWN_PRIMES[limit]
