"""The worker: a heartbeat thread plus a main loop that claims, runs, checkpoints and reports.

The main thread runs tasks. The heartbeat thread has its own HTTP session and short timeouts,
so neither a CPU-bound task nor a slow dispatcher delays a beat. Signal handlers only set flags
(:class:`Shutdown`); the loop and the checkpoint callback look at them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from shared.utils import task_fields
from tasks.base import TaskInterrupted
from tasks.registry import Registry
from worker.cache_manager import PendingResult, ResultCache
from worker.client import (
    Backoff,
    DispatcherClient,
    OutageLog,
    Reply,
    Unreachable,
    worker_failover,
)
from worker.config import TASK_OVERRAN_EXIT, WorkerConfig
from worker.heartbeat import Heartbeat, HeldTasks
from worker.tasks import (
    MAX_ERROR_CHARS,
    Checkpointer,
    ClaimedTask,
    InterruptReason,
    SendOutcome,
    run_task,
)

log = logging.getLogger(__name__)


class Shutdown:
    """Stop flags set by signal handlers: first request = warm stop, second = leave now."""

    SLICE_SECONDS = 0.05

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self.count = 0
        self._sleep = sleep

    @property
    def requested(self) -> bool:
        """True once any stop was requested."""
        return self.count > 0

    def request(self) -> bool:
        """Record a stop request; True when it is the second one (the caller exits at once)."""
        self.count += 1
        return self.count >= 2

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, returning early once a stop is requested."""
        # Plain sleeps in slices, not Event.wait: setting an Event from a signal handler
        # can deadlock on the Event's lock held by the interrupted main thread.
        deadline = time.monotonic() + seconds
        while not self.requested and (left := deadline - time.monotonic()) > 0:
            self._sleep(min(self.SLICE_SECONDS, left))


def install_signal_handlers(shutdown: Shutdown) -> None:
    """Route SIGTERM and SIGINT to ``shutdown``; the second signal ends the process at once."""

    def handle(signum: int, frame: object) -> None:
        if shutdown.request():
            os.write(2, b"second stop signal: exiting now\n")
            os._exit(1)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _fraction(progress: Any) -> float:
    """Progress as the dispatcher accepts it: a float clamped to [0, 1]."""
    return min(1.0, max(0.0, float(progress)))


MAX_RESULT_BYTES = 1 << 20
"""About how many bytes of results ride on one request (the dispatcher takes 16 MiB)."""


