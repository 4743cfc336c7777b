"""Three dispatchers on PostgreSQL and six workers, random dispatchers and workers SIGKILLed."""

from __future__ import annotations

import random

import pytest

from tests.conftest import ClusterFactory
from tests.support.scale_out import ScaleOutChaos

pytestmark = pytest.mark.chaos

CHAOS_SECONDS = 60
"""Long enough for a dozen or more kills of each kind; analysis/chaos.py runs it for minutes."""


@pytest.fixture
def cluster_backend() -> str:
    return "postgres"


@pytest.mark.timeout(400)
def test_killing_dispatchers_and_workers_loses_and_duplicates_nothing(
    make_cluster: ClusterFactory, rng: random.Random
) -> None:
    # Random kills can take three workers in a row from one task before its next checkpoint:
    # not the crash loop the breaker (tested on its own) is for.
    cluster = make_cluster(CHECKPOINT_INTERVAL="0.5", BACKOFF_MAX="1", CRASH_LOOP_LIMIT="1000")
    report = ScaleOutChaos(cluster, rng, dispatchers=3, workers=6).run(CHAOS_SECONDS)
    summary = report.summary()
    print(summary)
    assert not report.client_failures, report.client_failures[:5]
    assert summary["dispatcher_kills"] >= 5 and summary["worker_kills"] >= 5, summary
    assert report.lost == [] and report.audit.unfinished == []
    assert not report.audit.missing_results and not report.audit.orphan_results
    assert report.audit.results == report.audit.completed == report.audit.tasks
    assert summary["duplicates"] == 0
    assert not report.audit.attempt_mismatch and not report.audit.wrong_results
    assert report.resumed_from_scratch == [], "a reassigned task ignored its checkpoint"
    assert report.false_deaths == 0
    assert report.failover_seconds, "no worker had to move to another dispatcher"
    assert max(report.failover_seconds) < 5.0, sorted(report.failover_seconds)[-5:]
