"""Chaos on several dispatchers sharing PostgreSQL, for tests/chaos (short) and analysis/chaos.py.

Three dispatchers and six workers (each worker knows every dispatcher); clients submit prime
counts and checkpointing sleeps continuously with idempotency keys, moving to another dispatcher when theirs is down.
At random moments a random dispatcher or a random busy worker is SIGKILLed and restarted (at
once, or a little later). Afterwards everything drains and the report says what was lost,
duplicated, wrong, resumed from scratch, or declared dead wrongly, and how long workers whose
dispatcher died took to carry on through another.
"""

from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import requests

from dispatcher.models import header_key
from shared.cluster import LocalCluster, wait_until
from tests.support.audit import Audit, audit, database, reclaim_counters
from tests.support.scenarios import percentile, tasks_taken_from_live_workers

def chaos_task(rng: random.Random) -> dict[str, Any]:
    """Half checked prime counts (small), half resumable sleeps of 1-3 s (checkpointing)."""
    if rng.random() < 0.5:
        limit = rng.choice([10**5, 10**6, 10**7, 10**8])
        return {"task_type": "primes", "params": {"limit": limit, "algorithm": "sieve"}}
    return {"task_type": "sleep", "params": {"seconds": round(rng.uniform(1.0, 3.0), 2)}}


FAILOVER_LINE = re.compile(r"^(\S+ \S+) WARNING .* worker (\S+): dispatcher (\S+) unreachable")
RESUME_LINE = re.compile(r"task (\d+) attempt (\d+) \(\w+\) started by worker \S+, resuming at")


@dataclass
class Event:
    """One kill: what, when (wall clock), and for a worker the task it held."""

    kind: str  # "dispatcher" or "worker"
    target: str
    at: float
    task_id: int | None = None
    attempt: int | None = None
    checkpointed: bool = False