class ResultReporter:
    """Delivers results, keeping each until the dispatcher has answered it.

    A result whose task ran longer than :attr:`SAVE_AFTER_SECONDS` is written to the durable
    cache before it is sent, so a worker that crashes before delivering it does not cost the
    work again. A shorter task's result is only written there once a send fails: losing it
    to a crash costs less than the write (its task is requeued and redone). Either way a
    result stays here until answered, and the cache survives restarts: a restarted worker
    sends the previous process's results first.

    In the main loop results ride on the next claim (:meth:`pending` + :meth:`acknowledge`);
    :meth:`flush` sends them on their own: at start, at stop, and when a claim is refused.
    """

    FLUSH_BATCH = 500
    SAVE_AFTER_SECONDS = 0.05

    def __init__(self, config: WorkerConfig, cache: ResultCache, client: DispatcherClient,
                 outage: OutageLog, on_answered: Callable[[int], None] = lambda task_id: None,
                 ) -> None:
        self._config, self._cache, self._client, self._outage = config, cache, client, outage
        self._on_answered = on_answered
        # Every unanswered result in order; the keys also in the cache; those to write there.
        self._queue: dict[tuple[int, int], PendingResult] = {}
        self._cached: set[tuple[int, int]] = set()
        self._unsaved: list[PendingResult] = []
        self.last_reply: Reply | None = None

    def recover(self) -> int:
        """Take up the results an earlier process left in the cache; return how many."""
        for item in self._cache.pending():
            key = (item.task_id, item.attempt)
            self._queue.setdefault(key, item)
            self._cached.add(key)
        return len(self._cached)

    def store(self, task_id: int, attempt: int, payload: dict[str, Any],
              ran_seconds: float = 0.0) -> None:
        """Take a finished task's result; a long task's is written to the cache at :meth:`save`."""
        item = PendingResult(task_id, attempt, payload, size=len(json.dumps(payload)))
        self._queue.setdefault((task_id, attempt), item)
        if ran_seconds > self.SAVE_AFTER_SECONDS:
            self._unsaved.append(item)

    def save(self) -> None:
        """Write the results that must be durable before sending to the cache (one transaction)."""
        self._write([item for item in self._unsaved
                     if (item.task_id, item.attempt) in self._queue])
        self._unsaved = []

    def save_all(self) -> None:
        """Write every unanswered result to the cache (a send failed: it may take a while)."""
        self._unsaved = []
        self._write(list(self._queue.values()))

    def _write(self, items: list[PendingResult]) -> None:
        new = [item for item in items if (item.task_id, item.attempt) not in self._cached]
        if new:
            self._cache.put_many([(i.task_id, i.attempt, i.payload) for i in new])
            self._cached.update((i.task_id, i.attempt) for i in new)

    def has_pending(self) -> bool:
        """True while some result awaits the dispatcher."""
        return bool(self._queue)

    def count(self) -> int:
        """How many results await the dispatcher."""
        return len(self._queue)

    def pending(self, limit: int, max_bytes: int = MAX_RESULT_BYTES) -> list[PendingResult]:
        """The oldest unanswered results, at most ``limit`` and about ``max_bytes``.

        The ones that must be durable are saved first. At least one result comes back if any
        is pending, however large.
        """
        self.save()
        chosen: list[PendingResult] = []
        total = 0
        for item in self._queue.values():
            if chosen and (len(chosen) >= limit or total + item.size > max_bytes):
                break
            chosen.append(item)
            total += item.size
        return chosen

    @staticmethod
    def as_body(items: list[PendingResult]) -> list[dict[str, Any]]:
        """Results in the wire form of ``results: [...]``."""
        return [{"task_id": i.task_id, "attempt": i.attempt, **i.payload} for i in items]

    def acknowledge(self, items: list[PendingResult], outcomes: Any) -> int:
        """Drop every result the dispatcher answered; log the refused ones; return how many."""
        answered = {(o.get("task_id"), o.get("attempt")): o.get("outcome")
                    for o in outcomes or [] if isinstance(o, dict)}
        done = []
        for item in items:
            outcome = answered.get((item.task_id, item.attempt))
            if outcome is not None:
                self._log_outcome(item, outcome)
                done.append(item)
        self._forget(done)
        return len(done)

    def _forget(self, items: list[PendingResult]) -> None:
        keys = [(i.task_id, i.attempt) for i in items]
        for key in keys:
            self._queue.pop(key, None)
        cached = [key for key in keys if key in self._cached]
        if cached:
            self._cache.ack_many(cached)
            self._cached.difference_update(cached)
        for item in items:
            self._on_answered(item.task_id)

    def flush(self) -> bool:
        """Send every pending result in batches; False if the dispatcher is unavailable.

        A batch refused as a whole (4xx) is retried one result at a time, so only the result
        the dispatcher really refuses is dropped.
        """
        while items := self.pending(self.FLUSH_BATCH):
            reply = self._send(items)
            if reply is None:
                return False
            if reply.status != 200 and len(items) > 1:
                if not all(self._send_alone(item) for item in items):
                    return False
            elif reply.status != 200:
                self._drop(items[0], reply)
            elif self.acknowledge(items, reply.field("results")) == 0:
                log.error("worker %s: the dispatcher answered no result of a batch",
                          self._config.worker_id)
                return False
        return True

    def _send(self, items: list[PendingResult]) -> Reply | None:
        """POST a batch; None when the dispatcher is unavailable (the results are cached)."""
        body = {"worker_id": self._config.worker_id, "results": self.as_body(items)}
        self.last_reply = None
        try:
            reply = self._client.post("/submit-result", body, self._config.call_timeout)
        except Unreachable as exc:
            self._outage.failed(str(exc))
            self.save_all()
            return None
        self.last_reply = reply
        if reply.retryable:
            self._outage.failed(f"HTTP {reply.status}")
            self.save_all()
            return None
        self._outage.ok()
        return reply

    def _send_alone(self, item: PendingResult) -> bool:
        reply = self._send([item])
        if reply is None:
            return False
        if reply.status == 200:
            self.acknowledge([item], reply.field("results"))
        else:
            self._drop(item, reply)
        return True

    def _drop(self, item: PendingResult, reply: Reply) -> None:
        """Give up on a result the dispatcher refused: resending it would be refused forever.

        A refused *result* is replaced by an error naming the refusal, so the task ends as
        failed instead of being leased and computed again; a refused error is dropped.
        """
        log.error("task %s attempt %s: result from worker %s rejected (HTTP %s %s)",
                  item.task_id, item.attempt, self._config.worker_id, reply.status, reply.body,
                  extra=task_fields(item.task_id, self._config.worker_id, item.attempt))
        self._forget([item])
        if "result" in item.payload and reply.status not in (404, 409):
            error = {"error": refusal_error(reply), "retry": False}
            self._queue[(item.task_id, item.attempt)] = PendingResult(
                item.task_id, item.attempt, error, size=len(json.dumps(error)))

    def _log_outcome(self, item: PendingResult, outcome: str) -> None:
        wid, kind = self._config.worker_id, "error" if "error" in item.payload else "result"
        fields = task_fields(item.task_id, wid, item.attempt)
        if outcome in ("accepted", "duplicate"):
            log.debug("task %s attempt %s: %s delivered by worker %s (%s)", item.task_id,
                      item.attempt, kind, wid, outcome, extra=fields)
        else:
            log.warning("task %s attempt %s: %s from worker %s refused (%s); dropped",
                        item.task_id, item.attempt, kind, wid, outcome, extra=fields)


