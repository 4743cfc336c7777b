"""The fleet workloads: idle simulated workers, a drain by real workers, many client connections.

Each takes a fresh dispatcher (``ProjectCluster``: the measured checkout's code and venv) and
stops every process it started, by PID, in a ``finally`` block.
"""

from __future__ import annotations

import math
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import BenchError, median, wait_for
from benchmarks.fleet_measure import (
    PeakUsage,
    Simulators,
    StatsSampler,
    Window,
    latency_ms,
    split,
    summarize_samples,
    tree_usage,
)
from benchmarks.fleet_sim import (
    CLAIM_TIMEOUT,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    POLL_WAIT,
)
from benchmarks.ours import ProjectCluster
from shared.client import ClientError, QueueClient
from shared.config import ConfigError, load_config

SIM_READY_SECONDS = 60.0
FINAL_STATS_SECONDS = 15.0
DRAIN_BATCH_LIMIT = 10_000
"""The dispatcher's default MAX_BATCH_SIZE: a drain submits its tasks in one request up to it."""


@dataclass(frozen=True)
class FleetSizes:
    """How big each workload is; ``quick()`` is small enough for a test."""

    idle_workers: int = 300
    idle_seconds: float = 30.0
    sim_processes: int = 2
    ramp_seconds: float = 1.0
    stats_interval: float = 1.0
    drain_workers: int = 100
    drain_tasks: int | None = None  # default: 2 per worker
    task_seconds: float = 5.0
    connections: tuple[int, ...] = (10, 25, 50, 100, 150, 200)
    connection_seconds: float = 10.0
    warmup_seconds: float = 1.0

    @classmethod
    def quick(cls) -> "FleetSizes":
        """Tiny sizes: a few seconds per workload."""
        return cls(idle_workers=12, idle_seconds=2.0, drain_workers=3, task_seconds=1.0,
                   connections=(2, 4), connection_seconds=1.5, warmup_seconds=0.3,
                   ramp_seconds=0.5)

    @property
    def tasks_for_drain(self) -> int:
        """The drain's task count (2 per worker unless set)."""
        return self.drain_tasks if self.drain_tasks is not None else 2 * self.drain_workers


@dataclass(frozen=True)
class Checkout:
    """What every workload needs to know about the checkout it measures."""

    project_root: Path
    workdir: Path
    env: dict[str, str]

    def cluster(self, label: str) -> ProjectCluster:
        """A fresh dispatcher on a new database (and log directory), started."""
        cluster = ProjectCluster(self.workdir / f"{label}-{uuid.uuid4().hex[:8]}",
                                 self.project_root, self.env)
        try:
            cluster.start_dispatcher(timeout=60)
        except Exception:
            cluster.close()
            raise
        return cluster

    def heartbeat_timeout(self) -> float:
        """HEARTBEAT_TIMEOUT as the dispatcher sees it (.env of the checkout, then --env)."""
        try:
            return load_config({**self.env}, self.project_root / ".env").heartbeat_timeout
        except ConfigError:
            return 2.0


def log(workload: str, message: str) -> None:
    """Progress on stderr."""
    print(f"[{workload}] {message}", file=sys.stderr, flush=True)


def _pid(cluster: ProjectCluster) -> int:
    if cluster.dispatcher is None:
        raise BenchError("no dispatcher")
    return cluster.dispatcher.pid


def _final_stats(url: str, sampler: StatsSampler) -> dict[str, Any]:
    """Workers and reclaims from one last GET /stats; from the sampler's last answer (noted
    in ``source``) when the dispatcher does not answer within FINAL_STATS_SECONDS."""
    try:
        with QueueClient(url, timeout=FINAL_STATS_SECONDS) as client:
            stats, source = client.stats(), "GET /stats at the end of the window"
    except ClientError as exc:
        if sampler.latest is None:
            raise BenchError(f"no answer to GET /stats at all: {exc}") from exc
        stats, source = sampler.latest, f"last answered sample (final GET /stats: {exc})"
    workers = stats["workers"]
    return {"source": source, "alive": workers["alive"], "dead": workers["dead"],
            "total": workers["total"],
            "dead_ids": [w["worker_id"] for w in workers["details"] if w["status"] == "dead"],
            "reclaims": stats["reclaims"], "tasks": stats["tasks"]}


