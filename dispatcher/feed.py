"""The dashboard's data: one cheap document with everything the page shows, polled by it.

Every part comes from a bounded read of the store (counts kept by triggers, index scans with a
LIMIT), so the document costs the same with a thousand tasks or a million. The throughput
chart counts tasks by finished time per bucket, from the database, so every dispatcher over a
shared PostgreSQL database draws the same chart; a bucket that ended a while ago cannot change
any more, so it is read once and kept, and each poll reads only the last few buckets. The whole
document is reused for :data:`STATE_SECONDS`, so any number of open pages cost a dispatcher at
most a couple of reads a second.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from dispatcher.db import Store
from dispatcher.models import TaskStatus, WorkerStatus
from shared.config import Config

BUCKET_SECONDS = 10
WINDOW_BUCKETS = 60
"""The chart spans WINDOW_BUCKETS buckets of BUCKET_SECONDS (ten minutes)."""
RATE_BUCKETS = 6
"""The headline rate (done / s) is taken over this many full buckets (a minute) plus the
current one."""
FREEZE_AFTER_SECONDS = 5.0
"""A bucket that ended this long ago is kept and not read again (a transaction that finished a
task stamps it with its start time, and commits within this long)."""
STATE_SECONDS = 0.5
TASK_ROWS = 50
WORKER_ROWS = 200
SHORT_ROWS = 10  # next pending and recently finished tasks shown
SERIES = (TaskStatus.COMPLETED.value, TaskStatus.FAILED.value, TaskStatus.CANCELLED.value)


class Throughput:
    """Tasks finished per bucket over the window, each closed bucket read from the store once."""

    def __init__(self) -> None:
        self.frozen: dict[int, dict[str, int]] = {}
        self.frozen_until = 0  # every bucket before this one (in the window) is frozen

    def since(self, now: float) -> float:
        """Where the next read must start: the first bucket not frozen yet."""
        first = _bucket(now) - WINDOW_BUCKETS + 1
        return max(first, self.frozen_until) * BUCKET_SECONDS

    def update(self, now: float, since: float, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Merge a read of the buckets from ``since``; the chart's series, oldest first."""
        current, start = _bucket(now), _bucket(now) - WINDOW_BUCKETS + 1
        fresh: dict[int, dict[str, int]] = {}
        for row in rows:
            fresh.setdefault(int(row["bucket"]), {})[row["status"]] = int(row["n"])
        closed = _bucket(now - FREEZE_AFTER_SECONDS) - 1  # ended FREEZE_AFTER_SECONDS ago
        for bucket in range(max(start, _bucket(since)), closed + 1):
            self.frozen[bucket] = fresh.get(bucket, {})
        self.frozen_until = max(self.frozen_until, closed + 1)
        for bucket in [b for b in self.frozen if b < start]:
            del self.frozen[bucket]
        merged = {**fresh, **self.frozen}
        series = {status: [merged.get(b, {}).get(status, 0) for b in range(start, current + 1)]
                  for status in SERIES}
        # The rate over the last minute: its full buckets and the current one, as far as it went.
        done = series[TaskStatus.COMPLETED.value][-RATE_BUCKETS - 1:]
        elapsed = RATE_BUCKETS * BUCKET_SECONDS + now - current * BUCKET_SECONDS
        return {"bucket_seconds": BUCKET_SECONDS, "start": start * BUCKET_SECONDS,
                "series": series, "done_per_second": round(sum(done) / elapsed, 2)}


def _bucket(at: float) -> int:
    return math.floor(at / BUCKET_SECONDS)


