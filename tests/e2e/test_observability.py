"""Monitoring a real cluster: /metrics agrees with /stats after real work (a worker killed
included), `add_task.py status` shows the workers and counts, and LOG_FORMAT=json logs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from shared.cluster import LocalCluster, wait_until
from shared.config import REPO_ROOT
from tests.conftest import ClusterFactory


LINE_KINDS = {"claimed": ("leased to worker", "started by worker"),
              "completed": ("completed by worker", "delivered by worker"),
              "reclaimed": ("reclaimed task",), "released": ("released",)}
"""What the task lines of both processes say, by what happened."""


def metrics(cluster: LocalCluster) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the dispatcher's /metrics, by (name, sorted labels)."""
    resp = cluster.get("/metrics")
    assert resp.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def held_by(cluster: LocalCluster, worker_id: str) -> list[int]:
    for worker in cluster.stats()["workers"]["details"]:
        if worker["worker_id"] == worker_id:
            return worker["current_tasks"]
    return []


def test_metrics_agree_with_stats_after_real_work(cluster: LocalCluster) -> None:
    ids = cluster.submit_many([{"task_type": "primes", "params": {"limit": 10_000 * (i + 1)}}
                               for i in range(6)])
    cluster.start_worker("mw-1")
    cluster.start_worker("mw-2")
    for task_id in ids:
        assert cluster.wait_finished(task_id, 30)["status"] == "completed"
    # Submitted after: a prefetched batch ending with it would hold its results until it ends.
    long_id = cluster.submit("sleep", {"seconds": 30})
    wait_until(lambda: cluster.task(long_id)["status"] == "in-progress", 20)
    holder = cluster.task(long_id)["worker_id"]
    cluster.kill_worker(holder)  # SIGKILL: its task is reclaimed (dead_worker) and reassigned
    wait_until(lambda: cluster.task(long_id)["attempt"] == 2
               and cluster.task(long_id)["status"] == "in-progress", 20)
    stats, m = cluster.stats(), metrics(cluster)

    for status, count in stats["tasks"].items():
        if status != "total":
            assert m[("taskqueue_tasks", (("status", status),))] == count, status
    for cause, count in stats["reclaims"].items():
        assert m[("taskqueue_reclaims_total", (("cause", cause),))] == count, cause
    assert m[("taskqueue_reclaims_total", (("cause", "dead_worker"),))] >= 1
    assert m[("taskqueue_workers", (("state", "dead"),))] == stats["workers"]["dead"] >= 1
    assert m[("taskqueue_workers", (("state", "alive"),))] == stats["workers"]["alive"]
    submitted = sum(v for (name, _), v in m.items() if name == "taskqueue_tasks_submitted_total")
    assert submitted == stats["tasks"]["total"] == 7
    assert m[("taskqueue_tasks_completed_total", (("task_type", "primes"),))] == \
        stats["tasks"]["completed"] == 6
    assert m[("taskqueue_reassignment_seconds_count", (("cause", "dead_worker"),))] >= 1
    assert m[("taskqueue_task_duration_seconds_count", (("task_type", "primes"),))] == 6
    for worker in stats["workers"]["details"]:  # ages of the workers not marked dead
        key = ("taskqueue_worker_heartbeat_age_seconds", (("worker_id", worker["worker_id"]),))
        assert (key in m) == (worker["status"] == "alive"), worker
    assert (("taskqueue_worker_heartbeat_age_seconds", (("worker_id", holder),)) not in m)


def run_status(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "add_task.py", "status", "--url", cluster.url, *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def test_status_command_shows_workers_and_counts(cluster: LocalCluster) -> None:
    ids = cluster.submit_many([{"task_type": "noop", "params": {"i": i}} for i in range(5)])
    cluster.start_worker("status-w1")
    for task_id in ids:
        cluster.wait_finished(task_id, 30)
    held = cluster.submit("sleep", {"seconds": 30})
    wait_until(lambda: held in held_by(cluster, "status-w1"), 20)

    done = run_status(cluster)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "completed 5" in out and "in-progress 1" in out and "total 6" in out
    row = next(line for line in out.splitlines() if line.startswith("status-w1"))
    assert "alive" in row and str(held) in row.split()[-1:] and " 5 " in row
    assert "dead_worker 0" in out

    as_json = run_status(cluster, "--json")
    assert json.loads(as_json.stdout)["tasks"]["completed"] == 5


def test_status_watch_redraws_until_interrupted(cluster: LocalCluster) -> None:
    proc = subprocess.Popen([sys.executable, "add_task.py", "status", "--url", cluster.url,
                             "--watch", "0.2"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        frames, deadline = 0, time.monotonic() + 30
        while frames < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            frames += line.startswith("dispatcher ")
        assert frames == 2
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        proc.stdout.close()
        proc.stderr.close()


def test_status_reports_an_unreachable_dispatcher_in_one_line(tmp_path: Path) -> None:
    from shared.utils import free_port

    done = subprocess.run([sys.executable, "add_task.py", "status", "--url",
                           f"http://127.0.0.1:{free_port()}"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: cannot reach the dispatcher")


def test_json_logs_carry_task_worker_and_attempt(make_cluster: ClusterFactory) -> None:
    # DEBUG: claims and completions are logged at that level (a drain would flood INFO).
    cluster = make_cluster(LOG_FORMAT="json", LOG_LEVEL="DEBUG", CHECKPOINT_INTERVAL="0.5")
    task_id = cluster.submit("sleep", {"seconds": 30})
    cluster.start_worker("jw-1")
    wait_until(lambda: cluster.task(task_id)["status"] == "in-progress", 20)
    cluster.kill_worker("jw-1")  # the dispatcher logs the reclaim
    wait_until(lambda: cluster.task(task_id)["status"] == "pending", 20)
    quick = cluster.submit("noop", {"x": 1}, priority=5)  # before the long one
    cluster.start_worker("jw-2")
    cluster.wait_finished(quick, 30)
    wait_until(lambda: cluster.task(task_id)["attempt"] == 2, 20)
    cluster.signal_worker("jw-2", signal.SIGTERM)  # releases its task: logged on both sides
    cluster.workers["jw-2"].wait(timeout=20)

    logs = cluster.workdir / "logs"
    records = []
    for path in logs.glob("*.log"):
        for line in path.read_text().splitlines():
            records.append(json.loads(line))  # every line is one JSON object
    messages = [r for r in records if "task_id" in r]
    assert {"timestamp", "level", "logger", "message"} <= set(records[0])
    reclaimed = [r for r in messages if "reclaimed" in r["message"]]
    assert reclaimed and reclaimed[0]["task_id"] == task_id
    assert reclaimed[0]["worker_id"] == "jw-1" and reclaimed[0]["attempt"] == 1
    for record in messages:
        assert {"task_id", "worker_id", "attempt"} <= set(record), record
    kinds = {kind for r in messages for kind, words in LINE_KINDS.items()
             if any(word in r["message"] for word in words)}
    assert kinds == set(LINE_KINDS), [r["message"] for r in messages]
