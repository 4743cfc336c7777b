"""The dispatcher's Notifier: long-poll wake-ups that are never missed, one per new task."""

from __future__ import annotations

import threading
import time

from dispatcher.utils import Notifier
from shared.cluster import wait_until


def start_waiters(notifier: Notifier, count: int, timeout: float) -> tuple[list[threading.Thread],
                                                                              list[str]]:
    woke: list[str] = []
    seen = notifier.generation

    def wait(name: str) -> None:
        if notifier.wait(seen, timeout):
            woke.append(f"{name}@{time.monotonic():.3f}")

    threads = [threading.Thread(target=wait, args=(f"t{i}",)) for i in range(count)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(notifier._cond._waiters) == count, 5,  # type: ignore[attr-defined]
               message="all waiting")
    return threads, woke


def test_notify_count_wakes_only_that_many_waiters() -> None:
    notifier = Notifier()
    threads, woke = start_waiters(notifier, 3, timeout=30)
    notifier.notify(1)
    wait_until(lambda: len(woke) == 1, 5, message="one waiter woken")
    assert len(notifier._cond._waiters) == 2  # type: ignore[attr-defined]
    notifier.notify()
    for thread in threads:
        thread.join(5)
    assert len(woke) == 3


def test_a_notification_before_the_wait_is_not_missed() -> None:
    notifier = Notifier()
    seen = notifier.generation
    notifier.notify(1)
    started = time.monotonic()
    assert notifier.wait(seen, 10) is True
    assert time.monotonic() - started < 5


def test_wait_returns_at_once_once_the_generation_moved() -> None:
    notifier = Notifier()
    seen = notifier.generation
    notifier.notify(1)  # nobody waiting yet: wakes no one, but the generation moved
    assert notifier.wait(seen, 0.01) is True
    assert notifier.wait(notifier.generation, 0.01) is False
