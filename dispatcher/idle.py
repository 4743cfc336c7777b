"""The idle fleet: workers a recent read found with nothing to do, so their polls need none.

An idle worker sends a heartbeat every second and a long-poll claim every ``POLL_WAIT``, and
each used to cost a database read that answered "nothing for you". :class:`IdleFleet`
remembers, per worker, the last read that found it *idle*: known and alive as this very
instance, holding no lease, with no task pending (``Look.idle`` of the store). For
``IDLE_TRUST_SECONDS`` after that read the dispatcher answers the worker from memory: a claim
goes straight to waiting (until the trust ends at the latest), a heartbeat that lists no task
is answered "nothing revoked". Either way the worker's liveness is noted in the store
(``Store.note_alive``) and written by the next sweep, exactly as heartbeats answered from a
read are, so the monitor sees the same fleet.

What is trusted, and for how long:

- that no task was pending, only while ``tasks_available.generation`` is the one read *before*
  the read: every way this dispatcher learns of a claimable task (a submission, a retry, a
  reclaim, a delayed task coming due, another dispatcher's notification) bumps it, and the next
  claim then reads the store (heartbeats do not care about pending tasks);
- that the worker is alive as this instance and holds no lease, for ``IDLE_TRUST_SECONDS``
  from the moment before the read, on the store's clock (the one liveness is judged by).

What forgets a worker at once: any answer of the store to it that was not an idle claim (a
claim that leased or wrote, a heartbeat that went to the store, ``stopping``), a reclaim that
names it, a checkpoint, release or result of its. A forgotten worker is not remembered again
from a read that began before it was forgotten, so a slow read cannot bring back what a
concurrent request invalidated.

Why a stale entry is harmless: an answer from memory only ever says "nothing for you", never
hands out or takes back a lease, and an entry is never older than the trust window. A task it
misses (an announcement lost between dispatchers) is claimed by the next read at most that much
later, which is the bound ``RECHECK_SECONDS`` already sets on long polls. A worker another
dispatcher declared dead meanwhile is not revived by the noted liveness (the sweep writes it to
live workers only); within the trust window the next read finds it dead and the write path
registers it again, as it does today. A lease whose claim answer was lost is re-delivered or
requeued by the first read after the window, long before ``unlisted_grace``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

IDLE_TRUST_SECONDS = 1.0
"""How long a read that found a worker idle answers its polls and beats: a lost wake-up from
another dispatcher then delays a claim by at most this much, the bound ``RECHECK_SECONDS``
already sets on a waiting claim."""


@dataclass(frozen=True)
class _Sighting:
    instance_id: str
    at: float  # the store's clock just before the read
    generation: int  # tasks_available.generation just before the read


class IdleFleet:
    """Workers last read idle, each trusted for ``trust_seconds`` of ``clock``; thread-safe."""

    def __init__(self, clock: Callable[[], float],
                 trust_seconds: float = IDLE_TRUST_SECONDS) -> None:
        self.clock = clock
        self.trust_seconds = trust_seconds
        self._lock = threading.Lock()
        self._idle: dict[str, _Sighting] = {}
        self._forgotten: dict[str, float] = {}  # worker id -> when it was last forgotten
        self._pruned_at = clock()

    def remember(self, worker_id: str, instance_id: str | None, at: float,
                 generation: int) -> None:
        """Note a read begun at ``at`` (and ``generation``) that found the worker idle."""
        if instance_id is None:
            return
        with self._lock:
            if at < self._forgotten.get(worker_id, at):
                return  # forgotten while the read was under way
            self._idle[worker_id] = _Sighting(instance_id, at, generation)
            self._prune()

    def trusted_for(self, worker_id: str, instance_id: str | None,
                    generation: int | None = None) -> float:
        """Seconds a recent read still vouches for this instance as idle (and, given one, at
        ``generation``); 0.0 when none does."""
        with self._lock:
            sighting = self._idle.get(worker_id)
        if sighting is None or instance_id is None or sighting.instance_id != instance_id:
            return 0.0
        if generation is not None and generation != sighting.generation:
            return 0.0
        age = self.clock() - sighting.at
        return self.trust_seconds - age if 0.0 <= age < self.trust_seconds else 0.0

    def forget(self, worker_id: str | None) -> None:
        """The worker's state may have changed: its next poll or beat reads the store."""
        if worker_id is None:
            return
        with self._lock:
            self._idle.pop(worker_id, None)
            self._forgotten[worker_id] = self.clock()
            self._prune()

    def __len__(self) -> int:
        with self._lock:
            return len(self._idle) + len(self._forgotten)

    def _prune(self) -> None:
        """Drop, about once per trust window, what is too old to matter (lock held)."""
        now = self.clock()
        if 0.0 <= now - self._pruned_at < self.trust_seconds:
            return
        since = now - self.trust_seconds
        # A read begun before ``since`` is too old to be trusted anyway; times ahead of now
        # are left by a clock set back (the wall clock of SQLite).
        self._idle = {w: s for w, s in self._idle.items() if since <= s.at <= now}
        self._forgotten = {w: at for w, at in self._forgotten.items() if since <= at <= now}
        self._pruned_at = now
