"""The heartbeat monitor: declares silent workers dead and expires stalled leases.

Every dispatcher runs one. A sweep is one transaction of the store, taken by at most one
dispatcher at a time (the others skip that round), and judged by the store's one clock, so any
number of monitors behave as one and any surviving dispatcher keeps detecting dead workers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from dispatcher.db import StorageUnavailable, Store
from dispatcher.models import Reclaim

log = logging.getLogger(__name__)


@dataclass
class MonitorStats:
    """What this dispatcher's monitor has done since it started."""

    sweeps: int = 0
    skipped: int = 0  # another dispatcher was sweeping
    reclaimed: int = 0
    errors: int = 0


@dataclass
class HeartbeatMonitor:
    """Sweeps the store: dead workers (silent for ``heartbeat_timeout``) and expired leases.

    After a gap in sweeping longer than ``gap_seconds`` (every dispatcher was down), the
    cluster gets one ``heartbeat_timeout`` of grace before anyone is declared dead, and every
    lease restarts: the dispatchers, not the workers, were the ones who went silent. One
    dispatcher restarting while others sweep causes no gap, so no pause in detection.
    """

    store: Store
    heartbeat_timeout: float
    lease_seconds: float
    interval: float
    on_reclaim: Callable[[list[Reclaim]], None] = lambda reclaimed: None
    stats: MonitorStats = field(default_factory=MonitorStats)

    @property
    def gap_seconds(self) -> float:
        """A pause in sweeping longer than this counts as the cluster having been down."""
        return max(0.5, 3 * self.interval)

    def sweep(self) -> list[Reclaim]:
        """One pass: reap dead workers (after any grace), then expired leases; what it changed."""
        swept = self.store.sweep(self.heartbeat_timeout, self.lease_seconds, self.gap_seconds)
        if not swept.ran:
            self.stats.skipped += 1
            return []
        for item in swept.reclaims:
            log.warning(
                "reclaimed task %s from worker %s (attempt %s, cause %s) -> %s",
                item.task_id, item.worker_id, item.attempt, item.cause.value,
                "failed" if item.failed else "pending",
            )
        self.stats.sweeps += 1
        self.stats.reclaimed += len(swept.reclaims)
        if swept.reclaims:
            self.on_reclaim(swept.reclaims)
        return swept.reclaims

    def run(self, stop: threading.Event) -> None:
        """Sweep every ``interval`` seconds until ``stop`` is set."""
        while not stop.wait(self.interval):
            try:
                self.sweep()
            except StorageUnavailable as exc:
                self.stats.errors += 1
                log.warning("sweep skipped, storage unavailable: %s", exc)
            except Exception:  # the loop boundary: log and keep sweeping
                self.stats.errors += 1
                log.exception("heartbeat monitor sweep failed")

    def start(self, stop: threading.Event) -> threading.Thread:
        """Run the sweep loop in a daemon thread."""
        thread = threading.Thread(target=self.run, args=(stop,), name="heartbeat-monitor",
                                  daemon=True)
        thread.start()
        return thread
