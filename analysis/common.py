"""Helpers shared by the analysis runners: clusters, workloads, timings, CPU use, JSON, tables."""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
from tqdm import tqdm

from analysis import REPO_ROOT
from shared.cluster import LocalCluster, wait_until
from shared.config import Config, load_config

RESULTS_DIR = REPO_ROOT / "analysis" / "results"
FINISHED = ("completed", "failed", "cancelled")
STARTUP_TIMEOUT_SECONDS = 60.0


# -- command lines ----------------------------------------------------------------------------

def parse_count(text: str) -> int:
    """An integer written as 1000000, 1_000_000, 1e6 or 10**6."""
    cleaned = text.strip().replace("_", "")
    try:
        if "**" in cleaned:
            base, exponent = cleaned.split("**", 1)
            return int(base) ** int(exponent)
        value = float(cleaned) if "e" in cleaned.lower() else int(cleaned)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value != int(value) or value < 0:
        raise argparse.ArgumentTypeError(f"not a non-negative integer: {text!r}")
    return int(value)


def parse_int_list(text: str) -> list[int]:
    """A comma-separated list of positive integers, e.g. 1,2,4,8."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need positive integers, got {text!r}")
    return values


def parse_fraction_list(text: str) -> list[float]:
    """A comma-separated list of fractions in (0, 1), e.g. 0.3,0.6."""
    try:
        values = sorted(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of fractions: {text!r}") from None
    if not values or not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"fractions must be between 0 and 1, got {text!r}")
    return values


def pick(value: Any, quick: bool, quick_value: Any, default: Any) -> Any:
    """A flag's value: as given, else the --quick value in quick mode, else the default."""
    if value is not None:
        return value
    return quick_value if quick else default


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so every `finally` stops what it started."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


# -- environment ------------------------------------------------------------------------------

def effective_config(env: Mapping[str, str]) -> Config:
    """The configuration the cluster's processes will load (.env, environment, overrides)."""
    return load_config(env={**os.environ, **env})


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: cores, load, Python, the commit measured."""
    return {
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def cores() -> int:
    """Logical CPU cores of this machine."""
    return psutil.cpu_count(logical=True) or 1


# -- clusters and workloads -------------------------------------------------------------------

def worker_ids(count: int, first: int = 1) -> list[str]:
    """worker-1 ... worker-N."""
    return [f"worker-{i}" for i in range(first, first + count)]


def prime_workload(num_tasks: int, task_size: int, algorithm: str) -> list[dict[str, Any]]:
    """NUM_TASKS identical prime tasks up to TASK_SIZE."""
    task = {"task_type": "primes", "params": {"limit": task_size, "algorithm": algorithm}}
    return [dict(task) for _ in range(num_tasks)]


def alive_workers(cluster: LocalCluster) -> set[str]:
    """Ids of the workers the dispatcher currently counts as alive."""
    details = cluster.client.stats()["workers"]["details"]
    return {w["worker_id"] for w in details if w["alive"]}


@contextmanager
def running_cluster(workers: Sequence[str], env: Mapping[str, str],
                    processes: int = 1) -> Iterator[LocalCluster]:
    """A fresh dispatcher (temp database, free port) and these workers; all stopped on exit.

    With ``processes`` > 1 each id names a host: a worker supervisor running that many workers
    ``id-1`` ... ``id-P`` (as ``./start_worker.sh ID --processes P`` does).
    """
    with tempfile.TemporaryDirectory(prefix="taskqueue-analysis-") as workdir:
        cluster = LocalCluster(Path(workdir), dict(env))
        try:
            cluster.start_dispatcher()
            expected = set(workers)
            for worker_id in workers:
                if processes > 1:
                    cluster.start_supervisor(worker_id, processes)
                    expected.discard(worker_id)
                    expected.update(f"{worker_id}-{i}" for i in range(1, processes + 1))
                else:
                    cluster.start_worker(worker_id)
            wait_until(lambda: alive_workers(cluster) >= expected, STARTUP_TIMEOUT_SECONDS,
                       interval=0.05, message=f"{len(expected)} workers alive")
            yield cluster
        finally:
            cluster.close()


def wait_all(cluster: LocalCluster, task_ids: Sequence[int], timeout: float,
             desc: str) -> list[dict[str, Any]]:
    """Long-poll every task until it finishes (progress bar on stderr); return the final views."""
    deadline = time.monotonic() + timeout
    views = []
    with tqdm(total=len(task_ids), desc=desc, unit="task", leave=False) as bar:
        for task_id in task_ids:
            remaining = max(1.0, deadline - time.monotonic())
            views.append(cluster.client.wait(task_id, remaining))
            bar.update(1)
    return views


# -- timings ----------------------------------------------------------------------------------

def task_timings(views: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Wall time (first submission to last finish, dispatcher clock) and per-task figures."""
    created = min(v["created_at"] for v in views)
    finished = max(v["finished_at"] for v in views)
    wall = finished - created
    return {
        "wall_seconds": wall,
        "tasks_per_second": len(views) / wall if wall > 0 else None,
        "task_seconds": [v["finished_at"] - v["started_at"] for v in views],
        "queue_wait_seconds": [v["started_at"] - v["created_at"] for v in views],
        "compute_seconds": [_compute_seconds(v) for v in views],
        "attempts": [v["attempt"] for v in views],
        "not_completed": sum(v["status"] != "completed" for v in views),
        "distinct_results": len({_answer(v) for v in views if v["status"] == "completed"}),
        "tasks_per_worker": dict(Counter(v["worker_id"] for v in views)),
    }


