"""What one task costs on PostgreSQL, in CPU, and what that predicts for N dispatchers.

    .venv/bin/python -m benchmarks.pg_costs                 # 20,000 no-ops, 2 workers, 3 runs
    .venv/bin/python -m benchmarks.pg_costs --tasks 5000 --runs 1 --json

This machine has 2 cores, so more dispatchers cannot show more throughput here. Instead, a
drain of no-op tasks through one dispatcher on a fresh database measures the CPU seconds that
the dispatcher, the PostgreSQL server (every postgres process: backends, WAL writer,
checkpointer) and the workers spend per task. With dispatchers on hosts of their own, each adds
``1 / dispatcher_cpu_per_task`` tasks/s per core it gets, until the database server's cores are
used up at ``cores / postgres_cpu_per_task``: that is where N dispatchers saturate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import HARNESS_ROOT
from benchmarks.ours import OurPgQueue
from benchmarks.pg import analyze, pg_reason

DRAIN_TIMEOUT = 600.0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (those that still exist)."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def postgres_pids() -> list[int]:
    """Every process of the local PostgreSQL server."""
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]


def one_run(workdir: Path, tasks: int, workers: int) -> dict[str, float]:
    """Drain ``tasks`` no-ops once; the CPU seconds per task of each part, and the rate."""
    system = OurPgQueue(HARNESS_ROOT)
    system.open(workdir)
    try:
        system.enqueue_noops(tasks)
        analyze(system.database.url)
        dispatcher = [system.pid()]
        before_pg, before_d = cpu_seconds(postgres_pids()), cpu_seconds(dispatcher)
        started = time.monotonic()
        system.start_workers(workers)
        worker_pids = [proc.pid for proc in system._cluster().workers.values()]
        while system.finished_count() < tasks:
            if time.monotonic() - started > DRAIN_TIMEOUT:
                raise RuntimeError(f"drain of {tasks} tasks did not finish")
            time.sleep(0.05)  # the harness's polling pace
        elapsed = time.monotonic() - started
        pg = cpu_seconds(postgres_pids()) - before_pg
        disp = cpu_seconds(dispatcher) - before_d
        work = cpu_seconds(worker_pids)
    finally:
        system.close()
    return {"tasks_per_second": tasks / elapsed, "dispatcher_us": disp / tasks * 1e6,
            "postgres_us": pg / tasks * 1e6, "workers_us": work / tasks * 1e6}


def capacity(costs: dict[str, float], db_cores: int, dispatcher_cores: int,
             dispatchers: int) -> float:
    """Tasks/s that ``dispatchers`` hosts of ``dispatcher_cores`` predict, capped by the database."""
    per_dispatcher = dispatcher_cores * 1e6 / costs["dispatcher_us"]
    database = db_cores * 1e6 / costs["postgres_us"]
    return min(dispatchers * per_dispatcher, database)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the per-task costs and the capacity table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--db-cores", type=int, default=8, help="cores of the database host")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    reason = pg_reason()
    if reason:
        print(f"skipped: {reason}")
        return 0
    runs = []
    with tempfile.TemporaryDirectory(prefix="pg-costs-") as tmp:
        for index in range(args.runs):
            runs.append(one_run(Path(tmp) / f"run{index}", args.tasks, args.workers))
    costs = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    table = [{"dispatchers": n, "tasks_per_second": round(capacity(costs, args.db_cores, 1, n))}
             for n in (1, 2, 4, 8, 16, 32)]
    if args.json:
        print(json.dumps({"runs": runs, "median": costs, "capacity": table}, indent=2))
        return 0
    print(f"drain of {args.tasks:,} no-ops, {args.workers} workers, median of {args.runs}: "
          f"{costs['tasks_per_second']:,.0f} tasks/s on this machine")
    print(f"CPU per task: dispatcher {costs['dispatcher_us']:.0f} us, PostgreSQL "
          f"{costs['postgres_us']:.0f} us, workers {costs['workers_us']:.0f} us")
    print(f"predicted with one core per dispatcher host and a {args.db_cores}-core database:")
    for row in table:
        print(f"  {row['dispatchers']:>3} dispatchers: {row['tasks_per_second']:>9,} tasks/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
