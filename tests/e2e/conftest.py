"""End-to-end fixtures: a real dispatcher process (and workers) per test, always stopped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.cluster import LocalCluster

ClusterFactory = Callable[..., LocalCluster]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """Start a dispatcher with extra environment; every cluster made is closed afterwards."""
    made: list[LocalCluster] = []

    def make(**env: str) -> LocalCluster:
        cluster = LocalCluster(tmp_path / f"cluster{len(made)}", env)
        made.append(cluster)
        cluster.start_dispatcher()
        return cluster

    yield make
    for cluster in made:
        cluster.close()


@pytest.fixture
def cluster(make_cluster: ClusterFactory) -> LocalCluster:
    """A dispatcher with the spec's defaults and fast checkpoints."""
    return make_cluster(CHECKPOINT_INTERVAL="0.5")