class DashboardFeed:
    """Builds (and briefly reuses) the ``GET /dashboard/state`` document."""

    def __init__(self, store: Store, config: Config) -> None:
        self.store, self.config = store, config
        self.throughput = Throughput()
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    def state(self) -> dict[str, Any]:
        """The current document (at most STATE_SECONDS old)."""
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < STATE_SECONDS:
                return self._cached[1]
            document = self._build()
            self._cached = (time.monotonic(), document)
            return document

    def forget(self) -> None:
        """Drop the reused document: the next request builds a fresh one."""
        with self._lock:
            self._cached = None

    def _build(self) -> dict[str, Any]:
        since = self.throughput.since(self.store.now())
        raw = self.store.dashboard(since, BUCKET_SECONDS, TASK_ROWS, WORKER_ROWS)
        now, counts = raw["now"], raw["counts"]
        workers = self._workers(raw)
        throughput = self.throughput.update(now, since, raw["buckets"])
        return {
            "now": now,
            "headline": {
                "workers_alive": sum(1 for w in workers if w["alive"]),
                "workers_dead": raw["worker_counts"].get(WorkerStatus.DEAD.value, 0),
                "workers_total": sum(raw["worker_counts"].values()),
                "pending": counts[TaskStatus.PENDING.value],
                "delayed": raw["delayed"],  # of the pending: waiting for their run_after
                "running": counts[TaskStatus.IN_PROGRESS.value],
                "done_per_second": throughput["done_per_second"],
            },
            "tasks": {**counts, "total": sum(counts.values())},
            "workers": workers,
            "running": [_running(row, now) for row in raw["dash_running"]],
            "pending": [_short(row, now) for row in raw["dash_pending"][:SHORT_ROWS]],
            "recent": [_short(row, now) for row in sorted(
                raw["dash_recent"], key=lambda r: (r["finished_at"], r["task_id"]),
                reverse=True)[:SHORT_ROWS]],
            "throughput": throughput,
            "reclaims": raw["counters"],
            "events": [event.to_dict() for event in reversed(raw["events"])],
            "settings": {"heartbeat_timeout": self.config.heartbeat_timeout,
                         "lease_duration": self.config.lease_duration,
                         "rows": TASK_ROWS},
        }

    def _workers(self, raw: dict[str, Any]) -> list[dict[str, Any]]:
        now, timeout = raw["now"], self.config.heartbeat_timeout
        running: dict[str, list[dict[str, Any]]] = {}
        for row in raw["dash_running"]:
            running.setdefault(row["worker_id"], []).append(
                {"task_id": row["task_id"], "progress": row["progress"]})
        workers = []
        for row in raw["workers"]:
            age = now - row["last_heartbeat"]
            workers.append({
                "worker_id": row["worker_id"],
                "status": row["status"],
                "alive": row["status"] == WorkerStatus.ALIVE.value and age <= timeout,
                "seconds_since_heartbeat": round(age, 1),
                "held": raw["held"].get(row["worker_id"], 0),
                "running": running.get(row["worker_id"], []),
                "tasks_completed": row["tasks_completed"],
            })
        return workers


def _running(row: dict[str, Any], now: float) -> dict[str, Any]:
    checkpoint_at, lease = row["checkpoint_at"], row["lease_expires_at"]
    return {
        "task_id": row["task_id"], "task_type": row["task_type"], "worker_id": row["worker_id"],
        "attempt": row["attempt"], "max_attempts": row["max_attempts"],
        "progress": row["progress"],
        "seconds_running": _ago(now, row["claimed_at"]),
        "seconds_since_checkpoint": _ago(now, checkpoint_at),
        "lease_seconds_left": None if lease is None else round(lease - now, 1),
    }


def _short(row: dict[str, Any], now: float) -> dict[str, Any]:
    view = {key: row[key] for key in ("task_id", "task_type", "attempt", "progress")}
    for key in ("status", "worker_id", "error", "priority"):
        if key in row:
            view[key] = row[key]
    view["status"] = row.get("status", TaskStatus.PENDING.value)
    at = row.get("finished_at") or row.get("created_at")
    view["seconds_ago"] = _ago(now, at)
    return view


def _ago(now: float, then: float | None) -> float | None:
    return None if then is None else round(now - then, 1)
