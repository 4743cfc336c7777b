"""Chaos fixtures: real dispatchers and workers per test, always stopped by PID; a seeded RNG."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.cluster import LocalCluster

ClusterFactory = Callable[..., LocalCluster]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """Start a dispatcher with extra environment; every cluster made is closed afterwards."""
    made: list[LocalCluster] = []

    def make(workdir: Path | None = None, **env: str) -> LocalCluster:
        cluster = LocalCluster(workdir or tmp_path / f"cluster{len(made)}", env)
        made.append(cluster)
        cluster.start_dispatcher()
        return cluster

    yield make
    for cluster in made:
        cluster.close()


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A random source seeded per test (CHAOS_SEED in the environment overrides), printed on failure."""
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1_000_000)))
    request.node.user_properties.append(("chaos_seed", seed))
    print(f"chaos seed {seed} (rerun with CHAOS_SEED={seed})")
    return random.Random(seed)
