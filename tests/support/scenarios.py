"""Chaos scenarios on a LocalCluster, shared by tests/chaos (short runs) and analysis/chaos.py (long).

Each scenario drives real processes with real signals and returns a report of what it measured;
callers assert on the report (tests) or print it (the chaos script).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from dispatcher.models import header_key
from shared.cluster import LocalCluster, WaitTimeout, wait_until
from tests.support.audit import Audit, audit, database, lost_lease_lines, reclaim_counters

PRIME_MIX: list[tuple[int, float]] = [
    (10**6, 0.25), (10**7, 0.15), (10**8, 0.12), (5 * 10**8, 0.12), (10**9, 0.12),
    (2 * 10**9, 0.09), (10**10, 0.15),
]
"""Limits of the storm's prime tasks and their shares: mostly quick, some of ~2 s per core
(the C sieve counts to 10^10 in about 2 s)."""


def prime_tasks(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """``count`` prime tasks of mixed sizes (sieve), limits drawn from PRIME_MIX."""
    limits, weights = zip(*PRIME_MIX)
    return [{"task_type": "primes", "params": {"limit": limit, "algorithm": "sieve"}}
            for limit in rng.choices(limits, weights, k=count)]


def prime_tasks_of(limit: int, count: int) -> list[dict[str, Any]]:
    """``count`` sieve tasks of one limit."""
    return [{"task_type": "primes", "params": {"limit": limit, "algorithm": "sieve"}}] * count


def percentile(values: list[float], pct: float) -> float | None:
    """The pct-th percentile (nearest rank), or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))]


