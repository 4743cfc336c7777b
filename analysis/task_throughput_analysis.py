#!/usr/bin/env python3
"""How execution time scales with the number of workers.

For each worker count (and each repeat) a fresh dispatcher (temp database, free port) and that
many workers are started, the workload is submitted in one batch, every task is waited for, and
everything started is stopped again. Writes a JSON document and prints a summary table.

    python analysis/task_throughput_analysis.py                       # 1,2,4,8 workers x 3 repeats
    python analysis/task_throughput_analysis.py --worker-counts 1,2 --num-tasks 8 --repeats 1
    python analysis/task_throughput_analysis.py --quick --output /tmp/throughput.json
    python analysis/task_throughput_analysis.py --worker-counts 2,4 --processes 2   # via supervisors

With --processes P each worker count W is started as W/P worker supervisors of P processes each
(``./start_worker.sh ID --processes P``), as one command per host would; W must be a multiple of P.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from analysis import require_venv

require_venv()

from analysis.common import (  # noqa: E402
    RESULTS_DIR, CpuMeter, cluster_pids, cores, describe, fmt, format_table, machine_info,
    parse_count, parse_int_list, pick, prime_workload, running_cluster, stop_on_sigterm,
    task_timings, wait_all, worker_ids, write_json,
)

DEFAULTS = {"worker_counts": [1, 2, 4, 8], "num_tasks": 24, "task_size": 10**10, "repeats": 3}
QUICK = {"worker_counts": [1, 2], "num_tasks": 4, "task_size": 2 * 10**6, "repeats": 1}
DEFAULT_OUTPUT = RESULTS_DIR / "throughput.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; --quick changes the defaults of flags not given."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker-counts", type=parse_int_list,
                        help="comma-separated worker counts (default 1,2,4,8)")
    parser.add_argument("--num-tasks", type=parse_count, help="tasks per run (default 24)")
    parser.add_argument("--task-size", type=parse_count,
                        help="prime limit per task, e.g. 1e10 (default 10**10)")
    parser.add_argument("--algorithm", choices=("sieve", "trial_division"), default="sieve")
    parser.add_argument("--repeats", type=parse_count, help="runs per worker count (default 3)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="JSON file to write (default analysis/results/throughput.json)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds to wait for one run's tasks (default 1800)")
    parser.add_argument("--quick", action="store_true",
                        help="small smoke run: 1,2 workers, 4 tasks of 2e6, 1 repeat")
    parser.add_argument("--processes", type=parse_count, default=1, metavar="P",
                        help="start the workers as supervisors of P processes each (default 1: "
                             "plain workers); every worker count must be a multiple of P")
    args = parser.parse_args(argv)
    for key, default in DEFAULTS.items():
        setattr(args, key, pick(getattr(args, key), args.quick, QUICK[key], default))
    if args.processes < 1 or any(w % args.processes for w in args.worker_counts):
        parser.error(f"every worker count must be a multiple of --processes {args.processes}")
    return args


def run_once(workers: int, workload: list[dict[str, Any]], timeout: float,
             label: str, processes: int = 1) -> dict[str, Any]:
    """One measured run: start, submit, wait for every task, stop; return the timings."""
    hosts = worker_ids(workers // processes) if processes > 1 else worker_ids(workers)
    with running_cluster(hosts, env={}, processes=processes) as cluster:
        meter = CpuMeter(cluster_pids(cluster))
        started = time.monotonic()
        task_ids = cluster.client.submit_many(workload)
        views = wait_all(cluster, task_ids, timeout, desc=label)
        client_wall = time.monotonic() - started
        cpu = meter.report()
    return {"workers": workers, "client_wall_seconds": client_wall, "cpu": cpu,
            **task_timings(views)}


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (repeat, worker count) run; repeats are interleaved so background load spreads."""
    workload = prime_workload(args.num_tasks, args.task_size, args.algorithm)
    runs = []
    total = args.repeats * len(args.worker_counts)
    for repeat in range(args.repeats):
        for workers in args.worker_counts:
            label = f"[{len(runs) + 1}/{total}] {workers} worker(s), repeat {repeat + 1}"
            run = {"repeat": repeat,
                   **run_once(workers, workload, args.timeout, label, args.processes)}
            runs.append(run)
            print(f"{label}: {run['wall_seconds']:.2f} s, "
                  f"{run['tasks_per_second']:.3f} tasks/s, "
                  f"CPU: ours {run['cpu']['ours_percent']}%, "
                  f"others {run['cpu']['others_percent']}%",
                  flush=True)
    return runs


