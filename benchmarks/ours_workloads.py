"""Workloads of this project alone: submission rate, big queues, and worker scaling."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import BenchError, PeakRss, median, percentile, rss_mib, wait_for
from benchmarks.ours import ProjectCluster, run_add_task
from benchmarks.pg import FreshDatabase, analyze

FILL_BATCH = 10_000
"""Tasks per request when filling a big queue (the dispatcher's default MAX_BATCH_SIZE)."""
SINGLE_SUBMISSIONS = 1000
STATS_SAMPLES = 5


def _log(workload: str, message: str) -> None:
    print(f"[{workload}] {message}", file=sys.stderr, flush=True)


def _cluster(project_root: Path, workdir: Path, label: str,
             env: dict[str, str] | None = None) -> ProjectCluster:
    cluster = ProjectCluster(workdir / f"{label}-{uuid.uuid4().hex[:8]}", project_root, env)
    try:
        cluster.start_dispatcher()
    except Exception:
        cluster.close()
        raise
    return cluster


def _timed_rate(count: int, submit: Callable[[], list[int]]) -> dict[str, Any]:
    started = time.perf_counter()
    ids = submit()
    seconds = time.perf_counter() - started
    if len(ids) != count:
        raise BenchError(f"submitted {count} tasks, got {len(ids)} ids")
    return {"tasks": count, "seconds": seconds, "tasks_per_second": count / seconds}


def _single(cluster: ProjectCluster, count: int) -> list[int]:
    return [cluster.submit("noop", {}) for _ in range(count)]


def submission(project_root: Path, workdir: Path, tasks: int, repeats: int) -> dict[str, Any]:
    """Workload 3: submission rate into an empty queue, each way on a fresh dispatcher."""
    single = min(tasks, SINGLE_SUBMISSIONS)
    ways: dict[str, Callable[[ProjectCluster], dict[str, Any]]] = {
        "batch": lambda c: _timed_rate(tasks, lambda: c.submit_noops(tasks, 1000)),
        "batch_10000": lambda c: _timed_rate(tasks, lambda: c.submit_noops(tasks, FILL_BATCH)),
        "add_task_cli": lambda c: _timed_rate(tasks, lambda: run_add_task(project_root, c.url,
                                                                          tasks)),
        "single_requests": lambda c: _timed_rate(single, lambda: _single(c, single)),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ways}
    names = list(ways)
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[: repeat % len(names)]:
            cluster = _cluster(project_root, workdir, "submit")
            try:
                runs[name].append(ways[name](cluster))
            finally:
                cluster.close()
            _log("submission", f"repeat {repeat + 1}: {name} "
                               f"{runs[name][-1]['tasks_per_second']:.0f} tasks/s")
    result: dict[str, Any] = {
        name: {"median": median([r["tasks_per_second"] for r in rs]), "runs": rs}
        for name, rs in runs.items()
    }
    result["notes"] = {
        "batch": "POST /submit-task with 1000 tasks per request, one HTTP session",
        "batch_10000": "the same with 10,000 per request (MAX_BATCH_SIZE)",
        "add_task_cli": "python add_task.py N --type noop (batches of 1000; includes start-up)",
        "single_requests": f"{single} POSTs of one task each",
    }
    return result


class Claimer:
    """A fake worker: claims one task over HTTP (timed) and completes it (not timed)."""

    def __init__(self, cluster: ProjectCluster) -> None:
        self.cluster = cluster
        self.worker_id = "bench-claimer"
        self.instance_id = uuid.uuid4().hex

    def claim_seconds(self) -> float:
        """Time one POST /get-task; then report the task done so the queue stays clean."""
        body = {"worker_id": self.worker_id, "instance_id": self.instance_id, "wait": 0}
        started = time.perf_counter()
        resp = self.cluster.post("/get-task", body)
        seconds = time.perf_counter() - started
        if resp.status_code != 200:
            raise BenchError(f"claim answered {resp.status_code}: {resp.text[:200]}")
        task = resp.json()["task"]
        done = self.cluster.post("/submit-result", {
            "worker_id": self.worker_id, "task_id": task["task_id"],
            "attempt": task["attempt"], "result": {}})
        if done.status_code != 200:
            raise BenchError(f"submit-result answered {done.status_code}: {done.text[:200]}")
        return seconds


def _fill(cluster: ProjectCluster, count: int) -> dict[str, float]:
    started = time.perf_counter()
    cluster.submit_noops(count, FILL_BATCH)
    seconds = time.perf_counter() - started
    return {"fill_seconds": seconds, "fill_tasks_per_second": count / seconds}


def _stats_ms(cluster: ProjectCluster) -> float:
    started = time.perf_counter()
    cluster.stats()
    return (time.perf_counter() - started) * 1000


def big_queue(project_root: Path, workdir: Path, small: int, big: int, samples: int,
              repeats: int, postgres: bool = False) -> dict[str, Any]:
    """Workload 4: claim latency and dispatcher memory with ``big`` vs ``small`` pending tasks.

    Both dispatchers run at once and are sampled in alternating blocks. Each queue is filled
    with ``samples * repeats`` extra tasks so that it never drops below its nominal size.
    With ``postgres`` each queue is a fresh PostgreSQL database (analysed after the fill, as
    autovacuum would), otherwise a temp SQLite file.
    """
    databases = {key: FreshDatabase(f"bigq_{key}") for key in ("small", "big")} if postgres \
        else {}
    try:
        return _big_queue(project_root, workdir, small, big, samples, repeats, databases)
    finally:
        for database in databases.values():
            database.drop()


def _big_queue(project_root: Path, workdir: Path, small: int, big: int, samples: int,
               repeats: int, databases: dict[str, FreshDatabase]) -> dict[str, Any]:
    peaks = PeakRss()
    info: dict[str, dict[str, Any]] = {}
    env = {key: {"DATABASE_URL": db.create()} for key, db in databases.items()}
    clusters = {"small": _cluster(project_root, workdir, "small", env.get("small"))}
    try:
        clusters["big"] = _cluster(project_root, workdir, "big", env.get("big"))
        for key, pending in (("small", small), ("big", big)):
            peaks.watch(clusters[key].dispatcher.pid)  # type: ignore[union-attr]
            _log("big_queue", f"filling {pending:,} + {samples * repeats} tasks ...")
            info[key] = {"pending": pending, **_fill(clusters[key], pending + samples * repeats)}
            _log("big_queue", f"  {info[key]['fill_tasks_per_second']:.0f} tasks/s")
            if key in databases:
                analyze(databases[key].url)
        claimers = {key: Claimer(cluster) for key, cluster in clusters.items()}
        latencies: dict[str, list[list[float]]] = {"small": [], "big": []}
        for repeat in range(repeats):
            for key in (("small", "big") if repeat % 2 == 0 else ("big", "small")):
                latencies[key].append([claimers[key].claim_seconds() for _ in range(samples)])
                _log("big_queue", f"repeat {repeat + 1}: {key} claim p50 "
                                  f"{percentile(latencies[key][-1], 50) * 1000:.2f} ms")
        for key, cluster in clusters.items():
            pid = cluster.dispatcher.pid  # type: ignore[union-attr]
            per_repeat = latencies[key]
            info[key].update(
                claim_p50_ms=median([percentile(r, 50) * 1000 for r in per_repeat]),
                claim_p90_ms=median([percentile(r, 90) * 1000 for r in per_repeat]),
                claim_p99_ms=median([percentile(r, 99) * 1000 for r in per_repeat]),
                claim_samples=samples * repeats,
                stats_p50_ms=median([_stats_ms(cluster) for _ in range(STATS_SAMPLES)]),
                rss_mib=rss_mib(pid))
    finally:
        peak_by_pid = peaks.stop()
        for key, cluster in clusters.items():
            if key in info and cluster.dispatcher is not None:
                info[key]["rss_peak_mib"] = max(peak_by_pid.get(cluster.dispatcher.pid, 0.0),
                                                info[key].get("rss_mib", 0.0))
            cluster.close()
    return {**info, "notes": "claim = POST /get-task wait=0 as a fake worker (then its result "
                             "is posted, untimed); RSS = dispatcher process after the claims; "
                             "peak sampled every 50 ms including the fill"}


def _drain_sieves(project_root: Path, workdir: Path, workers: int, tasks: int,
                  limit: int) -> dict[str, Any]:
    cluster = _cluster(project_root, workdir, f"scale{workers}")
    peaks = PeakRss()
    try:
        for index in range(workers):
            peaks.watch(cluster.start_worker(f"scale-{index + 1}").pid)
        wait_for(lambda: cluster.stats()["workers"]["alive"] >= workers, 60, "workers alive")
        started = time.monotonic()  # worker start-up is not part of the scaling figure
        ids = cluster.submit_many([{"task_type": "primes", "params": {"limit": limit}}] * tasks)
        for task_id in ids:  # long polls: no busy client competing with the workers for CPU
            view = cluster.wait_finished(task_id, timeout=3600)
            if view["status"] != "completed":
                raise BenchError(f"sieve task {task_id} ended {view['status']}: {view['error']}")
        seconds = time.monotonic() - started
        task_seconds = [cluster.task(i)["result"]["elapsed_seconds"] for i in ids]
    finally:
        peak = peaks.stop()
        cluster.close()
    return {"seconds": seconds, "worker_peak_rss_mib": max(peak.values(), default=None),
            "median_task_seconds": median(task_seconds)}


def scaling(project_root: Path, workdir: Path, tasks: int, limit: int,
            repeats: int) -> dict[str, Any]:
    """Workload 6: ``tasks`` sieve tasks run by 1 worker vs by 2 workers, alternating.

    The workers are started and registered first; the clock runs from submission to the
    last result."""
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for repeat in range(repeats):
        for workers in ((1, 2) if repeat % 2 == 0 else (2, 1)):
            runs[workers].append(_drain_sieves(project_root, workdir, workers, tasks, limit))
            _log("scaling", f"repeat {repeat + 1}: {workers} worker(s) "
                            f"{runs[workers][-1]['seconds']:.2f} s")
    one = median([r["seconds"] for r in runs[1]])
    two = median([r["seconds"] for r in runs[2]])
    return {"tasks": tasks, "limit": limit, "one_worker_seconds": one, "two_workers_seconds": two,
            "speedup": one / two, "runs": {"1": runs[1], "2": runs[2]},
            "worker_peak_rss_mib": max(r["worker_peak_rss_mib"] or 0 for rs in runs.values()
                                       for r in rs)}
