"""The heartbeat monitor: declares silent workers dead, expires stalled leases, purges old tasks.

Every dispatcher runs one. A sweep is one transaction of the store, taken by at most one
dispatcher at a time (the others skip that round), and judged by the store's one clock, so any
number of monitors behave as one and any surviving dispatcher keeps detecting dead workers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dispatcher.db import StorageUnavailable, Store
from dispatcher.models import Reclaim
from shared.utils import task_fields

log = logging.getLogger(__name__)

PURGE_BATCH = 500
"""Finished tasks deleted per transaction: a few milliseconds of the write lock at most."""
PURGE_PASS_SECONDS = 0.2
"""A purge pass stops after this long; a backlog continues PURGE_BACKLOG_SECONDS later."""
PURGE_BACKLOG_SECONDS = 1.0
"""The pause between two passes over a backlog, so a big one is deleted in the background."""
PURGE_PAUSE_SECONDS = 0.005
"""The pause between two batches, so claims and results take the write lock in between."""
PURGE_EVERY_SECONDS = 5.0
"""How often a monitor looks for expired tasks when the last pass left none behind."""


@dataclass
class MonitorStats:
    """What this dispatcher's monitor has done since it started."""

    sweeps: int = 0
    skipped: int = 0  # another dispatcher was sweeping
    reclaimed: int = 0
    errors: int = 0
    purged: int = 0  # finished tasks deleted after RESULT_TTL


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
    events_kept: int = 1000
    """The events timeline is trimmed to this many newest rows at each sweep (EVENTS_KEPT)."""
    stats: MonitorStats = field(default_factory=MonitorStats)
    result_ttl: float = 0.0
    """Finished tasks are purged this many seconds after they finished; <= 0 keeps them."""
    purge_batch: int = PURGE_BATCH
    _next_purge: float = field(default=0.0, init=False, repr=False)

    @property
    def gap_seconds(self) -> float:
        """A pause in sweeping longer than this counts as the cluster having been down."""
        return max(0.5, 3 * self.interval)

    def sweep(self) -> list[Reclaim]:
        """One pass: reap dead workers (after any grace), then expired leases; what it changed."""
        swept = self.store.sweep(self.heartbeat_timeout, self.lease_seconds, self.gap_seconds,
                                 self.events_kept)
        if not swept.ran:
            self.stats.skipped += 1
            return []
        for item in swept.reclaims:
            log.warning(
                "reclaimed task %s from worker %s (attempt %s, cause %s) -> %s",
                item.task_id, item.worker_id, item.attempt, item.cause.value,
                "failed (out of attempts)" if item.failed else "pending",
                extra=task_fields(item.task_id, item.worker_id, item.attempt),
            )
        self.stats.sweeps += 1
        self.stats.reclaimed += len(swept.reclaims)
        if swept.reclaims:
            self.on_reclaim(swept.reclaims)
        return swept.reclaims

    def purge(self) -> int:
        """Delete finished tasks older than ``result_ttl``, batch by batch; how many.

        Each batch is one short write transaction; between batches the lock is free for
        claims and results. A pass ends when a batch comes back short (the next one is due
        PURGE_EVERY_SECONDS later) or after PURGE_PASS_SECONDS (a backlog: the next pass comes
        PURGE_BACKLOG_SECONDS later).
        """
        if self.result_ttl <= 0:
            return 0
        deadline, purged = time.monotonic() + PURGE_PASS_SECONDS, 0
        while True:
            batch = self.store.purge_finished(self.result_ttl, self.purge_batch)
            purged += batch
            if batch < self.purge_batch:
                self._next_purge = time.monotonic() + PURGE_EVERY_SECONDS
                break
            if time.monotonic() >= deadline:
                self._next_purge = time.monotonic() + PURGE_BACKLOG_SECONDS
                break
            time.sleep(PURGE_PAUSE_SECONDS)
        if purged:
            log.info("purged %s finished tasks older than RESULT_TTL (%s s)", purged,
                     self.result_ttl)
        self.stats.purged += purged
        return purged

    def _step(self) -> None:
        self.sweep()
        if time.monotonic() >= self._next_purge:
            self.purge()

    def run(self, stop: threading.Event) -> None:
        """Sweep every ``interval`` seconds (and purge when due) until ``stop`` is set."""
        while not stop.wait(self.interval):
            try:
                self._step()
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