def _answer(view: dict[str, Any]) -> str:
    """The result without its timing: identical tasks must give identical answers."""
    result = view.get("result")
    if isinstance(result, dict):
        result = {k: v for k, v in result.items() if k != "elapsed_seconds"}
    return json.dumps(result, sort_keys=True)


def _compute_seconds(view: dict[str, Any]) -> float | None:
    result = view.get("result")
    return result.get("elapsed_seconds") if isinstance(result, dict) else None


def describe(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """n, mean, sample std (0 for one value), min, median, max of the numbers given."""
    numbers = [float(v) for v in values if v is not None]
    if not numbers:
        return {"n": 0, "mean": None, "std": None, "min": None, "median": None, "max": None}
    return {
        "n": len(numbers),
        "mean": statistics.fmean(numbers),
        "std": statistics.stdev(numbers) if len(numbers) > 1 else 0.0,
        "min": min(numbers),
        "median": statistics.median(numbers),
        "max": max(numbers),
    }


class CpuMeter:
    """CPU use of the whole machine during a run, and how much of it was not ours.

    Ours: this process plus the processes given (dispatcher, workers) and any added later
    with :meth:`track`. Others: everything else on the machine, e.g. other people's loads.
    Call :meth:`freeze` just before killing a process: its CPU time is gone once it is reaped.
    """

    def __init__(self, pids: Iterable[int] = ()) -> None:
        self._started = time.monotonic()
        self._system = psutil.cpu_times()
        self._procs = [psutil.Process(pid) for pid in {os.getpid(), *pids}]
        self._ours = {p.pid: _cpu_seconds(p) for p in self._procs}
        self._frozen: dict[int, float] = {}

    def track(self, pid: int) -> None:
        """Count a process started during the run (all its CPU time) as ours."""
        self._procs.append(psutil.Process(pid))
        self._ours[pid] = 0.0

    def freeze(self, pid: int) -> None:
        """Keep a process's CPU time so far; call it right before the process is killed."""
        self._frozen[pid] = next(_cpu_seconds(p) for p in self._procs if p.pid == pid)

    def _used(self, proc: psutil.Process) -> float:
        now = self._frozen.get(proc.pid)
        return (_cpu_seconds(proc) if now is None else now) - self._ours[proc.pid]

    def report(self) -> dict[str, float]:
        """busy_percent (all processes), ours_percent, others_percent, our CPU seconds, load."""
        after = psutil.cpu_times()
        capacity = (time.monotonic() - self._started) * cores()
        total = sum(after) - sum(self._system)
        busy = total - (_idle(after) - _idle(self._system))
        ours = sum(self._used(p) for p in self._procs)
        busy_percent = 100 * busy / total if total > 0 else 0.0
        ours_percent = min(100 * ours / capacity, busy_percent) if capacity > 0 else 0.0
        return {"busy_percent": round(busy_percent, 1), "ours_percent": round(ours_percent, 1),
                "others_percent": round(max(0.0, busy_percent - ours_percent), 1),
                "ours_cpu_seconds": round(ours, 2),
                "load_average_1m": round(os.getloadavg()[0], 2)}


def cluster_pids(cluster: LocalCluster) -> list[int]:
    """PIDs of the cluster's dispatcher and workers (with the workers of any supervisor)."""
    procs = [*cluster.workers.values(), *([cluster.dispatcher] if cluster.dispatcher else [])]
    pids = [p.pid for p in procs if p.poll() is None]
    for pid in list(pids):
        try:
            pids += [child.pid for child in psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return pids


def _cpu_seconds(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return times.user + times.system


def _idle(times: Any) -> float:
    return times.idle + getattr(times, "iowait", 0.0)


# -- files and tables -------------------------------------------------------------------------

def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write a result document (directories created, replaced atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    """Read a result document."""
    return json.loads(path.read_text())


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (readable in a terminal, pasteable into docs)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([_row(headers, widths), rule, *(_row(r, widths) for r in rows)])


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    """A number for a table; '-' when missing."""
    return "-" if value is None else f"{value:.{digits}f}{suffix}"
