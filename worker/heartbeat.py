"""Held-task bookkeeping and the heartbeat thread that reports it to the dispatcher.

The heartbeat thread has its own HTTP connections and short timeouts, so neither a CPU-bound
task nor a slow dispatcher delays a beat; it shares the main loop's dispatcher list (and its
failovers). Revocations it hears about are flagged in :class:`HeldTasks`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from shared.client import Failover
from shared.utils import task_fields
from worker.client import DispatcherClient, OutageLog, Unreachable, worker_failover
from worker.config import WorkerConfig

log = logging.getLogger(__name__)


class HeldTasks:
    """The tasks this process holds, shared by the main and heartbeat threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, tuple[int, threading.Event]] = {}
        self._finished: set[int] = set()  # ran to the end; held until its result is answered

    def add(self, task_id: int, attempt: int) -> threading.Event:
        """Hold a task; the returned event is set if the dispatcher revokes it."""
        revoked = threading.Event()
        with self._lock:
            self._held[task_id] = (attempt, revoked)
        return revoked

    def remove(self, task_id: int) -> None:
        """Stop holding a task."""
        with self._lock:
            self._held.pop(task_id, None)
            self._finished.discard(task_id)

    def finish(self, task_id: int) -> None:
        """The task ran to the end: keep listing it until its result is answered."""
        with self._lock:
            if task_id in self._held:
                self._finished.add(task_id)

    def snapshot(self) -> list[dict[str, int]]:
        """``[{"task_id", "attempt"}]`` of the held tasks not yet revoked, for a heartbeat."""
        with self._lock:
            items = list(self._held.items())
        return [{"task_id": t, "attempt": a} for t, (a, ev) in items if not ev.is_set()]

    def revoke(self, task_ids: list[Any]) -> list[int]:
        """Mark held tasks revoked; return those newly marked."""
        newly = []
        with self._lock:
            for task_id in task_ids:
                entry = self._held.get(task_id) if isinstance(task_id, int) else None
                if entry is not None and not entry[1].is_set():
                    entry[1].set()
                    # A finished task's lease ends when its result is recorded: not news.
                    if task_id not in self._finished:
                        newly.append(task_id)
        return newly


class Heartbeat(threading.Thread):
    """Beats every ``heartbeat_interval`` on a monotonic schedule, listing the held tasks."""

    def __init__(self, config: WorkerConfig, held: HeldTasks,
                 failover: Failover | None = None) -> None:
        super().__init__(name=f"heartbeat-{config.worker_id}", daemon=True)
        self._config, self._held = config, held
        self._client = DispatcherClient(failover or worker_failover(config), config.token)
        self._outage = OutageLog(config.worker_id, "heartbeats")
        self._stop_event = threading.Event()
        self.beats = 0

    def run(self) -> None:
        interval = self._config.heartbeat_interval
        next_at = time.monotonic()
        while not self._stop_event.wait(max(0.0, next_at - time.monotonic())):
            try:
                self.beat_once()
            except Exception:  # the thread boundary: a beat must never kill the thread
                log.exception("worker %s: unexpected heartbeat error", self._config.worker_id)
            # Skip beats missed while blocked rather than firing a burst of them.
            next_at = max(next_at + interval, time.monotonic())

    def beat_once(self, stopping: bool = False) -> None:
        """Send one heartbeat and act on revoked tasks; ``stopping`` announces a clean exit."""
        cfg = self._config
        body: dict[str, Any] = {"worker_id": cfg.worker_id, "instance_id": cfg.instance_id,
                                "tasks": self._held.snapshot()}
        if stopping:
            body["stopping"] = True
        try:
            reply = self._client.post("/heartbeat", body, cfg.heartbeat_timeout)
        except Unreachable as exc:
            return self._outage.failed(str(exc))
        if reply.retryable:
            return self._outage.failed(f"HTTP {reply.status}")
        self._outage.ok()
        self.beats += 1
        attempts = {held["task_id"]: held["attempt"] for held in body["tasks"]}
        for task_id in self._held.revoke(reply.field("revoked") or []):
            log.warning("task %s revoked from worker %s (heartbeat %s); abandoning it",
                        task_id, cfg.worker_id, reply.status,
                        extra=task_fields(task_id, cfg.worker_id, attempts.get(task_id)))
        if reply.status not in (200, 409):
            log.error("worker %s: heartbeat refused: HTTP %s %s", cfg.worker_id, reply.status, reply.body)

    def stop(self, announce: bool = True) -> None:
        """Stop beating; with ``announce``, tell the dispatcher this worker stopped on purpose."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5.0)
        if announce:
            self.beat_once(stopping=True)
        self._client.close()
