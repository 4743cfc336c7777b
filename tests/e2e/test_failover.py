"""Workers and clients with a list of dispatcher URLs, against real dispatcher processes.

Two dispatchers on separate SQLite files do not share a queue, but they tell which one a
client used: each stores only what reached it. The last test shares one SQLite file between
two dispatchers to stand in for several on one PostgreSQL database. A dead dispatcher is a
port that was free a moment ago.
"""

from __future__ import annotations

import re
import subprocess
import sys

from shared.client import Failover, QueueClient
from shared.cluster import LocalCluster, wait_until
from shared.config import REPO_ROOT
from shared.utils import free_port
from tests.conftest import ClusterFactory
from tests.support.primes_reference import KNOWN_PRIMES
from tests.support.proxy import BlackholeProxy
from worker.client import home_index


def total(cluster: LocalCluster) -> int:
    """How many tasks this dispatcher's database holds."""
    return cluster.get("/stats").json()["tasks"]["total"]


def alive_workers(cluster: LocalCluster) -> set[str]:
    return {w["worker_id"] for w in cluster.client.stats()["workers"]["details"] if w["alive"]}


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_client_skips_a_dead_dispatcher_and_comes_back_home(make_cluster: ClusterFactory) -> None:
    home, other = make_cluster(), make_cluster()
    failover = Failover([dead_url(), home.url], failback_seconds=3600)
    with QueueClient(failover) as queue:
        queue.submit("noop")
        assert queue.url == home.url and total(home) == 1

    failover = Failover([home.url, other.url], failback_seconds=0.2)
    with QueueClient(failover) as queue:
        queue.submit("noop")
        assert (total(home), total(other)) == (2, 0)
        home.kill_dispatcher()
        queue.submit("noop")
        assert total(other) == 1
        home.start_dispatcher()  # same port, same database
        wait_until(lambda: queue.submit("noop") and total(home) == 3, 10, interval=0.05,
                   message="submissions back on the home dispatcher")
        on_other = total(other)
        for _ in range(3):
            queue.submit("noop")
        assert (total(home), total(other)) == (6, on_other)


def test_workers_with_a_dead_dispatcher_in_their_list_complete_tasks(
    cluster: LocalCluster,
) -> None:
    dead = dead_url()
    cluster.env["DISPATCHER_URL"] = f"{dead},{cluster.url}"
    # One worker whose home (its hash) is the dead dispatcher, one whose home is the live one.
    names = [f"w{i}" for i in range(20)]
    on_dead = next(n for n in names if home_index(n, 2) == 0)
    on_live = next(n for n in names if home_index(n, 2) == 1)
    for name in (on_dead, on_live):
        cluster.start_worker(name)
    # Both registered (the one homed on the dead dispatcher through the other) before the
    # tasks go in: a fast drain could otherwise end before the slower worker starts.
    wait_until(lambda: alive_workers(cluster) == {on_dead, on_live}, 30,
               message="both workers registered")
    ids = cluster.client.submit_many(
        [{"task_type": "primes", "params": {"limit": 10**6}}] * 6
        + [{"task_type": "noop", "params": {"n": i}} for i in range(50)])
    views = [cluster.client.wait(task_id, timeout=60) for task_id in ids]
    assert all(v["status"] == "completed" and v["attempt"] == 1 for v in views)
    primes = [v["result"] for v in views if v["task_type"] == "primes"]
    assert all((r["prime_count"], r["largest_prime"], r["sum_of_primes"]) == KNOWN_PRIMES[10**6]
               for r in primes)
    switched = f"dispatcher {dead} unreachable (ConnectionRefusedError), using {cluster.url}"
    assert cluster.worker_log(on_dead).count(switched) == 1, "a failover is logged once"
    assert switched not in cluster.worker_log(on_live)
    assert alive_workers(cluster) == {on_dead, on_live}  # neither declared dead meanwhile


def test_add_task_with_a_list_submits_and_waits(cluster: LocalCluster) -> None:
    cluster.start_worker("w1")
    urls = f"{dead_url()},{cluster.url}"
    done = subprocess.run([sys.executable, "add_task.py", "3", "100000", "--url", urls, "--wait",
                           "--timeout", "60"], cwd=REPO_ROOT, env=cluster.env,
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("count=9592") == 3 and total(cluster) == 3
    bad = subprocess.run([sys.executable, "add_task.py", "1", "100", "--url",
                          f"{cluster.url},ftp://x"], cwd=REPO_ROOT, env=cluster.env,
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "--url" in bad.stderr and "'ftp://x'" in bad.stderr


def test_a_submission_whose_answer_is_lost_is_stored_once(cluster: LocalCluster) -> None:
    with BlackholeProxy("127.0.0.1", cluster.port) as proxy, \
            QueueClient([proxy.url, cluster.url], timeout=1.0) as queue:
        proxy.drop_replies()  # the dispatcher stores the tasks; the client never hears it
        first = queue.submit("noop", {"n": 1})
        assert queue.url == cluster.url and total(cluster) == 1
        assert cluster.task(first)["params"] == {"n": 1}
        queue.close()
        again = QueueClient([proxy.url, cluster.url], timeout=1.0)
        ids = again.submit_many([{"task_type": "noop", "params": {"n": i}} for i in range(5)])
        again.close()
    assert len(set(ids)) == 5 and total(cluster) == 6
    assert [cluster.task(i)["params"]["n"] for i in ids] == list(range(5))


def test_a_worker_keeps_its_task_when_its_dispatcher_dies(make_cluster: ClusterFactory) -> None:
    """Two dispatchers on one database (on SQLite, two processes sharing the file)."""
    home = make_cluster(CHECKPOINT_INTERVAL="0.5")
    other = make_cluster(CHECKPOINT_INTERVAL="0.5", DATABASE_URL=home.database_url)
    home.env["DISPATCHER_URL"] = f"{home.url},{other.url}"
    name = next(n for n in (f"w{i}" for i in range(20)) if home_index(n, 2) == 0)
    home.start_worker(name)
    task_id = home.client.submit("primes", {"limit": 10**10})  # ~2 s of sieving
    wait_until(lambda: other.task(task_id)["progress"] > 0.1, 60, message="checkpointed")
    home.kill_dispatcher()
    view = other.wait_finished(task_id, timeout=60)
    result = view["result"]
    assert (result["prime_count"], result["largest_prime"], result["sum_of_primes"]) == \
        KNOWN_PRIMES[10**10]
    assert view["attempt"] == 1 and view["worker_id"] == name
    assert not any(other.stats()["reclaims"].values()), "nothing was taken from the worker"
    # Refused, or reset if a call was in flight: either way one line.
    switched = rf"dispatcher {home.url} unreachable \(\w+\), using {other.url}"
    assert len(re.findall(switched, home.worker_log(name))) == 1
