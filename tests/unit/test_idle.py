"""The idle fleet on an injected clock: what it trusts, for how long, and what forgets it."""

from __future__ import annotations

import pytest

from dispatcher.idle import IDLE_TRUST_SECONDS, WORKER_TRUST_SECONDS, IdleFleet
from tests.conftest import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fleet(clock: FakeClock) -> IdleFleet:
    return IdleFleet(clock)


def test_a_worker_read_idle_is_trusted_as_that_instance_at_that_generation(
        fleet: IdleFleet, clock: FakeClock) -> None:
    fleet.remember("w1", "i1", clock.now, generation=7)
    assert fleet.trusted_for("w1", "i1", 7)
    assert fleet.trusted_for("w1", "i1")  # a heartbeat does not care about pending tasks
    assert not fleet.trusted_for("w1", "i2", 7)  # a restarted worker
    assert not fleet.trusted_for("w1", None)
    assert not fleet.trusted_for("w2", "i1", 7)


def test_a_new_generation_is_not_trusted_for_claims(fleet: IdleFleet, clock: FakeClock) -> None:
    fleet.remember("w1", "i1", clock.now, generation=7)
    assert not fleet.trusted_for("w1", "i1", 8)
    assert fleet.trusted_for("w1", "i1")


def test_trust_ends_after_the_window_counted_from_before_the_read(
        fleet: IdleFleet, clock: FakeClock) -> None:
    read_at = clock.now
    clock.advance(0.25)  # the read took this long
    fleet.remember("w1", "i1", read_at, generation=0)
    assert fleet.trusted_for("w1", "i1", 0) == pytest.approx(IDLE_TRUST_SECONDS - 0.25)
    assert fleet.trusted_for("w1", "i1") == pytest.approx(WORKER_TRUST_SECONDS - 0.25)
    clock.advance(IDLE_TRUST_SECONDS - 0.25)
    assert fleet.trusted_for("w1", "i1", 0) == 0.0  # a claim must look for pending tasks
    assert fleet.trusted_for("w1", "i1") == pytest.approx(WORKER_TRUST_SECONDS - IDLE_TRUST_SECONDS)
    clock.advance(WORKER_TRUST_SECONDS - IDLE_TRUST_SECONDS)
    assert fleet.trusted_for("w1", "i1") == 0.0  # and a heartbeat at the worker


def test_any_workers_idle_read_vouches_for_the_queue_for_every_claim(
        fleet: IdleFleet, clock: FakeClock) -> None:
    fleet.remember("w1", "i1", clock.now, generation=3)
    clock.advance(IDLE_TRUST_SECONDS - 0.1)
    fleet.remember("w2", "i2", clock.now, generation=3)  # another worker's read, later
    clock.advance(0.5)  # w1's own read is past the queue's window, w2's is not
    assert fleet.trusted_for("w1", "i1", 3) == pytest.approx(IDLE_TRUST_SECONDS - 0.5)
    assert not fleet.trusted_for("w1", "i1", 4)  # something was announced since
    fleet.remember("w3", "i3", clock.now - 5.0, generation=3)  # an older read changes nothing
    assert fleet.trusted_for("w1", "i1", 3) == pytest.approx(IDLE_TRUST_SECONDS - 0.5)


def test_a_clock_set_back_ends_the_trust(fleet: IdleFleet, clock: FakeClock) -> None:
    fleet.remember("w1", "i1", clock.now, generation=0)
    clock.now -= 60
    assert not fleet.trusted_for("w1", "i1", 0)


def test_a_forgotten_worker_is_not_trusted(fleet: IdleFleet, clock: FakeClock) -> None:
    fleet.remember("w1", "i1", clock.now, generation=0)
    fleet.remember("w2", "i2", clock.now, generation=0)
    fleet.forget("w1")
    fleet.forget(None)  # a reclaim naming no worker
    assert not fleet.trusted_for("w1", "i1")
    assert fleet.trusted_for("w2", "i2")


def test_a_read_begun_before_the_worker_was_forgotten_is_not_remembered(
        fleet: IdleFleet, clock: FakeClock) -> None:
    read_at = clock.now
    clock.advance(0.01)
    fleet.forget("w1")  # a concurrent request changed the worker meanwhile
    fleet.remember("w1", "i1", read_at, generation=0)
    assert not fleet.trusted_for("w1", "i1")
    fleet.remember("w1", "i1", clock.now, generation=0)  # a read begun after it
    assert fleet.trusted_for("w1", "i1")


def test_entries_past_the_window_are_dropped(fleet: IdleFleet, clock: FakeClock) -> None:
    for n in range(100):
        fleet.remember(f"w{n}", "i", clock.now, generation=0)
        fleet.forget(f"x{n}")
    assert len(fleet) == 200
    clock.advance(WORKER_TRUST_SECONDS + 0.1)
    fleet.remember("fresh", "i", clock.now, generation=0)
    assert len(fleet) == 1
    assert fleet.trusted_for("fresh", "i", 0)


def test_a_worker_leased_tasks_from_idle_is_idle_again_once_all_are_completed(
        fleet: IdleFleet, clock: FakeClock) -> None:
    fleet.remember("w1", "i1", clock.now, generation=2)
    read_at = clock.now
    fleet.remember_leases("w1", "i1", read_at, 2, [10, 11])
    assert not fleet.trusted_for("w1", "i1")  # it holds tasks
    fleet.finished("w1", [10])
    assert not fleet.trusted_for("w1", "i1")  # still 11
    fleet.finished("w2", [11])  # another worker's results say nothing of w1
    assert not fleet.trusted_for("w1", "i1")
    clock.advance(0.5)
    fleet.finished("w1", [11])
    assert fleet.trusted_for("w1", "i1") == pytest.approx(WORKER_TRUST_SECONDS - 0.5)
    assert not fleet.trusted_for("w1", "i2")


def test_leases_are_forgotten_like_idle_reads(fleet: IdleFleet, clock: FakeClock) -> None:
    fleet.remember_leases("w1", "i1", clock.now, 0, [10])
    fleet.forget("w1")  # a heartbeat that went to the store, a reclaim, a checkpoint
    fleet.finished("w1", [10])
    assert not fleet.trusted_for("w1", "i1")
    before = clock.now
    clock.advance(0.1)
    fleet.forget("w1")
    fleet.remember_leases("w1", "i1", before, 0, [12])  # a read begun before the forgetting
    fleet.finished("w1", [12])
    assert not fleet.trusted_for("w1", "i1")
    fleet.remember_leases("w1", "i1", clock.now, 0, [13])
    clock.advance(WORKER_TRUST_SECONDS)
    fleet.finished("w1", [13])  # done, but the read that leased it is too old to vouch
    assert not fleet.trusted_for("w1", "i1")


def test_a_claim_that_left_nothing_pending_vouches_for_the_queue(
        fleet: IdleFleet, clock: FakeClock) -> None:
    fleet.remember("w1", "i1", clock.now - 3.0, generation=5)  # w1's own read, long ago
    assert not fleet.trusted_for("w1", "i1", 5)  # too old to vouch for the queue
    fleet.saw_empty(clock.now, generation=5)
    assert fleet.trusted_for("w1", "i1", 5) == pytest.approx(IDLE_TRUST_SECONDS)
    assert not fleet.trusted_for("w1", "i1", 6)
    fleet.saw_empty(clock.now - 0.5, generation=6)  # an older read changes nothing
    assert not fleet.trusted_for("w1", "i1", 6)
