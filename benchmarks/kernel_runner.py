"""Run one prime kernel in a fresh process and print its time, answer and peak RSS as JSON.

    python -m benchmarks.kernel_runner KIND LIMIT [--start N] [--project-root DIR]

KIND is ``ours-sieve``, ``ours-trial`` (the project's primes task, imported from
--project-root), ``numpy-segmented``, ``numpy-array``, ``pure-python-trial``, or ``ours-imports``
(nothing but the imports, for the interpreter's own RSS). A fresh process per run keeps one
kernel's memory out of the next one's peak.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def _ours(root: str, algorithm: str, start: int, limit: int) -> tuple[int, int]:
    sys.path.insert(0, root)  # the project under test, ahead of this checkout
    from tasks import prime_task
    from tasks.base import noop_checkpoint

    # The task type is prime_task.primes since task types are declared with @task; a root
    # checked out from before that names it PRIME_TASK.
    task_type = getattr(prime_task, "PRIME_TASK", None) or prime_task.primes
    params = task_type.validate({"limit": limit, "algorithm": algorithm})
    resume = None
    if start:
        # A checkpoint state as a worker would resume from it: totals of (start, limit] only.
        resume = {"last_checked": start, "prime_count": 0, "sum_of_primes": 0,
                  "largest_prime": None, "elapsed_seconds": 0.0, "primes": None}
    result = task_type.run(params, resume, noop_checkpoint)
    return result["prime_count"], result["sum_of_primes"]


def run(kind: str, limit: int, start: int, root: str) -> dict[str, Any]:
    """Time one kernel; its (count, sum) and the process's peak RSS."""
    import numpy  # noqa: F401 - loaded before the clock starts, as a worker has it loaded

    from benchmarks import baselines

    kernels = {
        "ours-sieve": lambda: _ours(root, "sieve", start, limit),
        "ours-trial": lambda: _ours(root, "trial_division", start, limit),
        "numpy-segmented": lambda: baselines.numpy_segmented_sieve(limit, start),
        "numpy-array": lambda: baselines.numpy_array_sieve(limit),
        "pure-python-trial": lambda: baselines.pure_python_trial_division(limit),
        "ours-imports": lambda: (0, 0),
    }
    if kind.startswith("ours"):
        sys.path.insert(0, root)
        import tasks.prime_task  # noqa: F401 - imports (pydantic) are not the kernel's time
    started = time.perf_counter()
    count, total = kernels[kind]()
    seconds = time.perf_counter() - started
    return {"kind": kind, "start": start, "limit": limit, "seconds": seconds, "count": count,
            "sum": total, "peak_rss_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    """This process's peak resident memory since exec (VmHWM; ru_maxrss would include the
    parent's peak from before the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind")
    parser.add_argument("limit", type=int)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--project-root", default=".")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.kind, args.limit, args.start, args.project_root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