def _group_cpu(window: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    cpu = window["cpu_seconds"]
    per = {name: cpu[name] for name in names}
    total = sum(per.values())
    return {"processes": len(names), "cpu_seconds": round(total, 2),
            "cpu_cores": round(total / window["seconds"], 3),
            "busiest_process_cores": round(max(per.values(), default=0.0) / window["seconds"], 3)}


# -- 1. idle fleet ----------------------------------------------------------------------------


def idle(checkout: Checkout, sizes: FleetSizes) -> dict[str, Any]:
    """N simulated idle workers for D seconds after all registered: heartbeats, claims, /stats."""
    n, seconds = sizes.idle_workers, sizes.idle_seconds
    cluster = checkout.cluster("idle")
    sims = Simulators(cluster.workdir, "sims")
    sampler = StatsSampler(cluster.url, sizes.stats_interval)
    peaks = PeakUsage([_pid(cluster)])
    try:
        peaks.start()
        sampler.start()
        shares = split(n, sizes.sim_processes)
        firsts = [sum(shares[:i]) for i in range(len(shares))]
        sims.start("workers", cluster.url, [
            ["--first", str(first), "--count", str(count), "--total", str(n),
             "--ramp", str(sizes.ramp_seconds)] for first, count in zip(firsts, shares)])
        sims.wait_ready(SIM_READY_SECONDS)
        registration = _await_registration(sampler, n)
        names = [f"sim-{i}" for i in range(len(shares))]
        window = Window({"dispatcher": [_pid(cluster)],
                         **dict(zip(names, ([p] for p in sims.pids)))})
        log("idle", f"{n} simulated workers registered; measuring {seconds:g} s")
        window.start()
        time.sleep(seconds)
        usage = window.end()
        final = _final_stats(cluster.url, sampler)
        sampler.finish()
        records = sims.collect()
    finally:
        sims.close()
        sampler.finish()
        dispatcher = peaks.finish()
        cluster.close()
    samples = sampler.between(window.started, window.ended)
    stats = summarize_samples(samples, window.started)
    wrongly_dead = sorted(set(stats["dead_seen_ids"]) | set(final["dead_ids"]))
    return {
        "settings": _idle_settings(checkout, sizes, len(shares)),
        "registration": registration,
        "window": usage,
        "heartbeats": _heartbeats(records, window, n, checkout.heartbeat_timeout()),
        "claims": _claims(records, window, n),
        "stats": stats,
        "final": final,
        "wrongly_dead": len(wrongly_dead),
        "wrongly_dead_ids": wrongly_dead,
        "dispatcher": {"cpu_seconds": usage["cpu_seconds"]["dispatcher"],
                       "cpu_cores": usage["cpu_cores"]["dispatcher"], **dispatcher},
        "simulators": _simulators(usage, names, records),
    }


def _idle_settings(checkout: Checkout, sizes: FleetSizes, processes: int) -> dict[str, Any]:
    return {"workers": sizes.idle_workers, "seconds": sizes.idle_seconds,
            "simulator_processes": processes, "ramp_seconds": sizes.ramp_seconds,
            "stats_interval": sizes.stats_interval, "heartbeat_interval": HEARTBEAT_INTERVAL,
            "heartbeat_timeouts": list(HEARTBEAT_TIMEOUT), "poll_wait": POLL_WAIT,
            "claim_timeouts": list(CLAIM_TIMEOUT), "env": checkout.env}


def _simulators(usage: dict[str, Any], names: list[str],
                records: list[dict[str, Any]]) -> dict[str, Any]:
    return {**_group_cpu(usage, names),
            "cancelled_in_flight": sum(r["cancelled_in_flight"] for r in records),
            # Over the whole run: a beat that timed out costs a new connection.
            "connections_opened": {kind: sum(r["connects"][kind] for r in records)
                                   for kind in ("heartbeat", "claim")}}


def _await_registration(sampler: StatsSampler, n: int) -> dict[str, Any]:
    started = time.monotonic()
    try:
        wait_for(lambda: sampler.workers("total") >= n, 30 + 0.2 * n, "registration", 0.1)
        complete = True
    except BenchError as exc:
        log("idle", f"{exc}; measuring anyway")
        complete = False
    return {"complete": complete, "seconds": round(time.monotonic() - started, 2),
            "registered": sampler.workers("total"), "alive": sampler.workers("alive")}


def _heartbeats(records: list[dict[str, Any]], window: Window, n: int,
                timeout_seconds: float) -> dict[str, Any]:
    """Heartbeats begun in the window; timeouts count as their 1 s in the latency."""
    beats = [r for rec in records for r in rec["heartbeats"] if window.holds(r[2])]
    ok = [r for r in beats if r[4] == "200"]
    gaps = _longest_gaps(ok, window, n)
    return {
        "sent": len(beats), "answered": len(ok),
        "latency_ms": latency_ms([r[3] for r in beats if r[4] in ("200", "timeout")]),
        "failed_or_timed_out": len(beats) - len(ok),
        "timed_out": sum(1 for r in beats if r[4] == "timeout"),
        "answered_after_1s": sum(1 for r in ok if r[3] > 1.0),
        "outcomes": dict(Counter(r[4] for r in beats)),
        "per_worker_per_second": round(len(beats) / n / (window.ended - window.started), 3),
        "longest_gap_s": round(max(gaps, default=0.0), 3),
        "longest_gap_median_s": round(median(gaps), 3) if gaps else None,
        "workers_with_gap_over_timeout": sum(1 for g in gaps if g > timeout_seconds),
        "heartbeat_timeout_s": timeout_seconds,
        "simulator_lag_ms": latency_ms([r[2] - r[1] for r in beats]),
        "per_second": _per_second([(r[2], r[3], r[4] == "200") for r in beats], window),
    }


def _per_second(items: list[tuple[float, float, bool]], window: Window) -> dict[str, list[Any]]:
    """(time, seconds, ok) items per whole second of the window (the last takes the rest):
    how many, how many ok, and the p99 of the ok ones."""
    buckets: list[list[tuple[float, bool]]] = [
        [] for _ in range(max(1, round(window.ended - window.started)))]
    for at, seconds, ok in items:
        buckets[min(len(buckets) - 1, int(at - window.started))].append((seconds, ok))
    return {"count": [len(b) for b in buckets],
            "ok": [sum(1 for _, ok in b if ok) for b in buckets],
            "ok_p99_ms": [latency_ms([s for s, ok in b if ok])["p99"] for b in buckets]}


def _longest_gaps(ok: list[list[Any]], window: Window, n: int) -> list[float]:
    """Per worker, the longest time in the window without an answered heartbeat."""
    done: dict[int, list[float]] = {i: [] for i in range(n)}
    for index, _, started, seconds, _ in ok:
        done.setdefault(index, []).append(started + seconds)
    gaps = []
    for times in done.values():
        points = [window.started, *sorted(t for t in times if t < window.ended), window.ended]
        gaps.append(max(b - a for a, b in zip(points, points[1:])))
    return gaps


def _claims(records: list[dict[str, Any]], window: Window, n: int) -> dict[str, Any]:
    """Long-poll claims begun in the window."""
    claims = [r for rec in records for r in rec["claims"] if window.holds(r[1])]
    ok = [r for r in claims if r[3] == "200"]
    return {
        "round_trips": len(ok), "failed": len(claims) - len(ok),
        "per_worker_per_second": round(len(ok) / n / (window.ended - window.started), 3),
        "latency_ms": latency_ms([r[2] for r in ok]),
        "outcomes": dict(Counter(r[3] for r in claims)),
    }


# -- 2. drain by real workers -----------------------------------------------------------------


def drain(checkout: Checkout, sizes: FleetSizes) -> dict[str, Any]:
    """W real workers registered first, then T sleep tasks of S s in one batch: time to the last."""
    w, t, s = sizes.drain_workers, sizes.tasks_for_drain, sizes.task_seconds
    ideal = math.ceil(t / w) * s
    cluster = checkout.cluster("drain")
    sampler = StatsSampler(cluster.url, min(0.5, sizes.stats_interval))
    peaks = PeakUsage([_pid(cluster)])
    try:
        peaks.start()
        sampler.start()
        startup = _start_workers(cluster, sampler, w)
        pids = [proc.pid for proc in cluster.workers.values()]
        window = Window({"dispatcher": [_pid(cluster)], "workers": pids}, flat=["workers"])
        log("drain", f"{w} workers alive; submitting {t} sleep tasks of {s:g} s (ideal "
                     f"{ideal:g} s)")
        window.start()
        run = _run_tasks(cluster, sampler, t, s, deadline=ideal * 5 + 120)
        usage = window.end()
        final = _final_stats(cluster.url, sampler)
    finally:
        sampler.finish()
        dispatcher = peaks.finish()
        cluster.close()
    stats = summarize_samples(sampler.between(window.started, window.ended), window.started)
    before = summarize_samples(sampler.between(0.0, window.started), window.started)
    wrongly_dead = sorted(set(stats["dead_seen_ids"]) | set(final["dead_ids"]))
    return {
        "settings": {"workers": w, "tasks": t, "task_seconds": s, "ideal_seconds": ideal,
                     "env": checkout.env},
        "startup": {**startup, "dead_seen": before["dead_seen"]},
        **run,
        "ratio_to_ideal": round(run["seconds"] / ideal, 3),
        "final": final,
        "reclaims": final["reclaims"],
        "wrongly_dead": len(wrongly_dead),
        "wrongly_dead_ids": wrongly_dead,
        "stats": stats,
        "window": usage,
        "dispatcher": {"cpu_seconds": usage["cpu_seconds"]["dispatcher"],
                       "cpu_cores": usage["cpu_cores"]["dispatcher"], **dispatcher},
    }


def _start_workers(cluster: ProjectCluster, sampler: StatsSampler, count: int) -> dict[str, Any]:
    """Start every worker at once; wait (with a deadline) until /stats shows them all alive."""
    started = time.monotonic()
    for index in range(count):
        cluster.start_worker(f"fleet-{index + 1}")
    deadline = 60 + 1.5 * count
    try:
        wait_for(lambda: sampler.workers("alive") >= count, deadline, "workers alive", 0.1)
        all_alive = True
    except BenchError as exc:
        log("drain", f"{exc}; running the drain anyway")
        all_alive = False
    rss = tree_usage([proc.pid for proc in cluster.workers.values()], descendants=False)
    return {"seconds": round(time.monotonic() - started, 2), "all_alive": all_alive,
            "alive": sampler.workers("alive"), "worker_rss_mib_total": round(rss.rss_mib, 1),
            "worker_rss_mib_mean": round(rss.rss_mib / max(1, rss.processes), 1)}


def _run_tasks(cluster: ProjectCluster, sampler: StatsSampler, count: int, seconds: float,
               deadline: float) -> dict[str, Any]:
    """Submit the sleep tasks in one request and wait until /stats counts them all finished.

    The drain is timed from the start of the submission (this machine's clock) to the last
    ``finished_at`` (the dispatcher's clock, the same one on this machine), so neither the
    sampling interval nor a slow /stats adds to it; what the client saw is kept too.
    """
    tasks = [{"task_type": "sleep", "params": {"seconds": seconds}}] * count
    submitted_at, started = time.time(), time.monotonic()
    with QueueClient(cluster.url, timeout=30) as client:
        ids = client.submit_many(tasks, batch_size=min(count, DRAIN_BATCH_LIMIT))
    submit_seconds = time.monotonic() - started
    wait_for(lambda: _finished(sampler.latest) >= count, deadline, "the drain", 0.05)
    seen_seconds = time.monotonic() - started
    views = _views(cluster, ids)
    last = max(view["finished_at"] for view in views)
    return {"seconds": round(last - submitted_at, 3),
            "submit_seconds": round(submit_seconds, 3),
            "seen_by_client_seconds": round(seen_seconds, 3),
            "dispatcher_span_seconds": round(last - min(v["created_at"] for v in views), 3),
            "statuses": dict(Counter(view["status"] for view in views)),
            "attempts": {str(k): v for k, v in sorted(Counter(
                view["attempt"] for view in views).items())}}


def _finished(stats: dict[str, Any] | None) -> int:
    if stats is None:
        return 0
    counts = stats["tasks"]
    return sum(int(counts.get(status, 0)) for status in ("completed", "failed", "cancelled"))


def _views(cluster: ProjectCluster, ids: list[int]) -> list[dict[str, Any]]:
    """Every task's view: the newest 1,000 in one GET /tasks, any others one by one."""
    listed = cluster.get("/tasks", params={"limit": 1000}).json()["tasks"]
    views = {view["task_id"]: view for view in listed if view["task_id"] in set(ids)}
    return [views[i] if i in views else cluster.task(i) for i in ids]


# -- 3. many client connections ---------------------------------------------------------------


def connections(checkout: Checkout, sizes: FleetSizes) -> dict[str, Any]:
    """For each level C: C keep-alive connections POSTing single no-ops, on a fresh dispatcher."""
    levels = []
    for count in sizes.connections:
        levels.append(_connection_level(checkout, sizes, count))
        log("connections", f"{count} connections: {levels[-1]['tasks_per_second']:.0f} tasks/s, "
                           f"p99 {levels[-1]['latency_ms']['p99']} ms, "
                           f"errors {levels[-1]['errors']}")
    low, high = min(levels, key=lambda x: x["connections"]), max(
        levels, key=lambda x: x["connections"])
    ratio = high["tasks_per_second"] / low["tasks_per_second"] if low["tasks_per_second"] else None
    return {"settings": {"connections": list(sizes.connections),
                         "seconds": sizes.connection_seconds,
                         "warmup_seconds": sizes.warmup_seconds,
                         "client_processes": sizes.sim_processes, "env": checkout.env,
                         "body": '{"task_type":"noop","params":{}}'},
            "levels": levels, "rate_ratio": None if ratio is None else round(ratio, 3),
            "rate_ratio_levels": [low["connections"], high["connections"]]}


def _connection_level(checkout: Checkout, sizes: FleetSizes, count: int) -> dict[str, Any]:
    cluster = checkout.cluster(f"conn{count}")
    sims = Simulators(cluster.workdir, "clients")
    peaks = PeakUsage([_pid(cluster)])
    try:
        peaks.start()
        shares = split(count, sizes.sim_processes)
        sims.start("clients", cluster.url, [
            ["--first", str(sum(shares[:i])), "--connections", str(share)]
            for i, share in enumerate(shares)])
        sims.wait_ready(SIM_READY_SECONDS)
        names = [f"client-{i}" for i in range(len(shares))]
        window = Window({"dispatcher": [_pid(cluster)],
                         **dict(zip(names, ([p] for p in sims.pids)))})
        time.sleep(sizes.warmup_seconds)
        window.start()
        time.sleep(sizes.connection_seconds)
        usage = window.end()
        records = sims.collect()
    finally:
        sims.close()
        dispatcher = peaks.finish()
        cluster.close()
    return {"connections": count, **_submissions(records, window, count),
            "window": usage,
            "dispatcher": {"cpu_seconds": usage["cpu_seconds"]["dispatcher"],
                           "cpu_cores": usage["cpu_cores"]["dispatcher"], **dispatcher},
            "clients": _group_cpu(usage, names),
            "open_failures": sum(r.get("open_failures", 0) for r in records)}


def _submissions(records: list[dict[str, Any]], window: Window, count: int) -> dict[str, Any]:
    """Submissions answered in the window: rate, latency, errors, spread over connections."""
    done = [r for rec in records for r in rec["submissions"] if window.holds(r[1] + r[2])]
    ok = [r for r in done if r[3] == "201"]
    per_connection = Counter({i: 0 for i in range(count)})
    per_connection.update(r[0] for r in ok)
    spread = sorted(per_connection.values())
    return {"completed": len(ok),
            "tasks_per_second": round(len(ok) / (window.ended - window.started), 1),
            "latency_ms": latency_ms([r[2] for r in ok]),
            "errors": len(done) - len(ok),
            "outcomes": dict(Counter(r[3] for r in done)),
            "per_connection_completed": {"min": spread[0], "median": median(spread),
                                         "max": spread[-1]},
            "connections_never_answered": sum(1 for n in spread if n == 0),
            "per_second": _per_second([(r[1] + r[2], r[2], r[3] == "201") for r in done],
                                      window)}
