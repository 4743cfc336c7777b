"""The worker: a heartbeat thread plus a main loop that claims, runs, checkpoints and reports.

The main thread runs tasks. The heartbeat thread has its own HTTP session and short timeouts,
so neither a CPU-bound task nor a slow dispatcher delays a beat. Signal handlers only set flags
(:class:`Shutdown`); the loop and the checkpoint callback look at them.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from tasks.base import TaskInterrupted
from worker.cache_manager import PendingResult, ResultCache
from worker.client import Backoff, DispatcherClient, OutageLog, Reply, Unreachable
from worker.config import WorkerConfig
from worker.heartbeat import Heartbeat, HeldTasks
from worker.tasks import Checkpointer, ClaimedTask, InterruptReason, SendOutcome, run_task

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


class ResultReporter:
    """Delivers results through the durable cache: put first, send, ack once answered."""

    def __init__(self, config: WorkerConfig, cache: ResultCache, client: DispatcherClient,
                 outage: OutageLog) -> None:
        self._config, self._cache, self._client, self._outage = config, cache, client, outage
        self.last_reply: Reply | None = None

    def report(self, task_id: int, attempt: int, payload: dict[str, Any]) -> bool:
        """Store a result durably, then try to deliver everything pending."""
        self._cache.put(task_id, attempt, payload)
        return self.flush()

    def has_pending(self) -> bool:
        """True while some result awaits the dispatcher."""
        return len(self._cache) > 0

    def flush(self) -> bool:
        """Send pending results oldest first; False if the dispatcher is unavailable."""
        # One result per request for now; batching means one POST of {"results": [...]} here.
        for item in self._cache.pending():
            if not self._send_one(item):
                return False
        return True

    def _send_one(self, item: PendingResult) -> bool:
        wid = self._config.worker_id
        body = {"worker_id": wid, "task_id": item.task_id, "attempt": item.attempt, **item.payload}
        self.last_reply = None
        try:
            reply = self._client.post("/submit-result", body, self._config.call_timeout)
        except Unreachable as exc:
            self._outage.failed(str(exc))
            return False
        self.last_reply = reply
        if reply.retryable:
            self._outage.failed(f"HTTP {reply.status}")
            return False
        self._outage.ok()
        self._log_answer(item, reply)
        self._cache.ack(item.task_id, item.attempt)
        return True

    def _log_answer(self, item: PendingResult, reply: Reply) -> None:
        wid, outcome = self._config.worker_id, "error" if "error" in item.payload else "result"
        if reply.status == 200:
            log.info("task %s attempt %s: %s delivered by worker %s (status %s%s)", item.task_id,
                     item.attempt, outcome, wid, reply.field("status"),
                     ", duplicate" if reply.field("duplicate") else "")
        elif reply.status == 409:
            log.warning("task %s attempt %s: %s from worker %s refused as stale (409); dropped",
                        item.task_id, item.attempt, outcome, wid)
        else:
            # Resending would be refused forever and block the results behind it.
            log.error("task %s attempt %s: %s from worker %s rejected (HTTP %s %s); dropped",
                      item.task_id, item.attempt, outcome, wid, reply.status, reply.body)


class Worker:
    """Claims, runs and reports tasks until stopped; call :meth:`run`, or :meth:`loop_once` in tests."""

    def __init__(self, config: WorkerConfig, cache: ResultCache, shutdown: Shutdown) -> None:
        self.config, self._shutdown = config, shutdown
        self._held = HeldTasks()
        self._heartbeat = Heartbeat(config, self._held)
        self._client = DispatcherClient(config.dispatcher_url)
        self._outage = OutageLog(config.worker_id, "tasks and results")
        self._reporter = ResultReporter(config, cache, self._client, self._outage)
        self._backoff = Backoff(config.backoff_base, config.backoff_max)
        self.processed = 0
        self._queue_empty = False

    def run(self) -> int:
        """Work until stopped, the queue is empty (burst) or max_tasks are done; return the exit code."""
        cfg = self.config
        log.info("worker %s (instance %s) starting against %s", cfg.worker_id, cfg.instance_id,
                 cfg.dispatcher_url)
        # Re-send an earlier process's results before our first heartbeat announces a new
        # instance (which makes the dispatcher requeue what the old instance held).
        self._reporter.flush()
        self._heartbeat.start()
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
        """One step: deliver pending results, else claim one task and process it."""
        if not self._reporter.flush():
            self._pause(self._reporter.last_reply)
            return
        task = self._claim()
        if task is not None:
            self._process(task)

    def _finished(self) -> bool:
        cfg = self.config
        done = (cfg.max_tasks is not None and self.processed >= cfg.max_tasks) or (
            cfg.burst and self._queue_empty)
        return done and not self._reporter.has_pending()

    def _pause(self, reply: Reply | None = None) -> None:
        at_least = reply.retry_after if reply is not None and reply.retry_after else 0.0
        self._shutdown.wait(self._backoff.next_delay(at_least))

    def _claim(self) -> ClaimedTask | None:
        cfg = self.config
        body = {"worker_id": cfg.worker_id, "instance_id": cfg.instance_id, "wait": cfg.poll_wait}
        try:
            reply = self._client.post("/get-task", body, cfg.claim_timeout)
        except Unreachable as exc:
            self._outage.failed(str(exc))
            return self._pause()
        if reply.retryable:
            self._outage.failed(f"HTTP {reply.status}")
            return self._pause(reply)
        self._outage.ok()
        if reply.status == 204:
            self._backoff.reset()
            self._queue_empty = True
            return None
        if reply.status != 200:
            log.error("worker %s: claim refused: HTTP %s %s", cfg.worker_id, reply.status, reply.body)
            return self._pause(reply)
        self._backoff.reset()
        self._queue_empty = False
        return ClaimedTask.from_dict(reply.field("task"))

    def _process(self, task: ClaimedTask) -> None:
        wid = self.config.worker_id
        if task.resume_state is None:
            log.info("task %s attempt %s (%s) claimed by worker %s", task.task_id, task.attempt,
                     task.task_type, wid)
        else:
            log.info("task %s attempt %s (%s) claimed by worker %s, resuming at progress %s",
                     task.task_id, task.attempt, task.task_type, wid, task.resume_progress)
        revoked = self._held.add(task.task_id, task.attempt)
        try:
            if self._shutdown.requested:  # the stop arrived during the long poll
                return self._release(task, None)
            self._run_and_report(task, revoked)
        finally:
            self._held.remove(task.task_id)
            self.processed += 1

    def _run_and_report(self, task: ClaimedTask, revoked: threading.Event) -> None:
        checkpointer = Checkpointer(
            self._checkpoint_sender(task), self.config.checkpoint_interval,
            should_stop=lambda: self._shutdown.requested, is_revoked=revoked.is_set)
        try:
            payload = run_task(task, checkpointer, self.config.worker_id)
        except TaskInterrupted:
            return self._interrupted(task, checkpointer)
        if revoked.is_set():
            log.warning("task %s finished on worker %s after being revoked; result dropped",
                        task.task_id, self.config.worker_id)
            return
        self._reporter.report(task.task_id, task.attempt, payload)

    def _checkpoint_sender(self, task: ClaimedTask) -> Callable[[dict[str, Any], float], SendOutcome]:
        cfg = self.config

        def send(state: dict[str, Any], progress: float) -> SendOutcome:
            try:
                body = {"worker_id": cfg.worker_id, "task_id": task.task_id,
                        "attempt": task.attempt, "state": state, "progress": _fraction(progress)}
                reply = self._client.post("/checkpoint", body, cfg.call_timeout)
            except (TypeError, ValueError) as exc:
                log.error("task %s on worker %s: checkpoint not sent, not JSON (%s)",
                          task.task_id, cfg.worker_id, exc)
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
                  self.config.worker_id, reply.status, reply.body)
        return SendOutcome.FAILED

    def _interrupted(self, task: ClaimedTask, checkpointer: Checkpointer) -> None:
        wid = self.config.worker_id
        if checkpointer.reason is InterruptReason.SHUTDOWN:
            log.info("task %s interrupted by shutdown on worker %s at progress %s",
                     task.task_id, wid, checkpointer.latest_progress)
            self._release(task, checkpointer)
        elif checkpointer.reason is InterruptReason.REVOKED:
            log.warning("task %s stopped on worker %s: revoked by the dispatcher; no result sent",
                        task.task_id, wid)
        else:
            log.warning("task %s stopped on worker %s: checkpoint refused as stale (409); "
                        "no result sent", task.task_id, wid)

    def _release(self, task: ClaimedTask, checkpointer: Checkpointer | None) -> None:
        cfg = self.config
        body: dict[str, Any] = {"worker_id": cfg.worker_id, "task_id": task.task_id,
                                "attempt": task.attempt}
        if checkpointer is not None and checkpointer.latest_state is not None:
            body.update(state=checkpointer.latest_state,
                        progress=_fraction(checkpointer.latest_progress))
        try:
            reply = self._client.post("/release-task", body, cfg.call_timeout)
        except (Unreachable, TypeError, ValueError) as exc:
            log.warning("task %s: release by worker %s failed (%s); the dispatcher requeues it "
                        "once this worker's heartbeats stop", task.task_id, cfg.worker_id, exc)
            return
        log.info("task %s attempt %s released by worker %s: HTTP %s", task.task_id, task.attempt,
                 cfg.worker_id, reply.status)

    def _stop(self) -> None:
        cfg = self.config
        if self._shutdown.requested:
            log.info("worker %s stopping on signal", cfg.worker_id)
        if self._reporter.has_pending() and not self._reporter.flush():
            log.warning("worker %s: results left in %s; they are re-sent on next start",
                        cfg.worker_id, cfg.cache_path)
        self._heartbeat.stop()
        self._client.close()
        log.info("worker %s stopped after %d tasks", cfg.worker_id, self.processed)
