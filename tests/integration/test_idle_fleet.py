"""The dispatcher's idle fleet on both stores: idle polls and beats need no read, and lose nothing.

The store's reads and writes are counted by wrapping its transaction methods; time is the
injected store clock (the idle fleet's too).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest

from dispatcher.db import Store
from dispatcher.idle import IDLE_TRUST_SECONDS, WORKER_TRUST_SECONDS, IdleFleet
from dispatcher.models import Lease, NewTask, Report, WorkerStatus
from dispatcher.service import Dispatcher
from shared.cluster import wait_until
from tests.conftest import FakeClock, run_monitor

NOOP = NewTask("noop", {}, 0, 3)


class Transactions:
    """Counts the store's transactions from now on: reads, writes and (PostgreSQL) statements
    that are transactions of their own (``_at_once``)."""

    def __init__(self, store: Store) -> None:
        self.counts: Counter[str] = Counter()
        for name in ("_read", "_write", "_at_once"):
            setattr(store, name, self._counting(name, getattr(store, name)))

    def _counting(self, name: str, method: Callable[..., AbstractContextManager[Any]]
                  ) -> Callable[..., AbstractContextManager[Any]]:
        def counted(*args: Any, **kwargs: Any) -> AbstractContextManager[Any]:
            self.counts[name] += 1
            return method(*args, **kwargs)
        return counted

    def during(self, action: Callable[[], Any]) -> tuple[Any, Counter[str]]:
        """What ``action`` returned and the transactions it took."""
        before = self.counts.copy()
        result = action()
        return result, self.counts - before


def looks(used: Counter[str]) -> int:
    """How many times a claim looked at the store: a read, or on PostgreSQL the one-statement
    claim of a known worker holding nothing (which, finding nothing, writes nothing)."""
    return used["_read"] + used["_at_once"]


@pytest.fixture
def transactions(dispatcher: Dispatcher) -> Transactions:
    return Transactions(dispatcher.store)


def claim(dispatcher: Dispatcher, worker: str = "w1", instance: str = "i1",
          wait: float = 0.0) -> list[Lease]:
    return dispatcher.claim(worker, instance, 1, wait)[0]


def beat(dispatcher: Dispatcher, worker: str = "w1", instance: str = "i1",
         held: list[tuple[int, int]] | None = None, stopping: bool = False) -> list[int]:
    return dispatcher.heartbeat(worker, instance, held or [], stopping)


def idle_worker(dispatcher: Dispatcher, worker: str = "w1", instance: str = "i1") -> None:
    """Register the worker (a write), then let a claim find it idle (a read, remembered)."""
    assert claim(dispatcher, worker, instance) == []
    assert claim(dispatcher, worker, instance) == []
    assert dispatcher.idle.trusted_for(worker, instance, dispatcher.tasks_available.generation)


def worker_row(store: Store, worker: str) -> dict[str, Any]:
    with store._read() as tx:
        return next(dict(row) for row in tx.all("workers_all") if row["worker_id"] == worker)


def idle_answers(dispatcher: Dispatcher, kind: str) -> float:
    return dispatcher.metrics.idle_answers.labels(kind)._value.get()


def test_an_idle_workers_claims_and_beats_read_nothing_and_still_keep_it_alive(
        dispatcher: Dispatcher, clock: FakeClock, transactions: Transactions) -> None:
    idle_worker(dispatcher)
    registered = worker_row(dispatcher.store, "w1")["last_heartbeat"]
    clock.advance(0.5)
    leases, used = transactions.during(lambda: claim(dispatcher))
    assert leases == [] and not used
    revoked, used = transactions.during(lambda: beat(dispatcher))
    assert revoked == [] and not used
    assert idle_answers(dispatcher, "claim") == 1 and idle_answers(dispatcher, "heartbeat") == 1
    dispatcher.monitor.sweep()
    assert worker_row(dispatcher.store, "w1")["last_heartbeat"] == pytest.approx(registered + 0.5)
    assert worker_row(dispatcher.store, "w1")["status"] == WorkerStatus.ALIVE.value


def test_past_the_queues_window_the_next_claim_reads_again(
        dispatcher: Dispatcher, clock: FakeClock, transactions: Transactions) -> None:
    idle_worker(dispatcher)
    clock.advance(IDLE_TRUST_SECONDS + 0.01)
    _, used = transactions.during(lambda: beat(dispatcher))
    assert not used  # the worker itself is vouched for longer
    _, used = transactions.during(lambda: claim(dispatcher))
    assert looks(used) == 1 and not used["_write"]  # and remembered again
    _, used = transactions.during(lambda: claim(dispatcher))
    assert not used


def test_past_the_workers_window_its_heartbeat_reads_again(
        dispatcher: Dispatcher, clock: FakeClock, transactions: Transactions) -> None:
    idle_worker(dispatcher)
    clock.advance(WORKER_TRUST_SECONDS + 0.01)
    _, used = transactions.during(lambda: beat(dispatcher))
    assert used["_read"] == 1


def test_one_workers_read_spares_the_others_claims_theirs(
        dispatcher: Dispatcher, clock: FakeClock, transactions: Transactions) -> None:
    idle_worker(dispatcher, "w1", "i1")
    idle_worker(dispatcher, "w2", "i2")
    clock.advance(IDLE_TRUST_SECONDS + 0.01)
    _, used = transactions.during(lambda: claim(dispatcher, "w2", "i2"))
    assert looks(used) == 1  # the queue's window ran out: w2 looks, for everyone
    _, used = transactions.during(lambda: claim(dispatcher, "w1", "i1"))
    assert not used and idle_answers(dispatcher, "claim") >= 1


def test_a_task_submitted_after_the_memo_is_claimed_by_the_next_claim(
        dispatcher: Dispatcher) -> None:
    idle_worker(dispatcher)
    [(task_id, _)] = dispatcher.submit([NOOP])
    assert [lease.task_id for lease in claim(dispatcher)] == [task_id]
    assert not dispatcher.idle.trusted_for("w1", "i1")


def test_a_task_announced_nowhere_waits_at_most_the_trust_window(
        dispatcher: Dispatcher, clock: FakeClock) -> None:
    idle_worker(dispatcher)
    # Another dispatcher's submission whose notification never arrived.
    [(task_id, _)] = dispatcher.store.submit([NOOP])
    assert claim(dispatcher) == []
    clock.advance(IDLE_TRUST_SECONDS + 0.01)
    assert [lease.task_id for lease in claim(dispatcher)] == [task_id]


def test_claims_answered_from_memory_do_not_all_wake_when_it_runs_out(
        dispatcher: Dispatcher, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """They wait as any claim does (until woken, their deadline, or RECHECK_SECONDS), not until
    the memory runs out: that is one moment for the whole fleet, and every claim would read."""
    idle_worker(dispatcher)
    clock.advance(IDLE_TRUST_SECONDS - 0.1)
    waits: list[float] = []
    wait = dispatcher._wait_for_tasks

    def recorded(seen: int, seconds: float) -> bool:
        waits.append(seconds)
        return wait(seen, seconds)

    monkeypatch.setattr(dispatcher, "_wait_for_tasks", recorded)
    assert claim(dispatcher, wait=0.3) == []
    assert idle_answers(dispatcher, "claim") == 1
    assert waits and min(waits) > 0.2


def test_a_waiting_claim_woken_by_a_submission_takes_the_task_at_once(
        dispatcher: Dispatcher) -> None:
    idle_worker(dispatcher)
    got: list[list[Lease]] = []
    waiter = threading.Thread(target=lambda: got.append(claim(dispatcher, wait=30.0)))
    waiter.start()
    wait_until(lambda: dispatcher.claims_waiting == 1, 10, message="the claim waits")
    [(task_id, _)] = dispatcher.submit([NOOP])
    waiter.join(timeout=10)
    assert [[lease.task_id for lease in leases] for leases in got] == [[task_id]]


def test_the_claim_sent_with_the_results_of_the_last_task_reads_nothing(
        dispatcher: Dispatcher, transactions: Transactions) -> None:
    """PostgreSQL's claim says it took the last pending task and that the worker held nothing
    else: the claim that comes with that task's result is answered from memory. A claim that
    left tasks pending, or results of a worker that holds more, read as before (both stores)."""
    idle_worker(dispatcher)
    [(task_id, _)] = dispatcher.submit([NOOP])
    [lease] = claim(dispatcher)
    report = Report(task_id, lease.attempt, "1")
    (leases, outcomes), used = transactions.during(
        lambda: dispatcher.claim("w1", "i1", 1, 0.0, [report]))
    assert leases == [] and [o.outcome.value for o in outcomes] == ["accepted"]
    # One transaction records the result; on PostgreSQL that is all.
    if dispatcher.store.AT_ONCE:
        assert sum(used.values()) == 1 and idle_answers(dispatcher, "claim") == 1
    else:
        assert sum(used.values()) == 2  # SQLite's claim does not say what it left pending
    ids = [task_id for task_id, _ in dispatcher.submit([NOOP, NOOP])]
    [lease] = claim(dispatcher)
    (leases, _), used = transactions.during(lambda: dispatcher.claim(
        "w1", "i1", 1, 0.0, [Report(lease.task_id, lease.attempt, "1")]))
    assert [lease.task_id for lease in leases] == ids[1:]  # one was left: the claim read it
    assert sum(used.values()) >= 2


def test_a_wait_that_runs_out_ends_without_another_read(
        dispatcher: Dispatcher, transactions: Transactions) -> None:
    claim(dispatcher)  # registered: the next claim's read finds it idle
    _, used = transactions.during(lambda: claim(dispatcher, wait=0.05))
    assert looks(used) == 1 and not used["_write"]


def test_a_worker_another_dispatcher_declared_dead_is_registered_again_after_the_window(
        dispatcher: Dispatcher, clock: FakeClock) -> None:
    idle_worker(dispatcher)
    dispatcher.store.mark_worker("w1", WorkerStatus.DEAD)  # that dispatcher's sweep
    assert beat(dispatcher) == []  # answered from memory, within the window
    dispatcher.monitor.sweep()  # the liveness noted does not bring a dead worker back
    assert worker_row(dispatcher.store, "w1")["status"] == WorkerStatus.DEAD.value
    clock.advance(IDLE_TRUST_SECONDS + 0.01)
    assert claim(dispatcher) == []
    assert worker_row(dispatcher.store, "w1")["status"] == WorkerStatus.ALIVE.value


def test_a_reclaim_naming_the_worker_forgets_it(
        dispatcher: Dispatcher, clock: FakeClock, transactions: Transactions) -> None:
    dispatcher.idle = IdleFleet(dispatcher.store.now, trust_seconds=3600.0)
    idle_worker(dispatcher)
    dispatcher.store.submit([NOOP])
    dispatcher.store.claim("w1", "i1", 1, 60.0)  # through another dispatcher; then silence
    reclaims = run_monitor(dispatcher, clock, dispatcher.config.heartbeat_timeout + 1)
    assert [r.worker_id for r in reclaims] == ["w1"]
    assert not dispatcher.idle.trusted_for("w1", "i1")
    _, used = transactions.during(lambda: beat(dispatcher))
    assert used["_write"] == 1
    assert worker_row(dispatcher.store, "w1")["status"] == WorkerStatus.ALIVE.value


def test_a_heartbeat_listing_a_held_task_always_reads_the_store(
        dispatcher: Dispatcher, transactions: Transactions) -> None:
    idle_worker(dispatcher)
    revoked, used = transactions.during(lambda: beat(dispatcher, held=[(12345, 1)]))
    assert revoked == [12345]
    assert used
    assert not dispatcher.idle.trusted_for("w1", "i1")


def test_another_instance_and_a_stopping_heartbeat_go_to_the_store(
        dispatcher: Dispatcher, transactions: Transactions) -> None:
    idle_worker(dispatcher)
    _, used = transactions.during(lambda: beat(dispatcher, instance="i2"))
    assert used
    idle_worker(dispatcher, instance="i2")
    _, used = transactions.during(lambda: beat(dispatcher, instance="i2", stopping=True))
    assert used["_write"] >= 1
    assert worker_row(dispatcher.store, "w1")["status"] == WorkerStatus.STOPPED.value
    assert not dispatcher.idle.trusted_for("w1", "i2")
