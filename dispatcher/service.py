"""The dispatcher's operations: the store plus long-poll wake-ups and the monitor.

Routes call exactly one method here per request. Every lease and liveness decision is made by
the store against its one clock (the dispatcher's with SQLite, the database's with
PostgreSQL); waits here use ``time.monotonic``. An idle worker's polls and beats are answered
from the idle fleet (``idle.py``) for a moment after a read found it idle; a request waiting for
a task is spared the reads whose answer this dispatcher knows (``waits.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from dispatcher.db import Claimed, StorageUnavailable, Store
from dispatcher.feed import DashboardFeed
from dispatcher.heartbeat_monitor import HeartbeatMonitor
from dispatcher.idle import IdleFleet
from dispatcher.metrics import Metrics
from dispatcher.models import (
    FAILURE_COUNTERS,
    Checkpoint,
    Event,
    Group,
    GroupStatus,
    Lease,
    NewTask,
    Outcome,
    OutcomeKind,
    Reclaim,
    ReclaimCause,
    Report,
    Task,
    TaskPage,
    TaskQuery,
    TaskStatus,
    WorkerStatus,
)
from dispatcher.runtime import let_others_run
from dispatcher.scheduler import DueTimer, first_run
from dispatcher.utils import Notifier
from dispatcher.waits import TaskWaits
from shared.config import Config
from shared.utils import task_fields
from tasks.registry import Registry

log = logging.getLogger(__name__)

THROUGHPUT_WINDOW_SECONDS = 60.0
RECHECK_SECONDS = 1.0
"""A waiting request looks again at least this often, so a lost wake-up (another dispatcher's
notification that never arrived) delays it by at most this much (a claim: plus the
``IDLE_TRUST_SECONDS`` for which the idle fleet trusts an empty queue), and never loses it."""


class Dispatcher:
    """Owns the store and coordinates waiting requests with changes to the queue.

    ``registry`` holds the task types this dispatcher accepts and checks checkpoints against.
    """

    def __init__(self, store: Store, config: Config, registry: Registry) -> None:
        self.store = store
        self.config = config
        self.registry = registry
        self.started = time.monotonic()
        self.tasks_available = Notifier()
        self.tasks_finished = Notifier()
        self.idle = IdleFleet(store.now)
        self.waits = TaskWaits()
        interval = min(config.monitor_interval, config.heartbeat_timeout / 4)
        self.monitor = HeartbeatMonitor(
            store=store,
            heartbeat_timeout=config.heartbeat_timeout,
            lease_seconds=config.lease_duration,
            interval=interval,
            on_reclaim=self._after_reclaim,
            events_kept=config.events_kept,
            result_ttl=config.result_ttl,
        )
        self._stop = threading.Event()
        self._stopping = threading.Event()
        self._monitor_thread: threading.Thread | None = None
        self._timer_thread: threading.Thread | None = None
        self.timer = DueTimer(store, on_ready=self.tasks_available.notify)
        store.on_due = self.timer.poke
        store.crash_loop_limit = config.crash_loop_limit
        # A lease its worker's heartbeats never list is requeued after this long; generous,
        # because a claim answer can still be in flight and a restarted dispatcher's workers
        # may be backing off (their next claim re-delivers it first, at the same attempt).
        self.unlisted_grace = max(10.0, 5 * config.heartbeat_timeout)
        self._counts_lock = threading.Lock()
        self.claims_served = 0  # claim requests that returned tasks, since start
        self.tasks_leased = 0
        self.claims_waiting = 0  # long polls waiting for work right now
        self.feed = DashboardFeed(store, config)
        self.metrics = Metrics(self)

    # -- lifecycle --------------------------------------------------------------------------

    def start_monitor(self) -> None:
        """Start the heartbeat monitor and the wake-ups from other dispatchers (once)."""
        if self._monitor_thread is None:
            self._monitor_thread = self.monitor.start(self._stop)
            self._timer_thread = self.timer.start(self._stop)
            self.store.listen(on_tasks=self._tasks_elsewhere,
                              on_finished=self.tasks_finished.notify, on_due=self.timer.poke)

    def stop_waiting(self) -> None:
        """Answer every claim waiting for tasks now, and later ones without waiting (stopping)."""
        self._stopping.set()
        self.tasks_available.notify()

    def close(self) -> None:
        """Stop the monitor and close the store."""
        self._stop.set()
        self.timer.wake()
        if self._monitor_thread is not None:
            self._monitor_thread.join(timeout=5)
        if self._timer_thread is not None:
            self._timer_thread.join(timeout=5)
        self.store.close()

    # -- operations -------------------------------------------------------------------------

    def submit(self, tasks: Sequence[NewTask], pending_cap: int | None = None
               ) -> list[tuple[int, bool]]:
        """Store new tasks durably; idle workers are woken (one per task claimable now) before
        the fsync; delayed tasks wake them when due (the due timer).

        ``pending_cap`` bounds the tasks the submitting client may have pending.
        """
        now = self.store.now()
        ready = sum(1 for t in tasks if t.delay_seconds is None
                    and (t.run_at is None or t.run_at <= now))
        finished_seen = self.tasks_finished.generation  # before: nothing of theirs finished yet
        created = self.store.submit(
            tasks, on_commit=(lambda: self.tasks_available.notify(ready)) if ready else None,
            pending_cap=pending_cap,
        )
        for task_id, new in created:
            if new:
                self.waits.created(task_id, finished_seen)
        self.metrics.on_submit(tasks, created)
        return created

    def claim(
        self,
        worker_id: str,
        instance_id: str | None,
        limit: int,
        wait_seconds: float,
        reports: Sequence[Report] = (),
    ) -> tuple[list[Lease], list[Outcome]]:
        """Record ``reports``, then lease up to ``limit`` tasks, waiting up to ``wait_seconds``.

        An idle worker's claim is answered from the idle fleet while it vouches for the
        worker (no read); a wait that runs out unwoken ends without a last read.
        """
        deadline = time.monotonic() + min(wait_seconds, self.config.max_wait_seconds)
        outcomes: list[Outcome] = []
        woken = False
        while True:
            seen = self.tasks_available.generation
            leases: list[Lease] = []
            if reports:
                outcomes, reports = self._record_results(worker_id, reports), ()
            trusted = 0.0 if woken or limit <= 0 else self._answer_idle(
                worker_id, instance_id, seen, "claim")
            if not trusted and limit > 0:
                leases = self._claim_once(worker_id, instance_id, limit, woken, seen).leases
            remaining = deadline - time.monotonic()
            if leases or remaining <= 0 or limit <= 0 or self._stopping.is_set():
                self._count_claim(worker_id, leases)
                return leases, outcomes
            # Every claim, one answered from memory too, looks again after RECHECK_SECONDS
            # (not when the memory runs out, which is one moment for the whole fleet).
            woken = self._wait_for_tasks(seen, min(remaining, RECHECK_SECONDS))
            if not woken and time.monotonic() >= deadline:
                return [], outcomes

    def _record_results(self, worker_id: str, reports: Sequence[Report]) -> list[Outcome]:
        """Record the results a worker sends with its next claim.

        The requests waiting for them are woken when they commit, and answer before the claim
        is read: the worker's next task is not what anyone is waiting for. A worker whose
        results completed all it was leased is idle again for the idle fleet.
        """
        outcomes = self.store.complete(worker_id, reports, on_commit=self.tasks_finished.notify,
                                       watchers=self.waits)
        self._after_results(worker_id, outcomes)
        self.idle.finished(worker_id, [o.task_id for o in outcomes
                                       if o.outcome is OutcomeKind.ACCEPTED
                                       and o.status is TaskStatus.COMPLETED])
        let_others_run()
        return outcomes

    def _claim_once(self, worker_id: str, instance_id: str | None, limit: int, woken: bool,
                    seen: int) -> Claimed:
        """One store claim; what it says of the worker and the queue goes to the idle fleet.

        An idle answer is remembered; leases that are all the worker holds are remembered as
        such; any other answer forgets the worker. A claim that left nothing pending tells
        the fleet so.
        """
        read_at = self.store.now()
        claimed = self.store.claim(worker_id, instance_id, limit, self.config.lease_duration,
                                   woken=woken)
        self._after_reclaim(claimed.reclaims)
        if claimed.idle:
            self.idle.remember(worker_id, instance_id, read_at, seen)
        elif claimed.sole and claimed.leases:
            self.idle.remember_leases(worker_id, instance_id, read_at, seen,
                                      [lease.task_id for lease in claimed.leases])
        else:
            self.idle.forget(worker_id)
        if claimed.drained:
            self.idle.saw_empty(read_at, seen)
        return claimed

    def _answer_idle(self, worker_id: str, instance_id: str | None, generation: int | None,
                     kind: str) -> float:
        """Seconds the idle fleet still vouches for the worker (0.0: it does not); when it
        does, the worker's liveness is noted."""
        trusted = self.idle.trusted_for(worker_id, instance_id, generation)
        if trusted:
            self.store.note_alive(worker_id)
            self.metrics.on_idle_answer(kind)
        return trusted

    def _wait_for_tasks(self, seen: int, seconds: float) -> bool:
        with self._counts_lock:
            self.claims_waiting += 1
        try:
            return self.tasks_available.wait(seen, seconds)
        finally:
            with self._counts_lock:
                self.claims_waiting -= 1

    def heartbeat(
        self, worker_id: str, instance_id: str | None, held: Sequence[tuple[int, int]],
        stopping: bool = False,
    ) -> list[int]:
        """Record a heartbeat; return the held task ids that are no longer this worker's.

        An idle worker's heartbeat that lists no task is answered from the idle fleet while it
        vouches for the worker (nothing revoked, no read).
        """
        if not held and not stopping and self._answer_idle(worker_id, instance_id, None,
                                                           "heartbeat"):
            return []
        revoked, reclaimed = self.store.heartbeat(
            worker_id, instance_id, held, self.unlisted_grace
        )
        self._after_reclaim(reclaimed)
        if stopping:
            self.store.mark_worker(worker_id, WorkerStatus.STOPPED)
        self.idle.forget(worker_id)
        attempts = dict(held)
        for task_id in revoked:
            log.info("heartbeat from worker %s: task %s is no longer its lease", worker_id,
                     task_id, extra=task_fields(task_id, worker_id, attempts.get(task_id)))
        return revoked

    def checkpoint(
        self, worker_id: str, task_id: int, attempt: int, state: dict[str, Any], progress: float
    ) -> float:
        """Save a checkpoint and renew the lease; return the new expiry."""
        expires = self.store.checkpoint(
            worker_id, task_id, attempt, state, progress, self.config.lease_duration,
            self.registry.check_checkpoint,
        )
        self.idle.forget(worker_id)
        return expires

    def release(
        self, worker_id: str, task_id: int, attempt: int, state: dict[str, Any] | None,
        progress: float | None, cause: ReclaimCause = ReclaimCause.RELEASED,
    ) -> Reclaim:
        """Give a task back to the queue at once, keeping its latest state."""
        reclaim = self.store.release(
            worker_id, task_id, attempt, state, progress, self.registry.check_checkpoint, cause
        )
        self.idle.forget(worker_id)
        self.metrics.on_reclaims([reclaim])
        log.info("worker %s released task %s (attempt %s, %s)", worker_id, task_id, attempt,
                 cause.value, extra=task_fields(task_id, worker_id, attempt))
        self.tasks_available.notify()
        return reclaim

    def complete(self, worker_id: str, items: Sequence[Report]) -> list[Outcome]:
        """Record results durably; waiting readers are woken before the fsync."""
        outcomes = self.store.complete(worker_id, items, on_commit=self.tasks_finished.notify,
                                       watchers=self.waits)
        self.idle.forget(worker_id)
        self._after_results(worker_id, outcomes)
        return outcomes

    def cancel(self, task_id: int) -> Task:
        """Cancel an unfinished task."""
        task = self.store.cancel(task_id)
        self.tasks_finished.notify()
        return task

    def retry(self, task_id: int) -> Task:
        """Put a failed or cancelled task back in the queue with MAX_ATTEMPTS fresh attempts."""
        return self.store.retry(task_id, self.config.max_attempts,
                                on_commit=lambda: self.tasks_available.notify(1))

    def add_schedule(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Store a periodic schedule (every N seconds or a cron expression); its view."""
        return self.store.add_schedule(spec, first_run(spec["every_seconds"], spec["cron"]))

    def list_schedules(self) -> list[dict[str, Any]]:
        """Every schedule."""
        return self.store.list_schedules()

    def delete_schedule(self, schedule_id: int) -> None:
        """Stop a schedule."""
        self.store.delete_schedule(schedule_id)

    def get_task(self, task_id: int, wait_seconds: float = 0.0) -> Task:
        """The task's view; with a wait, answer as soon as it finishes (or the wait ends).

        A waiting request reads only what it cannot know: not a task created here that nothing
        can have finished yet, nor one whose finished view the results handed it.
        """
        deadline = time.monotonic() + min(wait_seconds, self.config.max_wait_seconds)
        if wait_seconds <= 0:
            return self.store.get_task(task_id)
        with self.waits.watch(task_id) as slot:
            read = not self.waits.surely_unfinished(task_id, self.tasks_finished.generation)
            while True:
                seen = self.tasks_finished.generation
                if slot.view is not None:
                    return slot.view
                remaining = deadline - time.monotonic()
                if read or remaining <= 0:
                    task = self.store.get_task(task_id)
                    if task.status.finished or remaining <= 0:
                        return task
                read = True
                self.tasks_finished.wait(seen, min(remaining, RECHECK_SECONDS))

    def list_tasks(self, query: TaskQuery) -> TaskPage:
        """A page of tasks, newest first, filtered."""
        return self.store.list_tasks(query)

    def submit_group(self, task_type: str, params: dict[str, Any], parts: Sequence[NewTask],
                     key: str | None = None, request_hash: str | None = None,
                     pending_cap: int | None = None) -> tuple[int, list[int], bool]:
        """Store a split job and its parts durably; (group_id, part ids, created).

        ``request_hash`` is what a reuse of ``key`` must match; ``pending_cap`` bounds the
        tasks the submitting client may have pending (as :meth:`submit`).
        """
        group_id, ids, created = self.store.submit_group(
            task_type, params, parts, key,
            on_commit=lambda: self.tasks_available.notify(len(parts)),
            request_hash=request_hash, pending_cap=pending_cap)
        self.metrics.on_submit(parts, [(task_id, created) for task_id in ids])
        return group_id, ids, created

    def get_group(self, group_id: int) -> dict[str, Any]:
        """The view of a split job: progress, parts, and the combined result once all are done."""
        return self._group_view(self.store.get_group(group_id))

    def group_owner(self, group_id: int) -> str | None:
        """The id of the token that submitted a split job; NotFound."""
        return self.store.group_owner(group_id)

    def cancel_group(self, group_id: int) -> dict[str, Any]:
        """Cancel a split job's unfinished parts; its view."""
        group = self.store.cancel_group(group_id)
        self.tasks_finished.notify()
        return self._group_view(group)

    def _group_view(self, group: Group) -> dict[str, Any]:
        status, error, result = group.status, group.error, None
        if status is GroupStatus.COMPLETED:
            result, error = self._combine(group)
        by_status = {s.value: 0 for s in TaskStatus}
        for part in group.parts:
            by_status[part.status.value] += 1
        return {
            "group_id": group.group_id, "task_type": group.task_type, "params": group.params,
            "status": status.value, "progress": round(group.progress, 6),
            "parts": {"total": len(group.parts), **by_status},
            "tasks": [{"task_id": p.task_id, "status": p.status.value, "params": p.params,
                       "progress": p.progress, "worker_id": p.worker_id, "error": p.error}
                      for p in group.parts],
            "result": result, "error": error, "created_at": group.created_at,
        }

    def _combine(self, group: Group) -> tuple[Any, str | None]:
        """The task type's combine over the parts' results; or None and why it could not."""
        if group.task_type not in self.registry:
            return None, f"task type {group.task_type!r} is not loaded here: cannot combine"
        try:
            return self.registry.get(group.task_type).combine(  # type: ignore[misc]
                [part.result for part in group.parts]), None
        except Exception as exc:  # operator code: report, never a 500
            log.exception("combining the parts of group %s failed", group.group_id)
            return None, f"combine failed: {type(exc).__name__}: {exc}"

    def stats(self) -> dict[str, Any]:
        """The /stats document."""
        raw = self.store.stats(THROUGHPUT_WINDOW_SECONDS)
        return _format_stats(raw, self)

    def dashboard_state(self) -> dict[str, Any]:
        """The dashboard's document (``GET /dashboard/state``)."""
        return self.feed.state()

    def events(self, after: int | None, limit: int, task_id: int | None) -> list[Event]:
        """Timeline events after id ``after`` (or the newest), optionally of one task."""
        return self.store.events(after, limit, task_id)

    def latest_checkpoint(self, task_id: int) -> Checkpoint | None:
        """The task's latest checkpoint, or None; NotFound when there is no such task."""
        return self.store.latest_checkpoint(task_id)

    def health(self) -> dict[str, Any]:
        """Raise StorageUnavailable unless the database answers."""
        self.store.ping()
        return {"status": "ok"}

    # -- internals ------------------------------------------------------------------------

    def _count_claim(self, worker_id: str, leases: list[Lease]) -> None:
        if not leases:
            return
        self.metrics.on_claim(leases)
        with self._counts_lock:
            self.claims_served += 1
            self.tasks_leased += len(leases)
        for lease in leases:
            log.debug("task %s attempt %s leased to worker %s", lease.task_id, lease.attempt,
                      worker_id, extra=task_fields(lease.task_id, worker_id, lease.attempt))

    def _tasks_elsewhere(self, count: int) -> None:
        """Another dispatcher made tasks claimable: wake that many claims (all if unknown)."""
        self.tasks_available.notify(count or None)

    def _after_results(self, worker_id: str, outcomes: list[Outcome]) -> None:
        self.metrics.on_outcomes(outcomes)
        for outcome in outcomes:
            fields = task_fields(outcome.task_id, worker_id, outcome.attempt)
            if outcome.outcome is OutcomeKind.STALE:
                log.warning("stale result for task %s from worker %s refused", outcome.task_id,
                            worker_id, extra=fields)
            elif outcome.outcome is OutcomeKind.ACCEPTED and log.isEnabledFor(logging.DEBUG):
                log.debug("task %s attempt %s %s by worker %s", outcome.task_id,
                          outcome.attempt, outcome.status.value if outcome.status else "done",
                          worker_id, extra=fields)
        self._stop_failed_groups([o.task_id for o in outcomes if o.status is TaskStatus.FAILED
                                  and o.outcome in (OutcomeKind.ACCEPTED, OutcomeKind.REFUSED)])

    def _stop_failed_groups(self, failed: list[int]) -> None:
        """A part failed: its split job has failed, so its unfinished parts are cancelled.

        Their work could no longer make a result. Done after the failure is committed, in
        transactions of its own (best effort: if it does not happen, the parts run on and the
        job is failed all the same).
        """
        if not failed:
            return
        try:
            for group_id in self.store.groups_of(failed):
                group = self.store.cancel_group(group_id)
                log.warning("split job %s failed (%s); its unfinished parts are cancelled",
                            group_id, group.error)
                self.tasks_finished.notify()
        except StorageUnavailable as exc:
            log.warning("cancelling the parts of a failed split job skipped: %s", exc)

    def _after_reclaim(self, reclaimed: list[Reclaim]) -> None:
        if not reclaimed:
            return
        for reclaim in reclaimed:
            self.idle.forget(reclaim.worker_id)
        self.metrics.on_reclaims(reclaimed)
        self._stop_failed_groups([r.task_id for r in reclaimed if r.failed])
        if any(not r.failed for r in reclaimed):
            self.tasks_available.notify()
        if any(r.failed for r in reclaimed):
            self.tasks_finished.notify()


def _format_stats(raw: dict[str, Any], dispatcher: Dispatcher) -> dict[str, Any]:
    now, timeout = raw["now"], dispatcher.config.heartbeat_timeout
    held_by: dict[str, list[int]] = {}
    for row in raw["held"]:
        held_by.setdefault(row["worker_id"], []).append(row["task_id"])
    workers = []
    for row in raw["workers"]:
        age = now - row["last_heartbeat"]
        workers.append({
            "worker_id": row["worker_id"],
            "status": row["status"],
            "alive": row["status"] == WorkerStatus.ALIVE.value and age <= timeout,
            "seconds_since_heartbeat": round(age, 3),
            "current_tasks": held_by.get(row["worker_id"], []),
            "tasks_completed": row["tasks_completed"],
        })
    counts = raw["counts"]
    counters = raw["counters"]
    completed = raw["completed_last_window"]
    monitor = dispatcher.monitor
    resumed_at = raw["cluster"].get("resumed_at")
    return {
        "tasks": {**counts, "total": sum(counts.values())},
        "workers": {
            "alive": sum(1 for w in workers if w["alive"]),
            "dead": sum(1 for w in workers if w["status"] == WorkerStatus.DEAD.value),
            "total": len(workers),
            "details": workers,
        },
        "throughput": {
            "window_seconds": THROUGHPUT_WINDOW_SECONDS,
            "completed": completed,
            "tasks_per_second": round(completed / THROUGHPUT_WINDOW_SECONDS, 3),
        },
        "reclaims": {
            cause: counters.get(cause, 0)
            for cause in ("dead_worker", "expired_lease", "released_on_shutdown",
                          "worker_restarted", "returned_unstarted", "lost_claim")
        },
        "failures": {  # errors retried, and attempts ended other than by a reclaim
            name: counters.get(name, 0)
            for name in FAILURE_COUNTERS
        },
        "claims": {
            "requests_served": dispatcher.claims_served,
            "tasks_leased": dispatcher.tasks_leased,
            "mean_batch": round(dispatcher.tasks_leased / max(1, dispatcher.claims_served), 2),
            "waiting": dispatcher.claims_waiting,
            "redelivered": counters.get("redelivered", 0),
        },
        "monitor": {
            "sweeps": monitor.stats.sweeps,
            "errors": monitor.stats.errors,
            "purged": monitor.stats.purged,
            "in_grace_period": resumed_at is None or now < resumed_at + timeout,
            "last_sweep_seconds_ago": _age(now, raw["cluster"].get("last_sweep_at")),
        },
        "uptime_seconds": round(time.monotonic() - dispatcher.started, 3),
    }


def _age(now: float, then: float | None) -> float | None:
    return None if then is None else round(now - then, 3)
