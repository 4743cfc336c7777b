"""Instruments of the fleet benchmark: CPU and memory of process trees, a /stats sampler, and
the simulator processes (``benchmarks.fleet_sim``) started, stopped and read back by PID."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import HARNESS_ROOT, BenchError, clean_env, percentile, spawn, stop, wait_for
from shared.client import JsonConnection, Unreachable

STATS_TIMEOUT_SECONDS = 5.0
"""A GET /stats sample not answered within this is counted as a timeout."""


@dataclass(frozen=True)
class Usage:
    """CPU seconds (user + system), resident memory and threads of some processes, now."""

    cpu_seconds: float
    rss_mib: float
    threads: int
    processes: int


def tree_usage(pids: Iterable[int], descendants: bool = True) -> Usage:
    """The usage of processes and (by default) all their descendants; gone ones count 0."""
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs += [root, *(root.children(recursive=True) if descendants else [])]
        except psutil.Error:
            continue
    cpu = rss = 0.0
    threads = 0
    for proc in procs:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                cpu += times.user + times.system
                rss += proc.memory_info().rss
                threads += proc.num_threads()
        except psutil.Error:
            continue
    return Usage(cpu, rss / 2**20, threads, len(procs))


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine spent busy since boot (not idle, not waiting on I/O)."""
    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


class PeakUsage(threading.Thread):
    """Samples the usage of some process trees in the background and keeps each peak."""

    def __init__(self, pids: Sequence[int], interval: float = 0.5) -> None:
        super().__init__(name="peak-usage", daemon=True)
        self._pids, self._interval = list(pids), interval
        self._stop_event = threading.Event()
        self.peak = Usage(0.0, 0.0, 0, 0)

    def run(self) -> None:
        while not self._stop_event.wait(self._interval):
            self._sample()

    def _sample(self) -> None:
        now, old = tree_usage(self._pids), self.peak
        self.peak = Usage(now.cpu_seconds, max(old.rss_mib, now.rss_mib),
                          max(old.threads, now.threads), max(old.processes, now.processes))

    def finish(self) -> dict[str, float]:
        """Stop sampling (one last sample first); the peaks."""
        self._sample()
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)
        return {"peak_rss_mib": round(self.peak.rss_mib, 1), "peak_threads": self.peak.threads,
                "peak_processes": self.peak.processes}


class Window:
    """A measuring window: its bounds (monotonic) and the CPU each group of processes used."""

    def __init__(self, groups: dict[str, Sequence[int]], flat: Sequence[str] = ()) -> None:
        """``groups``: name -> root PIDs, measured with their descendants unless in ``flat``."""
        self._groups = {name: list(pids) for name, pids in groups.items()}
        self._flat = set(flat)
        self.started = self.ended = 0.0
        self._before: dict[str, float] = {}

    def _cpu(self) -> dict[str, float]:
        cpu = {name: tree_usage(pids, name not in self._flat).cpu_seconds
               for name, pids in self._groups.items()}
        # This process alone (the /stats sampler, the bookkeeping), not its children.
        cpu["harness"] = tree_usage([os.getpid()], descendants=False).cpu_seconds
        cpu["machine_busy"] = machine_busy_seconds()
        return cpu

    def start(self) -> None:
        """The window opens now."""
        self._before = self._cpu()
        self.started = time.monotonic()

    def end(self) -> dict[str, Any]:
        """The window closes now; seconds, CPU seconds and cores used per group."""
        self.ended = time.monotonic()
        after = self._cpu()
        seconds = self.ended - self.started
        used = {name: max(0.0, after[name] - self._before[name]) for name in after}
        ours = sum(value for name, value in used.items() if name != "machine_busy")
        used["others"] = max(0.0, used["machine_busy"] - ours)
        return {"seconds": round(seconds, 3),
                "cpu_seconds": {k: round(v, 2) for k, v in used.items()},
                "cpu_cores": {k: round(v / seconds, 3) for k, v in used.items()},
                "cpu_count": psutil.cpu_count()}

    def holds(self, at: float) -> bool:
        """True when a monotonic time falls inside the window."""
        return self.started <= at < self.ended


@dataclass(frozen=True)
class StatsSample:
    """One GET /stats: when it started, how long it took, what came of it, the workers seen."""

    at: float
    seconds: float
    outcome: str
    alive: int | None = None
    total: int | None = None
    dead_ids: tuple[str, ...] = ()


