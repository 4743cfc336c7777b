"""The heartbeat monitor: declares silent workers dead and expires stalled leases."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from dispatcher.db import SQLiteStore, StorageUnavailable
from dispatcher.models import Reclaim

log = logging.getLogger(__name__)


@dataclass
class MonitorStats:
    """What the monitor has done since the dispatcher started."""

    sweeps: int = 0
    last_sweep_at: float | None = None
    reclaimed: int = 0
    errors: int = 0


@dataclass
class HeartbeatMonitor:
    """Sweeps the store: dead workers (silent for ``heartbeat_timeout``) and expired leases.

    After a dispatcher (re)start, workers get one ``heartbeat_timeout`` of grace before anyone
    is declared dead: the dispatcher, not the workers, was the one who went silent.
    """

    store: SQLiteStore
    heartbeat_timeout: float
    interval: float
    clock: Callable[[], float]
    on_reclaim: Callable[[list[Reclaim]], None] = lambda reclaimed: None
    started_at: float = field(init=False)
    stats: MonitorStats = field(default_factory=MonitorStats)

    def __post_init__(self) -> None:
        self.started_at = self.clock()

    @property
    def grace_until(self) -> float:
        """Before this time nobody is declared dead."""
        return self.started_at + self.heartbeat_timeout

    def sweep(self, now: float) -> list[Reclaim]:
        """One pass: reap dead workers (after the grace period), then expired leases."""
        reclaimed: list[Reclaim] = []
        if now >= self.grace_until:
            reclaimed += self.store.reap_dead_workers(now - self.heartbeat_timeout, now)
        reclaimed += self.store.expire_leases(now)
        for item in reclaimed:
            log.warning(
                "reclaimed task %s from worker %s (attempt %s, cause %s) -> %s",
                item.task_id, item.worker_id, item.attempt, item.cause.value,
                "failed (out of attempts)" if item.failed else "pending",
            )
        self.stats.sweeps += 1
        self.stats.last_sweep_at = now
        self.stats.reclaimed += len(reclaimed)
        if reclaimed:
            self.on_reclaim(reclaimed)
        return reclaimed

    def run(self, stop: threading.Event) -> None:
        """Sweep every ``interval`` seconds until ``stop`` is set."""
        while not stop.wait(self.interval):
            try:
                self.sweep(self.clock())
            except StorageUnavailable as exc:
                self.stats.errors += 1
                log.warning("sweep skipped, storage unavailable: %s", exc)
            except Exception:
                self.stats.errors += 1
                log.exception("heartbeat monitor sweep failed")

    def start(self, stop: threading.Event) -> threading.Thread:
        """Run the sweep loop in a daemon thread."""
        thread = threading.Thread(target=self.run, args=(stop,), name="heartbeat-monitor",
                                  daemon=True)
        thread.start()
        return thread
