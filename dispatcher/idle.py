"""The idle fleet: workers a recent read found with nothing to do, so their polls need none.

An idle worker sends a heartbeat every second and a long-poll claim every ``POLL_WAIT``, and
each used to cost a database read that answered "nothing for you". :class:`IdleFleet` keeps
two things that reads said: per worker, the last read that found it *idle* (known and alive as
this very instance, holding no lease: ``Look.idle`` of the store, or PostgreSQL's one-statement
claim that found nothing), and for the whole fleet, the newest such read, which also found *no
task pending*. While both vouch, the dispatcher answers from memory: a claim goes straight to
waiting, a heartbeat that lists no task is answered "nothing revoked" (a heartbeat needs only
the worker's part). Either way the worker's liveness is noted in the store
(``Store.note_alive``) and written by the next sweep, exactly as heartbeats answered from a read
are, so the monitor sees the same fleet.

PostgreSQL's one-statement claim says two more things when it leases tasks: that the worker
held nothing before (so the leases are all it holds), and whether it left anything pending. A
claim that took the last pending task is a read that found the queue empty (after it); a worker
whose results then complete every task that claim gave it is idle again, as of that read. So
the claim a worker sends with the result of the last task needs no read either: a worker
running one short task after another on a queue it keeps empty costs one claim statement and
one results statement per task, not two claims.

What is trusted, and for how long:

- that no task is pending: for ``IDLE_TRUST_SECONDS`` after the newest idle read of *any*
  worker, and only while ``tasks_available.generation`` is the one read *before* that read:
  every way this dispatcher learns of a claimable task (a submission, a retry, a reclaim, a
  delayed task coming due, another dispatcher's notification) bumps it, and the next claims
  then read the store. Shared by the fleet, so 300 idle workers cost a few reads a second
  for it, not one per poll;
- that the worker is alive as this instance and holds no lease: for ``WORKER_TRUST_SECONDS``
  from the moment before its own read, on the store's clock (the one liveness is judged by).
  Only the worker's own requests change that here, and each forgets it (below).

What forgets a worker at once: any answer of the store to it that was not an idle claim or a
claim of all it holds (a claim that leased more or wrote, a heartbeat that went to the store,
``stopping``), a reclaim that names it, a checkpoint, release or result of its sent on its own
(``POST /submit-result``); results sent with its next claim forget only the tasks they
completed. A forgotten worker is not remembered again
from a read that began before it was forgotten, so a slow read cannot bring back what a
concurrent request invalidated.

Why a stale entry is harmless: an answer from memory only ever says "nothing for you", never
hands out or takes back a lease, and no entry outlives its window. A task it misses (an
announcement lost between dispatchers) is claimed at most ``IDLE_TRUST_SECONDS`` plus one
``RECHECK_SECONDS`` later. A worker another dispatcher declared dead meanwhile is not revived by
the noted liveness (the sweep writes it to live workers only); within ``WORKER_TRUST_SECONDS``
its next read finds it dead and the write path registers it again. A lease whose claim answer
was lost (through another dispatcher) is re-delivered or requeued by the first read after the
window, before ``unlisted_grace``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

IDLE_TRUST_SECONDS = 1.0
"""How long the newest idle read vouches that no task is pending (the whole fleet's claims):
a wake-up lost between dispatchers then delays a claim by at most this much more than the
``RECHECK_SECONDS`` every waiting claim already allows."""
WORKER_TRUST_SECONDS = 5.0
"""How long a worker's own idle read vouches that it is alive as that instance and holds
nothing (its heartbeats, and with the fleet's part its claims): under ``unlisted_grace`` (10 s),
so a lease whose claim answer was lost is still handed back first."""


@dataclass(frozen=True)
class _Sighting:
    instance_id: str | None  # None: a read that found nothing pending, of no worker in particular
    at: float  # the store's clock just before the read
    generation: int  # tasks_available.generation just before the read


class IdleFleet:
    """Workers last read idle (each trusted for ``worker_seconds`` of ``clock``) and the newest
    read that found nothing pending (trusted for ``trust_seconds``); thread-safe."""

    def __init__(self, clock: Callable[[], float], trust_seconds: float = IDLE_TRUST_SECONDS,
                 worker_seconds: float = WORKER_TRUST_SECONDS) -> None:
        self.clock = clock
        self.trust_seconds = trust_seconds
        self.worker_seconds = max(worker_seconds, trust_seconds)
        self._lock = threading.Lock()
        self._idle: dict[str, _Sighting] = {}
        # Workers a read found holding nothing, then leased these tasks (idle again once done).
        self._holding: dict[str, tuple[_Sighting, frozenset[int]]] = {}
        self._empty: _Sighting | None = None  # the newest read that found nothing pending
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
            sighting = _Sighting(instance_id, at, generation)
            self._idle[worker_id] = sighting
            if self._empty is None or at >= self._empty.at:
                self._empty = sighting
            self._prune()

    def remember_leases(self, worker_id: str, instance_id: str | None, at: float,
                        generation: int, task_ids: Sequence[int]) -> None:
        """Note a read begun at ``at`` that found the worker holding nothing and leased it
        ``task_ids``: once its results have finished all of them (:meth:`finished`) it is idle
        again, as of that read."""
        if instance_id is None:
            return
        with self._lock:
            if at < self._forgotten.get(worker_id, at):
                return
            self._idle.pop(worker_id, None)
            self._holding[worker_id] = (_Sighting(instance_id, at, generation),
                                        frozenset(task_ids))
            self._prune()

    def finished(self, worker_id: str, task_ids: Sequence[int]) -> None:
        """The worker's results completed ``task_ids``; if that is all it was leased, it holds
        nothing again."""
        with self._lock:
            held = self._holding.get(worker_id)
            if held is None:
                return
            sighting, left = held[0], held[1].difference(task_ids)
            if left:
                self._holding[worker_id] = (sighting, left)
            else:
                del self._holding[worker_id]
                self._idle[worker_id] = sighting

    def saw_empty(self, at: float, generation: int) -> None:
        """Note a read begun at ``at`` (and ``generation``) that left nothing pending."""
        with self._lock:
            if self._empty is None or at >= self._empty.at:
                self._empty = _Sighting(None, at, generation)

    def trusted_for(self, worker_id: str, instance_id: str | None,
                    generation: int | None = None) -> float:
        """Seconds recent reads still vouch for this instance as idle (given ``generation``, a
        claim's: also that nothing is pending at it); 0.0 when they do not."""
        with self._lock:
            sighting, empty = self._idle.get(worker_id), self._empty
        if sighting is None or instance_id is None or sighting.instance_id != instance_id:
            return 0.0
        now = self.clock()
        left = _left(now - sighting.at, self.worker_seconds)
        if generation is not None:
            fresh = empty is not None and empty.generation == generation
            left = min(left, _left(now - empty.at, self.trust_seconds) if fresh else 0.0)
        return left

    def forget(self, worker_id: str | None) -> None:
        """The worker's state may have changed: its next poll or beat reads the store."""
        if worker_id is None:
            return
        with self._lock:
            self._idle.pop(worker_id, None)
            self._holding.pop(worker_id, None)
            self._forgotten[worker_id] = self.clock()
            self._prune()

    def __len__(self) -> int:
        with self._lock:
            return len(self._idle) + len(self._holding) + len(self._forgotten)

    def _prune(self) -> None:
        """Drop, about once per worker window, what is too old to matter (lock held)."""
        now = self.clock()
        if 0.0 <= now - self._pruned_at < self.worker_seconds:
            return
        since = now - self.worker_seconds
        # A read begun before ``since`` is too old to be trusted anyway; times ahead of now
        # are left by a clock set back (the wall clock of SQLite).
        self._idle = {w: s for w, s in self._idle.items() if since <= s.at <= now}
        self._holding = {w: h for w, h in self._holding.items() if since <= h[0].at <= now}
        self._forgotten = {w: at for w, at in self._forgotten.items() if since <= at <= now}
        self._pruned_at = now


def _left(age: float, window: float) -> float:
    """What is left of a window after ``age`` (0.0 once past, or for a clock set back)."""
    return window - age if 0.0 <= age < window else 0.0
