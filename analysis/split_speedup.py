#!/usr/bin/env python3
"""What splitting one big prime count buys: one worker unsplit against N workers split P ways.

Two runs on the default store (a fresh SQLite dispatcher each, free port, temp directory):
the whole count as one task on one worker, then the same count as a split job of P parts on N
workers. Records each run's wall time (submission to the finished result, as the client sees
it), the speedup, and checks both answers against the known value of pi(LIMIT). Writes JSON to
analysis/results/ and prints a Markdown table for the README's "Split jobs" section.

    python analysis/split_speedup.py                        # pi(10^11): 1 worker vs 2 x 16 parts
    python analysis/split_speedup.py --limit 1e10           # a shorter check of the same thing
    python analysis/split_speedup.py --quick                # pi(10^9), seconds
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
    RESULTS_DIR, CpuMeter, cluster_pids, cores, fmt, format_table, machine_info, parse_count,
    running_cluster, stop_on_sigterm, worker_ids, write_json,
)

KNOWN_PI = {10**8: 5_761_455, 10**9: 50_847_534, 10**10: 455_052_511, 10**11: 4_118_054_813,
            10**12: 37_607_912_018}
"""pi(10^k), the number of primes <= 10^k (OEIS A006880)."""
DEFAULT_OUTPUT = RESULTS_DIR / "split_speedup.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; --quick is pi(10^9)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=parse_count, help="count primes up to this (1e11)")
    parser.add_argument("--parts", type=int, default=16, help="parts of the split job (16)")
    parser.add_argument("--workers", type=int, default=2, help="workers for the split job (2)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds to wait for one run (3600)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="JSON file to write (analysis/results/split_speedup.json)")
    parser.add_argument("--quick", action="store_true", help="pi(10^9) instead of pi(10^11)")
    args = parser.parse_args(argv)
    if args.limit is None:
        args.limit = 10**9 if args.quick else 10**11
    if args.parts < 1 or args.workers < 1:
        parser.error("--parts and --workers must be at least 1")
    return args


def run_unsplit(limit: int, timeout: float) -> dict[str, Any]:
    """The whole count as one task on one worker."""
    with running_cluster(worker_ids(1), env={}) as cluster:
        meter = CpuMeter(cluster_pids(cluster))
        started = time.monotonic()
        task_id = cluster.client.submit("primes", {"limit": limit, "algorithm": "sieve"})
        view = cluster.client.wait(task_id, timeout)
        wall = time.monotonic() - started
        cpu = meter.report()
    if view["status"] != "completed":
        raise RuntimeError(f"the unsplit task ended {view['status']}: {view['error']}")
    return {"mode": "unsplit", "workers": 1, "parts": 1, "wall_seconds": wall, "cpu": cpu,
            "workers_used": [view["worker_id"]], **_answer(view["result"])}


def run_split(limit: int, workers: int, parts: int, timeout: float) -> dict[str, Any]:
    """The same count as a split job of ``parts`` parts on ``workers`` workers."""
    with running_cluster(worker_ids(workers), env={}) as cluster:
        meter = CpuMeter(cluster_pids(cluster))
        started = time.monotonic()
        group = cluster.client.submit_split("primes", {"limit": limit, "algorithm": "sieve"},
                                            parts)
        view = cluster.client.wait_group(group["group_id"], timeout)
        wall = time.monotonic() - started
        cpu = meter.report()
    if view["status"] != "completed":
        raise RuntimeError(f"the split job ended {view['status']}: {view['error']}")
    used = sorted({p["worker_id"] for p in view["tasks"] if p["worker_id"]})
    return {"mode": "split", "workers": workers, "parts": view["parts"]["total"],
            "wall_seconds": wall, "cpu": cpu, "workers_used": used, **_answer(view["result"])}


def _answer(result: dict[str, Any]) -> dict[str, Any]:
    return {"prime_count": result["prime_count"], "largest_prime": result["largest_prime"],
            "sum_of_primes": result["sum_of_primes"],
            "compute_seconds": result["elapsed_seconds"]}


def table(runs: list[dict[str, Any]], known: int | None) -> str:
    """The runs as a Markdown table."""
    base = runs[0]["wall_seconds"]
    rows = [[r["mode"], str(r["workers"]), str(r["parts"]), fmt(r["wall_seconds"], 1),
             fmt(base / r["wall_seconds"]) + "x", fmt(r["compute_seconds"], 1),
             f"{r['prime_count']:,}",
             "-" if known is None else ("yes" if r["prime_count"] == known else "NO")]
            for r in runs]
    return format_table(["run", "workers", "parts", "wall (s)", "speedup", "task CPU (s)",
                         "prime_count", "= known"], rows)


def main(argv: list[str] | None = None) -> int:
    """Run both measurements, write the JSON, print the table."""
    args = parse_args(argv)
    stop_on_sigterm()
    known = KNOWN_PI.get(args.limit)
    print(f"split speedup: pi({args.limit:,}) on 1 worker unsplit, then on {args.workers} "
          f"workers split {args.parts} ways; {cores()} CPU cores", flush=True)
    machine = machine_info()
    try:
        runs = [run_unsplit(args.limit, args.timeout)]
        print(f"unsplit: {runs[0]['wall_seconds']:.1f} s", flush=True)
        runs.append(run_split(args.limit, args.workers, args.parts, args.timeout))
        print(f"split: {runs[1]['wall_seconds']:.1f} s", flush=True)
    except KeyboardInterrupt:
        print("interrupted: every process started was stopped; nothing written", file=sys.stderr)
        return 130
    speedup = runs[0]["wall_seconds"] / runs[1]["wall_seconds"]
    document = {
        "kind": "split_speedup", "version": 1, "machine": machine,
        "config": {"limit": args.limit, "parts": args.parts, "workers": args.workers,
                   "algorithm": "sieve", "store": "sqlite"},
        "known_prime_count": known,
        "runs": runs,
        "speedup": speedup,
        "answers_agree": len({(r["prime_count"], r["largest_prime"], r["sum_of_primes"])
                              for r in runs}) == 1,
        "correct": None if known is None else all(r["prime_count"] == known for r in runs),
    }
    write_json(args.output, document)
    print(table(runs, known))
    print(f"speedup {speedup:.2f}x on {cores()} cores; both answers agree: "
          f"{document['answers_agree']}; equal to the known pi: {document['correct']}")
    print(f"wrote {args.output}")
    return 0 if document["answers_agree"] and document["correct"] is not False else 1


if __name__ == "__main__":
    sys.exit(main())
