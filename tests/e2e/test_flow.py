"""The full flow with real processes: known prime counts, both algorithms, bad input."""

from __future__ import annotations

import pytest
import requests

from shared.cluster import LocalCluster

KNOWN = {
    10**6: (78498, 999983, 37550402023),
    10**7: (664579, 9999991, 3203324994356),
}


@pytest.mark.parametrize("algorithm", ["sieve", "trial_division"])
def test_primes_match_known_values(cluster: LocalCluster, algorithm: str) -> None:
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    ids = {limit: cluster.submit("primes", {"limit": limit, "algorithm": algorithm})
           for limit in KNOWN}
    for limit, task_id in ids.items():
        view = cluster.wait_finished(task_id, timeout=120)
        assert view["status"] == "completed", view
        result = view["result"]
        count, largest, total = KNOWN[limit]
        assert (result["prime_count"], result["largest_prime"], result["sum_of_primes"]) == (
            count, largest, total)
        assert result["algorithm"] == algorithm and "primes" not in result
    workers = {cluster.task(i)["worker_id"] for i in ids.values()}
    assert workers <= {"w1", "w2"}


def test_small_limit_includes_the_primes(cluster: LocalCluster) -> None:
    cluster.start_worker("w1")
    view = cluster.wait_finished(cluster.submit("primes", {"limit": 30}), timeout=60)
    assert view["result"]["primes"] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]


def test_other_task_types_run(cluster: LocalCluster) -> None:
    cluster.start_worker("w1")
    ids = cluster.submit_many([
        {"task_type": "noop", "params": {"hello": "world"}},
        {"task_type": "sleep", "params": {"seconds": 0.2}},
        {"task_type": "monte_carlo_pi", "params": {"samples": 200_000, "seed": 7}},
        {"task_type": "sum_of_squares", "params": {"start": 1, "end": 1000}},
    ])
    views = [cluster.wait_finished(i, timeout=60) for i in ids]
    assert [v["status"] for v in views] == ["completed"] * 4, views
    assert views[0]["result"] == {"echo": {"hello": "world"}}
    assert abs(views[2]["result"]["pi_estimate"] - 3.1416) < 0.02
    assert views[3]["result"]["sum"] == 1000 * 1001 * 2001 // 6


def test_bad_requests_get_400_json_never_500(cluster: LocalCluster) -> None:
    url = cluster.url
    cases = [
        ("post", "/submit-task", {"data": "not json", "headers": {"Content-Type": "application/json"}}),
        ("post", "/submit-task", {"json": {"task_type": "primes", "params": {"limit": "x"}}}),
        ("post", "/submit-task", {"json": {"task_type": "primes", "params": {"limit": -5}}}),
        ("post", "/submit-task", {"json": {"task_type": "rm -rf", "params": {}}}),
        ("post", "/get-task", {"json": {"worker_id": ""}}),
        ("post", "/submit-result", {"json": {"worker_id": "w", "task_id": "one", "attempt": 1,
                                              "result": {}}}),
        ("get", "/task/notanumber", {}),
    ]
    for method, path, kwargs in cases:
        resp = requests.request(method, url + path, timeout=10, **kwargs)
        assert 400 <= resp.status_code < 500, (path, resp.status_code, resp.text)
        assert "error" in resp.json() and resp.json()["error"]["message"], resp.text