def summarize(runs: list[dict[str, Any]], core_count: int) -> list[dict[str, Any]]:
    """Per worker count: time, throughput, speedup and efficiency against the smallest count.

    ``speedup`` compares mean times; ``speedup_best`` the fastest run of each count, which is
    the least disturbed by other load on a shared machine.
    """
    counts = sorted({r["workers"] for r in runs})
    walls = {n: describe([r["wall_seconds"] for r in runs if r["workers"] == n]) for n in counts}
    base_n, base = counts[0], walls[counts[0]]
    rows = []
    for n in counts:
        mine = [r for r in runs if r["workers"] == n]
        speedup, best_speedup = base["mean"] / walls[n]["mean"], base["min"] / walls[n]["min"]
        ideal = n / base_n
        rows.append({
            "workers": n,
            "runs": len(mine),
            "wall_seconds": walls[n],
            "tasks_per_second": describe([r["tasks_per_second"] for r in mine]),
            "speedup": speedup,
            "speedup_best": best_speedup,
            "ideal_speedup": ideal,
            "ideal_speedup_on_cores": min(n, core_count) / min(base_n, core_count),
            "efficiency": speedup / ideal,
            "efficiency_best": best_speedup / ideal,
            "task_seconds": describe([t for r in mine for t in r["task_seconds"]]),
            "queue_wait_seconds": describe([t for r in mine for t in r["queue_wait_seconds"]]),
            "compute_seconds": describe([t for r in mine for t in r["compute_seconds"]]),
            "cpu_ours_percent": describe([r["cpu"]["ours_percent"] for r in mine]),
            "cpu_ours_seconds": describe([r["cpu"]["ours_cpu_seconds"] for r in mine]),
            "cpu_others_percent": describe([r["cpu"]["others_percent"] for r in mine]),
        })
    return rows


def summary_table(summary: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table."""
    headers = ["workers", "time (s)", "± std", "best (s)", "tasks/s", "speedup", "best speedup",
               "ideal", "efficiency (best)", "task (s)", "queue wait (s)", "cluster CPU (s)",
               "CPU others"]
    rows = [[str(s["workers"]), fmt(s["wall_seconds"]["mean"]), fmt(s["wall_seconds"]["std"]),
             fmt(s["wall_seconds"]["min"]), fmt(s["tasks_per_second"]["mean"], 3),
             fmt(s["speedup"]) + "x", fmt(s["speedup_best"]) + "x",
             fmt(s["ideal_speedup"], 0) + "x", fmt(100 * s["efficiency_best"], 0, "%"),
             fmt(s["task_seconds"]["mean"]), fmt(s["queue_wait_seconds"]["mean"]),
             fmt(s["cpu_ours_seconds"]["mean"], 1),
             fmt(s["cpu_others_percent"]["mean"], 0, "%")] for s in summary]
    return format_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    """Run the throughput analysis and write its JSON."""
    args = parse_args(argv)
    stop_on_sigterm()
    core_count = cores()
    print(f"throughput: workers {args.worker_counts}, {args.num_tasks} x primes "
          f"{args.algorithm} up to {args.task_size:,}, {args.repeats} repeat(s); "
          f"this machine has {core_count} CPU cores", flush=True)
    machine = machine_info()
    try:
        runs = run_all(args)
    except KeyboardInterrupt:
        print("interrupted: every process started was stopped; nothing written", file=sys.stderr)
        return 130
    summary = summarize(runs, core_count)
    document = {
        "kind": "throughput",
        "version": 1,
        "machine": machine,
        "config": {"worker_counts": args.worker_counts, "num_tasks": args.num_tasks,
                   "task_size": args.task_size, "algorithm": args.algorithm,
                   "repeats": args.repeats, "quick": args.quick,
                   "processes_per_supervisor": args.processes},
        "runs": runs,
        "summary": summary,
    }
    write_json(args.output, document)
    print(summary_table(summary))
    print(f"CPU cores: {core_count}; speedup above {core_count}x is not expected for "
          "CPU-bound tasks. Time: first submission to last result (dispatcher clock); best: "
          "fastest run; cluster CPU: CPU seconds the dispatcher, workers and this script used; "
          "CPU others: share of the machine used by other processes.")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
