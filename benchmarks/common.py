"""Helpers shared by every benchmark: statistics, timing, child processes, Redis."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import psutil

from shared.cluster import WaitTimeout, wait_until

T = TypeVar("T")

HARNESS_ROOT = Path(__file__).resolve().parent.parent
"""The repository that holds benchmarks/ (peers' apps are imported from here)."""

POLL_SECONDS = 0.02
"""How often a drain benchmark counts finished tasks; the same for every system."""


class BenchError(RuntimeError):
    """A benchmark could not run (a system did not start, finish or answer)."""


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean of latencies given in seconds, in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {"p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99), "mean_ms": statistics.fmean(ms), "samples": len(ms)}


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    return statistics.median(values)


def wait_for(predicate: Callable[[], T], timeout: float, what: str,
             interval: float = POLL_SECONDS) -> T:
    """Poll predicate until truthy and return its value; BenchError after timeout seconds."""
    try:
        return wait_until(predicate, timeout, interval, what)
    except WaitTimeout:
        raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}") from None


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: ours minus PYTHONPATH (the child's cwd decides imports)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def spawn(args: list[str], cwd: Path, log_path: Path,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a child in its own process group (so its own children stop with it)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(args, cwd=cwd, env=env or clean_env(), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def stop(procs: Sequence[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """SIGTERM each child's process group, then SIGKILL what is left after grace seconds."""
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        # The leader may be gone while its children (a prefork pool, a work horse) linger.
        _signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=10)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group id is the PID of the child we started
    except ProcessLookupError:
        pass


def rss_mib(pid: int) -> float:
    """Resident memory of one process in MiB."""
    return psutil.Process(pid).memory_info().rss / 2**20


def redis_reason(url: str) -> str | None:
    """None when Redis answers PING at url, else why not."""
    try:
        import redis
    except ImportError:
        return "the redis package is not installed (pip install -r requirements-bench.txt)"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        return f"Redis at {url} does not answer: {exc}"
    return None


class PeakRss:
    """Samples the resident memory of some processes in a thread; keeps the largest seen."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_mib: dict[int, float] = {}
        self._pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)

    def watch(self, pid: int) -> None:
        """Start sampling one more process."""
        self._pids.add(pid)
        self._thread.is_alive() or self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in list(self._pids):
                try:
                    value = rss_mib(pid)
                except psutil.Error:
                    continue
                self.peak_mib[pid] = max(value, self.peak_mib.get(pid, 0.0))

    def stop(self) -> dict[int, float]:
        """Stop sampling; the peak of each process, in MiB."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        return dict(self.peak_mib)


def fsync_probe_ms(directory: Path, samples: int = 50) -> float:
    """Median milliseconds of write + fsync of a small file in directory (the disk's state)."""
    path = directory / f".fsync-probe-{os.getpid()}"
    timings = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(samples):
            os.write(fd, b"x" * 100)
            started = time.perf_counter()
            os.fsync(fd)
            timings.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(timings) * 1000
