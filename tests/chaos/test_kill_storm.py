"""A worker kill storm over 150 or more prime tasks of mixed sizes."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.conftest import ClusterFactory
from tests.support.audit import database
from tests.support.scenarios import KillStorm, prime_tasks

pytestmark = pytest.mark.chaos

REASSIGN_BOUND_SECONDS = 3.0
TASKS = 150
"""Tasks at the start: on a 2-core machine more work than the 20 s storm gets through, so they
drain after it, well within the drain timeout. A faster machine gets more (``top_up``)."""
TOP_UP = 20
RANDOM_KILLS = {"CRASH_LOOP_LIMIT": "1000"}
"""The storm kills whichever worker holds a task, so a long task can lose three workers in a
row before its next checkpoint: what the crash-loop breaker (tested on its own) would fail."""


def test_kill_storm_loses_nothing_and_reassigns_within_3s(
    make_cluster: ClusterFactory, rng: random.Random
) -> None:
    cluster = make_cluster(CHECKPOINT_INTERVAL="0.5", **RANDOM_KILLS)
    submitted = prime_tasks(rng, TASKS)

    def top_up() -> list[dict[str, Any]]:
        """More tasks whenever fewer than the workers are pending: the storm always has work."""
        with database(cluster.database_url) as db:
            pending = db.execute("SELECT COUNT(*) FROM tasks WHERE status = 'pending'"
                                 ).fetchone()[0]
        more = prime_tasks(rng, TOP_UP) if pending < 4 else []
        submitted.extend(more)
        return more

    storm = KillStorm(cluster, rng, workers=4, interval=2.0)
    report = storm.run(list(submitted), storm_seconds=20, max_storm_seconds=30, idle_kills=2,
                       top_up=top_up)
    total = len(submitted) + 2  # and the two idle-phase tasks
    summary = report.summary()
    print(summary)
    audit = report.audit
    assert audit.integrity == "ok"
    assert audit.tasks == total and audit.completed == total, audit.unfinished
    assert audit.results == total and not audit.missing_results and not audit.orphan_results
    assert not audit.attempt_mismatch, "a stored result is not from the task's final attempt"
    assert not audit.wrong_results, "a prime result differs from the reference"
    assert len(report.kills) >= 8
    assert not report.never_reassigned, report.never_reassigned
    assert len(report.idle_reassignments) >= 2, "kills while a worker was idle were not measured"
    slow = [k for k in report.kills if k.idle_worker_available and k.reassigned_after is not None
            and k.reassigned_after > REASSIGN_BOUND_SECONDS]
    assert not slow, f"reassigned later than {REASSIGN_BOUND_SECONDS}s: {slow}"
    assert report.false_deaths == 0