@dataclass
class ScaleOutReport:
    """What a scale-out chaos run measured."""

    seconds: float
    events: list[Event]
    acknowledged: dict[str, int]
    keys_in_db: dict[str, int]
    audit: Audit
    false_deaths: int
    taken_from_live: int
    counters: dict[str, int]
    resumed_from_scratch: list[int]
    failover_seconds: list[float]
    client_failures: list[str] = field(default_factory=list)

    @property
    def lost(self) -> list[str]:
        """Acknowledged submissions whose task is not stored under the acknowledged id."""
        return [k for k, tid in self.acknowledged.items() if self.keys_in_db.get(k) != tid]

    def summary(self) -> dict[str, Any]:
        """Flat figures for tables and JSON."""
        kills = [e for e in self.events if e.kind == "worker"]
        return {
            "scenario": "scale_out_chaos", "seconds": round(self.seconds, 1),
            "tasks": self.audit.tasks, "completed": self.audit.completed,
            "dispatcher_kills": sum(e.kind == "dispatcher" for e in self.events),
            "worker_kills": len(kills), "acknowledged": len(self.acknowledged),
            "lost": len(self.lost) + len(self.audit.unfinished) + len(self.audit.missing_results),
            "duplicates": self.audit.tasks - len(self.keys_in_db)
            + self.audit.results - self.audit.completed + len(self.audit.orphan_results),
            "attempt_mismatch": len(self.audit.attempt_mismatch),
            "wrong_results": len(self.audit.wrong_results),
            "reassigned_tasks": len(self.audit.reassigned),
            "resumed_from_scratch": len(self.resumed_from_scratch),
            "failover_p50_s": _r(percentile(self.failover_seconds, 50)),
            "failover_max_s": _r(max(self.failover_seconds, default=None)),
            "wrongly_dead": self.false_deaths, "taken_from_live": self.taken_from_live,
            **{f"reclaims_{k}": v for k, v in self.counters.items()},
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class FailoverSubmitter(threading.Thread):
    """Submits prime tasks with an Idempotency-Key, moving to the next dispatcher on failure."""

    def __init__(self, name: str, urls: list[str], rng: random.Random, stop: threading.Event
                 ) -> None:
        super().__init__(name=name, daemon=True)
        self.urls, self.rng, self._stop_event = urls, rng, stop
        self.acknowledged: dict[str, int] = {}
        self.failures: list[str] = []

    def run(self) -> None:
        session, seq, at = requests.Session(), 0, self.rng.randrange(len(self.urls))
        while not self._stop_event.is_set():
            seq += 1
            at = self._submit(session, f"{self.name}-{seq}", chaos_task(self.rng), at)
            time.sleep(self.rng.uniform(0.3, 0.8))  # client pacing: about what six workers do
        session.close()

    def _submit(self, session: requests.Session, key: str, task: dict[str, Any], at: int) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                resp = session.post(f"{self.urls[at]}/submit-task", json=task, timeout=5,
                                    headers={"Idempotency-Key": key})
            except requests.RequestException:
                at = (at + 1) % len(self.urls)  # that dispatcher is down: the next one
                continue
            if resp.status_code in (200, 201):
                self.acknowledged[key] = resp.json()["task_id"]
                return at
            if resp.status_code < 500:
                self.failures.append(f"{key}: HTTP {resp.status_code} {resp.text[:200]}")
                return at
            at = (at + 1) % len(self.urls)
        self.failures.append(f"{key}: no answer within 60 s")
        return at


class ScaleOutChaos:
    """Kills random dispatchers and workers of a multi-dispatcher cluster; audits afterwards."""

    def __init__(self, cluster: LocalCluster, rng: random.Random, dispatchers: int = 3,
                 workers: int = 6, clients: int = 2) -> None:
        self.cluster, self.rng = cluster, rng
        for _ in range(dispatchers - 1):
            cluster.add_dispatcher()
        self.worker_ids = [f"w{i}" for i in range(1, workers + 1)]
        self.clients = clients
        self.events: list[Event] = []
        self._down: dict[str, float] = {}  # dispatcher URL -> when to restart it

    def run(self, seconds: float, pace: tuple[float, float] = (1.0, 3.0),
            drain_timeout: float = 240.0) -> ScaleOutReport:
        """Kill things for ``seconds``, then drain and audit."""
        started = time.monotonic()
        for worker_id in self.worker_ids:
            self.cluster.start_worker(worker_id)
        stop = threading.Event()
        clients = [FailoverSubmitter(f"c{i}", list(self.cluster.urls),
                                     random.Random(self.rng.random()), stop)
                   for i in range(self.clients)]
        for client in clients:
            client.start()
        watch = MultiLivenessWatch(self.cluster).start()
        try:
            while time.monotonic() - started < seconds:
                time.sleep(self.rng.uniform(*pace))  # the chaos's pace, not a synchronisation
                self._restart_due()
                self._kill_dispatcher() if self.rng.random() < 0.4 else self._kill_worker()
        finally:
            stop.set()
            for client in clients:
                client.join(timeout=70)
            for url in list(self._down):
                self._down[url] = 0.0
            self._restart_due()
            for worker_id, proc in self.cluster.workers.items():
                if proc.poll() is not None:
                    self.cluster.start_worker(worker_id)
        try:
            wait_until(self._all_finished, drain_timeout, interval=0.25, message="drained")
        finally:
            watch.stop()
        return self._report(started, clients, watch)

    def _restart_due(self) -> None:
        for url, when in list(self._down.items()):
            if time.monotonic() >= when:
                self.cluster.start_dispatcher_at(url) if url != self.cluster.url \
                    else self.cluster.start_dispatcher()
                del self._down[url]

    def _kill_dispatcher(self) -> None:
        up = [url for url in self.cluster.urls if url not in self._down]
        if len(up) < 2:
            return  # keep one dispatcher up (the others restart within seconds)
        victim = self.rng.choice(up)
        self.events.append(Event("dispatcher", victim, time.time()))
        self.cluster.kill_dispatcher_at(victim)
        self._down[victim] = time.monotonic() + self.rng.uniform(0.0, 3.0)

    def _kill_worker(self) -> None:
        with database(self.cluster.database_url) as db:
            held = db.rows("SELECT t.task_id, t.attempt, t.worker_id, c.attempt AS cp FROM tasks t "
                           "LEFT JOIN checkpoints c USING (task_id) WHERE t.status = 'in-progress'")
        live = [row for row in held if self.cluster.workers[row["worker_id"]].poll() is None]
        if not live:
            return
        row = self.rng.choice(live)
        self.cluster.kill_worker(row["worker_id"])
        self.events.append(Event("worker", row["worker_id"], time.time(), row["task_id"],
                                 row["attempt"], checkpointed=row["cp"] == row["attempt"]))
        self.cluster.start_worker(row["worker_id"])  # under the same name: requeued at once

    def _all_finished(self) -> bool:
        with database(self.cluster.database_url) as db:
            [row] = db.rows("SELECT COUNT(*) FROM tasks WHERE status IN ('pending', 'in-progress')")
        return row[0] == 0

    def _report(self, started: float, clients: list[FailoverSubmitter],
                watch: MultiLivenessWatch) -> ScaleOutReport:
        with database(self.cluster.database_url) as db:
            keys = {header_key(row[0]): row[1] for row in db.rows(
                "SELECT idempotency_key, task_id FROM tasks WHERE idempotency_key IS NOT NULL")}
        acknowledged: dict[str, int] = {}
        for client in clients:
            acknowledged.update(client.acknowledged)
        logs = {w: self.cluster.worker_log(w) for w in self.worker_ids}
        return ScaleOutReport(
            seconds=time.monotonic() - started, events=self.events, acknowledged=acknowledged,
            keys_in_db=keys, audit=audit(self.cluster.database_url),
            false_deaths=len(watch.false_deaths),
            taken_from_live=tasks_taken_from_live_workers(self.cluster),
            counters=reclaim_counters(self.cluster.database_url),
            resumed_from_scratch=self._from_scratch(logs),
            failover_seconds=self._failovers(logs),
            client_failures=[f for c in clients for f in c.failures])

    def _from_scratch(self, logs: dict[str, str]) -> list[int]:
        """Killed tasks that had a checkpoint but whose next attempt did not resume from one."""
        resumed = {(int(m[1]), int(m[2])) for text in logs.values()
                   for m in RESUME_LINE.finditer(text)}
        return [e.task_id for e in self.events if e.kind == "worker" and e.checkpointed
                and e.task_id is not None and e.attempt is not None
                and (e.task_id, e.attempt + 1) not in resumed
                and _was_claimed_again(self.cluster, e.task_id, e.attempt)]

    def _failovers(self, logs: dict[str, str]) -> list[float]:
        """Seconds from a dispatcher's death to each worker of it logging its move elsewhere.

        (A move logged with no death of that dispatcher in the 10 s before is not one.)
        """
        kills = [e for e in self.events if e.kind == "dispatcher"]
        seconds = []
        for text in logs.values():
            for line in text.splitlines():
                match = FAILOVER_LINE.match(line)
                if not match:
                    continue
                at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                before = [e.at for e in kills
                          if e.target == match[3] and at - 10.0 <= e.at <= at + 0.01]
                if before:
                    seconds.append(at - max(before))
        return seconds


def _was_claimed_again(cluster: LocalCluster, task_id: int, attempt: int) -> bool:
    with database(cluster.database_url) as db:
        [row] = db.rows("SELECT attempt FROM tasks WHERE task_id = ?", task_id)
    return row["attempt"] > attempt


class MultiLivenessWatch(threading.Thread):
    """Samples /stats from whichever dispatcher answers; counts live workers declared dead."""

    def __init__(self, cluster: LocalCluster, settle: float = 5.0) -> None:
        super().__init__(name="liveness-watch", daemon=True)
        self.cluster, self.settle = cluster, settle
        self._stop_event = threading.Event()
        self._first_seen: dict[int, float] = {}
        self.false_deaths: set[tuple[str, int]] = set()

    def start(self) -> "MultiLivenessWatch":  # type: ignore[override]
        """Start sampling."""
        super().start()
        return self

    def stop(self) -> None:
        """Stop sampling."""
        self._stop_event.set()
        self.join(timeout=10)

    def run(self) -> None:
        while not self._stop_event.wait(0.2):
            for url in self.cluster.urls:
                try:
                    details = requests.get(f"{url}/stats", timeout=2).json()["workers"]["details"]
                except (requests.RequestException, ValueError, KeyError):
                    continue
                for worker in details:
                    self._judge(worker)
                break

    def _judge(self, worker: dict[str, Any]) -> None:
        proc = self.cluster.workers.get(worker["worker_id"])
        if proc is None or proc.poll() is not None:
            return
        if time.monotonic() - self._first_seen.setdefault(proc.pid, time.monotonic()) < self.settle:
            return
        if worker["status"] == "dead":
            self.false_deaths.add((worker["worker_id"], proc.pid))
