"""The interface every queue under test implements, and the two workloads all of them run."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from benchmarks.common import POLL_SECONDS, latency_summary_ms, wait_for

DRAIN_TIMEOUT_SECONDS = 600.0
FIRST_ROUNDTRIP_TIMEOUT_SECONDS = 60.0


class QueueSystem(ABC):
    """One task queue set up for a benchmark: its store, its workers, a no-op task."""

    name: str
    """Short key used in results and charts, e.g. ``huey-sqlite``."""
    settings: dict[str, Any]
    """Every setting that differs from the system's defaults, plus the ones that matter."""

    def unavailable(self) -> str | None:
        """Why this system cannot run here (a package or Redis missing), or None."""
        return None

    @abstractmethod
    def open(self, workdir: Path) -> None:
        """Start from an empty queue and result store (start servers if the system has any)."""

    @abstractmethod
    def close(self) -> None:
        """Stop every process this system started and release its resources."""

    @abstractmethod
    def enqueue_noops(self, count: int) -> None:
        """Enqueue ``count`` no-op tasks with the system's fastest normal client API."""

    @abstractmethod
    def start_workers(self, count: int) -> None:
        """Start ``count`` worker processes with the documented settings."""

    @abstractmethod
    def finished_count(self) -> int:
        """How many task results are stored so far."""

    @abstractmethod
    def roundtrip(self, timeout: float) -> None:
        """Submit one no-op task and wait for its result through the system's result API."""


def run_drain(system: QueueSystem, workdir: Path, tasks: int, workers: int = 2) -> dict[str, Any]:
    """Enqueue ``tasks`` no-ops, then time ``workers`` fresh worker processes draining them."""
    system.open(workdir)
    try:
        system.enqueue_noops(tasks)
        started = time.monotonic()
        system.start_workers(workers)
        wait_for(lambda: system.finished_count() > 0, DRAIN_TIMEOUT_SECONDS,
                 f"{system.name}: first result")
        first = time.monotonic()
        done_at_first = system.finished_count()
        wait_for(lambda: system.finished_count() >= tasks, DRAIN_TIMEOUT_SECONDS,
                 f"{system.name}: {tasks} results")
        finished = time.monotonic()
    finally:
        system.close()
    seconds = finished - started
    steady = (tasks - done_at_first) / max(finished - first, 1e-9)
    return {"tasks": tasks, "workers": workers, "seconds": seconds,
            "tasks_per_second": tasks / seconds, "first_result_seconds": first - started,
            "steady_tasks_per_second": steady, "poll_seconds": POLL_SECONDS}


def run_roundtrip(system: QueueSystem, workdir: Path, samples: int, warmup: int,
                  workers: int = 2) -> dict[str, Any]:
    """Latency of one task at a time through an idle system: submit, wait for the result."""
    system.open(workdir)
    try:
        system.start_workers(workers)
        system.roundtrip(FIRST_ROUNDTRIP_TIMEOUT_SECONDS)  # the workers are up once this returns
        for _ in range(warmup):
            system.roundtrip(10.0)
        latencies = []
        for _ in range(samples):
            started = time.perf_counter()
            system.roundtrip(10.0)
            latencies.append(time.perf_counter() - started)
    finally:
        system.close()
    return {**latency_summary_ms(latencies), "warmup": warmup, "workers": workers}
