"""Watch a cluster from outside: a thread polls the dispatcher every ~20 ms and keeps a timeline.

Each poll reads ``GET /tasks?status=in-progress`` (who holds which task at which attempt, and the
progress of its last checkpoint) and ``GET /stats`` (completed count, which workers are dead).
Times are this machine's epoch seconds, the clock the dispatcher also uses. A state first seen in
a poll is stamped with the time that poll *answered* (an upper bound: resolution is one poll
interval plus the request's latency); a state still held is stamped with the time the poll was
*sent* (a lower bound).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.client import ClientError, QueueClient

log = logging.getLogger(__name__)

POLL_INTERVAL_SECONDS = 0.02
REQUEST_TIMEOUT_SECONDS = 5.0


@dataclass
class AttemptTrace:
    """One attempt of one task as seen from outside: holder, when seen, checkpoint progress."""

    task_id: int
    attempt: int
    worker_id: str
    first_seen: float
    last_seen: float
    first_progress: float
    checkpoints: list[tuple[float, float]] = field(default_factory=list)
    """(first seen, progress) each time the task's checkpointed progress changed."""

    def checkpoint_before(self, moment: float) -> tuple[float, float]:
        """(time, progress) of the last checkpoint seen before ``moment``; else the claim."""
        earlier = [cp for cp in self.checkpoints if cp[0] <= moment]
        return earlier[-1] if earlier else (self.first_seen, self.first_progress)


class ClusterWatcher:
    """Polls the dispatcher in a daemon thread until stopped; use as a context manager."""

    def __init__(self, urls: str | Sequence[str], num_tasks: int,
                 interval_seconds: float = POLL_INTERVAL_SECONDS, token: str = "") -> None:
        self.num_tasks = num_tasks
        self.interval_seconds = interval_seconds
        self.attempts: dict[tuple[int, int], AttemptTrace] = {}
        self.dead_seen: dict[str, float] = {}
        self.last_heartbeat: dict[str, float] = {}
        self.finished = 0
        self.polls = 0
        self.errors = 0
        self._in_progress: dict[int, float] = {}
        self._holders: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-watcher", daemon=True)
        # Its own client: the thread polls while the main thread uses the cluster's.
        self._client = QueueClient(urls, timeout=REQUEST_TIMEOUT_SECONDS, connections=1,
                                   token=token)

    def __enter__(self) -> "ClusterWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop polling and wait for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=REQUEST_TIMEOUT_SECONDS * 2 + 1)
        self._client.close()

    # -- what the main thread asks ----------------------------------------------------------

    def overall_progress(self) -> float:
        """Finished tasks plus the checkpointed fraction of running ones, over all tasks."""
        with self._lock:
            return (self.finished + sum(self._in_progress.values())) / max(self.num_tasks, 1)

    def holders(self) -> dict[str, list[int]]:
        """worker_id -> ids of the tasks it held in the latest poll."""
        with self._lock:
            return {wid: list(ids) for wid, ids in self._holders.items()}

    def is_dead(self, worker_id: str) -> bool:
        """True once a poll of /stats showed this worker dead."""
        with self._lock:
            return worker_id in self.dead_seen

    def traces(self) -> list[AttemptTrace]:
        """Every attempt seen so far."""
        with self._lock:
            return list(self.attempts.values())

    # -- polling ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll_tasks()
                self._poll_stats()
                self.polls += 1
            except (ClientError, ValueError, KeyError) as exc:
                self.errors += 1
                log.debug("watcher poll failed: %s", exc)
            self._stop.wait(self.interval_seconds)

    def _poll_tasks(self) -> None:
        sent = time.time()
        views = self._client.tasks(status="in-progress", limit=1000)
        answered = time.time()
        with self._lock:
            self._in_progress = {t["task_id"]: float(t["progress"]) for t in views}
            self._holders = {}
            for view in views:
                self._holders.setdefault(view["worker_id"], []).append(view["task_id"])
                self._record(view, sent, answered)

    def _record(self, view: dict[str, Any], sent: float, answered: float) -> None:
        key = (view["task_id"], view["attempt"])
        progress = float(view["progress"])
        trace = self.attempts.get(key)
        if trace is None:
            self.attempts[key] = AttemptTrace(view["task_id"], view["attempt"], view["worker_id"],
                                              answered, sent, progress)
            return
        trace.last_seen = sent
        last_progress = trace.checkpoints[-1][1] if trace.checkpoints else trace.first_progress
        if progress != last_progress:
            trace.checkpoints.append((answered, progress))

    def _poll_stats(self) -> None:
        sent = time.time()
        body = self._client.stats()
        answered = time.time()
        counts = body["tasks"]
        with self._lock:
            self.finished = sum(counts.get(s, 0) for s in ("completed", "failed", "cancelled"))
            for worker in body["workers"]["details"]:
                wid = worker["worker_id"]
                self.last_heartbeat[wid] = sent - worker["seconds_since_heartbeat"]
                if worker["status"] == "dead":
                    self.dead_seen.setdefault(wid, answered)
