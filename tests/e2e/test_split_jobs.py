"""A split job on two real workers, submitted with add_task.py --split: parts run on both
workers and the combined answer is the known one."""

from __future__ import annotations

import json
import subprocess
import sys

from shared.cluster import LocalCluster, wait_until
from shared.config import REPO_ROOT
from tests.conftest import ClusterFactory
from tests.support.primes_reference import KNOWN_PRIMES


def add_task(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "add_task.py", *args], cwd=REPO_ROOT,
                          env=cluster.env, capture_output=True, text=True, timeout=120)


def test_a_split_job_runs_on_both_workers_and_combines(cluster: LocalCluster) -> None:
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    # Both workers wait in a long poll, so both are woken by the parts' arrival.
    wait_until(lambda: cluster.stats()["claims"]["waiting"] == 2, 30,
               message="both workers waiting for work")
    out = add_task(cluster, "--split", "8", "1", str(10**7), "--wait", "--json")
    assert out.returncode == 0, out.stderr
    [view] = json.loads(out.stdout)["groups"]
    assert view["status"] == "completed" and view["parts"]["completed"] == 8
    assert {part["worker_id"] for part in view["tasks"]} == {"w1", "w2"}
    result = view["result"]
    assert (result["prime_count"], result["largest_prime"], result["sum_of_primes"]) == (
        KNOWN_PRIMES[10**7])
    assert (result["start"], result["limit"]) == (0, 10**7)
    # The parts, listed newest first over two pages by the Python client.
    first = cluster.client.task_page(status="completed", task_type="primes", limit=5)
    rest = cluster.client.task_page(status="completed", task_type="primes", limit=5,
                                    cursor=first["next_cursor"])
    assert [t["task_id"] for t in first["tasks"] + rest["tasks"]] == [
        part["task_id"] for part in reversed(view["tasks"])]
    assert rest["next_cursor"] is None


def test_add_task_split_prints_the_group_and_its_parts(cluster: LocalCluster) -> None:
    out = add_task(cluster, "--split", "4", "2", str(10**6))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["submitted group 1: 4 part task(s) 1 2 3 4",
                                       "submitted group 2: 4 part task(s) 5 6 7 8"]
    cluster.start_worker("w1")
    out = add_task(cluster, "--split", "3", "1", str(10**6), "--wait")
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()[-2:]
    assert header.split() == ["group", "status", "parts", "workers", "result"]
    assert row.split()[:4] == ["3", "completed", "3", "w1"]
    assert "count=78498 largest=999983" in row
    refused = add_task(cluster, "--split", "2", "--type", "noop", "--params", "{}")
    assert refused.returncode == 1 and "split" in refused.stderr
    assert refused.stderr.count("\n") == 1


def test_an_operators_task_type_splits_and_a_failing_part_fails_the_job(
        make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(TASK_MODULES="tests.support.split_tasks")
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    client = cluster.client
    good = client.wait_group(client.submit_split("split_sum", {"end": 10**6}, 5)["group_id"], 60)
    assert good["status"] == "completed", good
    assert good["result"] == {"sum": 10**6 * (10**6 + 1) // 2, "parts": [0, 1, 2, 3, 4]}
    bad = client.wait_group(
        client.submit_split("split_sum", {"end": 10**6, "fail_part": 2}, 5)["group_id"], 60)
    assert bad["status"] == "failed" and bad["result"] is None
    assert "ValueError: part 2 refuses to add up" in bad["error"]
    statuses = [part["status"] for part in bad["tasks"]]
    assert statuses[2] == "failed" and statuses.count("failed") == 1
