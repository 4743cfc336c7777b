"""Time-driven work of a dispatcher: delayed tasks coming due, and periodic schedules.

A delayed task (``run_at``/``delay_seconds``, or an error's retry backoff) is pending with a
``run_after`` time; until then the claim's index does not hold it. The :class:`DueTimer`
knows the earliest such time (and the earliest schedule) from the store, sleeps until then,
and makes what is due claimable (:meth:`Store.promote_due`), which wakes waiting long polls
here and (PostgreSQL NOTIFY) on the other dispatchers. A write that delays a task earlier
than the timer's next wake-up pokes it (locally after the commit, or by NOTIFY from another
dispatcher); besides that it reads the store only when it wakes, and at least every
:data:`REFRESH_SECONDS` in case a hint was lost.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from croniter import croniter

from dispatcher.db import StorageUnavailable, Store

log = logging.getLogger(__name__)

REFRESH_SECONDS = 5.0
"""The longest the timer sleeps without looking at the store (a lost hint costs this much)."""
MIN_EVERY_SECONDS = 1.0
MAX_EVERY_SECONDS = 366 * 86400.0


def cron_error(expression: str) -> str | None:
    """Why ``expression`` is not a 5-field cron expression, or None when it is."""
    if len(expression.split()) != 5:
        return "must have 5 fields (minute hour day-of-month month day-of-week)"
    if not croniter.is_valid(expression):
        return f"is not a valid cron expression: {expression!r}"
    return None


def cron_next(expression: str, after: float) -> float:
    """The first time (epoch seconds, UTC) after ``after`` that ``expression`` matches."""
    start = datetime.fromtimestamp(after, tz=timezone.utc)
    return float(croniter(expression, start).get_next(float))


def next_run(row: Any, now: float) -> float:
    """When a schedule that was due at ``row["next_run_at"]`` fires next: after ``now``.

    Periods missed while no dispatcher ran are not made up: one task for the period that is
    due, then the next period in the future.
    """
    if row["cron"] is not None:
        return cron_next(row["cron"], now)
    every, due = row["every_seconds"], row["next_run_at"]
    return due + every * max(1, math.floor((now - due) / every) + 1)


def first_run(every_seconds: float | None, cron: str | None) -> Callable[[float], float]:
    """When a new schedule first fires, given the store's ``now``."""
    if cron is not None:
        return lambda now: cron_next(cron, now)
    assert every_seconds is not None
    return lambda now: now + every_seconds


class DueTimer:
    """Sleeps until the next delayed task or schedule is due, then releases what is due."""

    def __init__(self, store: Store, on_ready: Callable[[int], None]) -> None:
        self.store = store
        self.on_ready = on_ready  # called with how many tasks became claimable
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._poked = math.inf  # the earliest due time we were told of since the last look
        self._look_now = False
        self.errors = 0
        self.fired = 0

    def poke(self, at: float) -> None:
        """Something comes due at ``at`` (store clock): wake earlier than planned if needed."""
        with self._lock:
            if at < self._poked:
                self._poked = at
                self._wake.set()

    def wake(self) -> None:
        """Look at the store now (and at stop)."""
        with self._lock:
            self._look_now = True
            self._wake.set()

    def tick(self) -> float | None:
        """Release everything due now; the next time something comes due (or None).

        Reads first, and writes only when something is due.
        """
        task_at, schedule_at, now = self.store.due_times()
        fired = (self.store.fire_schedules(_next_run)
                 if schedule_at is not None and schedule_at <= now else [])
        promoted = self.store.promote_due() if task_at is not None and task_at <= now else 0
        self.fired += len(fired)
        if promoted or fired:
            log.debug("due timer: %d delayed task(s) now claimable, %d scheduled task(s) "
                      "submitted", promoted, len(fired))
            self.on_ready(promoted + len(fired))
        return self.store.next_due()

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set: release what is due, sleep until the next due time."""
        while not stop.is_set():
            with self._lock:
                self._poked, self._look_now = math.inf, False
            try:
                due = self.tick()
            except StorageUnavailable as exc:
                self.errors += 1
                log.warning("due timer: storage unavailable (%s); retrying", exc)
                due = self.store.now() + 1.0
            except Exception:  # the loop boundary: log and keep the timer alive
                self.errors += 1
                log.exception("due timer failed")
                due = self.store.now() + 1.0
            self._sleep_until(due, stop)

    def _sleep_until(self, due: float | None, stop: threading.Event) -> None:
        """Sleep until ``due``, an earlier poke, a :meth:`wake`, or REFRESH_SECONDS."""
        while not stop.is_set():
            with self._lock:
                if self._look_now:
                    return
                target = min(math.inf if due is None else due, self._poked)
                self._wake.clear()
            delay = min(REFRESH_SECONDS, target - self.store.now())
            if delay <= 0 or not self._wake.wait(delay):
                return  # due (or time to look again anyway)

    def start(self, stop: threading.Event) -> threading.Thread:
        """Run the loop in a daemon thread."""
        thread = threading.Thread(target=self.run, args=(stop,), name="due-timer", daemon=True)
        thread.start()
        return thread


def _next_run(row: Any, now: float) -> float:
    try:
        return next_run(row, now)
    except (ValueError, KeyError) as exc:  # a stored cron that no longer parses: a day later
        log.error("schedule %s: cannot compute its next run (%s)", row["schedule_id"], exc)
        return now + 86400.0