class LivenessWatch:
    """Samples /stats and counts workers declared dead while their process was alive and not killed.

    A worker counts as wrongly declared dead when /stats shows it ``dead`` although its current
    process has been running for more than ``settle`` seconds (so a freshly restarted instance
    that has not beaten yet does not count) and it was not paused by the caller.
    """

    def __init__(self, cluster: LocalCluster, settle: float = 5.0, interval: float = 0.2) -> None:
        self._cluster, self._settle, self._interval = cluster, settle, interval
        self._started: dict[int, float] = {}
        self._stop = threading.Event()
        self.false_deaths: set[tuple[str, int]] = set()  # (worker_id, pid)
        self.samples = 0
        self.worst_heartbeat_gap = 0.0
        self._thread = threading.Thread(target=self._run, name="liveness-watch", daemon=True)

    def start(self) -> "LivenessWatch":
        """Start sampling in a thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                details = self._cluster.get("/stats", timeout=2).json()["workers"]["details"]
            except (requests.RequestException, ValueError, KeyError):
                continue  # the dispatcher is down or busy: nothing to judge
            self.samples += 1
            for worker in details:
                self._judge(worker)

    def _judge(self, worker: dict[str, Any]) -> None:
        proc = self._cluster.workers.get(worker["worker_id"])
        if proc is None or proc.poll() is not None or worker["worker_id"] in self._cluster.paused:
            return
        first_seen = self._started.setdefault(proc.pid, time.monotonic())
        if time.monotonic() - first_seen < self._settle:
            return
        self.worst_heartbeat_gap = max(self.worst_heartbeat_gap, worker["seconds_since_heartbeat"])
        if worker["status"] == "dead":
            self.false_deaths.add((worker["worker_id"], proc.pid))


def tasks_taken_from_live_workers(cluster: LocalCluster) -> int:
    """Distinct (worker, task) pairs a live worker logged as revoked or refused as stale, not
    counting tasks whose stored result is that worker's own (a heartbeat that still listed a
    task whose result had just been accepted is answered "revoked" too)."""
    with database(cluster.database_url) as db:
        own = {(row[0], row[1]) for row in db.execute("SELECT worker_id, task_id FROM task_results")}
    return sum(len({t for t in lost_lease_lines(cluster.worker_log(w)) if (w, t) not in own})
               for w in cluster.workers)


# -- the worker kill storm ----------------------------------------------------------------


@dataclass
class Kill:
    """One SIGKILL of a busy worker and what followed."""

    worker_id: str
    task_id: int
    attempt: int
    idle_worker_available: bool
    restarted_at_once: bool
    redone_seconds: float | None = None
    reassigned_after: float | None = None  # None: the task had finished before the kill landed
    finished_before_kill: bool = False


@dataclass
class StormReport:
    """What a kill storm measured."""

    seconds: float
    kills: list[Kill]
    audit: Audit
    false_deaths: int
    taken_from_live: int
    counters: dict[str, int]

    @property
    def reassignments(self) -> list[float]:
        """Kill-to-reassigned seconds of every kill that hit a held task."""
        return [k.reassigned_after for k in self.kills if k.reassigned_after is not None]

    @property
    def idle_reassignments(self) -> list[float]:
        """The same, only for kills while another worker was idle and nothing was pending."""
        return [k.reassigned_after for k in self.kills
                if k.reassigned_after is not None and k.idle_worker_available]

    @property
    def never_reassigned(self) -> list[Kill]:
        """Kills whose task was not claimed again before the storm ended (should be none)."""
        return [k for k in self.kills if k.reassigned_after is None and not k.finished_before_kill]

    def summary(self) -> dict[str, Any]:
        """Flat figures for tables and JSON."""
        moves, idle = self.reassignments, self.idle_reassignments
        redone = [k.redone_seconds for k in self.kills if k.redone_seconds is not None]
        return {
            "scenario": "kill_storm", "seconds": round(self.seconds, 1),
            "tasks": self.audit.tasks, "completed": self.audit.completed,
            "kills": len(self.kills),
            "lost": len(self.audit.unfinished) + len(self.audit.missing_results),
            "duplicates": self.audit.results - self.audit.completed
            + len(self.audit.orphan_results),
            "attempt_mismatch": len(self.audit.attempt_mismatch),
            "wrong_results": len(self.audit.wrong_results),
            "reassign_p50_s": _r(percentile(moves, 50)), "reassign_p99_s": _r(percentile(moves, 99)),
            "reassign_max_s": _r(max(moves, default=None)),
            "idle_kills": len(idle), "idle_reassign_max_s": _r(max(idle, default=None)),
            "redone_p50_s": _r(percentile(redone, 50)), "redone_max_s": _r(max(redone, default=None)),
            "redone_total_s": _r(sum(redone)),
            "wrongly_dead": self.false_deaths, "taken_from_live": self.taken_from_live,
            "integrity": self.audit.integrity, **{f"reclaims_{k}": v for k, v in self.counters.items()},
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class KillStorm:
    """Several workers on prime tasks; a random busy worker is SIGKILLed every ``interval`` seconds.

    Half the victims (at random) are restarted at once under the same id (the new instance frees
    the old one's task), the others at the next tick (the heartbeat monitor finds them dead first).
    """

    def __init__(self, cluster: LocalCluster, rng: random.Random, workers: int = 4,
                 interval: float = 2.0) -> None:
        self.cluster, self.rng, self.interval = cluster, rng, interval
        self.worker_ids = [f"w{i}" for i in range(1, workers + 1)]
        self.kills: list[Kill] = []
        self._watchers: list[threading.Thread] = []
        self._to_restart: list[str] = []

    def run(self, tasks: list[dict[str, Any]], storm_seconds: float, drain_timeout: float = 120.0,
            top_up: Callable[[], list[dict[str, Any]]] | None = None, min_idle_kills: int = 0,
            max_storm_seconds: float | None = None, idle_kills: int = 0) -> StormReport:
        """Submit ``tasks``, storm for ``storm_seconds`` (longer, up to ``max_storm_seconds``, until
        ``min_idle_kills`` kills happened with an idle worker), let everything finish; then
        ``idle_kills`` more kills, each of the only busy worker while the others idle; audit."""
        started = time.monotonic()
        for worker_id in self.worker_ids:
            self.cluster.start_worker(worker_id)
        self.cluster.submit_many(tasks)
        watch = LivenessWatch(self.cluster).start()
        try:
            self._storm(started, storm_seconds, max_storm_seconds or storm_seconds, min_idle_kills,
                        top_up)
            for worker_id in self._to_restart:
                self.cluster.start_worker(worker_id)
            self._to_restart.clear()
            wait_until(self._all_finished, drain_timeout, interval=0.2, message="all tasks finished")
            for _ in range(idle_kills):
                self._kill_with_idle_workers(drain_timeout)
        finally:
            watch.stop()
            for thread in self._watchers:
                thread.join(timeout=15)
        return StormReport(
            seconds=time.monotonic() - started, kills=self.kills, audit=audit(self.cluster.database_url),
            false_deaths=len(watch.false_deaths),
            taken_from_live=tasks_taken_from_live_workers(self.cluster),
            counters=reclaim_counters(self.cluster.database_url))

    def _storm(self, started: float, seconds: float, max_seconds: float, min_idle: int,
               top_up: Callable[[], list[dict[str, Any]]] | None) -> None:
        while True:
            elapsed = time.monotonic() - started
            idle_kills = sum(k.idle_worker_available for k in self.kills)
            if elapsed >= max_seconds or (elapsed >= seconds and idle_kills >= min_idle):
                return
            if self._all_finished() and top_up is None:
                return
            time.sleep(self.interval)  # the storm's pace, not a synchronisation
            for worker_id in self._to_restart:
                self.cluster.start_worker(worker_id)
            self._to_restart.clear()
            if top_up is not None and (more := top_up()):
                self.cluster.submit_many(more)
            self._kill_one()

    def _kill_with_idle_workers(self, timeout: float) -> None:
        """One 10^10 sieve on a drained queue; kill its worker once it checkpointed; let it finish."""
        [task_id] = self.cluster.submit_many(prime_tasks_of(10**10, 1))

        def checkpointed() -> bool:
            with database(self.cluster.database_url) as db:
                row = db.execute("SELECT attempt FROM checkpoints WHERE task_id = ?",
                                 (task_id,)).fetchone()
            return row is not None

        wait_until(checkpointed, timeout, interval=0.01, message="the idle-phase task checkpointed")
        self._kill_one()
        for worker_id in self._to_restart:
            self.cluster.start_worker(worker_id)
        self._to_restart.clear()
        wait_until(self._all_finished, timeout, interval=0.1, message="the idle-phase task finished")

    def _all_finished(self) -> bool:
        with database(self.cluster.database_url) as db:
            return db.execute("SELECT COUNT(*) FROM tasks WHERE status IN "
                              "('pending', 'in-progress')").fetchone()[0] == 0

    def _kill_one(self) -> None:
        with database(self.cluster.database_url) as db:
            held = db.execute("SELECT task_id, attempt, worker_id FROM tasks "
                              "WHERE status = 'in-progress'").fetchall()
            pending = db.execute("SELECT COUNT(*) FROM tasks WHERE status = 'pending'").fetchone()[0]
        held = [row for row in held if row["worker_id"] in self.cluster.workers
                and self.cluster.workers[row["worker_id"]].poll() is None]
        if not held:
            return
        task_id, attempt, victim = self.rng.choice(held)
        busy = {row["worker_id"] for row in held}
        idle = pending == 0 and any(
            w != victim and w not in busy and self.cluster.workers[w].poll() is None
            for w in self.worker_ids)
        at_once = self.rng.random() < 0.5
        killed_at, killed_wall = time.monotonic(), time.time()
        self.cluster.kill_worker(victim)
        kill = Kill(victim, task_id, attempt, idle, at_once)
        kill.redone_seconds = self._redone(task_id, attempt, killed_wall)
        self.kills.append(kill)
        if at_once:
            self.cluster.start_worker(victim)
        else:
            self._to_restart.append(victim)
        thread = threading.Thread(target=self._watch, args=(kill, killed_at), daemon=True)
        thread.start()
        self._watchers.append(thread)

    def _redone(self, task_id: int, attempt: int, killed_wall: float) -> float | None:
        """Seconds of work since the attempt's last checkpoint (or its claim): redone on resume."""
        with database(self.cluster.database_url) as db:
            row = db.execute("SELECT claimed_at, attempt, status FROM tasks WHERE task_id = ?",
                             (task_id,)).fetchone()
            cp = db.execute("SELECT attempt, saved_at FROM checkpoints WHERE task_id = ?",
                            (task_id,)).fetchone()
        if row["status"] != "in-progress" or row["attempt"] != attempt:
            return None
        since = cp["saved_at"] if cp is not None and cp["attempt"] == attempt else row["claimed_at"]
        return max(0.0, killed_wall - since)

    def _watch(self, kill: Kill, killed_at: float) -> None:
        def moved() -> str | None:
            with database(self.cluster.database_url) as db:
                row = db.execute("SELECT status, attempt FROM tasks WHERE task_id = ?",
                                 (kill.task_id,)).fetchone()
            if row["attempt"] > kill.attempt:
                return "reassigned"
            if row["status"] in ("completed", "failed", "cancelled"):
                return "finished"
            return None

        try:
            outcome = wait_until(moved, 60, interval=0.01)
        except WaitTimeout:
            return
        if outcome == "reassigned":
            kill.reassigned_after = time.monotonic() - killed_at
        else:
            kill.finished_before_kill = True


# -- dispatcher crashes under continuous submissions -------------------------------------


@dataclass
class CrashReport:
    """What the dispatcher-crash scenario measured."""

    seconds: float
    crashes: int
    acknowledged: dict[str, int]  # idempotency key -> task id of its 201
    replayed: dict[str, int]  # key -> task id of a 200 duplicate answer to a retry
    submit_attempts: int
    audit: Audit
    keys_in_db: dict[str, int]
    outages_with_cached_results: int
    outage_seconds: list[float]
    false_deaths: int
    taken_from_live: int
    counters: dict[str, int]
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        """Acknowledged keys whose task is not in the database under the acknowledged id."""
        return [k for k, tid in self.acknowledged.items() if self.keys_in_db.get(k) != tid]

    @property
    def duplicate_tasks(self) -> int:
        """Tasks beyond one per submitted key (client retries that created a second task)."""
        answered = set(self.acknowledged) | set(self.replayed)
        return self.audit.tasks - len(answered)

    @property
    def mismatched_replays(self) -> list[str]:
        """Keys whose retry answered a different task than the one stored."""
        return [k for k, tid in self.replayed.items() if self.keys_in_db.get(k) != tid]

    def summary(self) -> dict[str, Any]:
        """Flat figures for tables and JSON."""
        return {
            "scenario": "dispatcher_crash", "seconds": round(self.seconds, 1),
            "tasks": self.audit.tasks, "completed": self.audit.completed,
            "crashes": self.crashes, "acknowledged": len(self.acknowledged),
            "retried_keys_answered_200": len(self.replayed), "submit_attempts": self.submit_attempts,
            "lost": len(self.missing) + len(self.audit.unfinished) + len(self.audit.missing_results),
            "duplicates": max(0, self.duplicate_tasks) + len(self.mismatched_replays)
            + self.audit.results - self.audit.completed,
            "attempt_mismatch": len(self.audit.attempt_mismatch),
            "wrong_results": len(self.audit.wrong_results),
            "reassigned_tasks": len(self.audit.reassigned),
            "outage_p50_s": _r(percentile(self.outage_seconds, 50)),
            "outage_max_s": _r(max(self.outage_seconds, default=None)),
            "outages_with_cached_results": self.outages_with_cached_results,
            "wrongly_dead": self.false_deaths, "taken_from_live": self.taken_from_live,
            "integrity": self.audit.integrity, "http_statuses": self.statuses,
            **{f"reclaims_{k}": v for k, v in self.counters.items()},
        }


class Submitter(threading.Thread):
    """A client that submits continuously with an Idempotency-Key and retries until answered."""

    def __init__(self, name: str, url: str, rng: random.Random, stop: threading.Event,
                 make_task: Callable[[random.Random], dict[str, Any]]) -> None:
        super().__init__(name=name, daemon=True)
        self.url, self.rng, self._stop_event, self._make = url, rng, stop, make_task
        self.acknowledged: dict[str, int] = {}
        self.replayed: dict[str, int] = {}
        self.attempts = 0
        self.statuses: dict[int, int] = {}
        self.failures: list[str] = []

    def run(self) -> None:
        session = requests.Session()
        seq = 0
        while not self._stop_event.is_set():
            seq += 1
            self._submit(session, f"{self.name}-{seq}", self._make(self.rng))
            time.sleep(self.rng.uniform(0.03, 0.12))  # client pacing
        session.close()

    def _submit(self, session: requests.Session, key: str, task: dict[str, Any]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.attempts += 1
            try:
                resp = session.post(f"{self.url}/submit-task", json=task, timeout=5,
                                    headers={"Idempotency-Key": key})
            except requests.RequestException:
                time.sleep(0.05)  # retry pacing while the dispatcher is down
                continue
            self.statuses[resp.status_code] = self.statuses.get(resp.status_code, 0) + 1
            if resp.status_code == 201:
                self.acknowledged[key] = resp.json()["task_id"]
                return
            if resp.status_code == 200 and resp.json().get("duplicate"):
                self.replayed[key] = resp.json()["task_id"]
                return
            if resp.status_code < 500:
                self.failures.append(f"{key}: HTTP {resp.status_code} {resp.text[:200]}")
                return
            time.sleep(0.05)
        self.failures.append(f"{key}: no answer within 60 s")


def sleep_or_prime(rng: random.Random) -> dict[str, Any]:
    """A short task for the crash scenario: a 0.1-0.4 s sleep or a small sieve."""
    if rng.random() < 0.7:
        return {"task_type": "sleep", "params": {"seconds": round(rng.uniform(0.1, 0.4), 2)}}
    return {"task_type": "primes", "params": {"limit": rng.choice([10**5, 10**6, 10**7])}}


class DispatcherCrash:
    """Clients submit continuously; the dispatcher is SIGKILLed at random moments and restarted."""

    def __init__(self, cluster: LocalCluster, rng: random.Random, workers: int = 3,
                 clients: int = 2) -> None:
        self.cluster, self.rng = cluster, rng
        self.worker_ids = [f"w{i}" for i in range(1, workers + 1)]
        self.clients = clients

    def run(self, crashes: int | None = None, seconds: float | None = None,
            up_seconds: tuple[float, float] = (0.5, 2.5), down_seconds: tuple[float, float] = (0.0, 1.0),
            drain_timeout: float = 120.0) -> CrashReport:
        """Crash ``crashes`` times (or for ``seconds``); then drain and audit everything."""
        started = time.monotonic()
        for worker_id in self.worker_ids:
            self.cluster.start_worker(worker_id)
        stop = threading.Event()
        clients = [Submitter(f"c{i}", self.cluster.url, random.Random(self.rng.random()), stop,
                             sleep_or_prime) for i in range(self.clients)]
        for client in clients:
            client.start()
        watch = LivenessWatch(self.cluster).start()
        outages: list[float] = []
        cached = 0
        try:
            while (crashes is not None and len(outages) < crashes) or (
                    seconds is not None and time.monotonic() - started < seconds):
                time.sleep(self.rng.uniform(*up_seconds))  # a random moment to crash
                down_at = time.monotonic()
                self.cluster.kill_dispatcher()
                time.sleep(self.rng.uniform(*down_seconds))  # outage length
                cached += self._results_cached()
                self.cluster.start_dispatcher()
                outages.append(time.monotonic() - down_at)
        finally:
            stop.set()
            for client in clients:
                client.join(timeout=70)
        try:
            wait_until(self._all_delivered, drain_timeout, interval=0.2,
                       message="all tasks finished and worker caches empty")
        finally:
            watch.stop()
        return self._report(started, clients, outages, cached, watch)

    def _worker_caches(self) -> list[Any]:
        return [self.cluster.workdir / "run" / "cache" / f"{w}.sqlite3" for w in self.worker_ids]

    def _results_cached(self) -> int:
        """1 if any worker holds an undelivered result in its local cache right now."""
        for path in self._worker_caches():
            if path.exists():
                with database(path) as db:
                    if db.execute("SELECT COUNT(*) FROM pending_results").fetchone()[0]:
                        return 1
        return 0

    def _all_delivered(self) -> bool:
        with database(self.cluster.database_url) as db:
            open_tasks = db.execute("SELECT COUNT(*) FROM tasks WHERE status IN "
                                    "('pending', 'in-progress')").fetchone()[0]
        return open_tasks == 0 and not self._results_cached()

    def _report(self, started: float, clients: list[Submitter], outages: list[float],
                cached: int, watch: LivenessWatch) -> CrashReport:
        acknowledged: dict[str, int] = {}
        replayed: dict[str, int] = {}
        statuses: dict[int, int] = {}
        for client in clients:
            acknowledged.update(client.acknowledged)
            replayed.update(client.replayed)
            for status, n in client.statuses.items():
                statuses[status] = statuses.get(status, 0) + n
        with database(self.cluster.database_url) as db:
            keys = {header_key(row[0]): row[1] for row in db.execute(
                "SELECT idempotency_key, task_id FROM tasks WHERE idempotency_key IS NOT NULL")}
        failures = [f for c in clients for f in c.failures]
        if failures:
            raise AssertionError(f"client submissions failed: {failures[:5]}")
        return CrashReport(
            seconds=time.monotonic() - started, crashes=len(outages), acknowledged=acknowledged,
            replayed=replayed, submit_attempts=sum(c.attempts for c in clients),
            audit=audit(self.cluster.database_url), keys_in_db=keys, outages_with_cached_results=cached,
            outage_seconds=outages, false_deaths=len(watch.false_deaths),
            taken_from_live=tasks_taken_from_live_workers(self.cluster),
            counters=reclaim_counters(self.cluster.database_url), statuses=statuses)