def refusal_error(reply: Reply) -> str:
    """The error text reported for a task whose result the dispatcher refused."""
    error = reply.field("error")
    detail = (f"{error.get('code')}: {error.get('message')}" if isinstance(error, dict)
              else str(reply.body)[:200])
    return f"result refused by the dispatcher (HTTP {reply.status} {detail})"[:MAX_ERROR_CHARS]


EXIT_TASK_OVERRAN = TASK_OVERRAN_EXIT
"""The worker's exit code when it ended itself because a task ignored its timeout."""


class Watchdog:
    """Ends the worker process when the running task overruns its timeout by ``grace`` seconds.

    Tasks run in this process's main thread, and Python cannot stop a thread from outside: a
    task that never calls its checkpoint callback (which stops it cooperatively at its
    timeout) can only be stopped with the process. The dispatcher has already failed the
    task ("timed out after N s") by then; the process exits with :data:`EXIT_TASK_OVERRAN`
    and its supervisor starts a fresh one (the tasks it held are requeued as for a crash).
    """

    POLL_SECONDS = 0.1

    def __init__(self, worker_id: str, grace: float,
                 exit_now: Callable[[int], None] = os._exit) -> None:
        self._worker_id, self._grace, self._exit = worker_id, grace, exit_now
        self._lock = threading.Lock()
        # (task, timeout, kill at, attempt)
        self._current: tuple[int, float, float, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, task: ClaimedTask, started: float) -> None:
        """The main thread starts ``task`` (at monotonic ``started``)."""
        with self._lock:
            self._current = None if task.timeout_seconds is None else (
                task.task_id, task.timeout_seconds, started + task.timeout_seconds + self._grace,
                task.attempt)

    def clear(self) -> None:
        """The main thread is done with its task."""
        with self._lock:
            self._current = None

    def check(self, now: float) -> None:
        """End the process if the current task is past its timeout plus the grace."""
        with self._lock:
            current = self._current
        if current is not None and now > current[2]:
            task_id, timeout, _, attempt = current
            log.critical("worker %s: task %s ignored its timeout of %s s for %s s more; ending "
                         "this worker process (exit %d) to stop it", self._worker_id, task_id,
                         timeout, self._grace, EXIT_TASK_OVERRAN,
                         extra=task_fields(task_id, self._worker_id, attempt))
            logging.shutdown()
            self._exit(EXIT_TASK_OVERRAN)

    def start(self) -> None:
        """Watch from a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="task-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.POLL_SECONDS):
            self.check(time.monotonic())


class Prefetch:
    """How many tasks to claim at once: doubles while tasks are short, 1 after a long one."""

    SHORT_TASK_SECONDS = 0.05

    def __init__(self, maximum: int) -> None:
        self.maximum = max(1, maximum)
        self.size = 1

    def record(self, seconds: float) -> None:
        """Adapt to how long the last task took."""
        if seconds <= self.SHORT_TASK_SECONDS:
            self.size = min(self.maximum, self.size * 2)
        else:
            self.size = 1


class Worker:
    """Claims, runs and reports tasks until stopped; call :meth:`run`, or :meth:`loop_once` in tests."""

    def __init__(
        self, config: WorkerConfig, cache: ResultCache, shutdown: Shutdown, registry: Registry
    ) -> None:
        self.config, self._shutdown, self.registry = config, shutdown, registry
        self._held = HeldTasks()
        # One dispatcher list for both threads: they fail over together, logged once.
        failover = worker_failover(config)
        self._heartbeat = Heartbeat(config, self._held, failover)
        self._client = DispatcherClient(failover, config.token)
        self._outage = OutageLog(config.worker_id, "tasks and results")
        # A task stays held (listed in heartbeats) until its result is answered, so the
        # dispatcher never mistakes a finished, undelivered task for a lost claim.
        self._reporter = ResultReporter(config, cache, self._client, self._outage,
                                        on_answered=self._held.remove)
        self._backoff = Backoff(config.backoff_base, config.backoff_max)
        self._prefetch = Prefetch(config.prefetch_max)
        self.processed = 0
        self._queue_empty = False
        self._watchdog = Watchdog(config.worker_id, config.timeout_grace)

    def run(self) -> int:
        """Work until stopped, the queue is empty (burst) or max_tasks are done; return the exit code."""
        cfg = self.config
        log.info("worker %s (instance %s) starting against %s (dispatchers: %s); task types: %s",
                 cfg.worker_id, cfg.instance_id, self._client.base_url,
                 ", ".join(cfg.dispatcher_urls), ", ".join(self.registry.names))
        # Re-send an earlier process's results before our first heartbeat announces a new
        # instance (which makes the dispatcher requeue what the old instance held).
        self._reporter.recover()
        self._reporter.flush()
        self._heartbeat.start()
        self._watchdog.start()
        try:
            while not self._shutdown.requested and not self._finished():
                self._guarded_loop_once()
        finally:
            self._stop()
        return 0

    def _guarded_loop_once(self) -> None:
        try:
            self.loop_once()
        except Exception:  # the loop boundary: log, back off, keep the worker alive
            log.exception("worker %s: unexpected error in the main loop", self.config.worker_id)
            self._pause()

    def loop_once(self) -> None:
        """One step: claim a batch (carrying the last batch's results), then run it."""
        tasks = self._claim()
        if tasks:
            self._process_batch(tasks)

    def _finished(self) -> bool:
        cfg = self.config
        done = (cfg.max_tasks is not None and self.processed >= cfg.max_tasks) or (
            cfg.burst and self._queue_empty)
        return done and not self._reporter.has_pending()

    def _pause(self, reply: Reply | None = None) -> None:
        at_least = reply.retry_after if reply is not None and reply.retry_after else 0.0
        self._shutdown.wait(self._backoff.next_delay(at_least))

    def _claim_size(self) -> int:
        size = self._prefetch.size
        if self.config.max_tasks is not None:
            size = min(size, self.config.max_tasks - self.processed)
        return max(0, size)

    def _claim(self) -> list[ClaimedTask]:
        cfg = self.config
        results = self._reporter.pending(ResultReporter.FLUSH_BATCH)
        if len(results) < self._reporter.count():
            # Every pending result must go with the claim (the dispatcher re-delivers any task
            # still leased to us that the claim does not report), so send the surplus first.
            if not self._reporter.flush():
                return self._pause(self._reporter.last_reply) or []
            results = []
        body = {"worker_id": cfg.worker_id, "instance_id": cfg.instance_id, "wait": cfg.poll_wait,
                "max_tasks": self._claim_size(), "results": self._reporter.as_body(results)}
        try:
            reply = self._client.post("/get-task", body, cfg.claim_timeout)
        except Unreachable as exc:
            self._outage.failed(str(exc))
            self._reporter.save_all()
            return self._pause() or []
        if reply.retryable:
            self._outage.failed(f"HTTP {reply.status}")
            self._reporter.save_all()
            return self._pause(reply) or []
        self._outage.ok()
        if reply.status != 200:
            log.error("worker %s: claim refused: HTTP %s %s", cfg.worker_id, reply.status, reply.body)
            if results:  # perhaps because of a result: deliver them apart, dropping a bad one
                self._reporter.flush()
            return self._pause(reply) or []
        self._reporter.acknowledge(results, reply.field("results"))
        self._backoff.reset()
        tasks = [ClaimedTask.from_dict(raw) for raw in reply.field("tasks") or []]
        self._queue_empty = not tasks
        return tasks

    def _process_batch(self, tasks: list[ClaimedTask]) -> None:
        """Run claimed tasks in order; give back the unstarted ones once a task proves long."""
        revoked = {t.task_id: self._held.add(t.task_id, t.attempt) for t in tasks}
        reported: set[int] = set()
        waiting = list(tasks)
        try:
            while waiting:
                task = waiting.pop(0)
                if self._shutdown.requested:  # the stop arrived during the long poll or batch
                    self._release(task, None)
                    continue
                started = time.monotonic()
                self._log_claim(task)

                def give_back() -> None:
                    if waiting and time.monotonic() - started > Prefetch.SHORT_TASK_SECONDS:
                        self._give_back(waiting)

                if self._run_and_report(task, revoked[task.task_id], give_back):
                    self._held.finish(task.task_id)
                    reported.add(task.task_id)
                self._prefetch.record(time.monotonic() - started)
                self.processed += 1
                if waiting and self._prefetch.size == 1:
                    self._give_back(waiting)
        finally:
            self._reporter.save()
            for task in tasks:
                if task.task_id not in reported:
                    self._held.remove(task.task_id)

    def _give_back(self, waiting: list[ClaimedTask]) -> None:
        """Return claimed but unstarted tasks so idle workers take them now; deliver results."""
        log.info("worker %s gives back %d unstarted task(s): %s", self.config.worker_id,
                 len(waiting), [t.task_id for t in waiting],
                 extra={"task_ids": [t.task_id for t in waiting],
                        "worker_id": self.config.worker_id})
        reason = "shutdown" if self._shutdown.requested else "unstarted"
        for task in waiting:
            self._release(task, None, reason=reason)
            self._held.remove(task.task_id)
        waiting.clear()
        self._prefetch.size = 1
        self._reporter.flush()  # the batch's finished results need not wait for the long task

    def _log_claim(self, task: ClaimedTask) -> None:
        wid = self.config.worker_id
        fields = task_fields(task.task_id, wid, task.attempt)
        if task.resume_state is None:
            log.debug("task %s attempt %s (%s) started by worker %s", task.task_id, task.attempt,
                      task.task_type, wid, extra=fields)
        else:
            log.info("task %s attempt %s (%s) started by worker %s, resuming at progress %s",
                     task.task_id, task.attempt, task.task_type, wid, task.resume_progress,
                     extra=fields)

    def _run_and_report(
        self, task: ClaimedTask, revoked: threading.Event, on_call: Callable[[], None]
    ) -> bool:
        """Run one task; True when its result was stored for delivery."""
        checkpointer = Checkpointer(
            self._checkpoint_sender(task), self.config.checkpoint_interval,
            should_stop=lambda: self._shutdown.requested, is_revoked=revoked.is_set,
            on_call=on_call, timeout_seconds=task.timeout_seconds)
        started = time.monotonic()
        self._watchdog.watch(task, started)
        try:
            payload = run_task(task, checkpointer, self.config.worker_id, self.registry,
                               self.config.max_result_bytes)
        except TaskInterrupted:
            self._interrupted(task, checkpointer)
            return False
        finally:
            self._watchdog.clear()
        if revoked.is_set():
            log.warning("task %s finished on worker %s after being revoked; result dropped",
                        task.task_id, self.config.worker_id,
                        extra=task_fields(task.task_id, self.config.worker_id, task.attempt))
            return False
        self._reporter.store(task.task_id, task.attempt, payload, time.monotonic() - started)
        return True

    def _checkpoint_sender(self, task: ClaimedTask) -> Callable[[dict[str, Any], float], SendOutcome]:
        cfg = self.config

        def send(state: dict[str, Any], progress: float) -> SendOutcome:
            try:
                body = {"worker_id": cfg.worker_id, "task_id": task.task_id,
                        "attempt": task.attempt, "state": state, "progress": _fraction(progress)}
                reply = self._client.post("/checkpoint", body, cfg.call_timeout)
            except (TypeError, ValueError) as exc:
                log.error("task %s on worker %s: checkpoint not sent, not JSON (%s)",
                          task.task_id, cfg.worker_id, exc,
                          extra=task_fields(task.task_id, cfg.worker_id, task.attempt))
                return SendOutcome.FAILED
            except Unreachable as exc:
                self._outage.failed(f"{exc}; task {task.task_id} keeps running")
                return SendOutcome.FAILED
            return self._checkpoint_outcome(task, reply)

        return send

    def _checkpoint_outcome(self, task: ClaimedTask, reply: Reply) -> SendOutcome:
        if reply.retryable:
            self._outage.failed(f"HTTP {reply.status} on /checkpoint")
            return SendOutcome.FAILED
        self._outage.ok()
        if reply.status == 200:
            return SendOutcome.SENT
        if reply.status == 409:
            return SendOutcome.STALE
        log.error("task %s on worker %s: checkpoint refused: HTTP %s %s", task.task_id,
                  self.config.worker_id, reply.status, reply.body,
                  extra=task_fields(task.task_id, self.config.worker_id, task.attempt))
        return SendOutcome.FAILED

    def _interrupted(self, task: ClaimedTask, checkpointer: Checkpointer) -> None:
        wid = self.config.worker_id
        fields = task_fields(task.task_id, wid, task.attempt)
        if checkpointer.reason is InterruptReason.SHUTDOWN:
            log.info("task %s interrupted by shutdown on worker %s at progress %s",
                     task.task_id, wid, checkpointer.latest_progress, extra=fields)
            self._release(task, checkpointer)
        elif checkpointer.reason is InterruptReason.TIMED_OUT:
            log.warning("task %s stopped on worker %s: past its timeout of %s s; the "
                        "dispatcher fails it", task.task_id, wid, task.timeout_seconds,
                        extra=fields)
        elif checkpointer.reason is InterruptReason.REVOKED:
            log.warning("task %s stopped on worker %s: revoked by the dispatcher; no result sent",
                        task.task_id, wid, extra=fields)
        else:
            log.warning("task %s stopped on worker %s: checkpoint refused as stale (409); "
                        "no result sent", task.task_id, wid, extra=fields)

    def _release(
        self, task: ClaimedTask, checkpointer: Checkpointer | None, reason: str = "shutdown"
    ) -> None:
        cfg = self.config
        body: dict[str, Any] = {"worker_id": cfg.worker_id, "task_id": task.task_id,
                                "attempt": task.attempt, "reason": reason}
        if checkpointer is not None and checkpointer.latest_state is not None:
            body.update(state=checkpointer.latest_state,
                        progress=_fraction(checkpointer.latest_progress))
        try:
            reply = self._client.post("/release-task", body, cfg.call_timeout)
        except (Unreachable, TypeError, ValueError) as exc:
            log.warning("task %s: release by worker %s failed (%s); the dispatcher requeues it "
                        "once this worker's heartbeats stop", task.task_id, cfg.worker_id, exc,
                        extra=task_fields(task.task_id, cfg.worker_id, task.attempt))
            return
        log.info("task %s attempt %s released (%s) by worker %s: HTTP %s", task.task_id,
                 task.attempt, reason, cfg.worker_id, reply.status,
                 extra=task_fields(task.task_id, cfg.worker_id, task.attempt))

    def _stop(self) -> None:
        cfg = self.config
        if self._shutdown.requested:
            log.info("worker %s stopping on signal", cfg.worker_id)
        if self._reporter.has_pending() and not self._reporter.flush():
            log.warning("worker %s: results left in %s; they are re-sent on next start",
                        cfg.worker_id, cfg.cache_path)
        self._heartbeat.stop()
        self._watchdog.stop()
        self._client.close()
        log.info("worker %s stopped after %d tasks", cfg.worker_id, self.processed)
