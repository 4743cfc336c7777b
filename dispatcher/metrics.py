"""Prometheus metrics of one dispatcher: ``GET /metrics`` (prometheus_client, text format).

Two kinds, and the difference matters when several dispatchers share one database:

- **Cluster metrics**, read from the database at scrape time by :class:`ClusterCollector`
  (one read transaction of indexed reads, never a scan of the tasks table): tasks per status,
  queue depth, oldest pending age, workers and their heartbeat ages, reclaims by cause. Every
  dispatcher answers the same cluster-wide truth, and the figures agree with ``/stats``; in
  PromQL take ``max`` (or one instance), not ``sum``, across dispatchers.
- **Process metrics**, counted by this dispatcher since it started: requests and their
  latency, tasks submitted, claimed, completed and failed through it, task durations and
  reassignment times observed in its claims and results, storage errors, monitor sweeps,
  finished tasks purged (RESULT_TTL), claims waiting, idle workers answered from memory.
  ``sum`` them across dispatchers.

Each app has its own :class:`~prometheus_client.CollectorRegistry` (never the global default),
so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

import collections
import logging
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dispatcher.db import StorageUnavailable
from dispatcher.models import (
    FAILURE_COUNTERS,
    Lease,
    NewTask,
    Outcome,
    OutcomeKind,
    Reclaim,
    ReclaimCause,
)
from dispatcher.models import TaskStatus, WorkerStatus

if TYPE_CHECKING:
    from dispatcher.service import Dispatcher

log = logging.getLogger(__name__)

PREFIX = "taskqueue"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
"""Request latency: sub-millisecond claims up to full long polls (MAX_WAIT_SECONDS, 30 s)."""
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                    600.0, 1800.0, 3600.0)
REASSIGN_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
RECLAIM_CAUSES = tuple(cause.value for cause in ReclaimCause
                       if cause is not ReclaimCause.TIMED_OUT)
"""The reclaim causes of /stats ``reclaims``; a timeout fails its task, and is counted with the
other lifecycle failures (``taskqueue_task_failures_total``), as /stats ``failures`` does."""
UNMATCHED_ROUTE = "unmatched"
"""The route label of requests that matched no route (404/405): never the raw path."""
_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def route_label(rule: str | None) -> str:
    """A route rule as a label: ``/task/<int(min=1, ...):task_id>`` -> ``/task/<task_id>``."""
    return UNMATCHED_ROUTE if rule is None else _CONVERTER.sub(r"<\1>", rule)


class Metrics:
    """The instruments of one dispatcher and the registry ``GET /metrics`` renders."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # First, so that a scrape that fails to read the database counts in its own output.
        r.register(ClusterCollector(dispatcher, self))
        self.submitted = Counter(f"{PREFIX}_tasks_submitted", "Tasks stored by submissions "
                                 "through this dispatcher (duplicates by key not counted)",
                                 ["task_type"], registry=r)
        self.claimed = Counter(f"{PREFIX}_tasks_claimed", "Leases handed to workers by this "
                               "dispatcher", ["task_type"], registry=r)
        self.completed = Counter(f"{PREFIX}_tasks_completed", "Results accepted by this "
                                 "dispatcher", ["task_type"], registry=r)
        self.failed = Counter(f"{PREFIX}_tasks_failed", "Tasks this dispatcher marked failed, "
                              "by reason (error: the task raised; result_refused: too large; "
                              "gave_up: out of attempts)", ["task_type", "reason"], registry=r)
        self.duration = Histogram(f"{PREFIX}_task_duration_seconds", "From the claim of the "
                                  "attempt that finished a task to its result", ["task_type"],
                                  buckets=DURATION_BUCKETS, registry=r)
        self.reassignment = Histogram(f"{PREFIX}_reassignment_seconds", "From a task going "
                                      "back to the queue to its next claim, by why it went back",
                                      ["cause"], buckets=REASSIGN_BUCKETS, registry=r)
        self.requests = Counter(f"{PREFIX}_http_requests", "HTTP requests answered by this "
                                "dispatcher, by route rule", ["route", "method", "status"],
                                registry=r)
        self.latency = Histogram(f"{PREFIX}_http_request_duration_seconds", "Time to answer a "
                                 "request (long polls included), by route rule",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.storage_errors = Counter(f"{PREFIX}_storage_errors", "Database unavailable or "
                                      "full, seen by this dispatcher (request: answered 503; "
                                      "scrape: /metrics could not read the cluster state)",
                                      ["where"], registry=r)
        self.idle_answers = Counter(f"{PREFIX}_idle_answers", "Claims and heartbeats of idle "
                                    "workers this dispatcher answered from a recent read "
                                    "instead of a new one", ["kind"], registry=r)

    def render(self) -> bytes:
        """The exposition text of every metric."""
        return generate_latest(self.registry)

    # -- hooks called by the service ------------------------------------------------------

    # A batch is counted with one increment per label set, not per task: a drain hands out
    # and records up to 128 tasks a request, and each labelled increment takes a lock.

    def on_submit(self, tasks: Sequence[NewTask], created: Sequence[tuple[int, bool]]) -> None:
        """Count the tasks a submission stored (not the ones an idempotency key matched)."""
        stored = collections.Counter(task.task_type for task, (_, new) in zip(tasks, created) if new)
        for task_type, n in stored.items():
            self.submitted.labels(task_type).inc(n)

    def on_claim(self, leases: Sequence[Lease]) -> None:
        """Count leases and observe how long each reclaimed task waited to be reassigned."""
        for task_type, n in collections.Counter(lease.task_type for lease in leases).items():
            self.claimed.labels(task_type).inc(n)
        for lease in leases:
            if lease.requeued is not None:
                requeued_at, cause = lease.requeued
                claimed_at = lease.lease_expires_at - lease.lease_seconds
                self.reassignment.labels(cause).observe(max(0.0, claimed_at - requeued_at))

    def on_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """Count the results and errors that finished their task."""
        completed: collections.Counter[str] = collections.Counter()
        failed: collections.Counter[tuple[str, str]] = collections.Counter()
        durations: dict[str, list[float]] = {}
        for outcome in outcomes:
            if outcome.task_type is None or outcome.outcome not in (OutcomeKind.ACCEPTED,
                                                                    OutcomeKind.REFUSED):
                continue
            if outcome.status is TaskStatus.PENDING:  # an error queued again for a retry
                continue
            if outcome.status is TaskStatus.COMPLETED:
                completed[outcome.task_type] += 1
            else:
                reason = "result_refused" if outcome.outcome is OutcomeKind.REFUSED else "error"
                failed[outcome.task_type, reason] += 1
            if outcome.ran_seconds is not None:
                durations.setdefault(outcome.task_type, []).append(outcome.ran_seconds)
        for task_type, n in completed.items():
            self.completed.labels(task_type).inc(n)
        for (task_type, reason), n in failed.items():
            self.failed.labels(task_type, reason).inc(n)
        for task_type, seconds in durations.items():
            histogram = self.duration.labels(task_type)
            for value in seconds:
                histogram.observe(value)

    def on_reclaims(self, reclaims: Sequence[Reclaim]) -> None:
        """Count the reclaims that failed their task (out of attempts, a crash loop, a
        timeout)."""
        for reclaim in reclaims:
            if reclaim.failed:
                reason = "timed_out" if reclaim.cause is ReclaimCause.TIMED_OUT else "gave_up"
                self.failed.labels(reclaim.task_type or "unknown", reason).inc()

    def on_idle_answer(self, kind: str) -> None:
        """Count a ``claim`` or ``heartbeat`` answered from the idle fleet, without a read."""
        self.idle_answers.labels(kind).inc()

    def on_request(self, route: str | None, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency under its route rule."""
        route = route_label(route)
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)


class ClusterCollector(Collector):
    """Reads the cluster's state from the database at each scrape (and a few process gauges).

    One read transaction: tasks per status (trigger-kept counts), the reclaim counters, the
    workers' rows and the oldest pending task through the pending index. If the database
    does not answer, ``taskqueue_database_up`` is 0 and the process metrics still render.
    """

    def __init__(self, dispatcher: Dispatcher, metrics: Metrics) -> None:
        self._dispatcher = dispatcher
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        """Nothing up front: describing would read the database at registration."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """The metric families of this scrape."""
        yield from self._process()
        try:
            state = self._dispatcher.store.gauges()
        except StorageUnavailable as exc:
            log.warning("metrics: storage unavailable: %s", exc)
            self._metrics.storage_errors.labels("scrape").inc()
            yield _gauge("database_up", "1 when the database answered this scrape", 0)
            return
        yield _gauge("database_up", "1 when the database answered this scrape", 1)
        yield from _tasks(state)
        yield from _workers(state, self._dispatcher.config.heartbeat_timeout)
        yield from _reclaims(state["counters"])

    def _process(self) -> Iterator[Metric]:
        dispatcher = self._dispatcher
        yield _gauge("claims_waiting", "Long-poll claims waiting for work on this dispatcher",
                     dispatcher.claims_waiting)
        stats = dispatcher.monitor.stats
        sweeps = CounterMetricFamily(f"{PREFIX}_monitor_sweeps", "Monitor passes of this "
                                     "dispatcher, by whether it swept or another held the lock",
                                     labels=["result"])
        sweeps.add_metric(["swept"], stats.sweeps)
        sweeps.add_metric(["skipped"], stats.skipped)
        yield sweeps
        yield CounterMetricFamily(f"{PREFIX}_monitor_errors", "Monitor passes of this "
                                  "dispatcher that failed", value=stats.errors)
        yield CounterMetricFamily(f"{PREFIX}_tasks_purged", "Finished tasks this dispatcher's "
                                  "monitor deleted after RESULT_TTL (as /stats monitor.purged)",
                                  value=stats.purged)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


def _tasks(state: dict) -> Iterator[Metric]:
    counts = state["counts"]
    by_status = GaugeMetricFamily(f"{PREFIX}_tasks", "Tasks per status (cluster-wide, as "
                                  "/stats)", labels=["status"])
    for status, n in counts.items():
        by_status.add_metric([status], n)
    yield by_status
    yield _gauge("queue_depth", "Pending tasks (cluster-wide)", counts[TaskStatus.PENDING.value])
    oldest = state["oldest_pending_at"]
    age = 0.0 if oldest is None else max(0.0, state["now"] - oldest)
    yield _gauge("oldest_pending_age_seconds", "Age of the oldest pending task (0: none "
                 "pending)", age)


def _workers(state: dict, timeout: float) -> Iterator[Metric]:
    now = state["now"]
    states = {"alive": 0, "silent": 0, "dead": 0, "stopped": 0}
    ages = GaugeMetricFamily(f"{PREFIX}_worker_heartbeat_age_seconds", "Seconds since each "
                             "live worker's last heartbeat (workers not marked dead or stopped)",
                             labels=["worker_id"])
    for row in state["workers"]:
        age = max(0.0, now - row["last_heartbeat"])
        if row["status"] == WorkerStatus.ALIVE.value:
            states["alive" if age <= timeout else "silent"] += 1
            ages.add_metric([row["worker_id"]], round(age, 3))
        else:
            states[row["status"]] = states.get(row["status"], 0) + 1
    by_state = GaugeMetricFamily(f"{PREFIX}_workers", "Workers by state (alive and dead as "
                                 "/stats; silent: past HEARTBEAT_TIMEOUT, not yet swept)",
                                 labels=["state"])
    for name, n in states.items():
        by_state.add_metric([name], n)
    yield by_state
    yield ages


def _reclaims(counters: dict[str, int]) -> Iterator[Metric]:
    reclaims = CounterMetricFamily(f"{PREFIX}_reclaims", "Tasks taken back from workers, by "
                                   "cause (cluster-wide, as /stats)", labels=["cause"])
    for cause in RECLAIM_CAUSES:
        reclaims.add_metric([cause], counters.get(cause, 0))
    yield reclaims
    failures = CounterMetricFamily(f"{PREFIX}_task_failures", "The task lifecycle's failures "
                                   "(cluster-wide, as /stats failures): retries of errors, "
                                   "manual retries, crash loops, timed-out attempts",
                                   labels=["kind"])
    for name in FAILURE_COUNTERS:
        failures.add_metric([name], counters.get(name, 0))
    yield failures
    yield CounterMetricFamily(f"{PREFIX}_redelivered", "Leases re-sent because their claim's "
                              "answer was lost (cluster-wide)", value=counters.get("redelivered", 0))
