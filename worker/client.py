"""The worker's side of the dispatcher's HTTP API: its JSON client and retry policy.

:class:`DispatcherClient` (a :class:`shared.client.JsonConnection`) turns connection errors
and timeouts into :class:`Unreachable` and moves between the dispatchers of the worker's list
(:func:`worker_failover`); :class:`OutageLog` keeps an outage to two log lines;
:class:`Backoff` paces the retries.
"""

from __future__ import annotations

import logging
import random
import zlib
from collections.abc import Callable

from shared.client import Failover, JsonConnection, Reply, Timeout, Unreachable
from worker.config import WorkerConfig

__all__ = ["Backoff", "DispatcherClient", "OutageLog", "Reply", "Timeout", "Unreachable",
           "home_index", "worker_failover"]

log = logging.getLogger(__name__)


class Backoff:
    """Exponential backoff with jitter, capped; :meth:`reset` after a success."""

    def __init__(self, base: float, cap: float, rng: Callable[[], float] = random.random) -> None:
        self._base, self._cap, self._rng = base, cap, rng
        self.failures = 0

    def next_delay(self, at_least: float = 0.0) -> float:
        """Seconds to wait after one more failure (at least ``at_least``, never above the cap)."""
        ceiling = min(self._cap, self._base * 2 ** min(self.failures, 30))
        self.failures += 1
        # "Equal jitter": half fixed, half random, so retries spread without collapsing to 0.
        delay = ceiling * (0.5 + 0.5 * self._rng())
        return min(self._cap, max(delay, at_least))

    def reset(self) -> None:
        """Forget past failures."""
        self.failures = 0


def home_index(worker_id: str, count: int) -> int:
    """Which of ``count`` dispatchers a worker starts on: spread out, the same after a restart."""
    return zlib.crc32(worker_id.encode()) % count


def worker_failover(config: WorkerConfig) -> Failover:
    """The worker's dispatcher list, shared by its main loop and its heartbeat thread."""
    urls = config.dispatcher_urls
    return Failover(urls, home=home_index(config.worker_id, len(urls)),
                    label=f"worker {config.worker_id}")


class DispatcherClient(JsonConnection):
    """The worker's JSON POSTs, one keep-alive connection per dispatcher (one client per thread)."""

    def __init__(self, failover: Failover, token: str = "") -> None:
        super().__init__(failover, connections=1, token=token)


class OutageLog:
    """Logs a dispatcher outage once when it starts and once when it ends, not per failure."""

    def __init__(self, worker_id: str, channel: str) -> None:
        self._worker_id, self._channel = worker_id, channel
        self.failures = 0

    def failed(self, detail: str) -> None:
        """Note one failed call."""
        self.failures += 1
        level = logging.WARNING if self.failures == 1 else logging.DEBUG
        log.log(level, "worker %s: dispatcher unavailable for %s (%s); will keep retrying",
                self._worker_id, self._channel, detail)

    def ok(self) -> None:
        """Note a successful call; logs the end of an outage."""
        if self.failures:
            log.info("worker %s: dispatcher reachable again for %s after %d failed calls",
                     self._worker_id, self._channel, self.failures)
        self.failures = 0