class StatsSampler(threading.Thread):
    """GET /stats every ``interval`` seconds on a monotonic schedule, as a client would."""

    def __init__(self, url: str, interval: float) -> None:
        super().__init__(name="stats-sampler", daemon=True)
        self._http = JsonConnection(url)
        self._interval = interval
        self._stop_event = threading.Event()
        self.samples: list[StatsSample] = []
        self.latest: dict[str, Any] | None = None

    def run(self) -> None:
        next_at = time.monotonic()
        while not self._stop_event.wait(max(0.0, next_at - time.monotonic())):
            self.samples.append(self._sample())
            next_at = max(next_at + self._interval, time.monotonic())

    def _sample(self) -> StatsSample:
        started = time.monotonic()
        try:
            reply = self._http.call("GET", "/stats", timeout=(2.0, STATS_TIMEOUT_SECONDS))
        except Unreachable as exc:
            timed_out = isinstance(exc.__cause__, TimeoutError)
            return StatsSample(started, time.monotonic() - started,
                               "timeout" if timed_out else "error")
        seconds = time.monotonic() - started
        if reply.status != 200 or not isinstance(reply.body, dict):
            return StatsSample(started, seconds, str(reply.status))
        self.latest = reply.body
        workers = reply.body["workers"]
        dead = tuple(w["worker_id"] for w in workers["details"] if w["status"] == "dead")
        return StatsSample(started, seconds, "200", workers["alive"], workers["total"], dead)

    def finish(self) -> None:
        """Stop sampling."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=STATS_TIMEOUT_SECONDS + 5)
        self._http.close()

    def workers(self, key: str) -> int:
        """``workers.<key>`` (alive, total) of the latest answer, 0 before any."""
        return int(self.latest["workers"][key]) if self.latest else 0

    def between(self, start: float, end: float) -> list[StatsSample]:
        """The samples started in [start, end)."""
        return [s for s in self.samples if start <= s.at < end]


def summarize_samples(samples: Sequence[StatsSample], origin: float) -> dict[str, Any]:
    """/stats latency (answered samples), failures, the workers seen dead in any sample, and
    the raw samples (``at`` in seconds from ``origin``)."""
    answered = [s.seconds for s in samples if s.outcome == "200"]
    dead_seen = sorted({wid for s in samples for wid in s.dead_ids})
    return {
        "samples": len(samples), "answered": len(answered),
        "timeouts": sum(1 for s in samples if s.outcome == "timeout"),
        "errors": sum(1 for s in samples if s.outcome not in ("200", "timeout")),
        "latency_ms": latency_ms(answered),
        "dead_seen": len(dead_seen), "dead_seen_ids": dead_seen,
        "max_dead_in_one_sample": max((len(s.dead_ids) for s in samples), default=0),
        "min_alive_in_one_sample": min((s.alive for s in samples if s.alive is not None),
                                       default=None),
        "raw": [asdict(s) | {"at": round(s.at - origin, 3), "seconds": round(s.seconds, 4),
                             "dead_ids": len(s.dead_ids)} for s in samples],
    }


def latency_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p90/p99/max/mean in milliseconds (None when there are no samples)."""
    if not seconds:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None, "samples": 0}
    ms = [s * 1000 for s in seconds]
    return {"p50": round(percentile(ms, 50), 2), "p90": round(percentile(ms, 90), 2),
            "p99": round(percentile(ms, 99), 2), "max": round(max(ms), 2),
            "mean": round(sum(ms) / len(ms), 2), "samples": len(ms)}


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over at most ``parts`` non-empty shares, as evenly as possible."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class Simulators:
    """Simulator processes: start them, wait until ready, stop them (SIGTERM) and read back."""

    def __init__(self, workdir: Path, label: str) -> None:
        self._dir = workdir / label
        self._dir.mkdir(parents=True, exist_ok=True)
        self._label = label
        self._procs: list[Any] = []
        self._outputs: list[Path] = []

    @property
    def pids(self) -> list[int]:
        """The simulators' PIDs."""
        return [proc.pid for proc in self._procs]

    def start(self, mode: str, url: str, per_process: Sequence[list[str]]) -> None:
        """One simulator per argument list (extra ``fleet_sim`` flags)."""
        for index, extra in enumerate(per_process):
            out = self._dir / f"sim-{index}.json"
            args = [sys.executable, "-m", "benchmarks.fleet_sim", mode, "--url", url,
                    "--out", str(out), "--proc", str(index), *extra]
            self._procs.append(spawn(args, HARNESS_ROOT, self._dir / f"sim-{index}.log",
                                     clean_env()))
            self._outputs.append(out)

    def wait_ready(self, timeout: float) -> None:
        """Wait until every simulator has started its peers; BenchError if one died."""
        def ready() -> bool:
            for proc, out in zip(self._procs, self._outputs):
                if proc.poll() is not None:
                    raise BenchError(f"{self._label}: simulator {proc.pid} exited "
                                     f"{proc.returncode}: {self._log_tail(out)}")
            return all(Path(f"{out}.ready").exists() for out in self._outputs)

        wait_for(ready, timeout, f"{self._label} simulators ready", interval=0.05)

    def collect(self, grace: float = 20.0) -> list[dict[str, Any]]:
        """SIGTERM every simulator, wait for it, and read the records it wrote."""
        stop(self._procs, grace)
        records = []
        for proc, out in zip(self._procs, self._outputs):
            if not out.exists():
                raise BenchError(f"{self._label}: simulator {proc.pid} wrote no records "
                                 f"(exit {proc.returncode}): {self._log_tail(out)}")
            records.append(json.loads(out.read_text()))
        self._procs = []
        return records

    def close(self) -> None:
        """Stop any simulator still running (for finally blocks)."""
        if self._procs:
            stop(self._procs, grace=2.0)
            self._procs = []

    @staticmethod
    def _log_tail(out: Path) -> str:
        log = out.with_suffix(".log")
        return log.read_text(errors="replace")[-800:] if log.exists() else "(no log)"
