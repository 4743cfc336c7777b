"""Workload 5, the prime kernels: primesieve's CLI vs ours vs numpy/pure-Python baselines.

Every kernel runs in a fresh process (``benchmarks.kernel_runner``), so its peak RSS is its
own; ours runs with the project's python and code. Kinds alternate within each repeat.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import HARNESS_ROOT, BenchError, clean_env, median
from benchmarks.ours import project_python

KERNEL_TIMEOUT_SECONDS = 1800
ARRAY_SIEVE_MEMORY_FACTOR = 3
"""The single-array baseline needs about limit/2 bytes plus its result: skip it unless this
many times that is available."""


def _runner(kind: str, limit: int, start: int, root: Path) -> dict[str, Any]:
    python = project_python(root) if kind.startswith("ours") else sys.executable
    args = [python, "-m", "benchmarks.kernel_runner", kind, str(limit), "--start", str(start),
            "--project-root", str(root)]
    done = subprocess.run(args, cwd=HARNESS_ROOT, env=clean_env(), capture_output=True,
                          text=True, timeout=KERNEL_TIMEOUT_SECONDS, check=False)
    if done.returncode != 0:
        raise BenchError(f"{kind} up to {limit}: exit {done.returncode}: {done.stderr[-400:]}")
    return json.loads(done.stdout.splitlines()[-1])


def _primesieve(command: str, threads: int | None, limit: int, start: int) -> dict[str, Any]:
    args = [command, str(start), str(limit), "--count", "--no-status"]
    if threads is not None:
        args.append(f"--threads={threads}")
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, timeout=KERNEL_TIMEOUT_SECONDS,
                          check=True)
    wall = time.perf_counter() - started
    seconds = re.search(r"Seconds:\s*([\d.]+)", done.stdout)
    count = re.search(r"Primes:\s*(\d+)", done.stdout)
    if not (seconds and count):
        raise BenchError(f"unexpected primesieve output: {done.stdout[-300:]}")
    # primesieve prints 3 decimals; below a few ms the process wall time is the better figure.
    return {"seconds": max(float(seconds.group(1)), 0.0) or wall, "wall_seconds": wall,
            "count": int(count.group(1))}


def _measure(kinds: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Run each kind ``repeats`` times, alternating; the median time and the largest RSS."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in kinds}
    names = list(kinds)
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            print(f"[kernels] repeat {repeat + 1}/{repeats}: {name} ...", file=sys.stderr,
                  flush=True)
            runs[name].append(kinds[name]())
            print(f"[kernels]   {runs[name][-1]['seconds']:.3f} s", file=sys.stderr, flush=True)
    summary: dict[str, Any] = {}
    for name, results in runs.items():
        entry: dict[str, Any] = {"median_seconds": median([r["seconds"] for r in results]),
                                 "count": results[0]["count"], "runs": results}
        if "peak_rss_mib" in results[0]:
            entry["peak_rss_mib"] = max(r["peak_rss_mib"] for r in results)
        summary[name] = entry
    counts = {name: entry["count"] for name, entry in summary.items()}
    if len(set(counts.values())) > 1:
        summary["count_mismatch"] = counts
    return summary


def _primesieve_kinds(command: str, limit: int, start: int, with_all_threads: bool,
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    if shutil.which(command) is None:
        reason = (f"{command!r} not found (Debian: apt-get install primesieve; benchmarks/run.sh "
                  "installs it when run as root)")
        return {}, {"primesieve_1thread": {"skipped": reason}}
    kinds = {"primesieve_1thread": lambda: _primesieve(command, 1, limit, start)}
    if with_all_threads:
        kinds["primesieve_all_threads"] = lambda: _primesieve(command, None, limit, start)
    return kinds, {}


def sieve(root: Path, limit: int, repeats: int, command: str) -> dict[str, Any]:
    """Count the primes up to limit: primesieve, ours, numpy segmented, numpy single array."""
    kinds, skipped = _primesieve_kinds(command, limit, 0, with_all_threads=True)
    kinds["ours"] = lambda: _runner("ours-sieve", limit, 0, root)
    kinds["numpy_segmented"] = lambda: _runner("numpy-segmented", limit, 0, root)
    if psutil.virtual_memory().available > ARRAY_SIEVE_MEMORY_FACTOR * limit:
        kinds["numpy_array"] = lambda: _runner("numpy-array", limit, 0, root)
    else:
        needed_gib = ARRAY_SIEVE_MEMORY_FACTOR * limit / 2**30
        skipped["numpy_array"] = {"skipped": f"needs ~{needed_gib:.1f} GiB free memory"}
    return {"limit": limit, **_measure(kinds, repeats), **skipped}


def window(root: Path, end: int, width: int, repeats: int, command: str) -> dict[str, Any]:
    """Count the primes in (end - width, end]: ours resumed from a checkpoint state there."""
    start = end - width
    kinds, skipped = _primesieve_kinds(command, end, start, with_all_threads=False)
    kinds["ours"] = lambda: _runner("ours-sieve", end, start, root)
    kinds["numpy_segmented"] = lambda: _runner("numpy-segmented", end, start, root)
    return {"start": start, "end": end, **_measure(kinds, repeats), **skipped}


def trial_division(root: Path, limit: int, repeats: int) -> dict[str, Any]:
    """Trial division up to limit: ours vs plain Python."""
    kinds = {"ours": lambda: _runner("ours-trial", limit, 0, root),
             "pure_python": lambda: _runner("pure-python-trial", limit, 0, root)}
    return {"limit": limit, **_measure(kinds, repeats)}


def run_all(root: Path, sieve_limit: int, window_end: int, trial_limit: int, repeats: int,
            command: str) -> dict[str, Any]:
    """Workload 5: every kernel comparison, plus the RSS of the bare imports."""
    imports = _runner("ours-imports", 0, 0, root)
    return {
        "imports_only": {"peak_rss_mib": imports["peak_rss_mib"],
                         "note": "python + numpy + the project's task modules, no kernel run"},
        "sieve": sieve(root, sieve_limit, repeats, command),
        "window": window(root, window_end, sieve_limit, repeats, command),
        "trial_division": trial_division(root, trial_limit, repeats),
    }
