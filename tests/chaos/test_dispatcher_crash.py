"""The dispatcher SIGKILLed at random moments while clients submit continuously."""

from __future__ import annotations

import random

import pytest

from tests.conftest import ClusterFactory
from tests.support.scenarios import DispatcherCrash

pytestmark = pytest.mark.chaos


def test_dispatcher_crashes_lose_and_duplicate_nothing(
    make_cluster: ClusterFactory, rng: random.Random
) -> None:
    cluster = make_cluster(CHECKPOINT_INTERVAL="0.5", BACKOFF_MAX="1")
    report = DispatcherCrash(cluster, rng, workers=3, clients=2).run(crashes=5)
    print(report.summary())
    audit = report.audit
    assert report.crashes >= 5
    assert len(report.acknowledged) > 50, "the clients barely submitted anything"
    assert report.missing == [], "acknowledged submissions are missing"
    assert report.duplicate_tasks == 0, "a client retry created a second task"
    assert report.mismatched_replays == [], "a retried key answered a different task"
    assert audit.integrity == "ok"
    assert audit.unfinished == [] and audit.missing_results == [] and audit.orphan_results == []
    assert audit.results == audit.tasks and not audit.attempt_mismatch and not audit.wrong_results
    # Workers kept heartbeating through every outage: nothing may be taken from them. (A task
    # a prefetching worker gave back unstarted gets a new attempt too: that is not a reclaim.)
    assert report.counters.get("dead_worker", 0) == 0
    assert report.counters.get("expired_lease", 0) == 0
    assert report.counters.get("worker_restarted", 0) == 0
    assert report.false_deaths == 0 and report.taken_from_live == 0
    assert report.outages_with_cached_results >= 1, "no result was ever held through an outage"
    assert 500 not in report.statuses
